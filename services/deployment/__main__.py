"""`python -m services.deployment`: the Deployment controller (one active leader, hot standbys)."""
import argparse

from services.lib.client import Api
from services.lib.controller import ControllerParts, controller_main
from services.lib.events import EventRecorder

from .controller import DeploymentController


def build(api: Api, args: argparse.Namespace) -> ControllerParts:
    dc = DeploymentController(api, EventRecorder(api, "deployment-controller", args.identity), workers=args.workers)
    return ControllerParts(dc.informers, dc.controller, dc.resync)


if __name__ == "__main__":
    controller_main("deployment", build)
