"""`python -m services.gc`: the garbage collector (one active leader, hot standbys)."""
import argparse

from nats.aio.client import Client

from services.lib.client import Api
from services.lib.controller import run_controller_service
from services.lib.leader import LeaderElector
from services.lib.registry import register
from services.lib.runner import run_service

from .collector import GarbageCollector


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lease-duration", type=float, default=5.0, help="leader lease duration (s)")
    p.add_argument("--workers", type=int, default=4, help="objects collected at once")


async def main(args: argparse.Namespace, nc: Client) -> None:
    api = Api(nc)
    gc = GarbageCollector(api, workers=args.workers)
    elector = LeaderElector(api, "flotilla-gc", args.identity, lease_duration=args.lease_duration,
                            renew_deadline=args.lease_duration * 0.7, retry_period=min(1.0, args.lease_duration / 5))
    svc = await register(nc, "gc", args.identity)
    try:
        await run_controller_service(list(gc.informers.values()), gc.controller, elector, gc.resync)
    finally:
        await svc.stop()


if __name__ == "__main__":
    run_service("gc", main, _args)
