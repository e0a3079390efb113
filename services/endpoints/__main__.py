"""`python -m services.endpoints`: the endpoints controller (one active leader, hot standbys)."""
import argparse

from services.lib.client import Api
from services.lib.controller import ControllerParts, controller_main
from services.lib.events import EventRecorder

from .controller import BATCH_SECONDS, EndpointsController


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-seconds", type=float, default=BATCH_SECONDS,
                   help="pod changes are folded into one Endpoints sync per this period")


def build(api: Api, args: argparse.Namespace) -> ControllerParts:
    epc = EndpointsController(api, EventRecorder(api, "endpoints-controller", args.identity),
                              workers=args.workers, batch=args.batch_seconds)
    return ControllerParts(epc.informers, epc.controller, epc.resync)


if __name__ == "__main__":
    controller_main("endpoints", build, _args)
