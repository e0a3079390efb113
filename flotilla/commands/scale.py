"""`flotilla scale KIND NAME --replicas N` (or KIND/NAME): ReplicaSets and Deployments."""
from __future__ import annotations

import argparse

from ..context import CliError, Context
from ..kinds import display_kind, parse_targets
from . import Command


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="+", metavar="KIND NAME | KIND/NAME", help="what to scale")
    p.add_argument("--replicas", type=int, required=True, help="the new number of replicas")


async def run(ctx: Context) -> int:
    assert ctx.api is not None
    if ctx.args.replicas < 0:
        raise CliError("--replicas must be 0 or more")
    for target in parse_targets(ctx.args.kind):
        if "scale" not in target.resource.verbs:
            raise CliError(f"{target.resource.name} cannot be scaled (only replicasets and deployments)")
        if not target.names:
            raise CliError("name the object to scale")
        for name in target.names:
            await ctx.api.resource(target.resource.name).scale(name, ctx.args.replicas, ctx.namespace)
            ctx.print(f"{display_kind(target.resource)}.apps/{name} scaled")
    return 0


COMMANDS = [Command("scale", "Set the number of replicas of a Deployment or ReplicaSet", arguments, run)]
