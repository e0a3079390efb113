"""The node restriction: a node agent (on `flo.api.v1.node.<node>.…`) may touch only its own Node,
its own Lease, the pods bound to it, and events; it may read services, endpoints and namespaces."""
from __future__ import annotations

from schemas import NODE_LEASE_NAMESPACE, ApiError, Resource

READ = ("get", "list", "watch")


def forbidden(node: str, verb: str, resource: Resource, why: str) -> ApiError:
    return ApiError("Forbidden", f'node "{node}" cannot {verb} {resource.name}: {why}')


def check_request(node: str, resource: Resource, verb: str, namespace: str | None, name: str | None,
                  field_selector: str | None = None) -> None:
    """Checks that need no stored object; pod ownership is checked by `check_pod` afterwards."""
    r = resource.name
    if r in ("services", "endpoints", "namespaces") and verb in READ:
        return
    if r == "events" and verb in ("create", "update", "patch", "get", "list"):
        return
    if r == "nodes":
        if verb in READ:
            return
        if name == node and verb in ("create", "get", "update", "status", "patch"):
            return
        raise forbidden(node, verb, resource, "a node may only modify its own Node object")
    if r == "leases":
        if namespace == NODE_LEASE_NAMESPACE and name == node and verb in ("create", "get", "update", "patch"):
            return
        raise forbidden(node, verb, resource, f'only the lease "{NODE_LEASE_NAMESPACE}/{node}" is allowed')
    if r == "pods":
        if verb in ("list", "watch"):
            if field_selector and f"spec.nodeName={node}" in [t.strip().replace("==", "=") for t in field_selector.split(",")]:
                return
            raise forbidden(node, verb, resource, f"a node may only {verb} pods with fieldSelector spec.nodeName={node}")
        if verb in ("get", "status", "delete", "patch"):
            return  # ownership checked against the stored pod
        raise forbidden(node, verb, resource, "node agents may only read, delete and write the status of their pods")
    raise forbidden(node, verb, resource, "not allowed for node agents")


def check_pod(node: str, verb: str, resource: Resource, bound_to: str | None) -> None:
    if bound_to != node:
        raise forbidden(node, verb, resource, f"the pod is not bound to this node (spec.nodeName={bound_to or '<none>'})")
