"""Registration with the NATS services framework, so `nats micro ls` and `flotilla status` list us."""
from __future__ import annotations

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.service import Service

VERSION = "0.1.0"


async def register(nc: Client, service: str, identity: str, **metadata: str) -> Service:
    """Register `flotilla-<service>`; PING/INFO/STATS answer from then on. Stop it with `await svc.stop()`."""
    return await add_service(nc, name=f"flotilla-{service}", version=VERSION,
                             description=f"Flotilla {service}",
                             metadata={"identity": identity, **{k: str(v) for k, v in metadata.items()}})
