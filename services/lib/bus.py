"""The NATS connection every service uses: unlimited reconnects, logged state changes."""
from __future__ import annotations

import nats
from nats.aio.client import Client

from .config import BusConfig
from .log import get_logger

log = get_logger("flotilla.bus")


async def connect(cfg: BusConfig) -> Client:
    """Connect and keep reconnecting forever (nats-py gives up after 60 attempts by default)."""

    async def on_disconnect() -> None:
        log.warning("nats disconnected", client=cfg.name)

    async def on_reconnect() -> None:
        log.info("nats reconnected", client=cfg.name, url=str(nc.connected_url.netloc if nc.connected_url else ""))

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", client=cfg.name, error=repr(exc))

    async def on_closed() -> None:
        log.info("nats connection closed", client=cfg.name)

    nc = await nats.connect(
        servers=[u.strip() for u in cfg.nats_url.split(",")],
        name=cfg.name,
        user_credentials=cfg.creds,
        user=cfg.user,
        password=cfg.password,
        token=cfg.token,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        connect_timeout=5,
        ping_interval=5,
        max_outstanding_pings=3,
        pending_size=64 * 1024 * 1024,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        closed_cb=on_closed,
    )
    return nc
