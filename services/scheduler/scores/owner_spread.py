"""Spread the pods of one owner (ReplicaSet, …) over nodes: fewer siblings on a node scores higher."""
from __future__ import annotations

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def owner_spread(pod: PodInfo, nodes: list[NodeInfo]) -> list[float] | None:
    if not pod.owner_uid:
        return None
    uid = pod.owner_uid
    counts = [n.owners.get(uid, 0) for n in nodes]
    most = max(counts)
    if most == 0:
        return None
    return [(most - c) * 100 / most for c in counts]
