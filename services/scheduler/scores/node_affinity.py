"""Preferred node affinity: the sum of the weights of matching terms, normalised to 0..100."""
from __future__ import annotations

from ..filters.node_affinity import term_matches
from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def preferred_node_affinity(pod: PodInfo, nodes: list[NodeInfo]) -> list[float] | None:
    aff = pod.pod.spec.affinity.node_affinity if pod.pod.spec.affinity else None
    terms = aff.preferred_during_scheduling_ignored_during_execution if aff else []
    if not terms:
        return None
    raw = [float(sum(t.weight for t in terms if term_matches(t.preference, n))) for n in nodes]
    top = max(raw)
    return [r * 100 / top if top else 0.0 for r in raw]
