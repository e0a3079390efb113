"""What a Service's Endpoints should hold, computed from its matching pods (no I/O).

As Kubernetes' endpoints controller: every pod with an IP that is neither terminating nor finished
contributes one address per Service port it resolves; addresses with the same resolved port set
share a subset (RepackSubsets), and everything is sorted so equal inputs encode identically (the
controller compares encodings to skip writes that would change nothing).
"""
from __future__ import annotations

import msgspec

from schemas import EndpointAddress, EndpointPort, EndpointSubset, ObjectReference, Pod, Service
from services.lib.podutil import is_ready


class PortProblem(msgspec.Struct, frozen=True):
    """A pod that does not declare the container port a Service's named targetPort asks for."""

    pod: str        # namespace/name
    pod_uid: str
    port_name: str  # the Service port's name ("" when unnamed)
    target: str     # the targetPort name the pod lacks

    def message(self) -> str:
        port = f'service port "{self.port_name}"' if self.port_name else "the service port"
        return f'pod {self.pod} has no container port named "{self.target}" ({port} left without it)'


class Computed(msgspec.Struct):
    subsets: list[EndpointSubset]
    problems: list[PortProblem]


def pod_in_endpoints(pod: Pod) -> bool:
    """Kubernetes' ShouldPodBeInEndpoints without terminating pods: an IP, not deleting, not finished."""
    return bool(pod.status.pod_ip) and not pod.metadata.deletion_timestamp \
        and pod.status.phase not in ("Succeeded", "Failed")


def resolve_port(pod: Pod, target: int | str | None, port: int, protocol: str) -> int | None:
    """The pod's port for a Service port (podutil.FindPort): a number as given, a name looked up in
    the containers' ports (same protocol), none given means the Service port itself."""
    if target is None or target == 0 or target == "":
        return port
    if isinstance(target, int):
        return target
    if target.isdigit():  # an IntOrString that arrived as a string of digits
        return int(target)
    for c in pod.spec.containers:
        for cp in c.ports:
            if cp.name == target and (cp.protocol or "TCP") == protocol:
                return cp.container_port
    return None


def _address(pod: Pod) -> EndpointAddress:
    m = pod.metadata
    return EndpointAddress(ip=pod.status.pod_ip or "", node_name=pod.spec.node_name,
                           target_ref=ObjectReference(kind="Pod", namespace=m.namespace, name=m.name, uid=m.uid))


def _port_key(p: EndpointPort) -> tuple[str, int, str]:
    return (p.name or "", p.port, p.protocol)


def _addr_key(a: EndpointAddress) -> tuple[tuple[int, ...] | str, str]:
    # Numeric order for IPv4 (127.64.0.10 after 127.64.0.9), text otherwise; the uid breaks ties.
    parts = a.ip.split(".")
    ip: tuple[int, ...] | str = tuple(int(x) for x in parts) if len(parts) == 4 and all(x.isdigit() for x in parts) \
        else a.ip
    return ip, (a.target_ref.uid if a.target_ref else "") or ""


def compute(svc: Service, pods: list[Pod]) -> Computed:
    """The subsets for `svc` given the pods its selector matches (the caller did the matching)."""
    publish_all = bool(svc.spec.publish_not_ready_addresses)
    groups: dict[tuple[tuple[str, int, str], ...], tuple[list[EndpointAddress], list[EndpointAddress], list[EndpointPort]]] = {}
    problems: list[PortProblem] = []
    for pod in pods:
        if not pod_in_endpoints(pod):
            continue
        ports: list[EndpointPort] = []
        for sp in svc.spec.ports:
            protocol = sp.protocol or "TCP"
            num = resolve_port(pod, sp.target_port, sp.port, protocol)
            if num is None:
                problems.append(PortProblem(pod=f"{pod.metadata.namespace}/{pod.metadata.name}",
                                            pod_uid=pod.metadata.uid or "", port_name=sp.name or "",
                                            target=str(sp.target_port)))
                continue
            ports.append(EndpointPort(port=num, name=sp.name, protocol=protocol, app_protocol=sp.app_protocol))
        if svc.spec.ports and not ports:
            continue  # resolves none of the ports: nothing to reach it on
        ports.sort(key=_port_key)
        key = tuple(_port_key(p) for p in ports)
        ready, not_ready, _ = groups.setdefault(key, ([], [], ports))
        (ready if publish_all or is_ready(pod) else not_ready).append(_address(pod))
    subsets = []
    for key in sorted(groups):
        ready, not_ready, ports = groups[key]
        ready.sort(key=_addr_key)
        not_ready.sort(key=_addr_key)
        subsets.append(EndpointSubset(addresses=ready, not_ready_addresses=not_ready, ports=ports))
    problems.sort(key=lambda p: (p.pod, p.port_name))
    return Computed(subsets=subsets, problems=problems)
