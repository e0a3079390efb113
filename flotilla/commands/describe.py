"""`flotilla describe KIND [NAME...]`: a readable multi-section description, kubectl's layout, with
the object's events at the end."""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from schemas import NODE_LEASE_NAMESPACE, ApiError, Resource, TopObject
from schemas.cluster import Endpoints, Event, Namespace, Node, Service
from schemas.pod import Container, ContainerState, ContainerStatus, Pod, PodTemplateSpec, Probe
from schemas.quantity import QuantityError, cpu_millis, format_bytes, to_int
from schemas.workloads import Deployment, Lease, ReplicaSet

from .. import printers
from ..context import Context
from ..kinds import parse_targets
from ..merge import LAST_APPLIED
from ..printers import NONE, Table, age, local_time
from . import Command
from .get import add_selection_arguments, fetch, no_resources

INDENT = "  "


class Writer:
    """Lines of `Key:  value`, the values of sibling keys aligned, nested sections indented."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, str | None, list[str]]] = []  # (level, key or None for raw, values)

    def kv(self, level: int, key: str, value: Any = "") -> None:
        if isinstance(value, (list, tuple)):
            values = [str(v) for v in value] or [NONE]
        else:
            values = [str(value)]
        self.entries.append((level, key, values))

    def section(self, level: int, key: str) -> None:
        self.entries.append((level, key, [""]))

    def raw(self, level: int, text: str) -> None:
        self.entries.append((level, None, [text]))

    def table(self, level: int, headers: Sequence[str], rows: Sequence[Sequence[str]], rule: bool = False) -> None:
        t = Table(headers)
        lines = t.render(rows)
        if rule:
            lines.insert(1, t.line(["-" * len(h) for h in headers]))
        for line in lines:
            self.raw(level, line)

    def render(self) -> str:
        # As kubectl's tabwriter: a run of consecutive `Key: value` lines (of any depth) shares one
        # value column; section headers and table lines end the run.
        widths: list[int] = [0] * len(self.entries)
        start = 0
        for i in range(len(self.entries) + 1):
            is_kv = i < len(self.entries) and self.entries[i][1] is not None and self.entries[i][2] != [""]
            if is_kv:
                continue
            run = range(start, i)
            width = max((len(INDENT * self.entries[k][0]) + len(self.entries[k][1] or "") + 1 for k in run), default=0)
            for k in run:
                widths[k] = width + 2
            start = i + 1
        out: list[str] = []
        for (level, key, values), width in zip(self.entries, widths):
            pad = INDENT * level
            if key is None:
                out.append(pad + values[0])
            elif values == [""]:
                out.append(f"{pad}{key}:")
            else:
                out.append(f"{pad}{key}:".ljust(width) + values[0])
                out += [(" " * width + v).rstrip() for v in values[1:]]
            out[-1] = out[-1].rstrip()
        return "\n".join(out)


# ---- pieces shared by several kinds ---------------------------------------------------------------

def _map_lines(m: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(m.items())] or [NONE]


def _annotation_lines(m: dict[str, str]) -> list[str]:
    """Annotations as describe shows them: apply's bookkeeping left out, as kubectl does."""
    return [f"{k}: {v}" for k, v in sorted(m.items()) if k != LAST_APPLIED] or [NONE]


def meta(w: Writer, obj: TopObject, namespaced: bool) -> None:
    m = obj.metadata
    w.kv(0, "Name", m.name)
    if namespaced:
        w.kv(0, "Namespace", m.namespace or "")
    w.kv(0, "Labels", _map_lines(m.labels))
    w.kv(0, "Annotations", _annotation_lines(m.annotations))
    w.kv(0, "CreationTimestamp", local_time(m.creation_timestamp))
    if m.deletion_timestamp:
        w.kv(0, "DeletionTimestamp", local_time(m.deletion_timestamp))
    if m.finalizers:
        w.kv(0, "Finalizers", "[" + ", ".join(m.finalizers) + "]")
    controller = next((o for o in m.owner_references if o.controller), None)
    if controller is not None:
        w.kv(0, "Controlled By", f"{controller.kind}/{controller.name}")


def conditions(w: Writer, conds: Sequence[Any], wide: bool = False) -> None:
    if not conds:
        w.kv(0, "Conditions", NONE)
        return
    w.section(0, "Conditions")
    if wide:
        w.table(1, ["Type", "Status", "LastHeartbeatTime", "LastTransitionTime", "Reason", "Message"],
                [[c.type, c.status, local_time(c.last_heartbeat_time), local_time(c.last_transition_time),
                  c.reason or "", c.message or ""] for c in conds], rule=True)
    else:
        w.table(1, ["Type", "Status"], [[c.type, c.status] for c in conds])


