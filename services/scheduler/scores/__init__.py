"""Scores: each rates the feasible nodes 0..100 for a pod; the weighted sum picks the node.

A score is `(PodInfo, list[NodeInfo]) -> list[float] | None` (one pass over all feasible nodes, because
spreading and preferences normalise across them); None means "the same for every node", which cannot
change the choice and is skipped. Weights are Kubernetes' defaults.
"""
from __future__ import annotations

from collections.abc import Callable

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo
from .balanced_allocation import balanced_allocation
from .least_allocated import least_allocated
from .node_affinity import preferred_node_affinity
from .owner_spread import owner_spread
from .taint_toleration import taint_toleration

Score = Callable[[PodInfo, list[NodeInfo]], list[float] | None]

DEFAULT_SCORES: tuple[tuple[Score, float], ...] = (
    (least_allocated, 1.0),
    (balanced_allocation, 1.0),
    (preferred_node_affinity, 1.0),
    (taint_toleration, 1.0),
    (owner_spread, 2.0),
)
