"""Pod networking on loopback: each node owns a pod CIDR inside 127.0.0.0/8 (every 127.x.y.z is a
local address on Linux, so no setup is needed), and each pod gets an address from it.

Node CIDRs are /24s taken from a pool (default 127.64.0.0/10, room for 16,384 nodes; Service VIPs
and anything else must come from outside it); 127.0.0.0/24 is never used. A node takes the first
/24 no other Node claims, starting at a point derived from its name so that agents starting
together rarely pick the same one (and registration re-checks, so they never keep it). In a
node's /24, .1 is the node's own address (its InternalIP, the pods' hostIP), .2-.254 are pods'.
"""
from __future__ import annotations

import ipaddress
import zlib
from functools import lru_cache

DEFAULT_POOL = "127.64.0.0/10"
NODE_PREFIX = 24
_EXCLUDED = ipaddress.ip_network("127.0.0.0/24")


class NoAddresses(Exception):
    pass


@lru_cache(maxsize=65536)  # many hollow agents in one process each check every other node's CIDR
def _net(cidr: str) -> ipaddress.IPv4Network | None:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    return net if isinstance(net, ipaddress.IPv4Network) else None


def choose_pod_cidr(node: str, used: set[str], pool: str = DEFAULT_POOL, prefix: int = NODE_PREFIX) -> str:
    """A /`prefix` of `pool` that overlaps none of `used` (other nodes' podCIDRs) nor 127.0.0.0/24."""
    base = ipaddress.ip_network(pool)
    if not isinstance(base, ipaddress.IPv4Network) or prefix < base.prefixlen:
        raise ValueError(f"pod CIDR pool {pool} cannot hold /{prefix} networks")
    count = 2 ** (prefix - base.prefixlen)
    size = 2 ** (32 - prefix)
    exact: set[ipaddress.IPv4Network] = set()
    other: list[ipaddress.IPv4Network] = []
    for cidr in used:
        net = _net(cidr)
        if net is None:
            continue
        if net.prefixlen == prefix:
            exact.add(net)
        else:
            other.append(net)
    start = zlib.crc32(node.encode()) % count
    for i in range(count):
        idx = (start + i) % count
        cand = ipaddress.IPv4Network((int(base.network_address) + idx * size, prefix))
        if cand.overlaps(_EXCLUDED) or cand in exact or any(cand.overlaps(o) for o in other):
            continue
        return str(cand)
    raise NoAddresses(f"no free /{prefix} left in the pod CIDR pool {pool}")


class PodAddresses:
    """The pod IPs of one node; hands out addresses round-robin so a freed one is not reused at once."""

    def __init__(self, cidr: str):
        net = _net(cidr)
        if net is None or net.num_addresses < 4:
            raise ValueError(f"pod CIDR {cidr!r} is not a usable IPv4 network")
        self.cidr = str(net)
        first = int(net.network_address)
        self.node_ip = str(ipaddress.IPv4Address(first + 1))
        self._first, self._last = first + 2, int(net.broadcast_address) - 1
        self._cursor = self._first
        self._owner: dict[str, str] = {}  # ip -> pod uid

    def contains(self, ip: str) -> bool:
        try:
            value = int(ipaddress.IPv4Address(ip))
        except ValueError:
            return False
        return self._first <= value <= self._last

    def reserve(self, ip: str, uid: str) -> bool:
        """Claim `ip` for `uid` (a restarted agent re-claiming its pods' addresses)."""
        if not self.contains(ip) or self._owner.get(ip, uid) != uid:
            return False
        self._owner[ip] = uid
        return True

    def allocate(self, uid: str, prefer: str | None = None) -> str:
        for ip, owner in self._owner.items():
            if owner == uid:
                return ip
        if prefer and self.reserve(prefer, uid):
            return prefer
        span = self._last - self._first + 1
        for i in range(span):
            value = self._first + (self._cursor - self._first + i) % span
            ip = str(ipaddress.IPv4Address(value))
            if ip not in self._owner:
                self._owner[ip] = uid
                self._cursor = value + 1 if value < self._last else self._first
                return ip
        raise NoAddresses(f"all {span} pod addresses of {self.cidr} are in use")

    def release(self, uid: str) -> None:
        for ip in [ip for ip, owner in self._owner.items() if owner == uid]:
            del self._owner[ip]

    def in_use(self) -> int:
        return len(self._owner)