def _state(w: Writer, level: int, title: str, state: ContainerState) -> None:
    if state.running is not None:
        w.kv(level, title, "Running")
        w.kv(level + 1, "Started", local_time(state.running.started_at))
    elif state.waiting is not None:
        w.kv(level, title, "Waiting")
        w.kv(level + 1, "Reason", state.waiting.reason or "")
        if state.waiting.message:
            w.kv(level + 1, "Message", state.waiting.message)
    elif state.terminated is not None:
        t = state.terminated
        w.kv(level, title, "Terminated")
        w.kv(level + 1, "Reason", t.reason or "")
        if t.message:
            w.kv(level + 1, "Message", t.message)
        w.kv(level + 1, "Exit Code", t.exit_code)
        if t.signal:
            w.kv(level + 1, "Signal", t.signal)
        w.kv(level + 1, "Started", local_time(t.started_at))
        w.kv(level + 1, "Finished", local_time(t.finished_at))
    else:
        w.kv(level, title, "Waiting" if title == "State" else "")


def probe_text(p: Probe) -> str:
    if p.http_get is not None:
        h = p.http_get
        how = f"http-get {(h.scheme or 'HTTP').lower()}://{h.host or ''}:{h.port}{h.path or '/'}"
    elif p.tcp_socket is not None:
        how = f"tcp-socket {p.tcp_socket.host or ''}:{p.tcp_socket.port}"
    elif p.exec is not None:
        how = "exec [" + " ".join(p.exec.command) + "]"
    elif p.grpc is not None:
        how = f"grpc <pod>:{p.grpc.port} {p.grpc.service or ''}".rstrip()
    else:
        how = "unknown"
    return (f"{how} delay={p.initial_delay_seconds or 0}s timeout={p.timeout_seconds or 1}s "
            f"period={p.period_seconds or 10}s #success={p.success_threshold or 1} #failure={p.failure_threshold or 3}")


def container(w: Writer, level: int, c: Container, st: ContainerStatus | None) -> None:
    w.section(level, c.name)
    lv = level + 1
    if st is not None and st.container_id:
        w.kv(lv, "Container ID", st.container_id)
    w.kv(lv, "Image", c.image or "")
    ports = [f"{p.container_port}/{p.protocol or 'TCP'}" for p in c.ports]
    w.kv(lv, "Port" if len(ports) <= 1 else "Ports", ", ".join(ports) or NONE)
    for title, words in (("Command", c.command), ("Args", c.args)):
        if words:
            w.section(lv, title)
            for word in words:
                w.raw(lv + 1, word)
    if st is not None:
        _state(w, lv, "State", st.state)
        if st.last_state.running or st.last_state.waiting or st.last_state.terminated:
            _state(w, lv, "Last State", st.last_state)
        w.kv(lv, "Ready", str(st.ready))
        w.kv(lv, "Restart Count", st.restart_count)
    for title, part in (("Limits", c.resources.limits), ("Requests", c.resources.requests)):
        if part:
            w.section(lv, title)
            for k, v in sorted(part.items()):
                w.kv(lv + 1, k, v)
    for title, p in (("Liveness", c.liveness_probe), ("Readiness", c.readiness_probe), ("Startup", c.startup_probe)):
        if p is not None:
            w.kv(lv, title, probe_text(p))
    if c.env:
        w.section(lv, "Environment")
        for e in c.env:
            if e.value is not None:
                w.kv(lv + 1, e.name, e.value)
            elif e.value_from is not None and e.value_from.field_ref is not None:
                ref = e.value_from.field_ref
                w.kv(lv + 1, e.name, f" ({ref.api_version or 'v1'}:{ref.field_path})")
            elif e.value_from is not None and e.value_from.resource_field_ref is not None:
                w.kv(lv + 1, e.name, f" ({e.value_from.resource_field_ref.resource})")
            else:
                w.kv(lv + 1, e.name, "")
    else:
        w.kv(lv, "Environment", NONE)
    if c.volume_mounts:
        w.section(lv, "Mounts")
        for m in c.volume_mounts:
            w.raw(lv + 1, f"{m.mount_path} from {m.name} ({'ro' if m.read_only else 'rw'})")
    else:
        w.kv(lv, "Mounts", NONE)


