"""The CLI's subcommands, one module per command group, each exporting `COMMANDS`.

To add a subcommand (`logs`, `scale`, `rollout`): write `flotilla/commands/<group>.py` with

    async def run(ctx: Context) -> int: ...          # ctx.args, ctx.api, ctx.nc, ctx.out
    def arguments(p: argparse.ArgumentParser) -> None: ...
    COMMANDS = [Command("logs", "Print the logs of a container", arguments, run)]

and add the module's name to `MODULES` below. The CLI gives every command the global flags
(`--nats-url`, `-n`, `--timeout`), connects to NATS before `run` (unless `bus=False`), and turns
an escaping `ApiError` / `CliError` into one line on stderr and exit code 1.
"""
from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..context import Context

# Modules under flotilla.commands, in the order their commands appear in `flotilla --help`.
MODULES = ("apply", "get", "describe", "delete", "logs", "scale", "rollout", "status", "token", "credentials", "up", "chaos")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Context], Awaitable[int]]
    bus: bool = True  # connect to NATS and build ctx.api before run
    # The command parses its own argv (ctx.args.argv): for commands whose flags live elsewhere (`up`).
    own_parser: bool = False
    aliases: tuple[str, ...] = ()


def all_commands() -> list[Command]:
    import importlib

    found: list[Command] = []
    for name in MODULES:
        found += importlib.import_module(f"{__name__}.{name}").COMMANDS
    return found
