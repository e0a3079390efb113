"""`flotilla up`: the whole suite on this machine (flotilla/up.py does the work and owns the flags)."""
from __future__ import annotations

import argparse

from ..context import Context
from . import Command


def arguments(p: argparse.ArgumentParser) -> None:
    pass  # flotilla.up parses its own flags: see `flotilla up --help`


async def run(ctx: Context) -> int:
    # Imported here, not at the top, so that every other command works even if `up` is broken.
    from flotilla.up import add_up_arguments, run_up

    parser = argparse.ArgumentParser(prog="flotilla up",
                                     description="Run the whole suite locally: an embedded NATS and every "
                                                 "service as a supervised process; Ctrl-C stops everything.")
    add_up_arguments(parser)
    return await run_up(parser.parse_args(ctx.args.argv))


COMMANDS = [Command("up", "Run the whole suite locally (embedded NATS, every service); Ctrl-C stops it",
                    arguments, run, bus=False, own_parser=True)]
