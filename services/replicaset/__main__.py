"""`python -m services.replicaset`: the replica controller (one active leader, hot standbys)."""
import argparse

from services.lib.client import Api
from services.lib.controller import ControllerParts, controller_main
from services.lib.events import EventRecorder

from .controller import BURST_REPLICAS, STATUS_BATCH_SECONDS, ReplicaSetController


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--burst", type=int, default=BURST_REPLICAS, help="most pod creates/deletes per sync")
    p.add_argument("--status-batch-seconds", type=float, default=STATUS_BATCH_SECONDS,
                   help="pod status changes are folded into one sync per this period")


def build(api: Api, args: argparse.Namespace) -> ControllerParts:
    rsc = ReplicaSetController(api, EventRecorder(api, "replicaset-controller", args.identity),
                               workers=args.workers, burst=args.burst,
                               status_batch=args.status_batch_seconds)
    return ControllerParts(rsc.informers, rsc.controller, rsc.resync)


if __name__ == "__main__":
    controller_main("replicaset", build, _args)
