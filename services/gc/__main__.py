"""`python -m services.gc`: the garbage collector (one active leader, hot standbys)."""
import argparse

from services.lib.client import Api
from services.lib.controller import ControllerParts, controller_main

from .collector import GarbageCollector


def build(api: Api, args: argparse.Namespace) -> ControllerParts:
    gc = GarbageCollector(api, workers=args.workers)
    return ControllerParts(list(gc.informers.values()), gc.controller, gc.resync)


if __name__ == "__main__":
    controller_main("gc", build)
