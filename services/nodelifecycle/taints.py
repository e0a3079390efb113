"""The NoExecute taint manager's pure part (Kubernetes' taint_eviction): which taints a node should
carry for its health, and when a pod on a NoExecute-tainted node must go."""
from __future__ import annotations

from datetime import datetime, timezone

from schemas import Taint, Toleration, parse_time
from schemas.cluster import tolerates

NOT_READY = "node.kubernetes.io/not-ready"
UNREACHABLE = "node.kubernetes.io/unreachable"
HEALTH_KEYS = (NOT_READY, UNREACHABLE)


def health_taint_key(ready: str) -> str | None:
    """The taint a node's Ready condition status calls for: none when True."""
    if ready == "True":
        return None
    return NOT_READY if ready == "False" else UNREACHABLE


def with_health_taints(taints: list[Taint], key: str | None, effects: tuple[str, ...], now: str) -> list[Taint]:
    """`taints` with the not-ready/unreachable taints of `effects` replaced by `key`'s (none when
    None); a taint already there keeps its timeAdded, every other taint is left as it is."""
    out = [t for t in taints if not (t.key in HEALTH_KEYS and t.effect in effects and t.key != key)]
    if key is not None:
        for effect in effects:
            if not any(t.key == key and t.effect == effect for t in out):
                out.append(Taint(key=key, effect=effect, time_added=now))
    return out


def eviction_delay(taints: list[Taint], tolerations: list[Toleration], now: datetime | None = None) -> float | None:
    """Seconds until a pod with `tolerations` must be deleted from a node with `taints`: 0 when a
    NoExecute taint is not tolerated, None when it may stay for ever (no NoExecute taint, or every
    one tolerated without tolerationSeconds). As Kubernetes does, the shortest tolerationSeconds of
    the matching tolerations counts, from the taint's timeAdded."""
    now = now or datetime.now(timezone.utc)
    due: float | None = None
    for taint in taints:
        if taint.effect != "NoExecute":
            continue
        matching = [t for t in tolerations if tolerates(t, taint)]
        if not matching:
            return 0.0
        limits = [t.toleration_seconds for t in matching if t.toleration_seconds is not None]
        if not limits:
            continue
        added = parse_time(taint.time_added) if taint.time_added else now
        left = (added - now).total_seconds() + max(0, min(limits))
        due = left if due is None else min(due, left)
    return None if due is None else max(0.0, due)
