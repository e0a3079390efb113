"""Spread the pods of one owner (ReplicaSet, …) over nodes: fewer siblings on a node scores higher."""
from __future__ import annotations

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def owner_spread(pod: PodInfo, nodes: list[NodeInfo]) -> list[float]:
    if not pod.owner_uid:
        return [0.0] * len(nodes)
    counts = [n.owners.get(pod.owner_uid, 0) for n in nodes]
    most = max(counts)
    if most == 0:
        return [100.0] * len(nodes)
    return [(most - c) * 100 / most for c in counts]
