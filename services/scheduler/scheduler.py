"""The scheduling loop: pop a pod, filter nodes (sampled in large clusters), score the feasible ones,
assume the best and bind it in the background; a pod that fits nowhere says why and backs off."""
from __future__ import annotations

import asyncio
import random
from collections import Counter

from schemas import ApiError, Condition, Node, Pod, now_iso
from services.lib.client import Api
from services.lib.events import EventRecorder
from services.lib.informer import Informer, object_key
from services.lib.leader import LeaderElector, NotLeader
from services.lib.log import get_logger

from .cache import SchedulerCache
from .filters import DEFAULT_FILTERS
from .filters.resources_fit import resources_fit
from .nodeinfo import NodeInfo
from .podinfo import PodInfo, pod_info
from .queue import SchedulingQueue
from .scores import DEFAULT_SCORES

log = get_logger("flotilla.scheduler")

SCHEDULER_NAME = "default-scheduler"
MIN_FEASIBLE_NODES = 100  # Kubernetes' minFeasibleNodesToFind
_RESOURCES_ONLY = (resources_fit,)


def feasible_nodes_to_find(total: int, percentage: int) -> int:
    """Kubernetes' sampling: in large clusters stop filtering once enough feasible nodes are found."""
    if total < MIN_FEASIBLE_NODES or percentage >= 100:
        return total
    pct = percentage or max(5, 50 - total // 125)  # 0 = adaptive, as kube-scheduler's default
    return max(MIN_FEASIBLE_NODES, total * pct // 100)


def _needs_scheduling(pod: Pod | None, scheduler_name: str) -> bool:
    return (pod is not None and not pod.spec.node_name and not pod.metadata.deletion_timestamp
            and (pod.spec.scheduler_name or SCHEDULER_NAME) == scheduler_name
            and pod.status.phase not in ("Succeeded", "Failed"))


def _node_shape(node: Node) -> tuple:
    """What about a node can change whether pods fit on it (heartbeats alone must not flush the queue)."""
    ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    return (ready, node.spec.unschedulable, tuple((t.key, t.value, t.effect) for t in node.spec.taints),
            tuple(sorted(node.metadata.labels.items())), tuple(sorted((node.status.allocatable or {}).items())))


class Scheduler:
    def __init__(self, api: Api, elector: LeaderElector, recorder: EventRecorder, *, percentage: int = 0,
                 parallel_binds: int = 256, initial_backoff: float = 1.0, max_backoff: float = 10.0,
                 scheduler_name: str = SCHEDULER_NAME):
        self.api = api
        self.elector = elector
        self.recorder = recorder
        self.percentage = percentage
        self.scheduler_name = scheduler_name
        self.cache = SchedulerCache()
        self.queue = SchedulingQueue(initial_backoff, max_backoff)
        self.pods: Informer[Pod] = Informer(api.pods)
        self.nodes: Informer[Node] = Informer(api.nodes)
        self._binds = asyncio.Semaphore(parallel_binds)
        self._side_effects: asyncio.Queue[tuple[str, Pod, str]] = asyncio.Queue(maxsize=10_000)
        self._next_start = 0
        self.bound = 0
        self.failed_binds = 0
        self.pods.add_handlers(self._pod_added, self._pod_updated, self._pod_deleted)
        self.nodes.add_handlers(self._node_added, self._node_updated, self._node_deleted)

    # ---- informer handlers: bookkeeping only ------------------------------------------------------
    def _pod_added(self, pod: Pod) -> None:
        key = object_key(pod)
        if pod.spec.node_name:
            self.cache.on_pod(key, pod)
        elif _needs_scheduling(pod, self.scheduler_name):
            self.queue.add(key)

    def _pod_updated(self, old: Pod, new: Pod) -> None:
        key = object_key(new)
        if new.spec.node_name:
            self.cache.on_pod(key, new)
            self.queue.remove(key)
            if new.status.phase in ("Succeeded", "Failed") and old.status.phase not in ("Succeeded", "Failed"):
                self.queue.cluster_changed()  # its resources are free again
        elif not _needs_scheduling(new, self.scheduler_name):
            self.queue.remove(key)
        elif old.metadata.generation != new.metadata.generation or old.metadata.labels != new.metadata.labels:
            self.queue.add(key)  # the pod itself changed; status-only updates (ours) don't requeue

    def _pod_deleted(self, pod: Pod) -> None:
        key = object_key(pod)
        self.queue.remove(key)
        if pod.spec.node_name:
            self.cache.remove_pod(key)
            self.queue.cluster_changed()

    def _node_added(self, node: Node) -> None:
        self.cache.upsert_node(node)
        self.queue.cluster_changed()

    def _node_updated(self, old: Node, new: Node) -> None:
        self.cache.upsert_node(new)
        if _node_shape(old) != _node_shape(new):
            self.queue.cluster_changed()

    def _node_deleted(self, node: Node) -> None:
        self.cache.remove_node(node.metadata.name)

    # ---- running ----------------------------------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.pods.run())
            tg.create_task(self.nodes.run())
            await self.pods.wait_synced()
            await self.nodes.wait_synced()
            log.info("caches synced", pods=len(self.pods.store), nodes=len(self.nodes.store))
            tg.create_task(self.elector.run(self._lead))

    async def _lead(self) -> None:
        # Standby time may have left pods unqueued only if they were never seen; requeue what waits.
        for key, pod in list(self.pods.store.items()):
            if _needs_scheduling(pod, self.scheduler_name):
                self.queue.add(key)
        async with asyncio.TaskGroup() as tg:
            for _ in range(8):
                tg.create_task(self._side_effect_worker())
            tg.create_task(self._expire_assumed())
            while True:
                key = await self.queue.pop()
                pod = self.pods.get(key)
                if not _needs_scheduling(pod, self.scheduler_name) or self.cache.is_assumed(key):
                    self.queue.done(key)
                    continue
                assert pod is not None
                info = pod_info(key, pod)
                node, why = self.find_node(info)
                if node is None:
                    delay = self.queue.unschedulable(key)
                    log.info("pod unschedulable", pod=key, reason=why, retry_in=f"{delay:.1f}s")
                    self._side_effect("unschedulable", pod, why)
                    continue
                self.cache.assume(info, node.name)
                await self._binds.acquire()
                tg.create_task(self._bind(info, node.name))
                await asyncio.sleep(0)  # let the watch and the binds make progress between pods

    def find_node(self, info: PodInfo) -> tuple[NodeInfo | None, str]:
        nodes = self.cache.node_list
        total = len(nodes)
        if total == 0:
            return None, "0/0 nodes are available: no nodes registered."
        want = feasible_nodes_to_find(total, self.percentage)
        feasible: list[NodeInfo] = []
        reasons: Counter[str] = Counter()
        start = self._next_start % total
        checked = 0
        plain_pod = info.plain
        cpu, memory = info.cpu, info.memory
        for i in range(total):
            node = nodes[(start + i) % total]
            checked += 1
            if plain_pod and node.plain:
                # Fast path: for a plain pod on a plain node every filter but the resource fit passes,
                # and when it clearly fits (the common case) the filter need not even be called.
                if len(node.pods) < node.alloc_pods and node.cpu + cpu <= node.alloc_cpu \
                        and node.memory + memory <= node.alloc_memory:
                    feasible.append(node)
                    if len(feasible) >= want:
                        break
                    continue
                filters = _RESOURCES_ONLY
            else:
                filters = DEFAULT_FILTERS
            for f in filters:
                why = f(info, node)
                if why is not None:
                    reasons[why] += 1
                    break
            else:
                feasible.append(node)
                if len(feasible) >= want:
                    break
        self._next_start = (start + checked) % total
        if not feasible:
            detail = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items(), key=lambda x: (-x[1], x[0])))
            return None, f"0/{total} nodes are available: {detail}."
        if len(feasible) == 1:
            return feasible[0], ""
        totals: list[float] | None = None
        for score, weight in DEFAULT_SCORES:
            values = score(info, feasible)
            if values is None:
                continue
            if weight != 1.0:
                values = [weight * v for v in values]
            totals = values if totals is None else [t + v for t, v in zip(totals, values)]
        if totals is None:
            return random.choice(feasible), ""
        best = max(totals)
        winners = [n for n, t in zip(feasible, totals) if t == best]
        return (winners[0] if len(winners) == 1 else random.choice(winners)), ""

    async def _bind(self, info: PodInfo, node: str) -> None:
        pod = info.pod
        try:
            self.elector.check()  # fencing: a deposed leader stops binding
            # The Api is fenced by the elector (__main__.py): a bind of a term that is over is refused
            # by the API server as Fenced (a NotLeader), and the elector steps down.
            await self.api.pods.bind(pod.metadata.name, node, pod.metadata.namespace)
        except NotLeader:
            self.cache.forget(info.key)
        except ApiError as exc:
            self.cache.forget(info.key)
            self.failed_binds += 1
            if exc.reason == "NotFound" or (exc.reason == "Conflict" and "already assigned" in exc.message):
                self.queue.remove(info.key)  # gone, or bound by someone else: the watch will tell
            else:
                self.queue.unschedulable(info.key, retry=True)
                log.warning("bind failed", pod=info.key, node=node, reason=exc.reason, error=exc.message)
        else:
            self.bound += 1
            self.queue.done(info.key)
            log.debug("pod bound", pod=info.key, node=node)
            self._side_effect("scheduled", pod, node)
        finally:
            self._binds.release()

    # ---- status and events, off the hot path ------------------------------------------------------
    def _side_effect(self, what: str, pod: Pod, detail: str) -> None:
        try:
            self._side_effects.put_nowait((what, pod, detail))
        except asyncio.QueueFull:
            log.debug("event dropped under load", pod=object_key(pod), what=what)

    async def _side_effect_worker(self) -> None:
        while True:
            what, pod, detail = await self._side_effects.get()
            if what == "scheduled":
                await self.recorder.record(pod, "Normal", "Scheduled",
                                           f"Successfully assigned {object_key(pod)} to {detail}")
                continue
            await self.recorder.record(pod, "Warning", "FailedScheduling", detail)
            await self._mark_unschedulable(pod, detail)

    async def _mark_unschedulable(self, pod: Pod, message: str) -> None:
        current = self.pods.get(object_key(pod)) or pod
        cond = next((c for c in current.status.conditions if c.type == "PodScheduled"), None)
        if cond is not None and cond.status == "False" and cond.message == message:
            return
        conditions = [c for c in current.status.conditions if c.type != "PodScheduled"]
        conditions.append(Condition(type="PodScheduled", status="False", reason="Unschedulable", message=message,
                                    last_transition_time=now_iso()))
        current.status.conditions = conditions
        try:
            await self.api.pods.update_status(current)
        except ApiError as exc:
            log.debug("could not record PodScheduled=False", pod=object_key(pod), reason=exc.reason)

    async def _expire_assumed(self) -> None:
        while True:
            await asyncio.sleep(5)
            n = self.cache.expire()
            if n:
                log.warning("assumed pods expired without confirmation", count=n)