def template(w: Writer, t: PodTemplateSpec) -> None:
    w.section(0, "Pod Template")
    w.kv(1, "Labels", _map_lines(t.metadata.labels))
    if t.metadata.annotations:
        w.kv(1, "Annotations", [f"{k}: {v}" for k, v in sorted(t.metadata.annotations.items())])
    w.section(1, "Containers")
    for c in t.spec.containers:
        container(w, 2, c, None)
    _volumes(w, 1, t.spec)


def _volumes(w: Writer, level: int, spec: Any) -> None:
    if not spec.volumes:
        w.kv(level, "Volumes", NONE)
        return
    w.section(level, "Volumes")
    for v in spec.volumes:
        w.section(level + 1, v.name)
        if v.empty_dir is not None:
            w.kv(level + 2, "Type", "EmptyDir (a temporary directory that shares a pod's lifetime)")
            w.kv(level + 2, "Medium", v.empty_dir.medium or "")
        elif v.host_path is not None:
            w.kv(level + 2, "Type", "HostPath (bare host directory volume)")
            w.kv(level + 2, "Path", v.host_path.path)
        elif v.config_map is not None:
            w.kv(level + 2, "Type", "ConfigMap (not acted on yet)")
            w.kv(level + 2, "Name", v.config_map.name or "")
        elif v.secret is not None:
            w.kv(level + 2, "Type", "Secret (not acted on yet)")
            w.kv(level + 2, "SecretName", v.secret.secret_name or "")
        elif v.persistent_volume_claim is not None:
            w.kv(level + 2, "Type", "PersistentVolumeClaim (not acted on yet)")
            w.kv(level + 2, "ClaimName", v.persistent_volume_claim.claim_name)


def events(w: Writer, evs: Sequence[Event] | None) -> None:
    if evs is None:
        return
    if not evs:
        w.kv(0, "Events", NONE)
        return
    w.section(0, "Events")
    rows = []
    for ev in evs:
        seen = age(printers.event_time(ev))
        if (ev.count or 1) > 1 and ev.first_timestamp:
            seen = f"{seen} (x{ev.count} over {age(ev.first_timestamp)})"
        rows.append([ev.type or "", ev.reason or "", seen, printers.event_source(ev), (ev.message or "").strip()])
    w.table(1, ["Type", "Reason", "Age", "From", "Message"], rows, rule=True)


# ---- kinds ----------------------------------------------------------------------------------------

