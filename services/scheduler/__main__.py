"""`python -m services.scheduler`: one active leader schedules; other replicas are hot standbys."""
import argparse

from nats.aio.client import Client

from services.lib.client import Api
from services.lib.events import EventRecorder
from services.lib.leader import LeaderElector
from services.lib.registry import register
from services.lib.runner import run_service

from .scheduler import Scheduler


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lease-duration", type=float, default=4.0,
                   help="leader lease duration (s); a standby takes over about this long after the leader died")
    p.add_argument("--percentage-of-nodes-to-score", type=int, default=0,
                   help="percentage of nodes to filter before scoring in large clusters (0 = adaptive)")
    p.add_argument("--parallel-binds", type=int, default=256, help="binds in flight")
    p.add_argument("--initial-backoff", type=float, default=1.0, help="unschedulable back-off start (s)")
    p.add_argument("--max-backoff", type=float, default=10.0, help="unschedulable back-off cap (s)")


async def main(args: argparse.Namespace, nc: Client) -> None:
    # Binds, status writes and events carry the elector's term (services/lib/leader.py); the
    # elector's own Lease writes do not.
    principal = args.principal  # the API server authorizes it (services/apiserver/rbac.yaml)
    elector = LeaderElector(Api(nc, user=principal), "flotilla-scheduler", args.identity, lease_duration=args.lease_duration,
                            renew_deadline=args.lease_duration * 0.7, retry_period=min(1.0, args.lease_duration / 5))
    api = Api(nc, fence=elector, user=principal)
    scheduler = Scheduler(api, elector, EventRecorder(api, "default-scheduler", args.identity),
                          percentage=args.percentage_of_nodes_to_score, parallel_binds=args.parallel_binds,
                          initial_backoff=args.initial_backoff, max_backoff=args.max_backoff)
    svc = await register(nc, "scheduler", args.identity, principal=args.principal)
    try:
        await scheduler.run()
    finally:
        await svc.stop()


if __name__ == "__main__":
    run_service("scheduler", main, _args)
