"""The node lifecycle reconcile (Kubernetes' node lifecycle controller with its NoExecute taint
manager, and PodGC's orphan sweep). Two kinds of key:

- `@monitor`, every `--node-monitor-period`: judges each node's health from its Lease (health.py),
  writes Ready=Unknown for a node whose agent went silent, keeps the not-ready/unreachable taints in
  step with the Ready condition (NoSchedule at once; NoExecute, which starts evictions, through the
  per-zone rate limiter of zones.py, and none at all while every zone is down).
- `namespace/name` of a pod: on a node whose Ready is Unknown, the pod is marked not Ready (so
  Endpoints drop it); on a NoExecute-tainted node it is deleted once its tolerations run out (the
  returned delay requeues it then); bound to a node that no longer exists, it is force-deleted.
"""
from __future__ import annotations

import asyncio

import msgspec

from schemas import NODE_LEASE_NAMESPACE, ApiError, Condition, Lease, Node, Pod, now_iso
from schemas.cluster import NodeStatus
from services.lib.client import Api
from services.lib.controller import Controller
from services.lib.events import EventRecorder
from services.lib.informer import Informer, object_key
from services.lib.log import get_logger

from .health import LeaseTracker
from .taints import HEALTH_KEYS, eviction_delay, health_taint_key, with_health_taints
from .zones import ZONE_LABEL, TokenBucket, ZoneState, master_disruption, zone_rate, zone_state

log = get_logger("flotilla.nodelifecycle")

MONITOR = "@monitor"
# The conditions a silent agent can no longer vouch for (Kubernetes sets the same ones Unknown).
AGENT_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
_encode = msgspec.json.encode


class Settings(msgspec.Struct, frozen=True):
    grace: float = 10.0
    period: float = 1.0
    eviction_rate: float = 1.0
    secondary_eviction_rate: float = 0.1
    unhealthy_zone_threshold: float = 0.55
    large_cluster_size_threshold: int = 50


def ready_status(node: Node) -> str | None:
    return next((c.status for c in node.status.conditions if c.type == "Ready"), None)


