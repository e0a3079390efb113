"""Kubernetes resource quantities: `250m`, `1.5`, `128Mi`, `1G`, `1e3`."""
from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from functools import lru_cache, wraps
from typing import Any, TypeVar

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}
_RE = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
T = TypeVar("T")


class QuantityError(ValueError):
    pass


def _memo(fn: Callable[[Any], T]) -> Callable[[Any], T]:
    """Every service parses the same few quantities ("100m", "128Mi") over and over: remember them.
    typed=True keeps True apart from 1 (a bool is refused, an int is not); anything but a str or a
    number (a list from bad JSON) is not hashable and goes straight to the refusal."""
    cached = lru_cache(maxsize=4096, typed=True)(fn)

    @wraps(fn)
    def call(value: Any) -> T:
        return cached(value) if isinstance(value, (str, int, float)) else fn(value)
    return call


@_memo
def parse_quantity(value: str | int | float) -> Decimal:
    """The exact value of a quantity; raises QuantityError naming what is wrong."""
    if isinstance(value, bool):
        raise QuantityError(f"quantity must be a string or number, not {value!r}")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise QuantityError(f"quantity {value!r} is not a finite number")
        return Decimal(str(value))
    if not isinstance(value, str):
        raise QuantityError(f"quantity must be a string or number, not {type(value).__name__}")
    m = _RE.match(value.strip()) if len(value) <= 64 else None
    if not m or value != value.strip():
        raise QuantityError(f"quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$', got {value[:64]!r}")
    try:
        number = Decimal(m.group(1))
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimal text
        raise QuantityError(f"bad number in quantity {value!r}") from exc
    suffix = m.group(2) or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    exponent = int(suffix[1:])
    if abs(exponent) > 30:
        raise QuantityError(f"exponent out of range in quantity {value!r}")
    return number * (Decimal(10) ** exponent)


@_memo
def cpu_millis(value: str | int | float) -> int:
    """CPU quantity in millicores, rounded up like Kubernetes (`1.5` -> 1500, `100m` -> 100)."""
    q = parse_quantity(value) * 1000
    return int(q.to_integral_value(rounding="ROUND_CEILING"))


@_memo
def to_int(value: str | int | float) -> int:
    """A quantity as an integer (bytes, counts), rounded up."""
    return int(parse_quantity(value).to_integral_value(rounding="ROUND_CEILING"))


def amount_of(values: dict[str, str], name: str, cpu: bool = False) -> int:
    """`values[name]` as millicores (cpu) or an integer; 0 when absent or not a quantity (a bad value
    in a stored object must not stop whoever adds them up)."""
    if name not in values:
        return 0
    try:
        return cpu_millis(values[name]) if cpu else to_int(values[name])
    except QuantityError:
        return 0


def format_bytes(n: int) -> str:
    for suffix, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)
