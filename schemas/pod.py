"""Pod (core/v1): the fields real manifests use, acted on or only stored (see docs/api.md)."""
from __future__ import annotations



import msgspec

from .base import API_VERSIONS, Condition, LabelSelector, Model, ObjectMeta, TopObject

Quantity = str | int | float
IntOrString = int | str


class ObjectFieldSelector(Model):
    field_path: str
    api_version: str | None = None


class ResourceFieldSelector(Model):
    resource: str
    container_name: str | None = None
    divisor: Quantity | None = None


class KeySelector(Model):
    key: str
    name: str | None = None
    optional: bool | None = None


class EnvVarSource(Model):
    field_ref: ObjectFieldSelector | None = None
    resource_field_ref: ResourceFieldSelector | None = None
    config_map_key_ref: KeySelector | None = None
    secret_key_ref: KeySelector | None = None


class EnvVar(Model):
    name: str
    value: str | None = None
    value_from: EnvVarSource | None = None


class NamedRef(Model):
    name: str | None = None
    optional: bool | None = None


class EnvFromSource(Model):
    prefix: str | None = None
    config_map_ref: NamedRef | None = None
    secret_ref: NamedRef | None = None


class ContainerPort(Model):
    container_port: int
    name: str | None = None
    protocol: str = "TCP"
    host_port: int | None = None
    host_ip: str | None = msgspec.field(default=None, name="hostIP")


class ResourceRequirements(Model):
    requests: dict[str, Quantity] = msgspec.field(default_factory=dict)
    limits: dict[str, Quantity] = msgspec.field(default_factory=dict)


class VolumeMount(Model):
    name: str
    mount_path: str
    read_only: bool | None = None
    sub_path: str | None = None
    mount_propagation: str | None = None


class ExecAction(Model):
    command: list[str] = msgspec.field(default_factory=list)


class HTTPHeader(Model):
    name: str
    value: str


class HTTPGetAction(Model):
    port: IntOrString
    path: str | None = None
    host: str | None = None
    scheme: str | None = None
    http_headers: list[HTTPHeader] = msgspec.field(default_factory=list)


class TCPSocketAction(Model):
    port: IntOrString
    host: str | None = None


class GRPCAction(Model):
    port: int
    service: str | None = None


class Probe(Model):
    exec: ExecAction | None = None
    http_get: HTTPGetAction | None = None
    tcp_socket: TCPSocketAction | None = None
    grpc: GRPCAction | None = None
    initial_delay_seconds: int | None = None
    timeout_seconds: int | None = None
    period_seconds: int | None = None
    success_threshold: int | None = None
    failure_threshold: int | None = None
    termination_grace_period_seconds: int | None = None


class LifecycleHandler(Model):
    exec: ExecAction | None = None
    http_get: HTTPGetAction | None = None
    tcp_socket: TCPSocketAction | None = None


class Lifecycle(Model):
    post_start: LifecycleHandler | None = None
    pre_stop: LifecycleHandler | None = None


class Capabilities(Model):
    add: list[str] = msgspec.field(default_factory=list)
    drop: list[str] = msgspec.field(default_factory=list)


class SecurityContext(Model):
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None
    privileged: bool | None = None
    read_only_root_filesystem: bool | None = None
    allow_privilege_escalation: bool | None = None
    capabilities: Capabilities | None = None
    se_linux_options: dict[str, str] | None = msgspec.field(default=None, name="seLinuxOptions")
    seccomp_profile: dict[str, str] | None = None


class PodSecurityContext(Model):
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None
    fs_group: int | None = None
    supplemental_groups: list[int] = msgspec.field(default_factory=list)
    sysctls: list[dict[str, str]] = msgspec.field(default_factory=list)
    se_linux_options: dict[str, str] | None = msgspec.field(default=None, name="seLinuxOptions")
    seccomp_profile: dict[str, str] | None = None


class Container(Model):
    name: str
    image: str | None = None
    command: list[str] = msgspec.field(default_factory=list)
    args: list[str] = msgspec.field(default_factory=list)
    working_dir: str | None = None
    ports: list[ContainerPort] = msgspec.field(default_factory=list)
    env: list[EnvVar] = msgspec.field(default_factory=list)
    env_from: list[EnvFromSource] = msgspec.field(default_factory=list)
    resources: ResourceRequirements = msgspec.field(default_factory=ResourceRequirements)
    volume_mounts: list[VolumeMount] = msgspec.field(default_factory=list)
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    startup_probe: Probe | None = None
    lifecycle: Lifecycle | None = None
    image_pull_policy: str | None = None
    security_context: SecurityContext | None = None
    termination_message_path: str | None = None
    termination_message_policy: str | None = None
    stdin: bool | None = None
    stdin_once: bool | None = None
    tty: bool | None = None


class EmptyDirVolumeSource(Model):
    medium: str | None = None
    size_limit: Quantity | None = None


class HostPathVolumeSource(Model):
    path: str
    type: str | None = None


class KeyToPath(Model):
    key: str
    path: str
    mode: int | None = None


class ConfigMapVolumeSource(Model):
    name: str | None = None
    items: list[KeyToPath] = msgspec.field(default_factory=list)
    default_mode: int | None = None
    optional: bool | None = None


class SecretVolumeSource(Model):
    secret_name: str | None = None
    items: list[KeyToPath] = msgspec.field(default_factory=list)
    default_mode: int | None = None
    optional: bool | None = None


class PVCVolumeSource(Model):
    claim_name: str
    read_only: bool | None = None


