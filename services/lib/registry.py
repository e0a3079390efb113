"""Registration with the NATS services framework, so `nats micro ls/info/stats` and `flotilla status`
list us, with `version`, `identity` and `principal` metadata on every instance."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client
from nats.micro.service import EndpointInfo, EndpointStats, Service, ServiceConfig, ServiceInfo, ServiceStats

from .inbox import Inbox
from .log import get_logger

VERSION = "0.1.0"

log = get_logger("flotilla.registry")


@dataclass
class ServedEndpoint:
    """An endpoint a service serves on subscriptions of its own (the API server's concurrent dispatch:
    nats.micro's endpoints await each handler in turn, which would serialize requests). It is shown by
    `$SRV.INFO`/`$SRV.STATS` like a micro endpoint, and the service counts its requests with `done()`.
    `errors` counts what the server failed at (5xx, throttling), not the caller's mistakes (4xx);
    `kinds` (say, verbs) are counted apart, shown as the endpoint's STATS `data`."""
    name: str
    subject: str
    queue_group: str
    metadata: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0
    processing_ns: int = 0
    last_error: str = ""
    kinds: dict[str, int] = field(default_factory=dict)

    def done(self, started_ns: int, error: str | None = None, kind: str | None = None) -> None:
        self.requests += 1
        if kind is not None:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.processing_ns += time.perf_counter_ns() - started_ns
        if error is not None:
            self.errors += 1
            self.last_error = error


class _Service(Service):
    """nats.micro's Service, whose INFO and STATS also show the ServedEndpoints."""

    def __init__(self, nc: Client, config: ServiceConfig, served: Iterable[ServedEndpoint]):
        super().__init__(nc, config)
        self.served = list(served)

    def info(self) -> ServiceInfo:
        info = super().info()
        info.endpoints += [EndpointInfo(name=e.name, subject=e.subject, queue_group=e.queue_group,
                                        metadata=e.metadata or None) for e in self.served]
        return info

    def stats(self) -> ServiceStats:
        stats = super().stats()
        stats.endpoints += [EndpointStats(name=e.name, subject=e.subject, queue_group=e.queue_group,
                                          num_requests=e.requests, num_errors=e.errors,
                                          last_error=e.last_error or None, processing_time=e.processing_ns,
                                          average_processing_time=e.processing_ns // e.requests if e.requests else 0,
                                          data=dict(e.kinds) or None)
                            for e in self.served]
        return stats


async def register(nc: Client, service: str, identity: str, *, principal: str,
                   endpoints: Iterable[ServedEndpoint] = (), **metadata: str) -> Service:
    """Register `flotilla-<service>`; PING/INFO/STATS answer from then on. Stop it with `await svc.stop()`.
    Metadata: `version`, `identity` (this replica), `principal` (who it is on the bus) and `metadata`.

    The framework subscribes, then flushes to be sure NATS has the subscriptions. When NATS goes away
    in between (a restart while the service starts), that flush times out although nothing is lost:
    nats-py subscribes again on reconnecting. So that timeout is not a failure (it was a crash)."""
    meta = {"version": VERSION, "identity": identity, "principal": principal,
            **{k: str(v) for k, v in metadata.items()}}
    svc = _Service(nc, ServiceConfig(name=f"flotilla-{service}", version=VERSION, description=f"Flotilla {service}",
                                     metadata=meta), endpoints)
    try:
        await svc.start()
    except nats.errors.FlushTimeoutError:
        log.warning("service registration not confirmed by NATS (reconnecting); it answers once NATS is back",
                    service=service, identity=identity)
    return svc


async def ping_identities(nc: Client, name: str, window: float = 0.2) -> set[str]:
    """The `identity` metadata of every instance of the micro service `name` (e.g. "flotilla-apiserver")
    answering `$SRV.PING.<name>` within `window` seconds: which replicas are up, as NATS sees them."""
    found: set[str] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window
    async with Inbox(nc) as inbox:
        await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox.subject)
        while (left := deadline - loop.time()) > 0:
            try:
                msg = await inbox.get(left)
            except TimeoutError:
                break
            if msg.data:  # not the empty "no responders" status
                found.add(json.loads(msg.data).get("metadata", {}).get("identity", ""))
    return found
