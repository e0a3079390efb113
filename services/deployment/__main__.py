"""`python -m services.deployment`: the Deployment controller (one active leader, hot standbys)."""
import argparse

from nats.aio.client import Client

from services.lib.client import Api
from services.lib.controller import run_controller_service
from services.lib.events import EventRecorder
from services.lib.leader import LeaderElector
from services.lib.registry import register
from services.lib.runner import run_service

from .controller import DeploymentController


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lease-duration", type=float, default=5.0, help="leader lease duration (s)")
    p.add_argument("--workers", type=int, default=4, help="Deployments reconciled at once")


async def main(args: argparse.Namespace, nc: Client) -> None:
    api = Api(nc)
    dc = DeploymentController(api, EventRecorder(api, "deployment-controller", args.identity), workers=args.workers)
    elector = LeaderElector(api, "flotilla-deployment", args.identity, lease_duration=args.lease_duration,
                            renew_deadline=args.lease_duration * 0.7, retry_period=min(1.0, args.lease_duration / 5))
    svc = await register(nc, "deployment", args.identity)
    try:
        await run_controller_service(dc.informers, dc.controller, elector, dc.resync)
    finally:
        await svc.stop()


if __name__ == "__main__":
    run_service("deployment", main, _args)
