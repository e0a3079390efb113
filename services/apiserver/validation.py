"""Semantic validation of every kind: each error names the field and says why (reason Invalid)."""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import lru_cache

from schemas import ApiError, Resource, TopObject
from schemas.base import API_VERSIONS, ObjectMeta
from schemas.cluster import Endpoints, Event, Namespace, Node, Service
from schemas.names import dns1123_label_error, dns1123_subdomain_error, label_key_error, label_value_error
from schemas.pod import Container, Pod, PodSpec, Probe, ResourceRequirements
from schemas.quantity import QuantityError, parse_quantity
from schemas.selectors import SelectorError, selector_from_struct
from schemas.workloads import Deployment, Lease, ReplicaSet
from services.lib.codec import encode

MAX_ANNOTATIONS_BYTES = 256 * 1024


class Errors:
    """Collects field errors; `raise_if_any` turns them into one Invalid Status naming the first."""

    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.items.append((field, message))

    def raise_if_any(self) -> None:
        if self.items:
            detail = "; ".join(f"{f}: {m}" for f, m in self.items[:10])
            err = ApiError("Invalid", f'{self.kind} "{self.name}" is invalid: {detail}', field=self.items[0][0])
            raise err


def _enum(errs: Errors, field: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        errs.add(field, f'Unsupported value: "{value}": supported values: {", ".join(allowed)}')


INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def _nonneg(errs: Errors, field: str, value: int | None, most: int = INT32_MAX) -> None:
    """0 <= value <= most: JSON numbers are unbounded, Kubernetes' fields are int32 (or int64)."""
    if value is not None and value < 0:
        errs.add(field, "must be greater than or equal to 0")
    elif value is not None and value > most:
        errs.add(field, f"must be less than or equal to {most}")


def _port(errs: Errors, field: str, value: int | str | None, allow_name: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            errs.add(field, "must be between 1 and 65535, inclusive")
    elif not allow_name:
        errs.add(field, "must be a port number")
    elif not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", value) or len(value) > 15 or not re.search("[a-z]", value):
        errs.add(field, "must be a port number or an IANA_SVC_NAME (at most 15 characters, lower case alphanumerics or '-', at least one letter)")


def validate_meta(errs: Errors, meta: ObjectMeta, resource: Resource) -> None:
    name_check = dns1123_label_error if resource.name == "namespaces" else dns1123_subdomain_error
    if meta.name:
        err = name_check(meta.name)
        if err:
            errs.add("metadata.name", err)
    elif not meta.generate_name:
        errs.add("metadata.name", "name or generateName is required")
    if meta.generate_name and (len(meta.generate_name) > 200 or
                               name_check(meta.generate_name.rstrip("-.") or "x")):
        errs.add("metadata.generateName", "must be a valid name prefix")
    if resource.namespaced and meta.namespace:
        err = dns1123_label_error(meta.namespace)
        if err:
            errs.add("metadata.namespace", err)
    for k, v in meta.labels.items():
        err = label_key_error(k)
        if err:
            errs.add(f"metadata.labels[{k}]", err)
        err = label_value_error(v)
        if err:
            errs.add(f"metadata.labels[{k}]", f"invalid value {v!r}: {err}")
    size = 0
    for k, v in meta.annotations.items():
        err = label_key_error(k)
        if err:
            errs.add(f"metadata.annotations[{k}]", err)
        size += len(k) + len(v)
    if size > MAX_ANNOTATIONS_BYTES:
        errs.add("metadata.annotations", f"Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes")
    for i, ref in enumerate(meta.owner_references):
        for fname in ("api_version", "kind", "name", "uid"):
            if not getattr(ref, fname):
                errs.add(f"metadata.ownerReferences[{i}]", f"{fname} must not be empty")
    if sum(1 for r in meta.owner_references if r.controller) > 1:
        errs.add("metadata.ownerReferences", "Only one reference can have Controller set to true")
    for i, f in enumerate(meta.finalizers):
        if label_key_error(f):
            errs.add(f"metadata.finalizers[{i}]", "must be a qualified name")


def _resources(errs: Errors, field: str, res: ResourceRequirements) -> None:
    parsed: dict[str, dict[str, object]] = {}
    for part in ("requests", "limits"):
        parsed[part] = {}
        for name, q in getattr(res, part).items():
            if name not in ("cpu", "memory", "ephemeral-storage", "pods") and "/" not in name and not name.startswith("hugepages-"):
                errs.add(f"{field}.{part}[{name}]", "must be a standard resource type or fully qualified")
            try:
                value = parse_quantity(q)
            except QuantityError as exc:
                errs.add(f"{field}.{part}[{name}]", str(exc))
                continue
            if value < 0:
                errs.add(f"{field}.{part}[{name}]", "must be greater than or equal to 0")
            parsed[part][name] = value
    for name, req in parsed["requests"].items():
        lim = parsed["limits"].get(name)
        if lim is not None and req > lim:  # type: ignore[operator]
            errs.add(f"{field}.requests[{name}]", f"must be less than or equal to {name} limit of {res.limits[name]}")


def _probe(errs: Errors, field: str, probe: Probe | None, container: Container) -> None:
    if probe is None:
        return
    handlers = [h for h in ("exec", "http_get", "tcp_socket", "grpc") if getattr(probe, h) is not None]
    if len(handlers) != 1:
        errs.add(field, "must specify exactly one handler type (exec, httpGet, tcpSocket, grpc)")
    if probe.exec is not None and not probe.exec.command:
        errs.add(f"{field}.exec.command", "Required value")
    if probe.http_get is not None:
        _port(errs, f"{field}.httpGet.port", probe.http_get.port, allow_name=True)
        _enum(errs, f"{field}.httpGet.scheme", probe.http_get.scheme, ("HTTP", "HTTPS"))
        if probe.http_get.path and not probe.http_get.path.startswith("/"):
            errs.add(f"{field}.httpGet.path", "must be an absolute path")
    if probe.tcp_socket is not None:
        _port(errs, f"{field}.tcpSocket.port", probe.tcp_socket.port, allow_name=True)
    if probe.grpc is not None:
        _port(errs, f"{field}.grpc.port", probe.grpc.port)
    for attr, lowest in (("timeout_seconds", 1), ("period_seconds", 1), ("success_threshold", 1),
                         ("failure_threshold", 1), ("initial_delay_seconds", 0)):
        value = getattr(probe, attr)
        if value is not None and value < lowest:
            camel = re.sub(r"_(\w)", lambda m: m.group(1).upper(), attr)
            errs.add(f"{field}.{camel}", f"must be greater than or equal to {lowest}")
    names = {p.name for p in container.ports if p.name}
    for port_field in (probe.http_get, probe.tcp_socket):
        if port_field is not None and isinstance(port_field.port, str) and port_field.port not in names:
            errs.add(field, f"port name {port_field.port!r} is not a container port name")


# Verdicts on pod specs by their encoding: every pod of a ReplicaSet has the same spec, and each of its
# writes (create, status) is validated whole; encoding a spec costs a fraction of checking it.
_SPEC_VERDICTS: dict[tuple[str, bytes], tuple[tuple[str, str], ...]] = {}
_SPEC_VERDICTS_MAX = 1024


def validate_pod_spec(errs: Errors, spec: PodSpec, field: str) -> None:
    key = (field, encode(spec))
    verdict = _SPEC_VERDICTS.get(key)
    if verdict is None:
        fresh = Errors(errs.kind, errs.name)
        _check_pod_spec(fresh, spec, field)
        verdict = tuple(fresh.items)
        if len(_SPEC_VERDICTS) >= _SPEC_VERDICTS_MAX:
            del _SPEC_VERDICTS[next(iter(_SPEC_VERDICTS))]  # the oldest
        _SPEC_VERDICTS[key] = verdict
    errs.items.extend(verdict)


def _check_pod_spec(errs: Errors, spec: PodSpec, field: str) -> None:
    if not spec.containers:
        errs.add(f"{field}.containers", "Required value")
    volumes = set()
    for i, v in enumerate(spec.volumes):
        f = f"{field}.volumes[{i}]"
        err = dns1123_label_error(v.name)
        if err:
            errs.add(f"{f}.name", err)
        if v.name in volumes:
            errs.add(f"{f}.name", f'Duplicate value: "{v.name}"')
        volumes.add(v.name)
        sources = [s for s in ("empty_dir", "host_path", "config_map", "secret", "persistent_volume_claim")
                   if getattr(v, s) is not None]
        if len(sources) > 1:
            errs.add(f, "may not specify more than 1 volume type")
        if v.empty_dir is not None:
            _enum(errs, f"{f}.emptyDir.medium", v.empty_dir.medium, ("", "Memory"))
            if v.empty_dir.size_limit is not None:
                try:
                    parse_quantity(v.empty_dir.size_limit)
                except QuantityError as exc:
                    errs.add(f"{f}.emptyDir.sizeLimit", str(exc))
    seen: set[str] = set()
    host_ports: set[tuple[int, str]] = set()
    for group, containers in (("containers", spec.containers), ("initContainers", spec.init_containers)):
        for i, c in enumerate(containers):
            f = f"{field}.{group}[{i}]"
            err = dns1123_label_error(c.name)
            if err:
                errs.add(f"{f}.name", err)
            if c.name in seen:
                errs.add(f"{f}.name", f'Duplicate value: "{c.name}"')
            seen.add(c.name)
            if not c.image and not c.command:
                errs.add(f"{f}.image", "Required value: an image or a command is needed to run a container")
            _enum(errs, f"{f}.imagePullPolicy", c.image_pull_policy, ("Always", "IfNotPresent", "Never"))
            _enum(errs, f"{f}.terminationMessagePolicy", c.termination_message_policy, ("File", "FallbackToLogsOnError"))
            port_names: set[str] = set()
            for j, p in enumerate(c.ports):
                _port(errs, f"{f}.ports[{j}].containerPort", p.container_port)
                if p.host_port is not None and p.host_port != 0:
                    _port(errs, f"{f}.ports[{j}].hostPort", p.host_port)
                    if (p.host_port, p.protocol) in host_ports:
                        errs.add(f"{f}.ports[{j}].hostPort", f"Duplicate value: \"{p.host_port}/{p.protocol}\"")
                    host_ports.add((p.host_port, p.protocol))
                _enum(errs, f"{f}.ports[{j}].protocol", p.protocol, ("TCP", "UDP", "SCTP"))
                if p.name:
                    _port(errs, f"{f}.ports[{j}].name", p.name, allow_name=True)
                    if p.name in port_names:
                        errs.add(f"{f}.ports[{j}].name", f'Duplicate value: "{p.name}"')
                    port_names.add(p.name)
            for j, e in enumerate(c.env):
                if not e.name or "=" in e.name or len(e.name) > 256:
                    errs.add(f"{f}.env[{j}].name", "a valid environment variable name must be a non-empty string without '='")
                if e.value is not None and e.value_from is not None:
                    errs.add(f"{f}.env[{j}]", "may not have both value and valueFrom")
                if e.value_from is not None:
                    srcs = [s for s in ("field_ref", "resource_field_ref", "config_map_key_ref", "secret_key_ref")
                            if getattr(e.value_from, s) is not None]
                    if len(srcs) != 1:
                        errs.add(f"{f}.env[{j}].valueFrom", "must specify exactly one source")
            _resources(errs, f"{f}.resources", c.resources)
            for j, m in enumerate(c.volume_mounts):
                if m.name not in volumes:
                    errs.add(f"{f}.volumeMounts[{j}].name", f'Not found: "{m.name}"')
                if not m.mount_path:
                    errs.add(f"{f}.volumeMounts[{j}].mountPath", "Required value")
            if group == "containers":
                _probe(errs, f"{f}.livenessProbe", c.liveness_probe, c)
                _probe(errs, f"{f}.readinessProbe", c.readiness_probe, c)
                _probe(errs, f"{f}.startupProbe", c.startup_probe, c)
                for attr in ("liveness_probe", "startup_probe"):
                    p = getattr(c, attr)
                    if p is not None and p.success_threshold not in (None, 1):
                        errs.add(f"{f}.{'livenessProbe' if attr == 'liveness_probe' else 'startupProbe'}.successThreshold",
                                 "must be 1")
    _enum(errs, f"{field}.restartPolicy", spec.restart_policy, ("Always", "OnFailure", "Never"))
    _enum(errs, f"{field}.dnsPolicy", spec.dns_policy, ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"))
    _nonneg(errs, f"{field}.terminationGracePeriodSeconds", spec.termination_grace_period_seconds, INT64_MAX)
    if spec.active_deadline_seconds is not None and not 1 <= spec.active_deadline_seconds <= INT32_MAX:
        errs.add(f"{field}.activeDeadlineSeconds", "must be between 1 and 2147483647, inclusive")
    if spec.node_name:
        err = dns1123_subdomain_error(spec.node_name)
        if err:
            errs.add(f"{field}.nodeName", err)
    for k, v in spec.node_selector.items():
        if label_key_error(k) or label_value_error(v):
            errs.add(f"{field}.nodeSelector[{k}]", label_key_error(k) or label_value_error(v) or "")
    for i, t in enumerate(spec.tolerations):
        f = f"{field}.tolerations[{i}]"
        _enum(errs, f"{f}.operator", t.operator, ("Exists", "Equal"))
        _enum(errs, f"{f}.effect", t.effect, ("NoSchedule", "PreferNoSchedule", "NoExecute"))
        if t.operator == "Exists" and t.value:
            errs.add(f"{f}.operator", "value must be empty when `operator` is 'Exists'")
        if not t.key and t.operator != "Exists":
            errs.add(f"{f}.operator", "must be 'Exists' when `key` is empty")
        if t.toleration_seconds is not None and t.effect != "NoExecute":
            errs.add(f"{f}.effect", "must be 'NoExecute' when `tolerationSeconds` is set")
    aff = spec.affinity.node_affinity if spec.affinity else None
    if aff is not None:
        terms = aff.required_during_scheduling_ignored_during_execution
        for i, term in enumerate(terms.node_selector_terms if terms else []):
            for j, e in enumerate(term.match_expressions):
                _node_req(errs, f"{field}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{i}].matchExpressions[{j}]", e)
        for i, pref in enumerate(aff.preferred_during_scheduling_ignored_during_execution):
            if not 1 <= pref.weight <= 100:
                errs.add(f"{field}.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[{i}].weight", "must be in the range 1-100")
            for j, e in enumerate(pref.preference.match_expressions):
                _node_req(errs, f"{field}.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[{i}].preference.matchExpressions[{j}]", e)


def _node_req(errs: Errors, field: str, e) -> None:
    ops = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")
    _enum(errs, f"{field}.operator", e.operator, ops)
    if e.operator in ("In", "NotIn") and not e.values:
        errs.add(f"{field}.values", "Required value: must be specified when `operator` is 'In' or 'NotIn'")
    if e.operator in ("Exists", "DoesNotExist") and e.values:
        errs.add(f"{field}.values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
    if e.operator in ("Gt", "Lt"):
        if len(e.values) != 1 or not re.match(r"^-?\d+$", e.values[0]):
            errs.add(f"{field}.values", "must be specified single integer value when `operator` is 'Lt' or 'Gt'")
    err = label_key_error(e.key)
    if err:
        errs.add(f"{field}.key", err)


def _pod(errs: Errors, pod: Pod) -> None:
    validate_pod_spec(errs, pod.spec, "spec")
    _enum(errs, "status.phase", pod.status.phase, ("Pending", "Running", "Succeeded", "Failed", "Unknown"))
    for i, c in enumerate(pod.status.conditions):
        _enum(errs, f"status.conditions[{i}].status", c.status, ("True", "False", "Unknown"))
    if pod.status.pod_ip:
        _ip(errs, "status.podIP", pod.status.pod_ip)


def _ip(errs: Errors, field: str, value: str) -> None:
    if not _is_ip(value):
        errs.add(field, f"must be a valid IP address, (e.g. 10.9.8.7), got {value!r}")


@lru_cache(maxsize=8192)
def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _template_workload(errs: Errors, obj: ReplicaSet | Deployment) -> None:
    spec = obj.spec
    _nonneg(errs, "spec.replicas", spec.replicas)
    _nonneg(errs, "spec.minReadySeconds", spec.min_ready_seconds)
    try:
        selector = selector_from_struct(spec.selector, "spec.selector")
    except SelectorError as exc:
        errs.add("spec.selector", str(exc))
        selector = None
    if selector is not None and selector.empty:
        errs.add("spec.selector", "Required value: empty selector is invalid for this kind")
    labels = spec.template.metadata.labels
    for k, v in labels.items():
        if label_key_error(k) or label_value_error(v):
            errs.add(f"spec.template.metadata.labels[{k}]", label_key_error(k) or label_value_error(v) or "")
    if selector is not None and not selector.empty and not selector.matches(labels):
        errs.add("spec.template.metadata.labels", "`selector` does not match template `labels`")
    validate_pod_spec(errs, spec.template.spec, "spec.template.spec")
    _enum(errs, "spec.template.spec.restartPolicy", spec.template.spec.restart_policy, ("Always",))


def _intstr(errs: Errors, field: str, value: int | str | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, int):
        if value < 0:
            errs.add(field, "must be greater than or equal to 0")
        return float(value)
    m = re.match(r"^(\d+)%$", value)
    if not m:
        errs.add(field, f"a valid percent string must be a numeric string followed by an ending '%', got {value!r}")
        return None
    if int(m.group(1)) > 100 and field.endswith("maxUnavailable"):
        errs.add(field, "must not be greater than 100%")
    return float(m.group(1))


def _replicaset(errs: Errors, rs: ReplicaSet) -> None:
    _template_workload(errs, rs)


def _deployment(errs: Errors, d: Deployment) -> None:
    _template_workload(errs, d)
    _nonneg(errs, "spec.revisionHistoryLimit", d.spec.revision_history_limit)
    if d.spec.progress_deadline_seconds is not None and d.spec.progress_deadline_seconds < 1:
        errs.add("spec.progressDeadlineSeconds", "must be greater than 0")
    strategy = d.spec.strategy
    if strategy is not None:
        _enum(errs, "spec.strategy.type", strategy.type, ("RollingUpdate", "Recreate"))
        ru = strategy.rolling_update
        if ru is not None:
            if strategy.type == "Recreate":
                errs.add("spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'")
            surge = _intstr(errs, "spec.strategy.rollingUpdate.maxSurge", ru.max_surge)
            unav = _intstr(errs, "spec.strategy.rollingUpdate.maxUnavailable", ru.max_unavailable)
            if surge == 0 and unav == 0:
                errs.add("spec.strategy.rollingUpdate.maxUnavailable", "may not be 0 when `maxSurge` is 0")


def _service(errs: Errors, svc: Service) -> None:
    spec = svc.spec
    _enum(errs, "spec.type", spec.type, ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"))
    _enum(errs, "spec.sessionAffinity", spec.session_affinity, ("None", "ClientIP"))
    if spec.type != "ExternalName" and not spec.ports:
        errs.add("spec.ports", "Required value")
    names: set[str] = set()
    for i, p in enumerate(spec.ports):
        f = f"spec.ports[{i}]"
        _port(errs, f"{f}.port", p.port)
        _port(errs, f"{f}.targetPort", p.target_port, allow_name=True)
        _enum(errs, f"{f}.protocol", p.protocol, ("TCP", "UDP", "SCTP"))
        if len(spec.ports) > 1 and not p.name:
            errs.add(f"{f}.name", "Required value: when there are multiple ports")
        if p.name:
            if p.name in names:
                errs.add(f"{f}.name", f'Duplicate value: "{p.name}"')
            names.add(p.name)
    for k, v in spec.selector.items():
        if label_key_error(k) or label_value_error(v):
            errs.add(f"spec.selector[{k}]", label_key_error(k) or label_value_error(v) or "")
    if spec.cluster_ip and spec.cluster_ip != "None":
        _ip(errs, "spec.clusterIP", spec.cluster_ip)


def _endpoints(errs: Errors, ep: Endpoints) -> None:
    for i, s in enumerate(ep.subsets):
        for part, addrs in (("addresses", s.addresses), ("notReadyAddresses", s.not_ready_addresses)):
            for j, a in enumerate(addrs):
                _ip(errs, f"subsets[{i}].{part}[{j}].ip", a.ip)
        for j, p in enumerate(s.ports):
            _port(errs, f"subsets[{i}].ports[{j}].port", p.port)
            _enum(errs, f"subsets[{i}].ports[{j}].protocol", p.protocol, ("TCP", "UDP", "SCTP"))


def _node(errs: Errors, node: Node) -> None:
    for i, t in enumerate(node.spec.taints):
        _enum(errs, f"spec.taints[{i}].effect", t.effect, ("NoSchedule", "PreferNoSchedule", "NoExecute"))
        err = label_key_error(t.key)
        if err:
            errs.add(f"spec.taints[{i}].key", err)
    for cidr in ([node.spec.pod_cidr] if node.spec.pod_cidr else []) + node.spec.pod_cidrs:
        try:
            ipaddress.ip_network(cidr)
        except ValueError:
            errs.add("spec.podCIDR", f"must be a valid CIDR, got {cidr!r}")
    for part in ("capacity", "allocatable"):
        for name, q in getattr(node.status, part).items():
            try:
                if parse_quantity(q) < 0:
                    errs.add(f"status.{part}[{name}]", "must be greater than or equal to 0")
            except QuantityError as exc:
                errs.add(f"status.{part}[{name}]", str(exc))


def _lease(errs: Errors, lease: Lease) -> None:
    if lease.spec.lease_duration_seconds is not None and lease.spec.lease_duration_seconds < 1:
        errs.add("spec.leaseDurationSeconds", "must be greater than 0")
    _nonneg(errs, "spec.leaseTransitions", lease.spec.lease_transitions)


def _event(errs: Errors, ev: Event) -> None:
    _enum(errs, "type", ev.type, ("Normal", "Warning"))
    if not ev.involved_object.name and not ev.involved_object.kind:
        errs.add("involvedObject", "Required value")
    if ev.reason is not None and len(ev.reason) > 128:
        errs.add("reason", "must be no more than 128 characters")
    if ev.message is not None and len(ev.message) > 4096:
        errs.add("message", "must be no more than 4096 characters")


def _namespace(errs: Errors, ns: Namespace) -> None:
    _enum(errs, "status.phase", ns.status.phase, ("Active", "Terminating"))


_KIND_CHECKS: dict[type, Callable[[Errors, TopObject], None]] = {
    Pod: _pod, ReplicaSet: _replicaset, Deployment: _deployment, Service: _service, Endpoints: _endpoints,
    Node: _node, Lease: _lease, Event: _event, Namespace: _namespace,
}


def validate(obj: TopObject, resource: Resource) -> None:
    """Raise ApiError(Invalid) naming the field(s) if `obj` is not a valid object of `resource`."""
    errs = Errors(resource.kind, obj.metadata.name or obj.metadata.generate_name or "")
    if obj.api_version != API_VERSIONS[resource.kind]:
        errs.add("apiVersion", f'must be "{API_VERSIONS[resource.kind]}" for kind {resource.kind}, got "{obj.api_version}"')
    validate_meta(errs, obj.metadata, resource)
    _KIND_CHECKS[type(obj)](errs, obj)
    errs.raise_if_any()
