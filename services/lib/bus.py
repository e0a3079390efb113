"""The NATS connection every service uses: unlimited reconnects, logged state changes.

While NATS is gone nats-py calls the error callback on every failed reconnect attempt (every 0.5 s):
those lines go through a LogRate, so an outage reads as "disconnected", a few "nats error" lines at
growing gaps with suppressed=N, and one "nats reconnected" saying how long it lasted.
"""
from __future__ import annotations

import ssl
import time

import nats
from nats.aio.client import Client

from .config import BusConfig
from .log import get_logger
from .lograte import LogRate
from .permissions import inbox
from .tls import client_ssl_context, quiet_eof_warnings, require_tls

log = get_logger("flotilla.bus")


class _Outage:
    """Bookkeeping for the "nats reconnected" line: since when, and how many attempts failed."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.failed_attempts = 0


async def connect(cfg: BusConfig) -> Client:
    """Connect and keep reconnecting forever (nats-py gives up after 60 attempts by default)."""
    rate = LogRate(log.bind(client=cfg.name))
    if cfg.tls_ca:
        quiet_eof_warnings()
    outage = _Outage()

    async def on_disconnect() -> None:
        if outage.since is None:
            outage.since = time.monotonic()
            outage.failed_attempts = 0
        rate.warning("disconnected", "nats disconnected")

    async def on_reconnect() -> None:
        down_for = time.monotonic() - outage.since if outage.since is not None else 0.0
        suppressed = sum(b.total_suppressed for b in rate.clear_all().values())
        log.info("nats reconnected", client=cfg.name,
                 url=str(nc.connected_url.netloc if nc.connected_url else ""),
                 down_for=f"{down_for:.1f}s", failed_attempts=outage.failed_attempts, suppressed=suppressed)
        outage.since = None

    async def on_error(exc: Exception) -> None:
        if outage.since is not None:
            outage.failed_attempts += 1
        # Keyed by the kind of error: a flood of refused connections must not hide a different one.
        rate.warning(f"error:{type(exc).__name__}", "nats error", error=repr(exc))

    async def on_closed() -> None:
        log.info("nats connection closed", client=cfg.name)

    nc = await nats.connect(
        servers=[u.strip() for u in cfg.nats_url.split(",")],
        # A principal may subscribe only under its own inbox prefix (services/lib/permissions.py).
        inbox_prefix=inbox(cfg.principal) if cfg.principal else "_INBOX",
        tls=client_ssl_context(cfg.tls_ca) if cfg.tls_ca else None,
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
    if cfg.tls_ca:
        try:
            require_tls(nc._server_info, nc.connected_url.geturl() if nc.connected_url else cfg.nats_url)
        except ssl.SSLError:
            await nc.close()
            raise
    return nc
