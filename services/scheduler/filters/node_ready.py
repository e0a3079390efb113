"""The node is Ready and not cordoned (spec.unschedulable)."""
from __future__ import annotations

from ..nodeinfo import NodeInfo
from ..podinfo import PodInfo


def node_ready(pod: PodInfo, node: NodeInfo) -> str | None:
    if not node.ready:
        return "node(s) were not ready"
    if node.node.spec.unschedulable:
        for t in pod.pod.spec.tolerations:  # Kubernetes lets a pod tolerate the unschedulable taint
            if t.key == "node.kubernetes.io/unschedulable" and t.effect in (None, "", "NoSchedule"):
                return None
        return "node(s) were unschedulable"
    return None
