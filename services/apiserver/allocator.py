"""Service ClusterIP and NodePort allocation (Kubernetes 1.31+'s design, scaled to this one).

Every allocated value is one record in the state log (schemas/allocation.py): `ipaddresses._.<ip>`
and `servicenodeports._.<protocol>-<port>`. Creating the record is the allocation: StateLog.create
fails when the key is live, so two API server replicas (or one after a restart) can never hand out
the same value; no replica keeps a counter or a bitmap of its own. Records are written before the
Service, released after it is deleted (or when the update that dropped the value is stored), and a
repair pass deletes records whose Service is gone: a crash between the two writes leaks one record
for at most `repair_after` seconds, and never gives one value to two Services.
"""
from __future__ import annotations

import asyncio
import ipaddress
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timezone
from typing import TypeVar

import msgspec
import nats.errors
import nats.js.errors as jserr

from schemas import RESOURCES, ApiError, ObjectMeta, Service, now_iso, parse_time
from schemas.allocation import IPAddress, IPAddressSpec, ParentReference, ServiceNodePort, ServiceNodePortSpec
from services.lib.codec import encode
from services.lib.log import get_logger

from .store import StateLog
from .watchcache import WatchCache

log = get_logger("flotilla.apiserver.allocator")

DEFAULT_SERVICE_CIDR = "127.128.0.0/16"
DEFAULT_NODE_PORT_RANGE = "30000-32767"
RESERVED_ADDRESSES = 16  # the range's first addresses are for fixed infrastructure (cluster DNS: .10)
REPAIR_AFTER_SECONDS = 30.0
NODE_PORT_TYPES = ("NodePort", "LoadBalancer")
_RANDOM_TRIES = 32  # random candidates before scanning the whole range for what is still free
_IPS = RESOURCES["ipaddresses"]
_NODE_PORTS = RESOURCES["servicenodeports"]
_STATE_LOG_ERRORS = (jserr.Error, nats.errors.Error, TimeoutError)
V = TypeVar("V", str, int)


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    """`--service-cluster-ip-range`: an IPv4 network with room for dynamic addresses."""
    net = ipaddress.ip_network(text, strict=True)
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError(f"{text}: only IPv4 ranges are supported")
    if net.num_addresses < RESERVED_ADDRESSES + 2:
        raise ValueError(f"{text}: too small, needs more than {RESERVED_ADDRESSES + 1} addresses")
    return net


def parse_port_range(text: str) -> tuple[int, int]:
    """`--service-node-port-range`: `low-high`, inclusive, within 1-65535."""
    low_s, sep, high_s = text.partition("-")
    low, high = int(low_s), int(high_s if sep else low_s)
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{text}: not a port range low-high within 1-65535")
    return low, high


def node_port_name(protocol: str, port: int) -> str:
    return f"{protocol.lower()}-{port}"


class Claim(msgspec.Struct, frozen=True):
    key: str
    rev: int


class Plan(msgspec.Struct):
    """What one Service write allocates and frees: `claimed` records are released at once if the
    write is refused; `release` keys (values the Service no longer holds) once it is stored."""

    claimed: list[Claim] = msgspec.field(default_factory=list)
    release: list[str] = msgspec.field(default_factory=list)


def _invalid(svc: Service, field: str, message: str) -> ApiError:
    return ApiError("Invalid", f'Service "{svc.metadata.name}" is invalid: {field}: {message}', field=field)


def _held_node_ports(svc: Service) -> set[tuple[str, int]]:
    if svc.spec.type not in NODE_PORT_TYPES:
        return set()
    return {(p.protocol or "TCP", p.node_port) for p in svc.spec.ports if p.node_port}


