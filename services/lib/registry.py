"""Registration with the NATS services framework, so `nats micro ls` and `flotilla status` list us."""
from __future__ import annotations

import asyncio
import json

import nats.errors
from nats.aio.client import Client
from nats.micro.service import Service, ServiceConfig

from .inbox import Inbox
from .log import get_logger

VERSION = "0.1.0"

log = get_logger("flotilla.registry")


async def register(nc: Client, service: str, identity: str, **metadata: str) -> Service:
    """Register `flotilla-<service>`; PING/INFO/STATS answer from then on. Stop it with `await svc.stop()`.

    The framework subscribes, then flushes to be sure NATS has the subscriptions. When NATS goes away
    in between (a restart while the service starts), that flush times out although nothing is lost:
    nats-py subscribes again on reconnecting. So that timeout is not a failure (it was a crash)."""
    svc = Service(nc, ServiceConfig(name=f"flotilla-{service}", version=VERSION, description=f"Flotilla {service}",
                                    metadata={"identity": identity, **{k: str(v) for k, v in metadata.items()}}))
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
