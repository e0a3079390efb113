"""JSON encoding of API objects and replies, in one place (services never hand-roll JSON)."""
from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from schemas import ApiError, Status

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_status_decoder = msgspec.json.Decoder(Status)
STATUS_PREFIX = b'{"kind":"Status"'


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode(data: bytes | str, type: type[T]) -> T:
    return msgspec.json.decode(data, type=type)


def is_status(data: bytes) -> bool:
    return data.startswith(STATUS_PREFIX)


def raise_for_status(data: bytes) -> None:
    if is_status(data):
        raise ApiError.from_status(_status_decoder.decode(data))


_META = b'"metadata":{'


def with_resource_version(stored: bytes, rv: int) -> bytes:
    """The stored JSON of an object (written without a resourceVersion: the KV revision is it) with
    its version put back, without decoding and re-encoding it. The first `"metadata":{` is the
    object's own: `kind` and `apiVersion`, the only fields before it, are plain strings."""
    i = stored.find(_META)
    if i < 0:  # not written by the API server's encoder (spacing differs): take the slow road
        doc = msgspec.json.decode(stored)
        if isinstance(doc, dict):
            meta = doc.setdefault("metadata", {})
            if isinstance(meta, dict):
                meta["resourceVersion"] = str(rv)
        return _encoder.encode(doc)
    j = i + len(_META)
    sep = b"" if stored[j:j + 1] == b"}" else b","
    return b'%s"resourceVersion":"%d"%s%s' % (stored[:j], rv, sep, stored[j:])
