"""Scores: each rates the feasible nodes 0..100 for a pod; the weighted sum picks the node.

A score is `(PodInfo, list[NodeInfo]) -> list[float] | None` (one pass over all feasible nodes, because
spreading and preferences normalise across them); None means "the same for every node", which cannot
change the choice and is skipped. Weights are Kubernetes' defaults.
"""
from __future__ import annotations

from collections.abc import Callable

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo
from .node_affinity import preferred_node_affinity
from .node_resources import node_resources
from .owner_spread import owner_spread
from .taint_toleration import taint_toleration

Score = Callable[[PodInfo, list[NodeInfo]], list[float] | None]

DEFAULT_SCORES: tuple[tuple[Score, float], ...] = (
    (node_resources, 1.0),  # least allocated + balanced allocation, weight 1 each
    (preferred_node_affinity, 1.0),
    (taint_toleration, 1.0),
    (owner_spread, 2.0),
)
