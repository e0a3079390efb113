"""`flotilla logs POD [-c CONTAINER] [-f] [--tail N] [--previous]`: served by the pod's node agent."""
from __future__ import annotations

import argparse
import contextlib
import sys

from services.lib.logs import fetch_logs, follow_logs

from ..context import CliError, Context
from . import Command


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pod", help="the pod (or pod/NAME)")
    p.add_argument("-c", "--container", help="the container (needed when the pod has several)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output until the container ends")
    p.add_argument("--tail", type=int, default=None, help="only the last N lines")
    p.add_argument("-p", "--previous", action="store_true", help="the previous instance of a restarted container")


async def run(ctx: Context) -> int:
    assert ctx.api is not None and ctx.nc is not None
    name = ctx.args.pod.split("/", 1)[1] if ctx.args.pod.startswith(("pod/", "pods/", "po/")) else ctx.args.pod
    pod = await ctx.api.pods.get(name, ctx.namespace)
    node = pod.spec.node_name
    if not node:
        raise CliError(f'pod "{name}" is not scheduled to a node yet: no logs')
    args = ctx.args
    out = sys.stdout.buffer
    if args.follow and not args.previous:
        async with contextlib.aclosing(follow_logs(ctx.nc, node, ctx.namespace, name, args.container, args.tail)) as chunks:
            async for chunk in chunks:
                out.write(chunk)
                out.flush()
        return 0
    out.write(await fetch_logs(ctx.nc, node, ctx.namespace, name, args.container, args.tail, args.previous))
    out.flush()
    return 0


COMMANDS = [Command("logs", "Print the logs of a container in a pod", arguments, run)]
