"""Filters: each decides whether a pod may run on a node; a refusal is the reason Kubernetes gives.

A filter is `(PodInfo, NodeInfo) -> str | None`; order matters only for the reason reported first.
"""
from __future__ import annotations

from collections.abc import Callable

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo
from .host_ports import host_ports_free
from .node_affinity import matches_node_affinity
from .node_ready import node_ready
from .resources_fit import resources_fit
from .taints import taints_tolerated

Filter = Callable[[PodInfo, NodeInfo], str | None]

DEFAULT_FILTERS: tuple[Filter, ...] = (node_ready, matches_node_affinity, taints_tolerated, host_ports_free, resources_fit)