def _pod_requests(pod: Pod) -> tuple[str, str]:
    cpu = mem = 0
    try:
        for c in pod.spec.containers:
            cpu += cpu_millis(c.resources.requests.get("cpu", 0))
            mem += to_int(c.resources.requests.get("memory", 0))
    except QuantityError:
        return "?", "?"
    return (f"{cpu}m" if cpu % 1000 else str(cpu // 1000)), format_bytes(mem)


def describe_pod(w: Writer, pod: Pod, extra: dict[str, Any]) -> None:
    m = pod.metadata
    w.kv(0, "Name", m.name)
    w.kv(0, "Namespace", m.namespace or "")
    node = pod.spec.node_name
    w.kv(0, "Node", f"{node}/{pod.status.host_ip}" if node and pod.status.host_ip else node or NONE)
    w.kv(0, "Start Time", local_time(pod.status.start_time))
    w.kv(0, "Labels", _map_lines(m.labels))
    w.kv(0, "Annotations", _annotation_lines(m.annotations))
    if m.deletion_timestamp:
        w.kv(0, "Status", "Terminating")
        w.kv(0, "Termination Grace Period", f"{m.deletion_grace_period_seconds or 0}s")
    else:
        w.kv(0, "Status", pod.status.phase or "Pending")
    if pod.status.reason:
        w.kv(0, "Reason", pod.status.reason)
    if pod.status.message:
        w.kv(0, "Message", pod.status.message)
    w.kv(0, "IP", pod.status.pod_ip or "")
    controller = next((o for o in m.owner_references if o.controller), None)
    if controller is not None:
        w.kv(0, "Controlled By", f"{controller.kind}/{controller.name}")
    statuses = {s.name: s for s in pod.status.container_statuses}
    init_statuses = {s.name: s for s in pod.status.init_container_statuses}
    if pod.spec.init_containers:
        w.section(0, "Init Containers")
        for c in pod.spec.init_containers:
            container(w, 1, c, init_statuses.get(c.name))
    w.section(0, "Containers")
    for c in pod.spec.containers:
        container(w, 1, c, statuses.get(c.name) or ContainerStatus(name=c.name))
    conditions(w, pod.status.conditions)
    _volumes(w, 0, pod.spec)
    w.kv(0, "QoS Class", pod.status.qos_class or "")
    w.kv(0, "Node-Selectors", _map_lines(pod.spec.node_selector))
    tolerations = []
    for t in pod.spec.tolerations:
        text = t.key or ""
        if t.operator == "Exists" and not t.key:
            text = "op=Exists"
        elif t.value:
            text += f"={t.value}"
        if t.effect:
            text += f":{t.effect}"
        if t.toleration_seconds is not None:
            text += f" for {t.toleration_seconds}s"
        tolerations.append(text)
    w.kv(0, "Tolerations", tolerations or [NONE])


def describe_node(w: Writer, node: Node, extra: dict[str, Any]) -> None:
    m = node.metadata
    w.kv(0, "Name", m.name)
    w.kv(0, "Roles", printers.node_roles(node))
    w.kv(0, "Labels", _map_lines(m.labels))
    w.kv(0, "Annotations", _annotation_lines(m.annotations))
    w.kv(0, "CreationTimestamp", local_time(m.creation_timestamp))
    w.kv(0, "Taints", [f"{t.key}{'=' + t.value if t.value else ''}:{t.effect}" for t in node.spec.taints] or [NONE])
    w.kv(0, "Unschedulable", str(bool(node.spec.unschedulable)).lower())
    lease = extra.get("lease")
    if lease is not None:
        w.section(0, "Lease")
        w.kv(1, "HolderIdentity", lease.spec.holder_identity or NONE)
        w.kv(1, "RenewTime", local_time(lease.spec.renew_time))
    conditions(w, node.status.conditions, wide=True)
    if node.status.addresses:
        w.section(0, "Addresses")
        for a in node.status.addresses:
            w.kv(1, a.type, a.address)
    for title, part in (("Capacity", node.status.capacity), ("Allocatable", node.status.allocatable)):
        if part:
            w.section(0, title)
            for k, v in sorted(part.items()):
                w.kv(1, k, v)
    info = node.status.node_info
    if info is not None:
        w.section(0, "System Info")
        for title, value in (("Machine ID", info.machine_id), ("Boot ID", info.boot_id),
                             ("Kernel Version", info.kernel_version), ("OS Image", info.os_image),
                             ("Operating System", info.operating_system), ("Architecture", info.architecture),
                             ("Container Runtime Version", info.container_runtime_version),
                             ("Kubelet Version", info.kubelet_version)):
            if value:
                w.kv(1, title, value)
    if node.spec.pod_cidr:
        w.kv(0, "PodCIDR", node.spec.pod_cidr)
    pods: list[Pod] = [p for p in extra.get("pods", []) if p.status.phase not in ("Succeeded", "Failed")]
    w.kv(0, "Non-terminated Pods", f"({len(pods)} in total)")
    if pods:
        rows = []
        for p in pods:
            cpu, mem = _pod_requests(p)
            rows.append([p.metadata.namespace or "", p.metadata.name, printers.pod_status(p), cpu, mem,
                         age(p.metadata.creation_timestamp)])
        w.table(1, ["Namespace", "Name", "Status", "CPU Requests", "Memory Requests", "Age"], rows, rule=True)


def describe_replicaset(w: Writer, rs: ReplicaSet, extra: dict[str, Any]) -> None:
    meta(w, rs, True)
    w.kv(0, "Selector", printers.selector_text(rs.spec.selector))
    want = rs.spec.replicas if rs.spec.replicas is not None else 1
    w.kv(0, "Replicas", f"{rs.status.replicas} current / {want} desired")
    pods: list[Pod] = extra.get("pods", [])
    phases = {ph: sum(1 for p in pods if (p.status.phase or "Pending") == ph) for ph in
              ("Running", "Pending", "Succeeded", "Failed")}
    w.kv(0, "Pods Status", " / ".join(f"{n} {ph}" for ph, n in phases.items()))
    template(w, rs.spec.template)
    conditions(w, rs.status.conditions)


def describe_deployment(w: Writer, d: Deployment, extra: dict[str, Any]) -> None:
    meta(w, d, True)
    w.kv(0, "Selector", printers.selector_text(d.spec.selector))
    want = d.spec.replicas if d.spec.replicas is not None else 1
    s = d.status
    w.kv(0, "Replicas", f"{want} desired | {s.updated_replicas or 0} updated | {s.replicas or 0} total | "
                        f"{s.available_replicas or 0} available | {s.unavailable_replicas or 0} unavailable")
    strategy = d.spec.strategy
    w.kv(0, "StrategyType", (strategy.type if strategy else None) or "RollingUpdate")
    w.kv(0, "MinReadySeconds", d.spec.min_ready_seconds or 0)
    if strategy and strategy.rolling_update:
        ru = strategy.rolling_update
        w.kv(0, "RollingUpdateStrategy", f"{ru.max_unavailable} max unavailable, {ru.max_surge} max surge")
    template(w, d.spec.template)
    conditions(w, d.status.conditions)
    sets: list[ReplicaSet] = extra.get("replicasets", [])
    if sets:
        live = [r for r in sets if (r.spec.replicas or 0) > 0 or r.status.replicas]
        w.kv(0, "ReplicaSets", [f"{r.metadata.name} ({r.status.replicas}/{r.spec.replicas or 0} replicas created)"
                                for r in live] or [NONE])


def describe_service(w: Writer, svc: Service, extra: dict[str, Any]) -> None:
    meta(w, svc, True)
    w.kv(0, "Selector", ",".join(f"{k}={v}" for k, v in sorted(svc.spec.selector.items())) or NONE)
    w.kv(0, "Type", svc.spec.type or "ClusterIP")
    w.kv(0, "IP", svc.spec.cluster_ip or NONE)
    ep: Endpoints | None = extra.get("endpoints")
    if svc.spec.external_name:
        w.kv(0, "External Name", svc.spec.external_name)
    for p in svc.spec.ports:
        name = p.name or "<unset>"
        protocol = p.protocol or "TCP"
        w.kv(0, "Port", f"{name}  {p.port}/{protocol}")
        w.kv(0, "TargetPort", f"{p.target_port if p.target_port is not None else p.port}/{protocol}")
        if p.node_port:
            w.kv(0, "NodePort", f"{name}  {p.node_port}/{protocol}")
        # As kubectl: each port lists the ready endpoints of its own name.
        w.kv(0, "Endpoints", printers.endpoints_text(ep, port_name=p.name or "") if ep is not None else NONE)
    if not svc.spec.ports:
        w.kv(0, "Endpoints", printers.endpoints_text(ep) if ep is not None else NONE)
    w.kv(0, "Session Affinity", svc.spec.session_affinity or "None")


def describe_endpoints(w: Writer, ep: Endpoints, extra: dict[str, Any]) -> None:
    meta(w, ep, True)
    if not ep.subsets:
        w.kv(0, "Subsets", NONE)
        return
    w.section(0, "Subsets")
    for s in ep.subsets:
        w.kv(1, "Addresses", ",".join(a.ip for a in s.addresses) or NONE)
        w.kv(1, "NotReadyAddresses", ",".join(a.ip for a in s.not_ready_addresses) or NONE)
        if s.ports:
            w.section(1, "Ports")
            w.table(2, ["Name", "Port", "Protocol"], [[p.name or "<unset>", str(p.port), p.protocol or "TCP"]
                                                      for p in s.ports], rule=True)


def describe_namespace(w: Writer, ns: Namespace, extra: dict[str, Any]) -> None:
    meta(w, ns, False)
    w.kv(0, "Status", ns.status.phase or "Active")


def describe_lease(w: Writer, lease: Lease, extra: dict[str, Any]) -> None:
    meta(w, lease, True)
    s = lease.spec
    w.section(0, "Spec")
    w.kv(1, "Holder Identity", s.holder_identity or NONE)
    w.kv(1, "Lease Duration Seconds", s.lease_duration_seconds if s.lease_duration_seconds is not None else NONE)
    w.kv(1, "Acquire Time", local_time(s.acquire_time))
    w.kv(1, "Renew Time", local_time(s.renew_time))
    w.kv(1, "Lease Transitions", s.lease_transitions or 0)


def describe_event(w: Writer, ev: Event, extra: dict[str, Any]) -> None:
    meta(w, ev, True)
    o = ev.involved_object
    w.section(0, "Involved Object")
    w.kv(1, "Kind", o.kind or "")
    w.kv(1, "Name", o.name or "")
    w.kv(1, "Namespace", o.namespace or "")
    if o.field_path:
        w.kv(1, "Field Path", o.field_path)
    w.kv(0, "Type", ev.type or "")
    w.kv(0, "Reason", ev.reason or "")
    w.kv(0, "Message", (ev.message or "").strip())
    w.kv(0, "Source", printers.event_source(ev) or NONE)
    w.kv(0, "Count", ev.count or 1)
    w.kv(0, "First Timestamp", local_time(ev.first_timestamp or ev.event_time))
    w.kv(0, "Last Timestamp", local_time(printers.event_time(ev)))


Describe = Callable[[Writer, Any, dict[str, Any]], None]
DESCRIBERS: dict[str, Describe] = {
    "pods": describe_pod, "nodes": describe_node, "replicasets": describe_replicaset,
    "deployments": describe_deployment, "services": describe_service, "endpoints": describe_endpoints,
    "namespaces": describe_namespace, "leases": describe_lease, "events": describe_event,
}


async def related(ctx: Context, r: Resource, obj: TopObject) -> dict[str, Any]:
    """What else a description shows: the node's pods and lease, a set's pods, a service's endpoints."""
    assert ctx.api is not None
    api = ctx.api
    ns, name = obj.metadata.namespace, obj.metadata.name
    extra: dict[str, Any] = {}
    try:
        if r.name == "nodes":
            extra["pods"] = (await api.pods.list_all(field_selector=f"spec.nodeName={name}")).items
            try:
                extra["lease"] = await api.leases.get(name, NODE_LEASE_NAMESPACE)
            except ApiError:
                pass
        elif r.name in ("replicasets", "deployments"):
            owned = "pods" if r.name == "replicasets" else "replicasets"
            items = (await api.resource(owned).list_all(ns)).items
            extra[owned] = [o for o in items if any(ref.uid == obj.metadata.uid for ref in o.metadata.owner_references)]
        elif r.name == "services":
            try:
                extra["endpoints"] = await api.endpoints.get(name, ns)
            except ApiError:
                pass
    except ApiError as err:  # the description still helps without the extras
        if err.reason not in ("NotFound", "Forbidden"):
            raise
    return extra


async def object_events(ctx: Context, r: Resource, obj: TopObject) -> list[Event]:
    """Events about `obj`, oldest first (involvedObject name and namespace on the server, kind/uid here)."""
    assert ctx.api is not None
    m = obj.metadata
    selector = f"involvedObject.name={m.name}"
    if r.namespaced:
        selector += f",involvedObject.namespace={m.namespace}"
    found = await ctx.api.events.list_all(m.namespace if r.namespaced else None, field_selector=selector)
    evs = [e for e in found.items
           if (not e.involved_object.kind or e.involved_object.kind == r.kind)
           and (not e.involved_object.uid or not m.uid or e.involved_object.uid == m.uid)]
    evs.sort(key=printers.event_sort_key)
    return evs


def managed_by(w: Writer, obj: TopObject) -> None:
    """Who wrote the object (metadata.managedFields, stamped by the API server with each writer's
    principal), the latest write first."""
    entries = obj.metadata.managed_fields
    if not entries:
        return
    w.section(0, "Managed by")
    rows = [[e.manager or "", e.operation or "", getattr(e, "subresource", None) or "", local_time(e.time)]
            for e in sorted(entries, key=lambda e: e.time or "", reverse=True)]
    w.table(1, ["Manager", "Operation", "Subresource", "Time"], rows, rule=True)


def describe_text(r: Resource, obj: TopObject, extra: dict[str, Any], evs: list[Event] | None) -> str:
    w = Writer()
    DESCRIBERS.get(r.name, lambda w, o, e: meta(w, o, r.namespaced))(w, obj, extra)
    managed_by(w, obj)
    events(w, evs)
    return w.render()


async def run(ctx: Context) -> int:
    args = ctx.args
    targets = parse_targets([args.kind, *args.names])
    status = 0
    first = True
    for t in targets:
        objs, _, errors = await fetch(ctx, t)
        if not objs and not t.names:
            ctx.warn(no_resources(ctx, t.resource))
        for obj in objs:
            extra = await related(ctx, t.resource, obj)
            evs = await object_events(ctx, t.resource, obj) if t.resource.name != "events" else None
            if not first:
                ctx.print()
            ctx.print(describe_text(t.resource, obj, extra, evs))
            first = False
        for err in errors:
            ctx.report(err)
            status = 1
    return status


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="KIND", help="resource type (pods, po, deploy, ...), or kind/name")
    p.add_argument("names", nargs="*", metavar="NAME", help="names (or more kind/name); none: every object")
    add_selection_arguments(p)


COMMANDS = [Command("describe", "Show details of a resource and its events", arguments, run)]
