"""Cluster DNS (CoreDNS' kubernetes plugin, scaled down): `<svc>.<ns>.svc.<domain>` answered from the
proxy's Service and Endpoints informers, over UDP and TCP.

Names served (Kubernetes' DNS specification):
- `<svc>.<ns>.svc.<domain>` A/AAAA -> the ClusterIP(s); headless (clusterIP None) -> the ready
  endpoint addresses; ExternalName -> a CNAME to spec.externalName.
- `<host>.<svc>.<ns>.svc.<domain>` A -> a headless Service's endpoint whose `hostname` is <host>, or
  whose IP written with dashes (127-64-0-5) is <host>.
- `_<port>._<proto>.<svc>.<ns>.svc.<domain>` SRV -> each named port: the Service name and port for a
  ClusterIP Service, one record per ready endpoint (its hostname and endpoint port) for a headless
  one; the targets' addresses in the additional section.
A name that exists without records of the asked type is NODATA (NOERROR, no answer, SOA in
authority); a name in the zone that does not exist is NXDOMAIN with the SOA; names outside the zone
are REFUSED, since this is no recursive resolver. Every answer has TTL 5 s, the kubernetes plugin's.
"""
from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterator
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from schemas import EndpointAddress, Endpoints, Service
from services.lib.informer import Informer
from services.lib.log import get_logger

log = get_logger("flotilla.dns")

TTL = 5
HEADER_LEN = 12
UDP_PLAIN_MAX = 512      # RFC 1035: a UDP answer to a query without EDNS
TCP_MAX = 65535          # the 2-byte length prefix
OUR_PAYLOAD = 1232       # the EDNS size we advertise (DNS flag day 2020: no IP fragmentation)
TCP_IDLE_SECONDS = 10.0  # RFC 7766 suggests closing idle connections after some seconds
ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)

Rdatas = dict[int, list[dns.rdata.Rdata]]


class _Records:
    """What one name holds: records by type, plus the address records of the SRV targets."""

    def __init__(self) -> None:
        self.by_type: Rdatas = {}
        self.additional: dict[dns.name.Name, Rdatas] = {}

    def add(self, rdtype: int, text: str) -> None:
        self.by_type.setdefault(rdtype, []).append(dns.rdata.from_text(dns.rdataclass.IN, rdtype, text))