class ServiceAllocator:
    def __init__(self, log_: StateLog, cache: WatchCache, cidr: str = DEFAULT_SERVICE_CIDR,
                 node_ports: str = DEFAULT_NODE_PORT_RANGE, repair_after: float = REPAIR_AFTER_SECONDS):
        self.log = log_
        self.cache = cache
        self.net = parse_cidr(cidr)
        self.port_low, self.port_high = parse_port_range(node_ports)
        self.repair_after = repair_after

    # ---- records ----------------------------------------------------------------------------------
    def _parent(self, svc: Service) -> ParentReference:
        m = svc.metadata
        return ParentReference(group="", resource="services", namespace=m.namespace, name=m.name, uid=m.uid)

    def _meta(self, name: str, labels: dict[str, str]) -> ObjectMeta:
        return ObjectMeta(name=name, uid=str(uuid.uuid4()), creation_timestamp=now_iso(), generation=1, labels=labels)

    async def _create(self, key: str, record: IPAddress | ServiceNodePort) -> Claim | None:
        """The allocation itself: None when the value is taken (its record is live)."""
        try:
            rev = await self.log.create(self.log.main, key, encode(record))
        except ApiError as err:
            if err.reason == "AlreadyExists":
                return None
            raise
        return Claim(key, rev)

    async def _claim_ip(self, svc: Service, ip: str) -> Claim | None:
        record = IPAddress(metadata=self._meta(ip, {"ipaddress.kubernetes.io/ip-family": "IPv4",
                                                    "ipaddress.kubernetes.io/managed-by": "ipallocator.flotilla.io"}),
                           spec=IPAddressSpec(parent_ref=self._parent(svc)))
        return await self._create(_IPS.key(None, ip), record)

    async def _claim_port(self, svc: Service, protocol: str, port: int) -> Claim | None:
        record = ServiceNodePort(metadata=self._meta(node_port_name(protocol, port), {}),
                                 spec=ServiceNodePortSpec(parent_ref=self._parent(svc), port=port, protocol=protocol))
        return await self._create(_NODE_PORTS.key(None, node_port_name(protocol, port)), record)

    def _taken(self, key: str) -> bool:
        """The watch cache's view: may lag, so it only saves create attempts that would fail."""
        return key in self.cache.objects[key.split(".", 1)[0]]

    async def _pick(self, candidates_random: Callable[[], V], candidates_all: Callable[[], Iterable[V]],
                    key_of: Callable[[V], str], claim: Callable[[V], Awaitable[Claim | None]]) -> Claim | None:
        """Random candidates first (two replicas rarely race for the same one), then every free one."""
        for _ in range(_RANDOM_TRIES):
            value = candidates_random()
            if self._taken(key_of(value)):
                continue
            got = await claim(value)
            if got:
                return got
        free = [v for v in candidates_all() if not self._taken(key_of(v))]
        random.shuffle(free)
        for value in free:
            got = await claim(value)
            if got:
                return got
        return None

    async def _assign_ip(self, svc: Service, plan: Plan) -> None:
        spec = svc.spec
        if spec.cluster_ip:
            try:
                addr = ipaddress.ip_address(spec.cluster_ip)
            except ValueError:
                raise _invalid(svc, "spec.clusterIP", f'Invalid value: "{spec.cluster_ip}": must be a valid IP address') from None
            if addr not in self.net or addr in (self.net.network_address, self.net.broadcast_address):
                raise _invalid(svc, "spec.clusterIP", f'Invalid value: "{spec.cluster_ip}": provided IP is not in the '
                                                      f"valid range. The range of valid IPs is {self.net}")
            ip = str(addr)
            claim = await self._claim_ip(svc, ip)
            if claim is None:
                raise _invalid(svc, "spec.clusterIP", f'Invalid value: "{ip}": provided IP is already allocated')
        else:
            base, last = int(self.net.network_address), self.net.num_addresses - 2  # no broadcast address
            claim = await self._pick(
                lambda: str(ipaddress.IPv4Address(base + random.randint(RESERVED_ADDRESSES, last))),
                lambda: (str(ipaddress.IPv4Address(base + n)) for n in range(RESERVED_ADDRESSES, last + 1)),
                lambda ip: _IPS.key(None, ip), lambda ip: self._claim_ip(svc, ip))
            if claim is None:
                raise ApiError("InternalError", f"failed to allocate a serviceIP: range {self.net} is full")
            ip = claim.key.split(".", 2)[2].replace("_", ".")
        plan.claimed.append(claim)
        spec.cluster_ip = ip
        spec.cluster_ips = [ip]

    async def _assign_port(self, svc: Service, i: int, plan: Plan) -> None:
        p = svc.spec.ports[i]
        protocol = p.protocol or "TCP"
        field = f"spec.ports[{i}].nodePort"
        if p.node_port:
            if not self.port_low <= p.node_port <= self.port_high:
                raise _invalid(svc, field, f"Invalid value: {p.node_port}: provided port is not in the valid range. "
                                           f"The range of valid ports is {self.port_low}-{self.port_high}")
            claim = await self._claim_port(svc, protocol, p.node_port)
            if claim is None:
                raise _invalid(svc, field, f"Invalid value: {p.node_port}: provided port is already allocated")
        else:
            claim = await self._pick(
                lambda: random.randint(self.port_low, self.port_high),
                lambda: range(self.port_low, self.port_high + 1),
                lambda port: _NODE_PORTS.key(None, node_port_name(protocol, port)),
                lambda port: self._claim_port(svc, protocol, port))
            if claim is None:
                raise ApiError("InternalError", f"failed to allocate a nodePort: range {self.port_low}-{self.port_high} is full")
            p.node_port = int(claim.key.rsplit("-", 1)[1])
        plan.claimed.append(claim)

    def _check_ip_fields(self, svc: Service) -> None:
        """clusterIPs (dual-stack's list) must agree with clusterIP; single-stack here."""
        spec = svc.spec
        if len(spec.cluster_ips) > 1:
            raise _invalid(svc, "spec.clusterIPs", "Invalid value: only one (IPv4) cluster IP is supported")
        if spec.cluster_ips and not spec.cluster_ip:
            spec.cluster_ip = spec.cluster_ips[0]
        if spec.cluster_ips and spec.cluster_ips[0] != spec.cluster_ip:
            raise _invalid(svc, "spec.clusterIPs", f'Invalid value: "{spec.cluster_ips[0]}": must match `clusterIP`')
        if spec.type == "ExternalName" and spec.cluster_ip:
            raise _invalid(svc, "spec.clusterIP", "Forbidden: may not be set for ExternalName services")
        if spec.type in NODE_PORT_TYPES and spec.cluster_ip == "None":
            raise _invalid(svc, "spec.clusterIP", f"Invalid value: \"None\": may not be set to 'None' for {spec.type} services")

    # ---- the verbs ----------------------------------------------------------------------------------
    async def on_create(self, svc: Service) -> Plan:
        """Allocate what a new Service needs (its uid and name are set). Refusals leave nothing behind."""
        plan = Plan()
        spec = svc.spec
        try:
            self._check_ip_fields(svc)
            if spec.type == "ExternalName":
                spec.cluster_ips = []
            elif spec.cluster_ip == "None":
                spec.cluster_ips = ["None"]  # headless
            else:
                await self._assign_ip(svc, plan)
            for i, p in enumerate(spec.ports):
                if spec.type in NODE_PORT_TYPES:
                    await self._assign_port(svc, i, plan)
                elif p.node_port:
                    raise _invalid(svc, f"spec.ports[{i}].nodePort", f"Forbidden: may not be used when `type` is '{spec.type}'")
        except BaseException:
            await self.abort(plan)
            raise
        return plan

    async def on_update(self, current: Service, new: Service) -> Plan:
        """Keep what `current` holds (omitted values carry over, changed ones are refused), allocate
        what the new type needs and list what it no longer holds."""
        plan = Plan()
        cur, nxt = current.spec, new.spec
        try:
            self._check_update_ips(current, new, plan)
            if cur.type == "ExternalName" and nxt.type != "ExternalName" and nxt.cluster_ip != "None":
                await self._assign_ip(new, plan)
            old_ports = _held_node_ports(current)
            kept: set[tuple[str, int]] = set()
            for i, p in enumerate(nxt.ports):
                protocol = p.protocol or "TCP"
                if nxt.type not in NODE_PORT_TYPES:
                    if p.node_port and (protocol, p.node_port) not in old_ports:
                        raise _invalid(new, f"spec.ports[{i}].nodePort", f"Forbidden: may not be used when `type` is '{nxt.type}'")
                    p.node_port = None  # dropped with the type, as Kubernetes does for unchanged values
                    continue
                if not p.node_port:  # omitted: the same port keeps its node port (as apply expects)
                    p.node_port = next((q.node_port for q in cur.ports if q.port == p.port and (q.protocol or "TCP") == protocol
                                        and (protocol, q.node_port) in old_ports - kept), None)
                if p.node_port and (protocol, p.node_port) in old_ports - kept:
                    kept.add((protocol, p.node_port))
                    continue
                await self._assign_port(new, i, plan)
            plan.release.extend(_NODE_PORTS.key(None, node_port_name(proto, port)) for proto, port in old_ports - kept)
        except BaseException:
            await self.abort(plan)
            raise
        return plan

    def _check_update_ips(self, current: Service, new: Service, plan: Plan) -> None:
        cur, nxt = current.spec, new.spec
        if nxt.type == "ExternalName" and cur.type != "ExternalName":
            if nxt.cluster_ip in (None, "", cur.cluster_ip) and nxt.cluster_ips in ([], cur.cluster_ips):
                nxt.cluster_ip, nxt.cluster_ips = None, []  # the IP goes with the type
                if cur.cluster_ip and cur.cluster_ip != "None":
                    plan.release.append(_IPS.key(None, cur.cluster_ip))
                return
        if cur.type == "ExternalName" and nxt.type != "ExternalName":
            self._check_ip_fields(new)
            if nxt.cluster_ip == "None":
                nxt.cluster_ips = ["None"]
            return  # on_update allocates as on create
        if not nxt.cluster_ip and not nxt.cluster_ips:  # omitted: keep, as Kubernetes does for apply
            nxt.cluster_ip, nxt.cluster_ips = cur.cluster_ip, list(cur.cluster_ips)
        if not nxt.cluster_ip:
            nxt.cluster_ip = nxt.cluster_ips[0]
        # Before the clusterIPs check: a patch of clusterIP alone is refused for what it tried to change.
        if nxt.cluster_ip != cur.cluster_ip:
            raise _invalid(new, "spec.clusterIP", f'Invalid value: "{nxt.cluster_ip}": field is immutable')
        if nxt.cluster_ips and nxt.cluster_ips != [nxt.cluster_ip] and nxt.cluster_ips != cur.cluster_ips:
            raise _invalid(new, "spec.clusterIPs", f'Invalid value: "{nxt.cluster_ips[0]}": field is immutable')
        self._check_ip_fields(new)
        nxt.cluster_ips = [nxt.cluster_ip] if nxt.cluster_ip else []

    async def abort(self, plan: Plan) -> None:
        """The write was refused: free its records now. A failure here leaves them to the repair pass."""
        for claim in plan.claimed:
            try:
                await self.log.delete(self.log.main, claim.key, claim.rev)
            except ApiError as err:  # Conflict: someone (the repair pass) already changed it
                log.info("allocation not released", key=claim.key, error=err.message)
            except _STATE_LOG_ERRORS as exc:
                log.warning("allocation not released; the repair pass will", key=claim.key, error=repr(exc))
        plan.claimed.clear()

    async def commit(self, plan: Plan, svc: Service) -> None:
        """The write is stored: free the values it dropped."""
        for key in plan.release:
            await self._release(key, svc.metadata.uid)

    async def release_all(self, svc: Service) -> None:
        """The Service is deleted: free what it held."""
        keys = [_NODE_PORTS.key(None, node_port_name(proto, port)) for proto, port in _held_node_ports(svc)]
        try:
            if svc.spec.cluster_ip and ipaddress.ip_address(svc.spec.cluster_ip) in self.net:
                keys.append(_IPS.key(None, svc.spec.cluster_ip))
        except ValueError:
            pass  # "None" (headless) or an address stored before allocation existed: no record
        for key in keys:
            await self._release(key, svc.metadata.uid)

    async def _release(self, key: str, uid: str | None) -> None:
        """Delete the record if `uid`'s Service still owns it (never a successor's), CAS on its revision.
        Errors are logged, not raised: the Service write already happened, and the repair pass retries."""
        try:
            entry = await self.log.get(self.log.main, key)
            if entry is None:
                return
            record = msgspec.json.decode(entry.data, type=_IPS.type if key.startswith(_IPS.name + ".") else _NODE_PORTS.type)
            if record.spec.parent_ref.uid != uid:
                return
            await self.log.delete(self.log.main, key, entry.revision)
            log.debug("allocation released", key=key, uid=uid)
        except ApiError as err:
            log.info("allocation not released", key=key, error=err.message)
        except _STATE_LOG_ERRORS as exc:
            log.warning("allocation not released; the repair pass will", key=key, error=repr(exc))

    # ---- repair -------------------------------------------------------------------------------------
    @staticmethod
    def _holds(svc: Service | None, record: IPAddress | ServiceNodePort) -> bool:
        ref = record.spec.parent_ref
        if svc is None or svc.metadata.uid != ref.uid:
            return False
        if isinstance(record, IPAddress):
            return svc.spec.cluster_ip == record.metadata.name
        return (record.spec.protocol, record.spec.port) in _held_node_ports(svc)

    async def record_unrecorded(self) -> int:
        """Write the missing records of Services stored before allocation existed (or by a replica whose
        record was freed wrongly), so that no address or port they hold is handed out again. A record
        is written before its Service and deleted after it, so a cached Service whose record is not
        cached is one of those."""
        written = 0
        for cached in list(self.cache.objects["services"].values()):
            svc: Service = cached.obj
            wanted: list[tuple[str, object]] = []
            ip = svc.spec.cluster_ip
            if ip and ip != "None" and svc.spec.type != "ExternalName":
                try:
                    in_range = ipaddress.ip_address(ip) in self.net
                except ValueError:
                    in_range = False
                if in_range and not self._taken(_IPS.key(None, ip)):
                    wanted.append(("ip", ip))
            for proto, port in _held_node_ports(svc):
                if self.port_low <= port <= self.port_high and \
                        not self._taken(_NODE_PORTS.key(None, node_port_name(proto, port))):
                    wanted.append((proto, port))
            for what, value in wanted:
                claim = await (self._claim_ip(svc, value) if what == "ip" else self._claim_port(svc, what, value))  # type: ignore[arg-type]
                if claim is None:  # written meanwhile (by its own create, or another replica's pass)
                    continue
                written += 1
                log.info("allocation recorded for a Service that had none", key=claim.key,
                         namespace=svc.metadata.namespace, name=svc.metadata.name)
        return written

    async def repair_once(self) -> int:
        """Delete records older than `repair_after` whose Service is gone, has another uid, or no longer
        holds the value. The cache finds candidates; the store has the last word before a delete."""
        services = RESOURCES["services"]
        now = datetime.now(timezone.utc)
        freed = 0
        for table in (_IPS.name, _NODE_PORTS.name):
            for cached in list(self.cache.objects[table].values()):
                record = cached.obj
                ref = record.spec.parent_ref
                born = record.metadata.creation_timestamp
                if born and (now - parse_time(born)).total_seconds() < self.repair_after:
                    continue  # maybe its Service write is still in flight
                if not ref.name or not ref.namespace:
                    svc_key = None
                else:
                    svc_key = services.key(ref.namespace, ref.name)
                    hit = self.cache.objects["services"].get(svc_key)
                    if hit is not None and self._holds(hit.obj, record):
                        continue
                if svc_key is not None:
                    entry = await self.log.get(self.log.main, svc_key)
                    svc = msgspec.json.decode(entry.data, type=Service) if entry else None
                    if self._holds(svc, record):
                        continue
                try:
                    await self.log.delete(self.log.main, cached.key, cached.rev)
                except ApiError as err:  # changed meanwhile (another replica's repair): look again next pass
                    log.debug("leaked allocation not freed", key=cached.key, error=err.message)
                    continue
                freed += 1
                log.info("leaked allocation freed", key=cached.key, namespace=ref.namespace, name=ref.name, uid=ref.uid)
        return freed

    async def repair_loop(self) -> None:
        interval = max(0.5, min(10.0, self.repair_after / 3))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.record_unrecorded()
                await self.repair_once()
            except _STATE_LOG_ERRORS as exc:
                log.warning("allocation repair pass failed", error=repr(exc))
