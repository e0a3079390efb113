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
