"""Taints with effect NoSchedule or NoExecute must be tolerated (PreferNoSchedule only scores)."""
from __future__ import annotations

from schemas.cluster import tolerates

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def taints_tolerated(pod: PodInfo, node: NodeInfo) -> str | None:
    for taint in node.node.spec.taints:
        if taint.effect not in ("NoSchedule", "NoExecute"):
            continue
        if not any(tolerates(t, taint) for t in pod.pod.spec.tolerations):
            return "node(s) had untolerated taint {%s: %s}" % (taint.key, taint.value or "")
    return None
