"""`python -m services.replicaset`: the replica controller (one active leader, hot standbys)."""
import argparse

from nats.aio.client import Client

from services.lib.client import Api
from services.lib.controller import run_controller_service
from services.lib.events import EventRecorder
from services.lib.leader import LeaderElector
from services.lib.registry import register
from services.lib.runner import run_service

from .controller import BURST_REPLICAS, ReplicaSetController


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lease-duration", type=float, default=5.0, help="leader lease duration (s)")
    p.add_argument("--workers", type=int, default=4, help="ReplicaSets reconciled at once")
    p.add_argument("--burst", type=int, default=BURST_REPLICAS, help="most pod creates/deletes per sync")


async def main(args: argparse.Namespace, nc: Client) -> None:
    api = Api(nc)
    rsc = ReplicaSetController(api, EventRecorder(api, "replicaset-controller", args.identity),
                               workers=args.workers, burst=args.burst)
    elector = LeaderElector(api, "flotilla-replicaset", args.identity, lease_duration=args.lease_duration,
                            renew_deadline=args.lease_duration * 0.7, retry_period=min(1.0, args.lease_duration / 5))
    svc = await register(nc, "replicaset", args.identity)
    try:
        await run_controller_service(rsc.informers, rsc.controller, elector, rsc.resync)
    finally:
        await svc.stop()


if __name__ == "__main__":
    run_service("replicaset", main, _args)
