"""kubectl apply's three-way merge, on JSON merge patches (RFC 7386).

`original` is the manifest as last applied (kept in the LAST_APPLIED annotation), `modified` the
manifest now, `live` the stored object. The patch sets what the manifest sets and the live object
lacks or holds differently, and removes what an earlier manifest set and this one no longer does.
Fields the manifest never mentions (server defaults, fields other writers own) are left alone, so
re-applying an unchanged manifest yields an empty patch: "unchanged".

Lists are atomic, as in JSON merge patch: a list is replaced when the manifest's list changed since
the last apply, or when the live list no longer covers it (element-wise, defaults aside).
"""
from __future__ import annotations

import json
from typing import Any
from services.lib.mergepatch import merge_patch

LAST_APPLIED = "flotilla.io/last-applied-configuration"

# What apply manages: everything at the top but these; of metadata, only labels and annotations.
_NOT_MANAGED = ("apiVersion", "kind", "metadata", "status")
_MISSING = object()


def managed_view(obj: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in obj.items() if k not in _NOT_MANAGED}
    meta = obj.get("metadata") or {}
    view["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
    return view


def covers(have: Any, want: Any) -> bool:
    """`have` holds everything `want` says (and possibly more: defaults the server filled in)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and covers(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(covers(h, w) for h, w in zip(have, want))
    return type(have) is type(want) and have == want or (
        isinstance(have, (int, float)) and isinstance(want, (int, float))
        and not isinstance(have, bool) and not isinstance(want, bool) and have == want)


def three_way(original: dict[str, Any] | None, modified: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """The merge patch to apply to `live`; empty when nothing needs to change."""
    return _diff(original if isinstance(original, dict) else {}, modified, live)


def _diff(original: dict[str, Any], modified: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for key in original:
        if key not in modified and key in live:
            patch[key] = None
    for key, want in modified.items():
        have = live.get(key, _MISSING)
        orig = original.get(key, _MISSING)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = _diff(orig if isinstance(orig, dict) else {}, want, have)
            if sub:
                patch[key] = sub
        elif isinstance(want, dict) and have is _MISSING:
            if want:
                patch[key] = want
        elif have is _MISSING or not covers(have, want) or (
                isinstance(want, list) and orig is not _MISSING and orig != want):
            patch[key] = want
    return patch


def last_applied_text(config: dict[str, Any]) -> str:
    """Stable JSON of a manifest (keys sorted) so that an unchanged manifest gives the same text."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def parse_last_applied(live: dict[str, Any]) -> dict[str, Any] | None:
    text = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
