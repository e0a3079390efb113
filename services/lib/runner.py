"""Running a service process: flags, logging, the bus connection, signals, and clean shutdown."""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import ssl
from collections.abc import Awaitable, Callable

from nats.aio.client import Client

from .bus import connect
from .config import add_common_arguments, bus_config, principal
from .natsjwt import JwtError
from .log import get_logger, setup_logging

Main = Callable[[argparse.Namespace, Client], Awaitable[None]]


Prepare = Callable[[argparse.Namespace], Awaitable[None]]


def run_service(service: str, main: Main, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                argv: list[str] | None = None, before_connect: Prepare | None = None) -> None:
    """Parse flags, connect to NATS (retrying forever), run `main` until SIGINT/SIGTERM, then drain.

    `before_connect(args)` runs first on the event loop and may change the connection's flags (a
    node agent exchanges its bootstrap token for credentials there and sets `args.creds`)."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{service}", description=f"Flotilla {service}")
    add_common_arguments(parser, service)
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    args.principal = service
    # Services hold large caches of long-lived objects: collect the young generation less often than
    # Python's 700 allocations, but not so rarely that one collection stalls every request in flight
    # (at 50,000 a young collection took 10-16 ms, most of the API server's p99 at 64 in flight).
    gc.set_threshold(10_000, 20, 100)
    # A path prefix: each service process writes cProfile stats to <prefix>.<service>.<pid> on exit
    # (a benchmark starts several services with the same environment).
    profile = os.environ.get("FLOTILLA_PROFILE")
    try:
        if profile:
            import cProfile

            cProfile.runctx("_event_loop_run(_run(service, main, args, before_connect))", globals(), locals(),
                            f"{profile}.{service}.{os.getpid()}")
        else:
            _event_loop_run(_run(service, main, args, before_connect))
    except KeyboardInterrupt:
        pass
    except (JwtError, ssl.SSLError) as exc:  # credentials or TLS that cannot work: say why, no traceback
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


def _event_loop_run(coro: Awaitable[None]) -> None:
    """uvloop roughly halves the per-message cost of the event loop; asyncio's own loop is the fallback."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    uvloop.run(coro)  # type: ignore[arg-type]


async def _run(service: str, main: Main, args: argparse.Namespace, before_connect: Prepare | None) -> None:
    log = get_logger(f"flotilla.{service}", identity=args.identity)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopping = asyncio.Event()

    def stop(signame: str) -> None:
        if not stopping.is_set():
            log.info("stopping", signal=signame)
            stopping.set()
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig.name)
    if before_connect is not None:
        await before_connect(args)
    args.principal = principal(args, service)
    nc = await connect(bus_config(args, f"{service}:{args.identity}", args.principal))
    log.info("started", nats=args.nats_url, principal=args.principal)
    try:
        await main(args, nc)
    except asyncio.CancelledError:
        if not stopping.is_set():
            raise
    finally:
        try:
            await asyncio.wait_for(nc.drain(), timeout=5)
        except Exception as exc:  # already closed or NATS gone: nothing left to flush
            log.debug("drain failed", error=repr(exc))
        log.info("stopped")
