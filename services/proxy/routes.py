"""The routing table: what each Service port forwards to, and which endpoint the next connection gets.

Pure data, no sockets: the proxy rebuilds a service's routes whenever its Service or Endpoints change
and the listeners look the route up for every new connection, so a change applies at once."""
from __future__ import annotations

import time

import msgspec

from schemas.cluster import Endpoints, EndpointSubset, Service, ServicePort

# Kubernetes' default sessionAffinityConfig.clientIP.timeoutSeconds (3 hours).
AFFINITY_TIMEOUT = 10800.0

Endpoint = tuple[str, int]


class Listen(msgspec.Struct, frozen=True):
    """One socket the proxy must listen on, and the route it serves."""
    ip: str
    port: int
    route: str


def route_key(service_key: str, port: ServicePort) -> str:
    return f"{service_key}:{port.name or port.port}"


def _subset_port(subset: EndpointSubset, port: ServicePort) -> int | None:
    """The subset's port for this service port: the one with the same name, else the only one."""
    want = port.name or ""
    for p in subset.ports:
        if (p.name or "") == want and p.protocol == port.protocol:
            return p.port
    if len(subset.ports) == 1 and subset.ports[0].protocol == port.protocol:
        return subset.ports[0].port
    return None


def ready_endpoints(endpoints: Endpoints | None, port: ServicePort) -> list[Endpoint]:
    if endpoints is None:
        return []
    out: list[Endpoint] = []
    for subset in endpoints.subsets:
        target = _subset_port(subset, port)
        if target is None:
            continue
        for addr in subset.addresses:
            if (addr.ip, target) not in out:
                out.append((addr.ip, target))
    return out


def proxied(svc: Service) -> bool:
    ip = svc.spec.cluster_ip
    return bool(ip) and ip != "None" and svc.spec.type != "ExternalName"


def listens(service_key: str, svc: Service, nodeport_addresses: list[str]) -> list[Listen]:
    """Every socket this Service needs: clusterIP:port, and <address>:nodePort for NodePort/LoadBalancer."""
    if not proxied(svc):
        return []
    out: list[Listen] = []
    for port in svc.spec.ports:
        if port.protocol != "TCP":  # UDP/SCTP are not proxied (yet)
            continue
        key = route_key(service_key, port)
        out.append(Listen(svc.spec.cluster_ip or "", port.port, key))
        if svc.spec.type in ("NodePort", "LoadBalancer") and port.node_port:
            out.extend(Listen(addr, port.node_port, key) for addr in nodeport_addresses)
    return out


class Route:
    """A service port's ready endpoints, its round-robin position and (ClientIP) its client stickiness."""

    def __init__(self, key: str, endpoints: list[Endpoint], affinity: bool, timeout: float = AFFINITY_TIMEOUT):
        self.key = key
        self.endpoints = endpoints
        self.affinity = affinity
        self.timeout = timeout
        self.next = 0
        self.sticky: dict[str, tuple[Endpoint, float]] = {}

    def update(self, endpoints: list[Endpoint], affinity: bool) -> None:
        """New endpoints: keep the round-robin position and the stickiness of clients whose endpoint stays."""
        self.endpoints = endpoints
        self.affinity = affinity
        if not affinity:
            self.sticky.clear()
        else:
            ready = set(endpoints)
            self.sticky = {c: v for c, v in self.sticky.items() if v[0] in ready}

    def candidates(self, client_ip: str) -> list[Endpoint]:
        """Endpoints to try for a new connection, in order: the sticky one first, then round robin."""
        eps = self.endpoints
        if not eps:
            return []
        if self.affinity:
            hit = self.sticky.get(client_ip)
            if hit is not None and time.monotonic() - hit[1] < self.timeout and hit[0] in eps:
                i = eps.index(hit[0])
                return eps[i:] + eps[:i]
        i = self.next % len(eps)
        self.next = i + 1
        if self.affinity:
            # Stick at pick time: the client's next connections, even those already on their way
            # while this one connects, go the same way.
            self.sticky[client_ip] = (eps[i], time.monotonic())
        return eps[i:] + eps[:i]

    def connected(self, client_ip: str, endpoint: Endpoint) -> None:
        if self.affinity:
            self.sticky[client_ip] = (endpoint, time.monotonic())
            if len(self.sticky) > 65536:  # bound the table: forget the expired
                now = time.monotonic()
                self.sticky = {c: v for c, v in self.sticky.items() if now - v[1] < self.timeout}
