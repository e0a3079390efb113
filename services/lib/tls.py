"""TLS for the bus, client side: trust exactly the cluster's CA (not the system store).

`flotilla up` generates a private CA (flotilla/tlsgen.py); a client that trusted the system store
too would accept any publicly-signed certificate for the server's name, so only the given CA is
loaded. Hostnames are checked: the server certificate carries the names/IPs clients dial.
"""
from __future__ import annotations

import logging
import ssl


def client_ssl_context(ca_path: str) -> ssl.SSLContext:
    """An SSLContext for nats.connect(tls=...) that verifies the server against `ca_path`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=ca_path)
    return ctx


def _not_eof_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("returning true from eof_received()")


def quiet_eof_warnings() -> None:
    """nats-py's protocol returns True from eof_received; over TLS asyncio warns that this has no
    effect, on every closed connection: noise in a service's log and on a CLI's stderr."""
    asyncio_log = logging.getLogger("asyncio")
    if _not_eof_warning not in asyncio_log.filters:
        asyncio_log.addFilter(_not_eof_warning)


def require_tls(server_info: dict[str, object], url: str) -> None:
    """nats-py falls back to plain text, even for a tls:// URL, when the server offers no TLS: a
    client given a CA must not talk to such a server (it could be anyone on the path)."""
    if not server_info.get("tls_required"):
        raise ssl.SSLError(f"the NATS server at {url} does not offer TLS, but a CA was given: refusing to "
                           "connect in the clear")
