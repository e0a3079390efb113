"""What a CLI command gets to work with (parsed flags, the NATS connection, the API client), the
fail-fast NATS connection of the CLI, and the one-line error formats kubectl users know."""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass, field
from typing import TextIO

import nats
import nats.errors
from nats.aio.client import Client

from schemas import ApiError
from services.lib.client import Api

CONNECT_TIMEOUT = 2.0  # seconds per attempt; the CLI tries twice, then gives up
REQUEST_TIMEOUT = 10.0  # one API request; --timeout lowers it


class CliError(Exception):
    """A user-facing failure: printed as `error: <message>`, exit code 1."""


@dataclass
class Context:
    args: argparse.Namespace
    nc: Client | None = None
    api: Api | None = None
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
        self.warn(error_line(exc, getattr(self.args, "nats_url", "")))


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


async def connect(url: str, timeout: float) -> Client:
    """Connect once (two quick attempts per server), or raise CliError: a CLI must not hang on a dead NATS.

    Credentials come from the same environment the services read (FLOTILLA_NATS_CREDS, _USER,
    _PASSWORD, _TOKEN).
    """
    last: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        last.append(exc)

    env = os.environ.get
    servers = [u.strip() for u in url.split(",") if u.strip()]
    per_try = min(CONNECT_TIMEOUT, timeout)
    try:
        return await asyncio.wait_for(nats.connect(
            servers=servers, name="flotilla-cli", connect_timeout=per_try,
            allow_reconnect=True, max_reconnect_attempts=1, reconnect_time_wait=0.2,
            user_credentials=env("FLOTILLA_NATS_CREDS"), user=env("FLOTILLA_NATS_USER"),
            password=env("FLOTILLA_NATS_PASSWORD"), token=env("FLOTILLA_NATS_TOKEN"),
            error_cb=on_error, pending_size=64 * 1024 * 1024,
        ), timeout=per_try * 2 * max(1, len(servers)) + 1.0)
    except (OSError, nats.errors.Error, TimeoutError, asyncio.TimeoutError) as exc:
        cause = last[-1] if last else exc
        why = str(cause) or type(cause).__name__
        raise CliError(f"cannot connect to NATS at {url}: {why}") from None


def make_api(nc: Client, timeout: float) -> Api:
    return Api(nc, timeout=min(REQUEST_TIMEOUT, timeout), retries=3)