class Volume(Model):
    name: str
    empty_dir: EmptyDirVolumeSource | None = None
    host_path: HostPathVolumeSource | None = None
    config_map: ConfigMapVolumeSource | None = None
    secret: SecretVolumeSource | None = None
    persistent_volume_claim: PVCVolumeSource | None = None


class Toleration(Model):
    key: str | None = None
    operator: str | None = None
    value: str | None = None
    effect: str | None = None
    toleration_seconds: int | None = None


class NodeSelectorRequirement(Model):
    key: str
    operator: str
    values: list[str] = msgspec.field(default_factory=list)


class NodeSelectorTerm(Model):
    match_expressions: list[NodeSelectorRequirement] = msgspec.field(default_factory=list)
    match_fields: list[NodeSelectorRequirement] = msgspec.field(default_factory=list)


class NodeSelector(Model):
    node_selector_terms: list[NodeSelectorTerm] = msgspec.field(default_factory=list)


class PreferredSchedulingTerm(Model):
    weight: int
    preference: NodeSelectorTerm


class NodeAffinity(Model):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = msgspec.field(
        default_factory=list
    )


class PodAffinityTerm(Model):
    topology_key: str
    label_selector: LabelSelector | None = None
    namespaces: list[str] = msgspec.field(default_factory=list)
    namespace_selector: LabelSelector | None = None


class WeightedPodAffinityTerm(Model):
    weight: int
    pod_affinity_term: PodAffinityTerm


class PodAffinity(Model):
    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = msgspec.field(default_factory=list)
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = msgspec.field(
        default_factory=list
    )


class Affinity(Model):
    node_affinity: NodeAffinity | None = None
    pod_affinity: PodAffinity | None = None
    pod_anti_affinity: PodAffinity | None = None


class TopologySpreadConstraint(Model):
    max_skew: int
    topology_key: str
    when_unsatisfiable: str
    label_selector: LabelSelector | None = None
    min_domains: int | None = None


class LocalObjectReference(Model):
    name: str | None = None


class PodSpec(Model):
    containers: list[Container] = msgspec.field(default_factory=list)
    init_containers: list[Container] = msgspec.field(default_factory=list)
    restart_policy: str | None = None
    node_name: str | None = None
    node_selector: dict[str, str] = msgspec.field(default_factory=dict)
    affinity: Affinity | None = None
    tolerations: list[Toleration] = msgspec.field(default_factory=list)
    topology_spread_constraints: list[TopologySpreadConstraint] = msgspec.field(default_factory=list)
    termination_grace_period_seconds: int | None = None
    active_deadline_seconds: int | None = None
    volumes: list[Volume] = msgspec.field(default_factory=list)
    scheduler_name: str | None = None
    priority: int | None = None
    priority_class_name: str | None = None
    service_account_name: str | None = None
    automount_service_account_token: bool | None = None
    host_network: bool | None = None
    host_pid: bool | None = msgspec.field(default=None, name="hostPID")
    host_ipc: bool | None = msgspec.field(default=None, name="hostIPC")
    hostname: str | None = None
    subdomain: str | None = None
    dns_policy: str | None = None
    enable_service_links: bool | None = None
    image_pull_secrets: list[LocalObjectReference] = msgspec.field(default_factory=list)
    security_context: PodSecurityContext | None = None
    share_process_namespace: bool | None = None
    readiness_gates: list[dict[str, str]] = msgspec.field(default_factory=list)


class PodTemplateSpec(Model):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: PodSpec = msgspec.field(default_factory=PodSpec)


class ContainerStateWaiting(Model):
    reason: str | None = None
    message: str | None = None


class ContainerStateRunning(Model):
    started_at: str | None = None


class ContainerStateTerminated(Model):
    exit_code: int
    signal: int | None = None
    reason: str | None = None
    message: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    container_id: str | None = msgspec.field(default=None, name="containerID")


class ContainerState(Model):
    waiting: ContainerStateWaiting | None = None
    running: ContainerStateRunning | None = None
    terminated: ContainerStateTerminated | None = None


class ContainerStatus(Model):
    name: str
    ready: bool = False
    restart_count: int = 0
    state: ContainerState = msgspec.field(default_factory=ContainerState)
    last_state: ContainerState = msgspec.field(default_factory=ContainerState)
    image: str | None = None
    image_id: str | None = msgspec.field(default=None, name="imageID")
    container_id: str | None = msgspec.field(default=None, name="containerID")
    started: bool | None = None


class PodIP(Model):
    ip: str


class PodStatus(Model):
    phase: str | None = None
    conditions: list[Condition] = msgspec.field(default_factory=list)
    message: str | None = None
    reason: str | None = None
    host_ip: str | None = msgspec.field(default=None, name="hostIP")
    pod_ip: str | None = msgspec.field(default=None, name="podIP")
    pod_ips: list[PodIP] = msgspec.field(default_factory=list, name="podIPs")
    start_time: str | None = None
    container_statuses: list[ContainerStatus] = msgspec.field(default_factory=list)
    init_container_statuses: list[ContainerStatus] = msgspec.field(default_factory=list)
    qos_class: str | None = None
    nominated_node_name: str | None = None


class Pod(TopObject):
    spec: PodSpec = msgspec.field(default_factory=PodSpec)
    status: PodStatus = msgspec.field(default_factory=PodStatus)


class PodTemplate(TopObject):
    template: PodTemplateSpec = msgspec.field(default_factory=PodTemplateSpec)


API_VERSIONS.update(Pod="v1", PodTemplate="v1")

