"""`python -m services.nodelifecycle`: the node lifecycle controller (one active leader, hot standbys)."""
import argparse

from services.lib.client import Api
from services.lib.controller import ControllerParts, controller_main
from services.lib.events import EventRecorder

from .controller import NodeLifecycleController, Settings


def _args(p: argparse.ArgumentParser) -> None:
    d = Settings()
    p.add_argument("--node-monitor-grace-period", type=float, default=d.grace,
                   help="seconds a node's Lease may go unrenewed before the node is Ready=Unknown (default 10)")
    p.add_argument("--node-monitor-period", type=float, default=d.period,
                   help="how often node health is judged (s, default 1)")
    p.add_argument("--node-eviction-rate", type=float, default=d.eviction_rate,
                   help="nodes per second per zone that may get a NoExecute taint (default 1)")
    p.add_argument("--secondary-node-eviction-rate", type=float, default=d.secondary_eviction_rate,
                   help="that rate in a partially disrupted zone larger than --large-cluster-size-threshold "
                        "(default 0.1)")
    p.add_argument("--unhealthy-zone-threshold", type=float, default=d.unhealthy_zone_threshold,
                   help="share of not-Ready nodes (and more than 2) making a zone PartialDisruption (default 0.55)")
    p.add_argument("--large-cluster-size-threshold", type=int, default=d.large_cluster_size_threshold,
                   help="a partially disrupted zone of at most this many nodes stops evictions (default 50)")


def build(api: Api, args: argparse.Namespace) -> ControllerParts:
    settings = Settings(grace=args.node_monitor_grace_period, period=args.node_monitor_period,
                        eviction_rate=args.node_eviction_rate,
                        secondary_eviction_rate=args.secondary_node_eviction_rate,
                        unhealthy_zone_threshold=args.unhealthy_zone_threshold,
                        large_cluster_size_threshold=args.large_cluster_size_threshold)
    nlc = NodeLifecycleController(api, EventRecorder(api, "node-controller", args.identity), settings,
                                  workers=args.workers)
    return ControllerParts(nlc.informers, nlc.controller, nlc.resync)


if __name__ == "__main__":
    controller_main("nodelifecycle", build, _args)
