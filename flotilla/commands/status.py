"""`flotilla status`: the services running, as NATS micro discovery (`$SRV.INFO`) sees them, the NATS
server, and the state log's size."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import nats.errors
import nats.js.errors

from schemas import DEFAULT_BUCKET
from services.lib.inbox import Inbox

from ..context import Context
from ..printers import Table
from . import Command

QUIET = 0.5  # collection ends this long after the last reply
LONGEST = 3.0  # ... or after this long in all


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bucket", default=os.environ.get("FLOTILLA_BUCKET", DEFAULT_BUCKET),
                   help="the state log's KV bucket (env FLOTILLA_BUCKET; default %(default)s)")


async def discover(nc: Any, subject: str = "$SRV.INFO") -> list[dict[str, Any]]:
    """Every reply to one discovery request, gathered until replies stop coming for QUIET seconds."""
    replies: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LONGEST
    async with Inbox(nc) as inbox:
        await nc.publish(subject, b"", reply=inbox.subject)
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                msg = await inbox.get(min(QUIET, left))
            except TimeoutError:
                break
            try:
                info = json.loads(msg.data)
            except ValueError:
                continue  # e.g. the empty "no responders" status
            if isinstance(info, dict) and info.get("name"):
                replies.append(info)
    return replies


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


async def _stream_line(js: Any, stream: str) -> str:
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return f"{stream}: not created yet"
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        return f"{stream}: unavailable ({type(exc).__name__})"
    return f"{stream}: {info.state.messages} messages, {_size(info.state.bytes)}"


async def run(ctx: Context) -> int:
    nc = ctx.nc
    assert nc is not None
    services = await discover(nc)
    rows = sorted(([s.get("name", ""), s.get("id", ""), s.get("version", ""),
                    str((s.get("metadata") or {}).get("identity", "")) or "<none>"] for s in services),
                  key=lambda r: (r[0], r[3], r[1]))
    if rows:
        for line in Table(["SERVICE", "ID", "VERSION", "IDENTITY"]).render(rows):
            ctx.print(line)
    else:
        ctx.warn("No services answer on $SRV.INFO.")
    try:
        v = nc.connected_server_version
        version = f"{v.major}.{v.minor}.{v.patch}"
    except ValueError:
        version = "(unknown version)"
    js = nc.jetstream(timeout=2)
    bucket = ctx.args.bucket
    streams = [await _stream_line(js, f"KV_{bucket}"), await _stream_line(js, f"KV_{bucket}-events")]
    ctx.print("")
    ctx.print(f"NATS {version} at {ctx.args.nats_url}")
    ctx.print(f"State log {'; '.join(streams)}")
    if not any(str(s.get("name", "")).endswith("apiserver") for s in services):
        ctx.warn(f"error: no API server answers at {ctx.args.nats_url}")
        return 1
    return 0


COMMANDS = [Command("status", "Show the running Flotilla services and the state log", arguments, run)]
