"""Label selectors (equality and set-based, parsed strictly) and field selectors."""
from __future__ import annotations

import re
from typing import Any, Callable

import msgspec

from .base import LabelSelector
from .names import label_key_error, label_value_error


class SelectorError(ValueError):
    pass


class Requirement(msgspec.Struct, frozen=True):
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        if self.op in ("!=", "notin"):
            return not present or labels[self.key] not in self.values
        if self.op in ("gt", "lt"):
            if not present:
                return False
            try:
                have, want = int(labels[self.key]), int(self.values[0])
            except ValueError:
                return False
            return have > want if self.op == "gt" else have < want
        return False


class Selector(msgspec.Struct, frozen=True):
    """A parsed label selector: all requirements must hold. The empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        parts = []
        for r in self.requirements:
            if r.op == "exists":
                parts.append(r.key)
            elif r.op == "!":
                parts.append(f"!{r.key}")
            elif r.op in ("=", "!="):
                parts.append(f"{r.key}{r.op}{r.values[0]}")
            else:
                parts.append(f"{r.key} {r.op} ({','.join(r.values)})")
        return ",".join(parts)


_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|[^\s(),!=]+)")
MAX_SELECTOR_LENGTH = 4096


def _check_key(key: str) -> None:
    err = label_key_error(key)
    if err:
        raise SelectorError(f"invalid label key {key!r}: {err}")


def _check_value(value: str) -> None:
    err = label_value_error(value)
    if err:
        raise SelectorError(f"invalid label value {value!r}: {err}")


def parse_label_selector(text: str | None) -> Selector:
    """Parse `app=web,tier in (a,b),!canary,env` strictly; raises SelectorError saying what is wrong."""
    if not text or not text.strip():
        return Selector()
    if len(text) > MAX_SELECTOR_LENGTH:
        raise SelectorError(f"selector longer than {MAX_SELECTOR_LENGTH} characters")
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            if text[pos:].strip() == "":
                break
            raise SelectorError(f"unexpected character at position {pos} in {text!r}")
        tokens.append(m.group(1))
        pos = m.end()
    reqs: list[Requirement] = []
    i = 0

    def expect(tok: str) -> None:
        nonlocal i
        if i >= len(tokens) or tokens[i] != tok:
            got = tokens[i] if i < len(tokens) else "end of selector"
            raise SelectorError(f"expected {tok!r} but found {got!r} in {text!r}")
        i += 1

    while i < len(tokens):
        if tokens[i] == "!":
            i += 1
            if i >= len(tokens) or tokens[i] in "(),!=":
                raise SelectorError(f"expected a label key after '!' in {text!r}")
            _check_key(tokens[i])
            reqs.append(Requirement(tokens[i], "!"))
            i += 1
        else:
            key = tokens[i]
            if key in ("(", ")", ",", "=", "==", "!="):
                raise SelectorError(f"expected a label key but found {key!r} in {text!r}")
            _check_key(key)
            i += 1
            if i >= len(tokens) or tokens[i] == ",":
                reqs.append(Requirement(key, "exists"))
            elif tokens[i] in ("=", "==", "!="):
                op = "!=" if tokens[i] == "!=" else "="
                i += 1
                value = ""
                if i < len(tokens) and tokens[i] not in ("(", ")", ",", "=", "==", "!=", "!"):
                    value = tokens[i]
                    i += 1
                _check_value(value)
                reqs.append(Requirement(key, op, (value,)))
            elif tokens[i] in ("in", "notin"):
                op = tokens[i]
                i += 1
                expect("(")
                values: list[str] = []
                while True:
                    if i < len(tokens) and tokens[i] not in ("(", ")", ",", "=", "==", "!=", "!"):
                        _check_value(tokens[i])
                        values.append(tokens[i])
                        i += 1
                    else:
                        values.append("")
                    if i < len(tokens) and tokens[i] == ",":
                        i += 1
                        continue
                    break
                expect(")")
                reqs.append(Requirement(key, op, tuple(sorted(set(values)))))
            else:
                raise SelectorError(f"unexpected {tokens[i]!r} after label key {key!r} in {text!r}")
        if i < len(tokens):
            expect(",")
            if i >= len(tokens):
                raise SelectorError(f"trailing ',' in {text!r}")
    return Selector(tuple(reqs))


_OPS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}


def selector_from_struct(sel: LabelSelector | None, field: str = "selector") -> Selector:
    """Convert a `matchLabels`/`matchExpressions` selector; SelectorError names the field."""
    if sel is None:
        return Selector()
    reqs: list[Requirement] = []
    for k, v in sorted(sel.match_labels.items()):
        for check, what in ((label_key_error(k), "key"), (label_value_error(v), "value")):
            if check:
                raise SelectorError(f"{field}.matchLabels: invalid {what} for {k!r}: {check}")
        reqs.append(Requirement(k, "=", (v,)))
    for n, expr in enumerate(sel.match_expressions):
        where = f"{field}.matchExpressions[{n}]"
        err = label_key_error(expr.key)
        if err:
            raise SelectorError(f"{where}.key: {err}")
        op = _OPS.get(expr.operator)
        if op is None:
            raise SelectorError(f"{where}.operator: unsupported value {expr.operator!r}: supported values are In, NotIn, Exists, DoesNotExist")
        if op in ("in", "notin") and not expr.values:
            raise SelectorError(f"{where}.values: must be specified when operator is In or NotIn")
        if op in ("exists", "!") and expr.values:
            raise SelectorError(f"{where}.values: may not be specified when operator is Exists or DoesNotExist")
        for v in expr.values:
            err = label_value_error(v)
            if err:
                raise SelectorError(f"{where}.values: invalid value {v!r}: {err}")
        reqs.append(Requirement(expr.key, op, tuple(sorted(set(expr.values)))))
    return Selector(tuple(reqs))


# ---- field selectors --------------------------------------------------------------------------

class FieldRequirement(msgspec.Struct, frozen=True):
    path: str
    op: str  # "=" or "!="
    value: str


class FieldSelector(msgspec.Struct, frozen=True):
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Any, getters: dict[str, Callable[[Any], str]]) -> bool:
        for r in self.requirements:
            have = getters[r.path](obj)
            if (have == r.value) != (r.op == "="):
                return False
        return True

    def value_of(self, path: str) -> str | None:
        """The value an equality requirement pins `path` to, if any (to narrow a search)."""
        for r in self.requirements:
            if r.path == path and r.op == "=":
                return r.value
        return None


def parse_field_selector(text: str | None, supported: set[str]) -> FieldSelector:
    if not text or not text.strip():
        return FieldSelector()
    if len(text) > MAX_SELECTOR_LENGTH:
        raise SelectorError(f"field selector longer than {MAX_SELECTOR_LENGTH} characters")
    reqs = []
    for part in text.split(","):
        part = part.strip()
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*)$", part)
        if not m:
            raise SelectorError(f"invalid field selector term {part!r}: expected FIELD=VALUE or FIELD!=VALUE")
        path, op, value = m.group(1), m.group(2), m.group(3).strip()
        if path not in supported:
            raise SelectorError(f"field label not supported: {path!r} (supported: {', '.join(sorted(supported))})")
        reqs.append(FieldRequirement(path, "!=" if op == "!=" else "=", value))
    return FieldSelector(tuple(reqs))
