"""Small facts about pods that several controllers need (ready, available, active, owner)."""
from __future__ import annotations

from datetime import datetime, timezone

from schemas import OwnerReference, Pod, TopObject


def controller_of(obj: TopObject) -> OwnerReference | None:
    return next((r for r in obj.metadata.owner_references if r.controller), None)


def is_active(pod: Pod) -> bool:
    """Counts toward replicas: not being deleted and not finished."""
    return not pod.metadata.deletion_timestamp and pod.status.phase not in ("Succeeded", "Failed")


def ready_since(pod: Pod) -> datetime | None:
    for c in pod.status.conditions:
        if c.type == "Ready":
            if c.status != "True":
                return None
            if c.last_transition_time:
                return datetime.fromisoformat(c.last_transition_time.replace("Z", "+00:00"))
            return datetime.now(timezone.utc)
    return None


def is_ready(pod: Pod) -> bool:
    # Not via ready_since: controllers ask this of every pod on every sync, and parsing the
    # transition time is most of the cost.
    for c in pod.status.conditions:
        if c.type == "Ready":
            return c.status == "True"
    return False


def is_available(pod: Pod, min_ready_seconds: int, now: datetime | None = None) -> bool:
    if not min_ready_seconds:
        return is_ready(pod)
    since = ready_since(pod)
    if since is None:
        return False
    return ((now or datetime.now(timezone.utc)) - since).total_seconds() >= min_ready_seconds


def restarts(pod: Pod) -> int:
    return sum(c.restart_count for c in pod.status.container_statuses)
