"""Server-side defaulting, Kubernetes' defaults (restartPolicy Always, grace 30 s, probe defaults, …)."""
from __future__ import annotations

import msgspec

from schemas import TopObject
from schemas.cluster import Namespace, Service
from schemas.pod import Container, EmptyDirVolumeSource, Pod, PodSpec, Probe, Toleration
from schemas.quantity import QuantityError, parse_quantity
from schemas.workloads import (Deployment, DeploymentStrategy, ReplicaSet, RollingUpdateDeployment)


def _probe(p: Probe | None) -> None:
    if p is None:
        return
    p.initial_delay_seconds = p.initial_delay_seconds if p.initial_delay_seconds is not None else 0
    p.timeout_seconds = p.timeout_seconds or 1
    p.period_seconds = p.period_seconds or 10
    p.success_threshold = p.success_threshold or 1
    p.failure_threshold = p.failure_threshold or 3
    if p.http_get is not None:
        p.http_get.path = p.http_get.path or "/"
        p.http_get.scheme = p.http_get.scheme or "HTTP"


def _container(c: Container) -> None:
    if c.image and c.image_pull_policy is None:
        tag = c.image.rsplit("/", 1)[-1]
        c.image_pull_policy = "Always" if ":" not in tag or tag.endswith(":latest") else "IfNotPresent"
    c.termination_message_path = c.termination_message_path or "/dev/termination-log"
    c.termination_message_policy = c.termination_message_policy or "File"
    for port in c.ports:
        port.protocol = port.protocol or "TCP"
    # Kubernetes: a limit without a request means request = limit.
    for name, value in c.resources.limits.items():
        c.resources.requests.setdefault(name, value)
    for p in (c.liveness_probe, c.readiness_probe, c.startup_probe):
        _probe(p)


def default_pod_spec(spec: PodSpec) -> None:
    spec.restart_policy = spec.restart_policy or "Always"
    if spec.termination_grace_period_seconds is None:
        spec.termination_grace_period_seconds = 30
    spec.dns_policy = spec.dns_policy or "ClusterFirst"
    spec.scheduler_name = spec.scheduler_name or "default-scheduler"
    if spec.enable_service_links is None:
        spec.enable_service_links = True
    for c in spec.containers + spec.init_containers:
        _container(c)
    for v in spec.volumes:
        # Kubernetes: a volume with no source is an emptyDir.
        if v.empty_dir is None and v.host_path is None and v.config_map is None and v.secret is None \
                and v.persistent_volume_claim is None:
            v.empty_dir = EmptyDirVolumeSource()


def qos_class(spec: PodSpec) -> str:
    """Guaranteed: every container has equal cpu+memory requests and limits; BestEffort: none set."""
    any_set, guaranteed = False, True
    for c in spec.containers:
        r = c.resources
        if r.requests or r.limits:
            any_set = True
        for res in ("cpu", "memory"):
            lim, req = r.limits.get(res), r.requests.get(res)
            try:
                if lim is None or req is None or parse_quantity(lim) != parse_quantity(req):
                    guaranteed = False
            except QuantityError:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _strategy(d: Deployment) -> None:
    s = d.spec.strategy or DeploymentStrategy()
    s.type = s.type or "RollingUpdate"
    if s.type == "RollingUpdate":
        ru = s.rolling_update or RollingUpdateDeployment()
        ru.max_surge = ru.max_surge if ru.max_surge is not None else "25%"
        ru.max_unavailable = ru.max_unavailable if ru.max_unavailable is not None else "25%"
        s.rolling_update = ru
    d.spec.strategy = s


class PodDefaults(msgspec.Struct, frozen=True):
    """The API server's configurable pod defaults (flags of `python -m services.apiserver`)."""

    # Kubernetes' DefaultTolerationSeconds admission uses 300 s; Flotilla heals faster by default.
    not_ready_toleration_seconds: int = 10
    unreachable_toleration_seconds: int = 10


NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"


def _tolerates_no_execute(spec: PodSpec, key: str) -> bool:
    """Some toleration already names `key` (or no key) with effect NoExecute (or none): Kubernetes'
    DefaultTolerationSeconds admission then adds nothing, whatever its tolerationSeconds."""
    return any((not t.key or t.key == key) and (not t.effect or t.effect == "NoExecute") for t in spec.tolerations)


def default_tolerations(spec: PodSpec, pods: PodDefaults) -> None:
    """Kubernetes' DefaultTolerationSeconds admission: a pod stays on a not-ready or unreachable node
    only this long before the node lifecycle controller evicts it."""
    for key, seconds in ((NOT_READY_TAINT, pods.not_ready_toleration_seconds),
                         (UNREACHABLE_TAINT, pods.unreachable_toleration_seconds)):
        if not _tolerates_no_execute(spec, key):
            spec.tolerations.append(Toleration(key=key, operator="Exists", effect="NoExecute",
                                               toleration_seconds=seconds))


def apply_defaults(obj: TopObject, pods: PodDefaults = PodDefaults(), creating: bool | None = None) -> None:
    """`creating`: the object is being created (None: judged from it having no uid yet, which the
    API server clears on create and keeps on update)."""
    if isinstance(obj, Pod):
        default_pod_spec(obj.spec)
        # Only on create, as an admission plugin: on update the tolerations are the stored pod's
        # (adding them then would change a pod's spec behind its writer's back).
        if creating if creating is not None else obj.metadata.uid is None:
            default_tolerations(obj.spec, pods)
    elif isinstance(obj, (ReplicaSet, Deployment)):
        if obj.spec.replicas is None:
            obj.spec.replicas = 1
        if not obj.spec.selector.match_labels and not obj.spec.selector.match_expressions \
                and obj.spec.template.metadata.labels:
            obj.spec.selector.match_labels = dict(obj.spec.template.metadata.labels)
        default_pod_spec(obj.spec.template.spec)
        if isinstance(obj, Deployment):
            _strategy(obj)
            if obj.spec.revision_history_limit is None:
                obj.spec.revision_history_limit = 10
            if obj.spec.progress_deadline_seconds is None:
                obj.spec.progress_deadline_seconds = 600
            if obj.spec.min_ready_seconds is None:
                obj.spec.min_ready_seconds = 0
    elif isinstance(obj, Service):
        obj.spec.type = obj.spec.type or "ClusterIP"
        obj.spec.session_affinity = obj.spec.session_affinity or "None"
        for p in obj.spec.ports:
            p.protocol = p.protocol or "TCP"
            if p.target_port is None:
                p.target_port = p.port
    elif isinstance(obj, Namespace):
        obj.status.phase = obj.status.phase or "Active"
