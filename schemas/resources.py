"""The resource registry: names, kinds, scope, state-log keys and API subjects of every kind."""
from __future__ import annotations

from typing import Any, Callable

import msgspec

from .allocation import IPAddress, ServiceNodePort
from .base import TopObject
from .cluster import Endpoints, Event, Namespace, Node, Service
from .pod import Pod
from .workloads import Deployment, Lease, ReplicaSet

API_PREFIX = "flo.api.v1"
CLUSTER_NS_TOKEN = "_"  # namespace token in keys of cluster-scoped objects
DEFAULT_BUCKET = "flotilla"
SYSTEM_NAMESPACE = "flotilla-system"
NODE_LEASE_NAMESPACE = "flotilla-node-lease"
DEFAULT_NAMESPACES = ("default", SYSTEM_NAMESPACE, NODE_LEASE_NAMESPACE)

READ_ONLY_VERBS = ("get", "list", "watch")  # kinds only the API server itself writes
VERBS = ("create", "get", "list", "update", "patch", "delete", "status", "watch", "bind", "scale")


def _meta(path: str) -> Callable[[Any], str]:
    return lambda o: getattr(o.metadata, path) or ""


_COMMON_FIELDS: dict[str, Callable[[Any], str]] = {
    "metadata.name": _meta("name"),
    "metadata.namespace": _meta("namespace"),
}


class Resource(msgspec.Struct, frozen=True):
    name: str  # plural, lower case: "pods"
    kind: str
    type: type
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("create", "get", "list", "update", "patch", "delete", "status", "watch")
    fields: dict[str, Callable[[Any], str]] = msgspec.field(default_factory=dict)
    events_bucket: bool = False  # lives in the short-lived events bucket

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def api_version(self) -> str:
        return _API_VERSION[self.kind]

    @property
    def field_getters(self) -> dict[str, Callable[[Any], str]]:
        return {**_COMMON_FIELDS, **self.fields}

    def subject(self, verb: str, node: str | None = None, user: str | None = None) -> str:
        """The subject names the caller (the API server authorizes that principal, NATS permissions
        make sure only it publishes there): node-scoped for node agents, user-scoped for every other
        identity, plain for the admin."""
        if node:
            return f"{API_PREFIX}.node.{node}.{self.name}.{verb}"
        if user:
            return f"{API_PREFIX}.user.{user}.{self.name}.{verb}"
        return f"{API_PREFIX}.{self.name}.{verb}"

    def key(self, namespace: str | None, name: str) -> str:
        return f"{self.name}.{namespace if self.namespaced else CLUSTER_NS_TOKEN}.{encode_name(name)}"

    def key_prefix(self, namespace: str | None = None) -> str:
        if namespace and self.namespaced:
            return f"{self.name}.{namespace}."
        return f"{self.name}."


def encode_name(name: str) -> str:
    """Object names are DNS-1123 subdomains: dots become '_' (never valid in a name), so keys reverse."""
    return name.replace(".", "_")


def decode_key(key: str) -> tuple[str, str | None, str]:
    """`pods.default.web_1` -> ("pods", "default", "web.1"); cluster-scoped namespace -> None."""
    resource, ns, enc = key.split(".", 2)
    return resource, (None if ns == CLUSTER_NS_TOKEN else ns), enc.replace("_", ".")


from .base import API_VERSIONS as _API_VERSION  # noqa: E402

RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("namespaces", "Namespace", Namespace, False, ("ns",),
                 fields={"status.phase": lambda o: o.status.phase or ""}),
        Resource("nodes", "Node", Node, False, ("no",),
                 fields={"spec.unschedulable": lambda o: "true" if o.spec.unschedulable else "false"}),
        Resource("pods", "Pod", Pod, True, ("po",),
                 verbs=("create", "get", "list", "update", "patch", "delete", "status", "watch", "bind"),
                 fields={"spec.nodeName": lambda o: o.spec.node_name or "",
                         "status.phase": lambda o: o.status.phase or "",
                         "spec.restartPolicy": lambda o: o.spec.restart_policy or "",
                         "status.podIP": lambda o: o.status.pod_ip or ""}),
        Resource("replicasets", "ReplicaSet", ReplicaSet, True, ("rs",),
                 verbs=("create", "get", "list", "update", "patch", "delete", "status", "watch", "scale")),
        Resource("deployments", "Deployment", Deployment, True, ("deploy",),
                 verbs=("create", "get", "list", "update", "patch", "delete", "status", "watch", "scale")),
        Resource("services", "Service", Service, True, ("svc",)),
        Resource("endpoints", "Endpoints", Endpoints, True, ("ep",)),
        Resource("leases", "Lease", Lease, True, ()),
        Resource("events", "Event", Event, True, ("ev",), events_bucket=True,
                 fields={"involvedObject.kind": lambda o: o.involved_object.kind or "",
                         "involvedObject.name": lambda o: o.involved_object.name or "",
                         "involvedObject.namespace": lambda o: o.involved_object.namespace or "",
                         "involvedObject.uid": lambda o: o.involved_object.uid or "",
                         "reason": lambda o: o.reason or "",
                         "type": lambda o: o.type or ""}),
        # Allocation records of Service ClusterIPs and NodePorts (schemas/allocation.py): users may
        # look, only the API server writes them.
        Resource("ipaddresses", "IPAddress", IPAddress, False, ("ip",), verbs=READ_ONLY_VERBS),
        Resource("servicenodeports", "ServiceNodePort", ServiceNodePort, False, (), verbs=READ_ONLY_VERBS),
    )
}

BY_KIND: dict[str, Resource] = {r.kind: r for r in RESOURCES.values()}


def lookup(word: str) -> Resource:
    """Find a resource by plural, singular, kind or short name (`pods`, `pod`, `Pod`, `po`)."""
    w = word.lower()
    for r in RESOURCES.values():
        if w in (r.name, r.kind.lower(), r.name.rstrip("s"), *r.short_names):
            return r
    if w == "endpoint":
        return RESOURCES["endpoints"]
    raise KeyError(word)


def new_object(resource: Resource) -> TopObject:
    return resource.type()
