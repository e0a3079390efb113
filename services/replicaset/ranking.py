"""Which pods go first when a ReplicaSet scales down (Kubernetes' ActivePods ordering):
unscheduled < scheduled; pending < unknown < running; not ready < ready; more restarts first;
newer before older."""
from __future__ import annotations

from schemas import Pod, parse_time
from services.lib.podutil import is_ready, restarts

_PHASE = {"Pending": 0, "Unknown": 1, "Running": 2}


def deletion_rank(pod: Pod) -> tuple:
    ready = is_ready(pod)
    created = pod.metadata.creation_timestamp
    age = -parse_time(created).timestamp() if created else 0.0
    return (
        1 if pod.spec.node_name else 0,
        _PHASE.get(pod.status.phase or "Pending", 0),
        1 if ready else 0,
        -restarts(pod),
        age,  # newer (larger timestamp) first: negated so it sorts lower
    )


def pods_to_delete(pods: list[Pod], n: int) -> list[Pod]:
    return sorted(pods, key=deletion_rank)[:n]
