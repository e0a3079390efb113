"""Cluster-level and networking kinds of core/v1: Namespace, Node, Service, Endpoints, Event."""
from __future__ import annotations

import msgspec

from .base import API_VERSIONS, Condition, Model, TopObject
from .pod import IntOrString, Quantity, Toleration


class NamespaceSpec(Model):
    finalizers: list[str] = msgspec.field(default_factory=list)


class NamespaceStatus(Model):
    phase: str | None = None
    conditions: list[Condition] = msgspec.field(default_factory=list)


class Namespace(TopObject):
    spec: NamespaceSpec = msgspec.field(default_factory=NamespaceSpec)
    status: NamespaceStatus = msgspec.field(default_factory=NamespaceStatus)


class Taint(Model):
    key: str
    effect: str
    value: str | None = None
    time_added: str | None = None


def tolerates(toleration: Toleration, taint: Taint) -> bool:
    """Kubernetes' Toleration.ToleratesTaint (an empty effect matches every effect; Exists with no
    key matches every taint)."""
    if toleration.effect and toleration.effect != taint.effect:
        return False
    if toleration.operator == "Exists":
        return not toleration.key or toleration.key == taint.key
    return toleration.key == taint.key and (toleration.value or "") == (taint.value or "")


class NodeSpec(Model):
    pod_cidr: str | None = msgspec.field(default=None, name="podCIDR")
    pod_cidrs: list[str] = msgspec.field(default_factory=list, name="podCIDRs")
    unschedulable: bool | None = None
    taints: list[Taint] = msgspec.field(default_factory=list)
    provider_id: str | None = msgspec.field(default=None, name="providerID")


class NodeAddress(Model):
    type: str
    address: str


class NodeSystemInfo(Model):
    machine_id: str | None = msgspec.field(default=None, name="machineID")
    system_uuid: str | None = msgspec.field(default=None, name="systemUUID")
    boot_id: str | None = msgspec.field(default=None, name="bootID")
    kernel_version: str | None = None
    os_image: str | None = None
    container_runtime_version: str | None = None
    kubelet_version: str | None = None
    kube_proxy_version: str | None = None
    operating_system: str | None = None
    architecture: str | None = None


class DaemonEndpoint(Model):
    port: int = 0


class NodeDaemonEndpoints(Model):
    kubelet_endpoint: DaemonEndpoint | None = None


class NodeStatus(Model):
    capacity: dict[str, Quantity] = msgspec.field(default_factory=dict)
    allocatable: dict[str, Quantity] = msgspec.field(default_factory=dict)
    conditions: list[Condition] = msgspec.field(default_factory=list)
    addresses: list[NodeAddress] = msgspec.field(default_factory=list)
    node_info: NodeSystemInfo | None = None
    daemon_endpoints: NodeDaemonEndpoints | None = None
    phase: str | None = None


class Node(TopObject):
    spec: NodeSpec = msgspec.field(default_factory=NodeSpec)
    status: NodeStatus = msgspec.field(default_factory=NodeStatus)


class ServicePort(Model):
    port: int
    name: str | None = None
    protocol: str = "TCP"
    target_port: IntOrString | None = None
    node_port: int | None = None
    app_protocol: str | None = None


class ServiceSpec(Model):
    selector: dict[str, str] = msgspec.field(default_factory=dict)
    ports: list[ServicePort] = msgspec.field(default_factory=list)
    type: str | None = None
    cluster_ip: str | None = msgspec.field(default=None, name="clusterIP")
    cluster_ips: list[str] = msgspec.field(default_factory=list, name="clusterIPs")
    external_name: str | None = None
    external_ips: list[str] = msgspec.field(default_factory=list, name="externalIPs")
    session_affinity: str | None = None
    publish_not_ready_addresses: bool | None = None
    ip_families: list[str] = msgspec.field(default_factory=list)
    ip_family_policy: str | None = None
    internal_traffic_policy: str | None = None
    external_traffic_policy: str | None = None
    load_balancer_ip: str | None = msgspec.field(default=None, name="loadBalancerIP")


class LoadBalancerIngress(Model):
    ip: str | None = None
    hostname: str | None = None


class LoadBalancerStatus(Model):
    ingress: list[LoadBalancerIngress] = msgspec.field(default_factory=list)


class ServiceStatus(Model):
    load_balancer: LoadBalancerStatus | None = None
    conditions: list[Condition] = msgspec.field(default_factory=list)


class Service(TopObject):
    spec: ServiceSpec = msgspec.field(default_factory=ServiceSpec)
    status: ServiceStatus = msgspec.field(default_factory=ServiceStatus)


class ObjectReference(Model):
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None
    api_version: str | None = None
    resource_version: str | None = None
    field_path: str | None = None


class EndpointAddress(Model):
    ip: str
    hostname: str | None = None
    node_name: str | None = None
    target_ref: ObjectReference | None = None


class EndpointPort(Model):
    port: int
    name: str | None = None
    protocol: str = "TCP"
    app_protocol: str | None = None


class EndpointSubset(Model):
    addresses: list[EndpointAddress] = msgspec.field(default_factory=list)
    not_ready_addresses: list[EndpointAddress] = msgspec.field(default_factory=list)
    ports: list[EndpointPort] = msgspec.field(default_factory=list)


class Endpoints(TopObject):
    subsets: list[EndpointSubset] = msgspec.field(default_factory=list)


class EventSource(Model):
    component: str | None = None
    host: str | None = None


class EventSeries(Model):
    count: int = 0
    last_observed_time: str | None = None


class Event(TopObject):
    involved_object: ObjectReference = msgspec.field(default_factory=ObjectReference)
    reason: str | None = None
    message: str | None = None
    type: str | None = None
    source: EventSource | None = None
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    count: int | None = None
    event_time: str | None = None
    action: str | None = None
    related: ObjectReference | None = None
    reporting_component: str | None = None
    reporting_instance: str | None = None
    series: EventSeries | None = None


API_VERSIONS.update(Namespace="v1", Node="v1", Service="v1", Endpoints="v1", Event="v1")
