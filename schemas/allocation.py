"""Allocation records of Service ClusterIPs and NodePorts: one object per allocated value in the state
log, written only by the API server (read-only kinds: get, list, watch).

`IPAddress` is Kubernetes 1.31+'s networking.k8s.io/v1 kind (name = the address). Kubernetes keeps
NodePorts in a bitmap; here they get the same per-value record, `ServiceNodePort` (name =
`<protocol>-<port>` in lower case, e.g. `tcp-30080`), so that creating the record is the one atomic
test-and-set that makes an allocation unique across API server replicas and restarts."""
from __future__ import annotations

import msgspec

from .base import API_VERSIONS, Model, TopObject


class ParentReference(Model):
    """The object holding the value. `uid` is Flotilla's addition to Kubernetes' shape: a Service
    deleted and created again under the same name must not inherit its predecessor's record."""

    group: str | None = None
    resource: str | None = None
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None


class IPAddressSpec(Model):
    parent_ref: ParentReference = msgspec.field(default_factory=ParentReference)


class IPAddress(TopObject):
    spec: IPAddressSpec = msgspec.field(default_factory=IPAddressSpec)


class ServiceNodePortSpec(Model):
    parent_ref: ParentReference = msgspec.field(default_factory=ParentReference)
    port: int = 0
    protocol: str = "TCP"


class ServiceNodePort(TopObject):
    spec: ServiceNodePortSpec = msgspec.field(default_factory=ServiceNodePortSpec)


API_VERSIONS.update(IPAddress="networking.k8s.io/v1", ServiceNodePort="networking.flotilla.io/v1")
