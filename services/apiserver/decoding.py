"""Strict decoding of request bodies into API types, with errors that name the field."""
from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from schemas import ApiError

T = TypeVar("T")

MAX_REQUEST_BYTES = 1536 * 1024  # Kubernetes' object limit: the server's subscription loop refuses
# larger messages before decoding (server.py); this keeps every other caller of the decoder to it too
MAX_OBJECT_BYTES = 1536 * 1024  # etcd's value limit, which Kubernetes objects live within

_AT = re.compile(r" - at `\$(.*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`")
_MISSING = re.compile(r"^Object missing required field `([^`]*)`")


def _field_of(message: str) -> str:
    m = _AT.search(message)
    path = m.group(1).lstrip(".") if m else ""
    for pattern in (_UNKNOWN, _MISSING):
        hit = pattern.match(message)
        if hit:
            path = f"{path}.{hit.group(1)}" if path else hit.group(1)
    return path or "<body>"


_decoders: dict[Any, msgspec.json.Decoder] = {}


def strict_decode(data: bytes, type_: type[T], what: str) -> T:
    """Decode `data` as `type_`; malformed JSON, wrong types and unknown fields are BadRequest."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ApiError("TooLarge", f"request entity too large: limit is {MAX_REQUEST_BYTES} bytes")
    dec = _decoders.get(type_)
    if dec is None:
        dec = _decoders[type_] = msgspec.json.Decoder(type_)
    try:
        return dec.decode(data)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        field = _field_of(msg)
        if _UNKNOWN.match(msg):
            text = f'strict decoding error: unknown field "{field}"'
        elif _MISSING.match(msg):
            text = f'{what}: required field "{field}" is missing'
        else:
            text = f"{what}: {field}: {_AT.sub('', msg)}"
        raise ApiError("BadRequest", text, field=field) from None
    except msgspec.DecodeError as exc:
        raise ApiError("BadRequest", f"{what}: malformed JSON: {exc}") from None
    except RecursionError:  # msgspec refuses nesting deeper than the interpreter's recursion limit
        raise ApiError("BadRequest", f"{what}: JSON nested too deeply") from None
