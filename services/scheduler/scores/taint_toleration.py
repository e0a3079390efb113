"""Fewer untolerated PreferNoSchedule taints score higher."""
from __future__ import annotations

from schemas.cluster import tolerates

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def taint_toleration(pod: PodInfo, nodes: list[NodeInfo]) -> list[float] | None:
    if not any(n.prefer_taints for n in nodes):
        return None
    tolerations = pod.pod.spec.tolerations
    counts = [sum(1 for t in n.node.spec.taints
                  if t.effect == "PreferNoSchedule" and not any(tolerates(x, t) for x in tolerations))
              for n in nodes]
    most = max(counts) if counts else 0
    if most == 0:
        return None
    return [(most - c) * 100 / most for c in counts]
