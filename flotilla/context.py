"""What a CLI command gets to work with (parsed flags, the NATS connection, the API client), the
fail-fast NATS connection of the CLI, and the one-line error formats kubectl users know."""
from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TextIO

import nats
import nats.errors
from nats.aio.client import Client

from schemas import ApiError
from services.lib.client import Api
from services.lib.permissions import ADMIN
from services.lib.tls import client_ssl_context

from .contexts import ContextError, ResolvedContext, creds_name, inbox_prefix_for, resolve

CONNECT_TIMEOUT = 2.0  # seconds per attempt; the CLI tries twice, then gives up
REQUEST_TIMEOUT = 10.0  # one API request; --timeout lowers it


class CliError(Exception):
    """A user-facing failure: printed as `error: <message>`, exit code 1."""


@dataclass
class Context:
    args: argparse.Namespace
    nc: Client | None = None
    api: Api | None = None
    target: ResolvedContext | None = None  # what it connected with (None: not connected)
    principal: str = ADMIN
    bus_errors: list[BaseException] = field(default_factory=list)  # what NATS reported asynchronously
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def namespace(self) -> str:
        return getattr(self.args, "namespace", None) or "default"

    @property
    def namespace_given(self) -> bool:
        return getattr(self.args, "namespace", None) is not None

    @property
    def timeout(self) -> float:
        return float(getattr(self.args, "timeout", None) or 60.0)

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def warn(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def report(self, exc: BaseException) -> None:
        """One line on stderr for an API or CLI error (used by commands that go on after an error)."""
        self.warn(self.error_text(exc))

    def error_text(self, exc: BaseException) -> str:
        denied = self.denial(exc)
        return f"error: {denied}" if denied else error_line(exc, getattr(self.args, "nats_url", ""))

    def denial(self, exc: BaseException) -> str | None:
        """Why an API request failed when NATS refused to carry it (the request itself only times
        out), or None."""
        if not isinstance(exc, ApiError) or self.target is None:
            return None
        return permission_denied(self.bus_errors, self.target, self.principal)


def no_apiserver(exc: BaseException) -> bool:
    """The client found nobody serving the API (NATS answered "no responders")."""
    return isinstance(exc, ApiError) and exc.reason == "ServiceUnavailable" \
        and exc.message.startswith("no API server answers")


def error_line(exc: BaseException, nats_url: str = "") -> str:
    if isinstance(exc, ApiError):
        if no_apiserver(exc):
            return f"error: no API server answers at {nats_url or 'NATS'} (is Flotilla running? try `flotilla status`)"
        return f"Error from server ({exc.reason}): {exc.message}"
    return f"error: {exc}"


def default_nats_url() -> str:
    env = os.environ.get
    return env("FLOTILLA_NATS_URL") or env("NATS_URL") or "nats://127.0.0.1:4222"


def resolve_target(args: argparse.Namespace) -> ResolvedContext:
    """The context a command connects with (flotilla/contexts.py: --context > FLOTILLA_CONTEXT >
    the default file), an explicit --nats-url overriding its server; CliError for a bad file."""
    try:
        return resolve(getattr(args, "context", None), nats_url=getattr(args, "nats_url", None))
    except ContextError as e:
        raise CliError(str(e)) from None


async def connect(target: ResolvedContext | str, timeout: float,
                  errors: list[BaseException] | None = None) -> Client:
    """Connect once (two quick attempts per server), or raise CliError: a CLI must not hang on a dead NATS.

    `target` is a resolved context (server, creds, CA), or just a URL. Without a context's creds
    the same environment the services read applies (FLOTILLA_NATS_CREDS, _USER, _PASSWORD, _TOKEN,
    _CA). `errors` collects what NATS reports later (permissions violations: permission_denied()).
    """
    if isinstance(target, str):
        env_ = os.environ.get
        target = ResolvedContext(server=target, creds=env_("FLOTILLA_NATS_CREDS") or None,
                                 ca=env_("FLOTILLA_NATS_CA") or None)
    url = target.server
    last: list[BaseException] = [] if errors is None else errors
    hopeless = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        last.append(exc)
        if _permanent(exc):
            hopeless.set()

    env = os.environ.get
    servers = [u.strip() for u in url.split(",") if u.strip()]
    per_try = min(CONNECT_TIMEOUT, timeout)
    tls, inbox = _tls_and_inbox(target)
    extra: dict[str, object] = {}
    if tls is not None:
        extra["tls"] = tls
    if inbox is not None:
        extra["inbox_prefix"] = inbox
    try:
        nc = await _unless(hopeless, nats.connect(
            servers=servers, name="flotilla-cli", connect_timeout=per_try,
            allow_reconnect=True, max_reconnect_attempts=1, reconnect_time_wait=0.2,
            user_credentials=target.creds, user=env("FLOTILLA_NATS_USER"),
            password=env("FLOTILLA_NATS_PASSWORD"), token=env("FLOTILLA_NATS_TOKEN"),
            error_cb=on_error, pending_size=64 * 1024 * 1024, **extra,  # type: ignore[arg-type]
        ), timeout=per_try * 2 * max(1, len(servers)) + 1.0)
    except (OSError, nats.errors.Error, TimeoutError, asyncio.TimeoutError) as exc:
        # What the error callback saw tells more than what nats.connect raises at the end (often
        # only "no servers available").
        causes = [*last, exc]
        raise CliError(_connect_failure(target, causes)) from None
    # nats-py upgrades to TLS only when the server asks for it, even for tls:// URLs: given a CA,
    # a server that speaks plaintext is not the one the context means (or is an impostor).
    if tls is not None and not nc._server_info.get("tls_required"):
        await close_quietly(nc)
        raise CliError(f"NATS at {url} does not use TLS, but {target.describe()} gives a CA ({target.ca}): "
                       f"not connecting in the clear; check the URL, or remove `ca:` for a server without TLS")
    return nc


def _permanent(exc: BaseException) -> bool:
    """A refusal that trying again cannot cure: a certificate the CA does not vouch for, or
    credentials the server rejects."""
    return isinstance(exc, ssl.SSLError) or "authorization violation" in str(exc).lower()


async def _unless(hopeless: asyncio.Event, connecting: Coroutine[Any, Any, Client], timeout: float) -> Client:
    """`connecting`, unless `hopeless` is set first: nats-py retries a refused TLS handshake or a
    refused login until its attempts run out, and a CLI should not wait seconds to say why."""
    async with asyncio.timeout(timeout):
        attempt = asyncio.ensure_future(connecting)
        watch = asyncio.ensure_future(hopeless.wait())
        try:
            await asyncio.wait({attempt, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (attempt, watch):
                if not task.done():
                    task.cancel()
            await asyncio.gather(attempt, watch, return_exceptions=True)
        if attempt.cancelled():
            raise nats.errors.Error("connection refused for good")
        return attempt.result()


async def close_quietly(nc: Client) -> None:
    try:
        await asyncio.wait_for(nc.close(), timeout=2)
    except (OSError, nats.errors.Error, asyncio.TimeoutError):  # closing a broken connection: nothing to add
        pass


def _tls_and_inbox(target: ResolvedContext) -> tuple[ssl.SSLContext | None, str | None]:
    used = target.describe()
    if target.creds and not os.path.isfile(target.creds):
        raise CliError(f"credentials file {target.creds} ({used}) does not exist")
    tls = None
    if target.ca:
        try:
            tls = client_ssl_context(target.ca)
        except (OSError, ssl.SSLError) as e:
            raise CliError(f"cannot load the CA {target.ca} ({used}): {getattr(e, 'strerror', None) or e}") from None
    try:
        inbox = inbox_prefix_for(target.creds)
    except ContextError as e:
        raise CliError(f"{e} ({used})") from None
    return tls, inbox


def _connect_failure(target: ResolvedContext, causes: list[BaseException]) -> str:
    """One line: what failed, with which context/creds/CA, and what to check."""
    url, used = target.server, target.describe()
    verify = next((c for c in causes if isinstance(c, ssl.SSLCertVerificationError)), None)
    if verify is not None:
        why = (f"certificate verify failed: {verify.verify_message.rstrip('.')}" if verify.verify_message
               else str(verify))
        if "hostname" in why.lower() or "ip address mismatch" in why.lower():
            return (f"TLS to NATS at {url} failed ({used}): {why}; connect by a name or IP the server "
                    f"certificate lists (flotilla up issues it for 127.0.0.1, localhost, this host and nats)")
        if target.ca:
            return (f"TLS to NATS at {url} failed ({used}): {why}; the server certificate is not signed "
                    f"by the CA {target.ca}: check that the context's ca is this cluster's ca.pem")
        return (f"TLS to NATS at {url} failed ({used}, no CA given): {why}; the server uses TLS: give "
                f"its CA with a context's `ca:` (flotilla up writes one, see docs/contexts.md)")
    tls_err = next((c for c in causes if isinstance(c, ssl.SSLError)), None)
    if tls_err is not None:
        return f"TLS to NATS at {url} failed ({used}, ca {target.ca or 'none'}): {tls_err}"
    if any(isinstance(c, nats.errors.AuthorizationError) or "authorization violation" in str(c).lower()
           for c in causes):
        who = f"credentials {target.creds}" if target.creds else "no credentials"
        hint = ("check that they belong to this cluster (flotilla up writes the admin context)"
                if target.creds else "this server needs credentials: use a context with `creds:`, "
                "or FLOTILLA_NATS_CREDS")
        return f"NATS at {url} refused the connection: authorization violation with {who} ({used}); {hint}"
    cause = causes[-2] if len(causes) > 1 else causes[-1]  # the callback's last, else what was raised
    why = str(cause) or type(cause).__name__
    tail = f" ({used})" if target.name else ""
    return f"cannot connect to NATS at {url}: {why}{tail}"


def permission_denied(errors: list[BaseException], target: ResolvedContext, principal: str) -> str | None:
    """The one-line error for a request NATS refused to carry (the request itself only times out),
    or None if NATS reported no permissions violation."""
    denied = next((e for e in reversed(errors) if "permissions violation" in str(e).lower()), None)
    if denied is None:
        return None
    what = str(denied).removeprefix("nats: ")
    return (f"NATS refused it: {what} (principal {principal!r}, {target.describe()}, "
            f"credentials {target.creds or 'none'}); this identity may not do that: use a context "
            f"whose credentials may (the admin's), see docs/security.md")


def principal_of(target: ResolvedContext) -> str:
    """Who the CLI is on the bus: the creds' name claim, else the admin (an unsecured bus)."""
    try:
        return creds_name(target.creds) if target.creds else ADMIN
    except ContextError as e:
        raise CliError(f"{e} ({target.describe()})") from None


def make_api(nc: Client, timeout: float, principal: str = ADMIN) -> Api:
    # The admin calls the plain subjects; anyone else (the reader) only may publish on its own
    # user-scoped ones (docs/security.md).
    return Api(nc, timeout=min(REQUEST_TIMEOUT, timeout), retries=3,
               user=None if principal == ADMIN else principal)