def _pod_ready(pod: Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


def unknown_status(node: Node, now: str) -> NodeStatus:
    """The node's status with the agent's conditions set Unknown (Kubernetes' tryUpdateNodeHealth)."""
    conds = []
    present = {c.type for c in node.status.conditions}
    for c in node.status.conditions:
        if c.type in AGENT_CONDITIONS and c.status != "Unknown":
            c = msgspec.structs.replace(c, status="Unknown", reason="NodeStatusUnknown",
                                        message="Node agent stopped posting node status", last_transition_time=now)
        conds.append(c)
    if "Ready" not in present:
        conds.append(Condition(type="Ready", status="Unknown", reason="NodeStatusNeverUpdated",
                               message="Node agent never posted node status", last_transition_time=now))
    return msgspec.structs.replace(node.status, conditions=conds)


class NodeLifecycleController:
    def __init__(self, api: Api, recorder: EventRecorder, settings: Settings = Settings(), workers: int = 4):
        self.api = api
        self.recorder = recorder
        self.cfg = settings
        self.nodes: Informer[Node] = Informer(api.nodes)
        self.leases: Informer[Lease] = Informer(api.leases, namespace=NODE_LEASE_NAMESPACE)
        self.pods: Informer[Pod] = Informer(api.pods)
        self.pods.add_index("node", lambda p: [p.spec.node_name] if p.spec.node_name else [])
        self.controller = Controller("nodelifecycle", self.reconcile, workers=workers)
        self.nodes.add_handlers(self._node_added, self._node_updated, self._node_added)
        self.pods.add_handlers(self._pod_changed, lambda old, new: self._pod_changed(new), None)
        self.tracker = LeaseTracker()
        self.buckets: dict[str, TokenBucket] = {}
        self.zone_states: dict[str, ZoneState] = {}
        self.all_down = False
        self._unhealthy_since: dict[str, float] = {}  # the order nodes wait in for a NoExecute taint

    @property
    def informers(self) -> list[Informer]:
        return [self.nodes, self.leases, self.pods]

    def resync(self) -> None:
        self.controller.enqueue(MONITOR)
        for key in self.pods.store:
            self.controller.enqueue(key)

    # ---- event handlers ---------------------------------------------------------------------------
    def _pods_of(self, node: Node) -> None:
        for pod in self.pods.by_index("node", node.metadata.name):
            self.controller.enqueue(object_key(pod))

    def _node_added(self, node: Node) -> None:
        self._pods_of(node)

    def _node_updated(self, old: Node, new: Node) -> None:
        if ready_status(old) != ready_status(new) or _encode(old.spec.taints) != _encode(new.spec.taints):
            self._pods_of(new)

    def _pod_changed(self, pod: Pod) -> None:
        if pod.spec.node_name:
            self.controller.enqueue(object_key(pod))

    async def reconcile(self, key: str) -> float | None:
        if key == MONITOR:
            await self.monitor()
            return self.cfg.period
        return await self.sync_pod(key)

    # ---- node health and taints -------------------------------------------------------------------
    async def monitor(self) -> None:
        now = asyncio.get_running_loop().time()
        nodes = list(self.nodes.store.values())
        names = {n.metadata.name for n in nodes}
        self.tracker.retain(names)
        for name in set(self._unhealthy_since) - names:
            del self._unhealthy_since[name]
        judged: list[tuple[Node, str | None]] = []
        for node in nodes:
            judged.append(await self._judge(node, now))
        counts: dict[str, list[int]] = {}
        for node, status in judged:
            c = counts.setdefault(node.metadata.labels.get(ZONE_LABEL, ""), [0, 0])
            c[0 if status == "True" else 1] += 1
        states = {z: zone_state(r, nr, self.cfg.unhealthy_zone_threshold) for z, (r, nr) in counts.items()}
        for zone, state in states.items():
            if self.zone_states.get(zone, ZoneState.NORMAL) is not state:
                log.warning("zone state changed", zone=zone, state=state.value, ready=counts[zone][0],
                            not_ready=counts[zone][1])
            rate = zone_rate(state, sum(counts[zone]), self.cfg.eviction_rate, self.cfg.secondary_eviction_rate,
                             self.cfg.large_cluster_size_threshold)
            bucket = self.buckets.get(zone)
            if bucket is None:
                self.buckets[zone] = TokenBucket(rate, now=now)
            else:
                bucket.set_rate(rate, now)
        self.zone_states = states
        all_down = master_disruption(states)
        if all_down != self.all_down:
            log.warning("every zone is down: no evictions until one answers" if all_down
                        else "a zone answers again: evictions resume", zones=len(states))
            self.all_down = all_down
        judged.sort(key=lambda j: (self._unhealthy_since.get(j[0].metadata.name, now), j[0].metadata.name))
        for node, status in judged:
            if status is not None:
                await self._taint(node, status, now)
        # Level-triggered as well: the pods of an unhealthy node are looked at again on every pass, so
        # one whose NotReady mark or eviction hung on an event that never came is handled all the same
        # (twice in ~10 chaos runs a pod of a dead node was marked NotReady and then never evicted;
        # the lost wake-up was not found).
        for node, status in judged:
            if status != "True":
                self._pods_of(node)

    async def _judge(self, node: Node, now: float) -> tuple[Node, str | None]:
        """Observe the node's lease; write Ready=Unknown when it went unrenewed past the grace period.
        Returns the (possibly just written) node and its Ready status."""
        name = node.metadata.name
        lease = self.leases.get(f"{NODE_LEASE_NAMESPACE}/{name}")
        renewed = self.tracker.observe(name, lease.metadata.resource_version if lease else None,
                                       lease.spec.renew_time if lease else None, now)
        status = ready_status(node)
        if now - renewed > self.cfg.grace and status != "Unknown":
            try:
                node = await self.api.nodes.update_status(
                    msgspec.structs.replace(node, status=unknown_status(node, now_iso())))
            except ApiError as exc:
                if exc.reason not in ("Conflict", "NotFound"):
                    raise
                # The agent (or a newer copy) wrote meanwhile: judge again on the next pass.
                log.debug("node status write lost a race", node=name, reason=exc.reason)
                return node, status
            log.warning("node agent stopped posting status; node Ready=Unknown", node=name,
                        silent_seconds=round(now - renewed, 1))
            await self.recorder.record(node, "Normal", "NodeNotReady", f"Node {name} status is now: NodeNotReady")
            status = "Unknown"
        if status == "True":
            self._unhealthy_since.pop(name, None)
        else:
            self._unhealthy_since.setdefault(name, now)
        return node, status

    async def _taint(self, node: Node, status: str, now: float) -> None:
        name = node.metadata.name
        key = health_taint_key(status)
        taints = node.spec.taints
        current = next((t.key for t in taints if t.key in HEALTH_KEYS and t.effect == "NoExecute"), None)
        zone = node.metadata.labels.get(ZONE_LABEL, "")
        if self.all_down or key is None:
            wanted = None  # healthy again, or every zone down: no NoExecute taint (Kubernetes' markNodeAsReachable)
        elif current is not None:
            wanted = key  # already tainted: swapping unreachable/not-ready needs no token
        elif self.buckets[zone].try_take(now):
            wanted = key
        else:
            wanted = None  # waits for the zone's next token (or for ever while the zone's rate is 0)
        stamp = now_iso()
        new = with_health_taints(with_health_taints(taints, key, ("NoSchedule",), stamp), wanted, ("NoExecute",), stamp)
        if _encode(new) == _encode(taints):
            return
        try:
            spec = msgspec.structs.replace(node.spec, taints=new)
            await self.api.nodes.update(msgspec.structs.replace(node, spec=spec))
        except ApiError as exc:
            if exc.reason not in ("Conflict", "NotFound"):
                raise
            log.debug("node taint write lost a race", node=name, reason=exc.reason)
            return
        log.info("node taints updated", node=name, ready=status, zone=zone,
                 taints=[f"{t.key}:{t.effect}" for t in new if t.key in HEALTH_KEYS])

    # ---- pods -------------------------------------------------------------------------------------
    async def sync_pod(self, key: str) -> float | None:
        pod = self.pods.get(key)
        if pod is None or not pod.spec.node_name:
            return None
        node = self.nodes.get(pod.spec.node_name)
        if node is None:
            await self._gc_orphan(pod)
            return None
        if pod.metadata.deletion_timestamp:
            return None
        if ready_status(node) == "Unknown" and _pod_ready(pod):
            await self._mark_not_ready(pod)
        delay = eviction_delay(node.spec.taints, pod.spec.tolerations)
        if delay is None:
            return None
        if delay > 0:
            return delay + 0.05  # a moment past the deadline, so the next look finds it due
        try:
            await self.api.pods.delete(pod.metadata.name, pod.metadata.namespace, uid=pod.metadata.uid)
        except ApiError as exc:
            if exc.reason in ("NotFound", "Conflict"):
                return None
            raise
        log.info("evicting pod from tainted node", pod=key, node=node.metadata.name,
                 taints=[f"{t.key}:{t.effect}" for t in node.spec.taints if t.effect == "NoExecute"])
        await self.recorder.record(pod, "Normal", "TaintManagerEviction", f"Marking for deletion Pod {key}")
        return None

    async def _mark_not_ready(self, pod: Pod) -> None:
        """Kubernetes' MarkPodsNotReady: the agent that would report on the pod is silent."""
        now = now_iso()
        conds = [msgspec.structs.replace(c, status="False", last_transition_time=now,
                                         reason="NodeNotReady", message="the pod's node is not answering")
                 if c.type == "Ready" else c for c in pod.status.conditions]
        containers = [msgspec.structs.replace(c, ready=False) for c in pod.status.container_statuses]
        status = msgspec.structs.replace(pod.status, conditions=conds, container_statuses=containers)
        try:
            await self.api.pods.update_status(msgspec.structs.replace(pod, status=status))
        except ApiError as exc:
            if exc.reason == "NotFound":
                return
            raise  # a Conflict retries from the informer's newer copy
        log.info("pod marked not ready: its node is unreachable", pod=object_key(pod), node=pod.spec.node_name)

    async def _gc_orphan(self, pod: Pod) -> None:
        """PodGC: a pod bound to a node that does not exist is force-deleted. The informer may merely
        lag a just-made node, so the API has the last word."""
        try:
            await self.api.nodes.get(pod.spec.node_name or "")
            return
        except ApiError as exc:
            if exc.reason != "NotFound":
                raise
        try:
            await self.api.pods.delete(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0,
                                       uid=pod.metadata.uid)
        except ApiError as exc:
            if exc.reason in ("NotFound", "Conflict"):
                return
            raise
        log.info("force-deleted pod of a node that no longer exists", pod=object_key(pod), node=pod.spec.node_name)
