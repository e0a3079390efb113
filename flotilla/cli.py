"""`flotilla`: the command line, in kubectl's habits. Subcommands live in flotilla/commands/."""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import NoReturn

import msgspec

from schemas import ApiError
from services.lib.tls import quiet_eof_warnings

from .commands import Command, all_commands
from .context import (CliError, Context, close_quietly, connect, default_nats_url, error_line, make_api,
                      principal_of, resolve_target)

EPILOG = """\
environment:
  FLOTILLA_CONTEXT    default for --context
  FLOTILLA_NATS_URL   default for --nats-url (also NATS_URL); when set, the default context file is not read
  FLOTILLA_DEBUG=1    show tracebacks of unexpected errors
  FLOTILLA_NATS_CREDS, FLOTILLA_NATS_USER, FLOTILLA_NATS_PASSWORD, FLOTILLA_NATS_TOKEN   NATS credentials
  FLOTILLA_NATS_CA    CA bundle of the NATS server's TLS certificate (over a context's `ca`)
contexts: docs/contexts.md (default file $XDG_CONFIG_HOME/flotilla/config, written by `flotilla up`)
"""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 1 like every other error (kubectl's convention)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def add_global_arguments(p: argparse.ArgumentParser, *, top: bool) -> None:
    """The flags every command takes. On subcommands they default to SUPPRESS so that a flag given
    before the subcommand (`flotilla -n kube get pods`) is not overwritten by the subcommand's default."""
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    # None when not given: an explicit --nats-url overrides a context's server, the environment's
    # FLOTILLA_NATS_URL only applies without a context (flotilla/contexts.py).
    p.add_argument("--nats-url", default=default(None),
                   help="NATS server URL(s), comma separated (env FLOTILLA_NATS_URL; default: the "
                   f"context's, else {default_nats_url()})" if top else "NATS server URL(s) (env FLOTILLA_NATS_URL)")
    p.add_argument("--context", default=default(None),
                   help="a context file, or a context's name in $XDG_CONFIG_HOME/flotilla/config "
                   "(env FLOTILLA_CONTEXT; default: that file's current-context)" if top
                   else "context file or name (env FLOTILLA_CONTEXT)")
    p.add_argument("-n", "--namespace", default=default(None), help="namespace (default: default)")
    p.add_argument("--timeout", type=_positive, default=default(60.0),
                   help="seconds to wait for the API and for waits such as delete's (default 60)")


def build_parser(commands: list[Command]) -> argparse.ArgumentParser:
    parser = Parser(prog="flotilla", description="Flotilla: a container orchestrator over NATS.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_global_arguments(parser, top=True)
    subs = parser.add_subparsers(dest="command_name", metavar="COMMAND", title="commands")
    for cmd in commands:
        if cmd.own_parser:
            p = subs.add_parser(cmd.name, help=cmd.help, aliases=list(cmd.aliases), add_help=False)
            p.add_argument("argv", nargs=argparse.REMAINDER)
        else:
            p = subs.add_parser(cmd.name, help=cmd.help, aliases=list(cmd.aliases), description=cmd.help)
            add_global_arguments(p, top=False)
            cmd.arguments(p)
        p.set_defaults(command=cmd)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Like parse_args, but names may come after flags, as kubectl allows (`get pods -n ns web-1`):
    argparse stops filling a positional list at the first flag, so the stragglers are added here."""
    args, extras = parser.parse_known_args(argv)
    stray = [a for a in extras if a.startswith("-") and a != "-"]
    # The command's list of positionals: `names` (KIND NAME...), else a `kind` list (nargs="+").
    tail = next((v for v in (getattr(args, "names", None), getattr(args, "kind", None)) if isinstance(v, list)), None)
    if stray or (extras and tail is None):
        parser.error(f"unrecognized arguments: {' '.join(stray or extras)}")
    if extras and tail is not None:
        tail.extend(extras)
    return args


async def execute(cmd: Command, args: argparse.Namespace) -> int:
    ctx = Context(args)
    if not cmd.bus:
        if not getattr(args, "nats_url", None):
            args.nats_url = default_nats_url()
        return await cmd.run(ctx)
    target = resolve_target(args)
    args.nats_url = target.server  # what commands print and error lines name
    ctx.nc = await connect(target, ctx.timeout, ctx.bus_errors)  # checks the creds file first
    ctx.target, ctx.principal = target, principal_of(target)
    ctx.api = make_api(ctx.nc, ctx.timeout, ctx.principal)
    try:
        return await cmd.run(ctx)
    except ApiError as exc:
        denied = ctx.denial(exc)
        if denied is not None:
            raise CliError(denied) from None
        raise
    finally:
        await close_quietly(ctx.nc)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_eof_warnings()
    commands = all_commands()
    # Commands with their own parser get their arguments untouched (`flotilla up --help`).
    if argv and argv[0] in {c.name for c in commands if c.own_parser}:
        cmd = next(c for c in commands if c.name == argv[0])
        args = argparse.Namespace(command=cmd, argv=argv[1:], nats_url=None, namespace=None, timeout=None,
                                  context=None)
    else:
        parser = build_parser(commands)
        args = parse(parser, argv)
        cmd = getattr(args, "command", None)
        if cmd is None:
            parser.print_help(sys.stderr)
            return 1
    try:
        code = asyncio.run(execute(cmd, args))
    except KeyboardInterrupt:
        return 130
    except (ApiError, CliError) as exc:
        print(error_line(exc, getattr(args, "nats_url", "") or ""), file=sys.stderr, flush=True)
        return 1
    except BrokenPipeError:  # `flotilla get pods | head`: quiet, and no second error when stdout is flushed
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        if os.environ.get("FLOTILLA_DEBUG"):
            raise
        print(f"error: unexpected reply from the API server: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:  # a bug: one line, unless FLOTILLA_DEBUG asks for the traceback
        if os.environ.get("FLOTILLA_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc} (FLOTILLA_DEBUG=1 shows where)", file=sys.stderr, flush=True)
        return 1
    return int(code or 0)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
