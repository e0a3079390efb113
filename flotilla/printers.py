"""kubectl's output: ages (`5s`, `3m`, `2h`, `4d`), aligned tables with per-kind columns, pod status,
and the json/yaml/name output formats."""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
import yaml

from schemas import Resource, TopObject, parse_time
from schemas.base import LabelSelector
from schemas.cluster import Endpoints, Event, Namespace, Node, Service
from schemas.pod import ContainerState, Pod
from schemas.workloads import Deployment, Lease, ReplicaSet

NONE = "<none>"
GAP = 3  # spaces between columns, as kubectl's tabwriter pads


# ---- time ----------------------------------------------------------------------------------------

def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def human_duration(seconds: float) -> str:
    """kubectl's HumanDuration (k8s.io/apimachinery/pkg/util/duration)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def age(timestamp: str | None, at: dt.datetime | None = None) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        then = parse_time(timestamp)
    except ValueError:
        return "<invalid>"
    return human_duration(((at or now()) - then).total_seconds())


def local_time(timestamp: str | None) -> str:
    """`Mon, 02 Jan 2006 15:04:05 +0000`, as describe prints times."""
    if not timestamp:
        return NONE
    try:
        return parse_time(timestamp).astimezone().strftime("%a, %d %b %Y %H:%M:%S %z")
    except ValueError:
        return timestamp


# ---- tables --------------------------------------------------------------------------------------

class Table:
    """Left-aligned columns, padded like kubectl; rows added later (watch) keep the widths grown so far."""

    def __init__(self, headers: Sequence[str]):
        self.headers = list(headers)
        self.widths = [len(h) for h in headers]

    def fit(self, rows: Iterable[Sequence[str]]) -> None:
        for row in rows:
            self.widths = [max(w, len(c)) for w, c in zip(self.widths, row)]

    def line(self, row: Sequence[str]) -> str:
        self.fit([row])
        cells = [c.ljust(w) for c, w in zip(row[:-1], self.widths)]
        return (" " * GAP).join([*cells, row[-1]]).rstrip()

    def render(self, rows: Sequence[Sequence[str]], header: bool = True) -> list[str]:
        self.fit(rows)
        return ([self.line(self.headers)] if header else []) + [self.line(r) for r in rows]


def labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or NONE


def selector_text(sel: LabelSelector | dict[str, str] | None) -> str:
    if sel is None:
        return NONE
    if isinstance(sel, dict):
        return labels_text(sel)
    parts = [f"{k}={v}" for k, v in sorted(sel.match_labels.items())]
    for e in sel.match_expressions:
        op = e.operator
        if op == "In":
            parts.append(f"{e.key} in ({','.join(e.values)})")
        elif op == "NotIn":
            parts.append(f"{e.key} notin ({','.join(e.values)})")
        elif op == "Exists":
            parts.append(e.key)
        elif op == "DoesNotExist":
            parts.append(f"!{e.key}")
    return ",".join(parts) or NONE


# ---- per-kind columns ----------------------------------------------------------------------------

def _state_reason(state: ContainerState) -> str | None:
    if state.waiting and state.waiting.reason:
        return state.waiting.reason
    t = state.terminated
    if t is not None:
        if t.reason:
            return t.reason
        return f"Signal:{t.signal}" if t.signal else f"ExitCode:{t.exit_code}"
    return None


def pod_ready(pod: Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


def pod_status(pod: Pod) -> str:
    """The STATUS column of `kubectl get pods` (printPod in kubectl's printers)."""
    reason = pod.status.reason or pod.status.phase or "Pending"
    initializing = False
    n_init = len(pod.spec.init_containers)
    for i, c in enumerate(pod.status.init_container_statuses):
        t, w = c.state.terminated, c.state.waiting
        if t is not None and t.exit_code == 0:
            continue
        if t is not None:
            reason = "Init:" + (t.reason or (f"Signal:{t.signal}" if t.signal else f"ExitCode:{t.exit_code}"))
        elif w is not None and w.reason and w.reason != "PodInitializing":
            reason = "Init:" + w.reason
        else:
            reason = f"Init:{i}/{n_init}"
        initializing = True
        break
    if not initializing:
        has_running = False
        for c in reversed(pod.status.container_statuses):
            r = _state_reason(c.state)
            if r:
                reason = r
            elif c.ready and c.state.running is not None:
                has_running = True
        if reason == "Completed" and has_running:
            reason = "Running" if pod_ready(pod) else "NotReady"
    if pod.metadata.deletion_timestamp:
        reason = "Unknown" if pod.status.reason == "NodeLost" else "Terminating"
    return reason


def pod_restarts(pod: Pod) -> str:
    total = sum(c.restart_count for c in pod.status.container_statuses)
    last = max((c.last_state.terminated.finished_at for c in pod.status.container_statuses
                if c.last_state.terminated and c.last_state.terminated.finished_at), default=None)
    return f"{total} ({age(last)} ago)" if total and last else str(total)


def _pod_row(pod: Pod, wide: bool) -> list[str]:
    ready = sum(1 for c in pod.status.container_statuses if c.ready)
    row = [f"{ready}/{len(pod.spec.containers)}", pod_status(pod), pod_restarts(pod), age(pod.metadata.creation_timestamp)]
    if wide:
        row += [pod.status.pod_ip or NONE, pod.spec.node_name or NONE]
    return row


def node_status(node: Node) -> str:
    ready = next((c for c in node.status.conditions if c.type == "Ready"), None)
    status = "Unknown" if ready is None else "Ready" if ready.status == "True" else "NotReady"
    return status + (",SchedulingDisabled" if node.spec.unschedulable else "")


def node_roles(node: Node) -> str:
    roles = sorted({k.split("/", 1)[1] for k in node.metadata.labels
                    if k.startswith("node-role.kubernetes.io/") and "/" in k}
                   | ({node.metadata.labels["kubernetes.io/role"]} if "kubernetes.io/role" in node.metadata.labels else set()))
    return ",".join(r for r in roles if r) or NONE


def node_internal_ip(node: Node) -> str:
    return next((a.address for a in node.status.addresses if a.type == "InternalIP"), NONE)


def _node_row(node: Node, wide: bool) -> list[str]:
    info = node.status.node_info
    row = [node_status(node), node_roles(node), age(node.metadata.creation_timestamp),
           (info.kubelet_version if info else None) or NONE]
    if wide:
        row += [node_internal_ip(node), (info.os_image if info else None) or NONE,
                (info.kernel_version if info else None) or NONE,
                (info.container_runtime_version if info else None) or NONE]
    return row


def _containers_images(template_spec: Any) -> list[str]:
    return [",".join(c.name for c in template_spec.containers) or NONE,
            ",".join(c.image or "" for c in template_spec.containers) or NONE]


def _rs_row(rs: ReplicaSet, wide: bool) -> list[str]:
    row = [str(rs.spec.replicas if rs.spec.replicas is not None else 1), str(rs.status.replicas or 0),
           str(rs.status.ready_replicas or 0), age(rs.metadata.creation_timestamp)]
    if wide:
        row += [*_containers_images(rs.spec.template.spec), selector_text(rs.spec.selector)]
    return row


def _deploy_row(d: Deployment, wide: bool) -> list[str]:
    want = d.spec.replicas if d.spec.replicas is not None else 1
    row = [f"{d.status.ready_replicas or 0}/{want}", str(d.status.updated_replicas or 0),
           str(d.status.available_replicas or 0), age(d.metadata.creation_timestamp)]
    if wide:
        row += [*_containers_images(d.spec.template.spec), selector_text(d.spec.selector)]
    return row


def service_ports(svc: Service) -> str:
    out = []
    for p in svc.spec.ports:
        node_port = f":{p.node_port}" if p.node_port else ""
        out.append(f"{p.port}{node_port}/{p.protocol or 'TCP'}")
    return ",".join(out) or NONE


def _svc_row(svc: Service, wide: bool) -> list[str]:
    row = [svc.spec.type or "ClusterIP", svc.spec.cluster_ip or NONE, service_ports(svc),
           age(svc.metadata.creation_timestamp)]
    if wide:
        row.append(selector_text(svc.spec.selector) if svc.spec.selector else NONE)
    return row


def endpoints_text(ep: Endpoints, limit: int = 3, port_name: str | None = None) -> str:
    """kubectl's formatEndpoints: ready `ip:port` per port of each subset (only the port named
    `port_name` when given, as describe shows each Service port's own), the first `limit` of them."""
    items: list[str] = []
    for s in ep.subsets:
        if not s.ports:  # a headless Service without ports: bare addresses
            items += [a.ip for a in s.addresses]
            continue
        for p in s.ports:
            if port_name is None or (p.name or "") == port_name:
                items += [f"{a.ip}:{p.port}" for a in s.addresses]
    if not items:
        return NONE
    more = len(items) - limit
    return ",".join(items[:limit]) + (f" + {more} more..." if more > 0 else "")


def _ep_row(ep: Endpoints, wide: bool) -> list[str]:
    return [endpoints_text(ep), age(ep.metadata.creation_timestamp)]


def _ns_row(ns: Namespace, wide: bool) -> list[str]:
    return [ns.status.phase or "Active", age(ns.metadata.creation_timestamp)]


def _lease_row(lease: Lease, wide: bool) -> list[str]:
    return [lease.spec.holder_identity or NONE, age(lease.metadata.creation_timestamp)]


def event_time(ev: Event) -> str | None:
    """When an event was last seen (the series', lastTimestamp, eventTime, then creation)."""
    return ((ev.series.last_observed_time if ev.series else None) or ev.last_timestamp or ev.event_time
            or ev.first_timestamp or ev.metadata.creation_timestamp)


def event_sort_key(ev: Event) -> tuple[dt.datetime, int]:
    """Oldest first; events of the same second in the order they were written."""
    try:
        when = parse_time(event_time(ev) or "")
    except ValueError:
        when = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    rv = ev.metadata.resource_version or "0"
    return when, int(rv) if rv.isdigit() else 0


def event_object(ev: Event) -> str:
    o = ev.involved_object
    return f"{(o.kind or '').lower()}/{o.name or ''}"


def event_source(ev: Event) -> str:
    if ev.source and ev.source.component:
        return ev.source.component + (f", {ev.source.host}" if ev.source.host else "")
    return ev.reporting_component or ""


def _event_row(ev: Event, wide: bool) -> list[str]:
    row = [age(event_time(ev)), ev.type or "", ev.reason or "", event_object(ev), (ev.message or "").strip()]
    if wide:
        row = row[:4] + [ev.involved_object.field_path or "", event_source(ev) or NONE,
                         str(ev.count or 1), age(ev.first_timestamp or ev.event_time or ev.metadata.creation_timestamp),
                         row[4]]
    return row


Row = Callable[[Any, bool], list[str]]

# resource -> (columns after NAME, extra columns with -o wide, row function)
COLUMNS: dict[str, tuple[list[str], list[str], Row]] = {
    "pods": (["READY", "STATUS", "RESTARTS", "AGE"], ["IP", "NODE"], _pod_row),
    "nodes": (["STATUS", "ROLES", "AGE", "VERSION"], ["INTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"],
              _node_row),
    "replicasets": (["DESIRED", "CURRENT", "READY", "AGE"], ["CONTAINERS", "IMAGES", "SELECTOR"], _rs_row),
    "deployments": (["READY", "UP-TO-DATE", "AVAILABLE", "AGE"], ["CONTAINERS", "IMAGES", "SELECTOR"], _deploy_row),
    "services": (["TYPE", "CLUSTER-IP", "PORT(S)", "AGE"], ["SELECTOR"], _svc_row),
    "endpoints": (["ENDPOINTS", "AGE"], [], _ep_row),
    "namespaces": (["STATUS", "AGE"], [], _ns_row),
    "leases": (["HOLDER", "AGE"], [], _lease_row),
    "events": (["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], [], _event_row),
}

_EVENT_WIDE = ["LAST SEEN", "TYPE", "REASON", "OBJECT", "SUBOBJECT", "SOURCE", "COUNT", "FIRST SEEN", "MESSAGE"]


class ResourcePrinter:
    """Rows of one resource's table. `all_namespaces` adds NAMESPACE; `kind_prefix` names rows `pod/x`.

    Events have no NAME column (like kubectl): their name is a generated id nobody reads.
    """

    def __init__(self, resource: Resource, *, wide: bool = False, all_namespaces: bool = False,
                 kind_prefix: bool = False, show_labels: bool = False):
        self.resource = resource
        self.wide = wide
        self.all_namespaces = all_namespaces and resource.namespaced
        self.kind_prefix = kind_prefix
        cols, wide_cols, self._row = COLUMNS.get(resource.name, (["AGE"], [], _generic_row))
        self.named = resource.name != "events"
        headers = ([] if not self.named else ["NAME"])
        headers += (_EVENT_WIDE if wide and resource.name == "events" else cols + (wide_cols if wide else []))
        if self.all_namespaces:
            headers.insert(0, "NAMESPACE")
        self.show_labels = show_labels
        if show_labels:
            headers.append("LABELS")
        self.table = Table(headers)

    def row(self, obj: TopObject) -> list[str]:
        name = obj.metadata.name
        if self.kind_prefix:
            name = f"{self.resource.kind.lower()}/{name}"
        cells = ([name] if self.named else []) + self._row(obj, self.wide)
        if self.all_namespaces:
            cells.insert(0, obj.metadata.namespace or "")
        if self.show_labels:
            cells.append(labels_text(obj.metadata.labels))
        return cells

    def render(self, objs: Sequence[TopObject], header: bool = True) -> list[str]:
        return self.table.render([self.row(o) for o in objs], header=header)

    def line(self, obj: TopObject) -> str:
        return self.table.line(self.row(obj))


def _generic_row(obj: TopObject, wide: bool) -> list[str]:
    return [age(obj.metadata.creation_timestamp)]


# ---- json / yaml / name --------------------------------------------------------------------------

def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


def as_list(objs: Sequence[TopObject], resource_version: str = "") -> dict[str, Any]:
    return {"apiVersion": "v1", "items": [to_builtins(o) for o in objs], "kind": "List",
            "metadata": {"resourceVersion": resource_version}}


def json_text(data: Any) -> str:
    return json.dumps(data if isinstance(data, (dict, list)) else to_builtins(data), indent=4, ensure_ascii=False)


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_presenter)


def yaml_text(data: Any) -> str:
    data = data if isinstance(data, (dict, list)) else to_builtins(data)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                     width=1_000_000).rstrip("\n")


def name_of(resource: Resource, obj: TopObject) -> str:
    return f"{resource.kind.lower()}/{obj.metadata.name}"
