"""The scheduler's view of the cluster: nodes with the pods bound to them, plus "assumed" pods whose
bind is in flight, so the scheduler never waits for its own binds to come back through the watch."""
from __future__ import annotations

import time

from schemas import Node, Pod

from .nodeinfo import NodeInfo, new_node_info
from .podinfo import PodInfo, pod_info

# A bound pod is expected back through the watch within this time; otherwise it is forgotten
# (the watch is the truth; Kubernetes uses 30 s too).
ASSUME_TTL = 30.0


class SchedulerCache:
    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self.node_list: list[NodeInfo] = []
        self._placed: dict[str, str] = {}  # pod key -> node name, for bound and assumed pods
        self._assumed: dict[str, float] = {}  # pod key -> deadline (monotonic); absent when confirmed
        self._orphans: dict[str, dict[str, PodInfo]] = {}  # pods on nodes we do not know yet

    # ---- nodes ------------------------------------------------------------------------------------
    def upsert_node(self, node: Node) -> None:
        name = node.metadata.name
        info = self.nodes.get(name)
        if info is None:
            info = self.nodes[name] = new_node_info(node)
            self.node_list.append(info)
            for p in self._orphans.pop(name, {}).values():
                info.add(p)
        else:
            info.set_node(node)

    def remove_node(self, name: str) -> None:
        info = self.nodes.pop(name, None)
        if info is not None:
            self.node_list.remove(info)
            self._orphans[name] = dict(info.pods)

    # ---- pods -------------------------------------------------------------------------------------
    def on_pod(self, key: str, pod: Pod) -> None:
        """A pod as the watch shows it: counted on its node while bound and not finished."""
        node = pod.spec.node_name
        if not node or pod.status.phase in ("Succeeded", "Failed"):
            self.remove_pod(key)
            return
        self._assumed.pop(key, None)  # confirmed (or placed by someone else)
        prev = self._placed.get(key)
        if prev is not None and prev != node:
            self._take(key, prev)
        self._put(pod_info(key, pod), node)

    def remove_pod(self, key: str) -> None:
        node = self._placed.pop(key, None)
        self._assumed.pop(key, None)
        if node is not None:
            self._take(key, node)

    def assume(self, info: PodInfo, node: str) -> None:
        self._put(info, node)
        self._assumed[info.key] = time.monotonic() + ASSUME_TTL

    def is_assumed(self, key: str) -> bool:
        return key in self._assumed

    def forget(self, key: str) -> None:
        """Undo an assume (the bind failed)."""
        if key in self._assumed:
            self.remove_pod(key)

    def expire(self) -> int:
        now = time.monotonic()
        stale = [k for k, deadline in self._assumed.items() if deadline < now]
        for k in stale:
            self.remove_pod(k)
        return len(stale)

    def _put(self, info: PodInfo, node: str) -> None:
        self._placed[info.key] = node
        target = self.nodes.get(node)
        if target is not None:
            target.add(info)
        else:
            self._orphans.setdefault(node, {})[info.key] = info

    def _take(self, key: str, node: str) -> None:
        target = self.nodes.get(node)
        if target is not None:
            target.remove(key)
        else:
            self._orphans.get(node, {}).pop(key, None)