class ClusterDns:
    def __init__(self, services: Informer[Service], endpoints: Informer[Endpoints], domain: str = "cluster.local"):
        self.services = services
        self.endpoints = endpoints
        self.origin = dns.name.from_text(domain.strip(".").lower() or ".")
        self.domain = self.origin.to_text()
        ns_name = dns.name.from_text("ns.dns", self.origin)
        self._ns = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.NS, ns_name.to_text())
        self._soa_mname = ns_name.to_text()
        self._soa_rname = dns.name.from_text("hostmaster", self.origin).to_text()
        self.queries = 0
        self.dropped = 0
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self.ports: tuple[int, int] | None = None  # (udp, tcp) while serving; serve(host, 0) picks one for both

    # ---- one query ---------------------------------------------------------------------------------
    def answer(self, wire: bytes) -> bytes:
        """One query in wire format -> the reply for UDP (truncated with TC past what the client takes);
        b"" means drop it (no header to answer, or not a query at all)."""
        return self._reply(wire, tcp=False)

    def _reply(self, wire: bytes, tcp: bool) -> bytes:
        self.queries += 1
        if len(wire) < HEADER_LEN:
            self.dropped += 1
            log.debug("dns packet dropped: shorter than a header", size=len(wire))
            return b""
        flags = int.from_bytes(wire[2:4], "big")
        if flags & dns.flags.QR:
            # Answering a response could start a loop between two servers (or a reflection).
            self.dropped += 1
            log.debug("dns packet dropped: a response, not a query", size=len(wire))
            return b""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException as exc:
            log.debug("dns query malformed", size=len(wire), error=f"{type(exc).__name__}: {exc}")
            return self._header_only(wire, dns.rcode.FORMERR)
        except Exception:
            # dnspython is meant to raise only DNSException on bad input; anything else is its bug, and
            # worth a traceback, but the packet is still a malformed one to the client.
            log.exception("dns query unparseable", size=len(wire))
            return self._header_only(wire, dns.rcode.FORMERR)
        if tcp:
            max_size = TCP_MAX
        elif query.edns < 0:
            max_size = UDP_PLAIN_MAX
        else:
            max_size = max(UDP_PLAIN_MAX, min(query.payload, TCP_MAX))
        try:
            # Past max_size the answer is cut with TC set, so the client retries over TCP (RFC 2181 §9).
            return self._respond(query).to_wire(max_size=max_size, prefer_truncation=True)
        except Exception:
            # A bug in a lookup must cost one SERVFAIL, not the server (nor this query's client a timeout).
            log.exception("dns lookup failed", qname=query.question[0].name if query.question else "")
            return self._header_only(wire, dns.rcode.SERVFAIL)

    def _header_only(self, wire: bytes, rcode: int) -> bytes:
        """A reply carrying only an rcode, for a query whose header parsed but the rest did not."""
        query_flags = int.from_bytes(wire[2:4], "big")
        reply = dns.message.Message(id=int.from_bytes(wire[0:2], "big"))
        reply.flags = dns.flags.QR | (query_flags & dns.flags.RD)
        reply.set_opcode(dns.opcode.from_flags(query_flags))
        reply.set_rcode(rcode)
        return reply.to_wire()

    def _respond(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query, our_payload=OUR_PAYLOAD)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        if (not qname.is_subdomain(self.origin)
                or question.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY)
                or qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR)):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        if not (self.services.synced.is_set() and self.endpoints.synced.is_set()):
            # An NXDOMAIN now would be cached by the client for a name that may well exist.
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        response.flags |= dns.flags.AA
        labels = [label.decode("ascii", "replace").lower() for label in qname.relativize(self.origin).labels]
        records = self._lookup(labels)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa_rrset())
            return response
        cname = records.by_type.get(dns.rdatatype.CNAME)
        if cname and qtype != dns.rdatatype.CNAME:
            found: Rdatas = {dns.rdatatype.CNAME: cname}
        elif qtype == dns.rdatatype.ANY:
            found = records.by_type
        else:
            found = {qtype: records.by_type[qtype]} if qtype in records.by_type else {}
        if not found:
            response.authority.append(self._soa_rrset())
            return response
        for rdtype, rdatas in found.items():
            response.answer.append(dns.rrset.from_rdata_list(qname, TTL, rdatas))
        if dns.rdatatype.SRV in found:
            for name, by_type in records.additional.items():
                for rdatas in by_type.values():
                    response.additional.append(dns.rrset.from_rdata_list(name, TTL, rdatas))
        return response

    def _soa_rrset(self) -> dns.rrset.RRset:
        # The serial only has to move forward now and then (nobody transfers this zone); the minimum
        # (the negative-caching TTL, RFC 2308) is the record TTL, as CoreDNS does.
        serial = int(time.time()) & 0xFFFFFFFF
        soa = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA,
                                  f"{self._soa_mname} {self._soa_rname} {serial} 7200 1800 86400 {TTL}")
        return dns.rrset.from_rdata_list(self.origin, TTL, [soa])

    # ---- the zone ----------------------------------------------------------------------------------
    def _lookup(self, labels: list[str]) -> _Records | None:
        """The records of the name `labels` (relative to the domain, lowercase); None: no such name."""
        records = _Records()
        if not labels:
            records.by_type[dns.rdatatype.SOA] = [self._soa_rrset()[0]]
            records.by_type[dns.rdatatype.NS] = [self._ns]
            return records
        if labels[-1] != "svc":
            return None
        path = labels[:-1]  # leaf first: [..., svc, ns]
        if not path:
            return records  # `svc.<domain>`: an empty non-terminal
        ns = path[-1]
        if len(path) == 1:
            return records if any(s.metadata.namespace == ns for s in self.services.list()) else None
        svc = self.services.get(f"{ns}/{path[-2]}")
        if svc is None:
            return None
        if len(path) == 2:
            self._service_records(svc, records)
            return records
        if len(path) == 3:
            if path[0].startswith("_"):
                # `_<proto>.<svc>...`: exists while some named port speaks that protocol.
                proto = path[0][1:]
                return records if any(p.name and p.protocol.lower() == proto for p in svc.spec.ports) else None
            return self._endpoint_records(svc, path[0], records)
        if len(path) == 4 and path[0].startswith("_") and path[1].startswith("_"):
            return self._srv_records(svc, path[0][1:], path[1][1:], records)
        return None

    def _service_name(self, svc: Service) -> dns.name.Name:
        return dns.name.from_text(f"{svc.metadata.name}.{svc.metadata.namespace}.svc", self.origin)

    def _service_records(self, svc: Service, records: _Records) -> None:
        if svc.spec.type == "ExternalName":
            if svc.spec.external_name:
                records.add(dns.rdatatype.CNAME, dns.name.from_text(svc.spec.external_name).to_text())
            return
        if _headless(svc):
            for addr in self._ready_addresses(svc):
                _add_address(records, addr.ip)
            return
        for ip in _cluster_ips(svc):
            _add_address(records, ip)

    def _endpoint_records(self, svc: Service, host: str, records: _Records) -> _Records | None:
        if not _headless(svc):
            return None
        for addr in self._ready_addresses(svc):
            if host in (_endpoint_label(addr.ip, None), _endpoint_label(addr.ip, addr.hostname)):
                _add_address(records, addr.ip)
        return records if records.by_type else None

    def _srv_records(self, svc: Service, port_name: str, proto: str, records: _Records) -> _Records | None:
        def named(name: str | None, protocol: str) -> bool:
            return (name or "").lower() == port_name and protocol.lower() == proto

        targets: dict[tuple[int, dns.name.Name], list[str]] = {}  # (port, target) -> the target's IPs
        if _headless(svc):
            ep = self.endpoints.get(f"{svc.metadata.namespace}/{svc.metadata.name}")
            base = self._service_name(svc)
            for subset in ep.subsets if ep else ():
                for port in subset.ports:
                    if named(port.name, port.protocol):
                        for addr in subset.addresses:
                            target = dns.name.from_text(_endpoint_label(addr.ip, addr.hostname), base)
                            targets.setdefault((port.port, target), []).append(addr.ip)
            if not targets and not any(named(p.name, p.protocol) for p in svc.spec.ports):
                return None
        else:
            match = [p for p in svc.spec.ports if named(p.name, p.protocol)]
            if not match:
                return None
            for port in match:
                targets[(port.port, self._service_name(svc))] = _cluster_ips(svc)
        # CoreDNS spreads a weight of 100 over the records of one priority.
        weight = max(1, 100 // len(targets)) if targets else 100
        for (port_number, target), ips in targets.items():
            records.add(dns.rdatatype.SRV, f"0 {weight} {port_number} {target.to_text()}")
            extra = _Records()
            for ip in ips:
                _add_address(extra, ip)
            for rdtype, rdatas in extra.by_type.items():
                have = records.additional.setdefault(target, {}).setdefault(rdtype, [])
                have.extend(r for r in rdatas if r not in have)
        return records

    def _ready_addresses(self, svc: Service) -> Iterator[EndpointAddress]:
        ep = self.endpoints.get(f"{svc.metadata.namespace}/{svc.metadata.name}")
        seen: set[str] = set()
        for subset in ep.subsets if ep else ():
            for addr in subset.addresses:
                if addr.ip not in seen:
                    seen.add(addr.ip)
                    yield addr

    # ---- serving -----------------------------------------------------------------------------------
    async def serve(self, host: str, port: int) -> None:
        """Answer on UDP and TCP host:port until cancelled (port 0: one free port for both, in .ports)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), local_addr=(host, port))
        try:
            udp_port = transport.get_extra_info("sockname")[1]
            server = await asyncio.start_server(self._serve_tcp, host, udp_port)
            try:
                self.ports = (udp_port, udp_port)
                log.info("dns serving", address=f"{host}:{udp_port}", domain=self.domain)
                async with server:
                    await server.serve_forever()
            finally:
                self.ports = None
                server.close()
                # Python 3.11's server.close() leaves accepted connections open.
                for writer in list(self._tcp_writers):
                    writer.close()
        finally:
            transport.close()
            log.info("dns stopped", address=f"{host}:{port}")

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RFC 7766: each message behind a 2-byte length, several per connection, closed when idle."""
        self._tcp_writers.add(writer)
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_SECONDS), "big")
                    wire = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_SECONDS)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError) as exc:
                    log.debug("dns tcp connection ends", peer=peer, reason=type(exc).__name__)
                    return
                reply = self._reply(wire, tcp=True)
                if not reply:
                    # Nothing to say to a stream that sent no query: a client would wait for ever.
                    return
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except ConnectionError as exc:
            log.debug("dns tcp write failed", peer=peer, error=str(exc))
        finally:
            self._tcp_writers.discard(writer)
            writer.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: ClusterDns):
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # Lookups read the informers' stores, never the network: answering inline needs no task.
        reply = self.server.answer(data)
        if reply and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away before its answer: nothing to do but note it.
        log.debug("dns udp error", error=str(exc))


def _headless(svc: Service) -> bool:
    return svc.spec.cluster_ip == "None"


def _cluster_ips(svc: Service) -> list[str]:
    ips = list(svc.spec.cluster_ips) or ([svc.spec.cluster_ip] if svc.spec.cluster_ip else [])
    return [ip for ip in ips if ip and ip != "None"]


def _endpoint_label(ip: str, hostname: str | None) -> str:
    """The endpoint's own name under a headless Service: its hostname, or its IP with dashes (CoreDNS)."""
    if hostname:
        return hostname.lower()
    return ip.replace(".", "-").replace(":", "-")


def _add_address(records: _Records, ip: str) -> None:
    try:
        version = ipaddress.ip_address(ip).version
    except ValueError:
        log.debug("dns skips an address that is not an IP", ip=ip)
        return
    rdtype = dns.rdatatype.A if version == 4 else dns.rdatatype.AAAA
    rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, ip)
    have = records.by_type.setdefault(rdtype, [])
    if rdata not in have:
        have.append(rdata)
