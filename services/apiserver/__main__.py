"""`python -m services.apiserver`: serve the Flotilla API over NATS."""
import argparse
import os

from services.lib.runner import run_service

from .allocator import DEFAULT_NODE_PORT_RANGE, DEFAULT_SERVICE_CIDR, REPAIR_AFTER_SECONDS, parse_cidr, parse_port_range
from .authz import load_config
from .defaults import PodDefaults
from .server import serve


def _checked(parse):  # argparse reports a bad value as a usage error naming the flag
    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return check


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicas", type=int, default=1, help="JetStream replicas of the state log (1 or 3)")
    p.add_argument("--bookmark-seconds", type=float, default=2.0,
                   help="interval of watch bookmarks (also how fast a dead watcher is noticed)")
    p.add_argument("--service-cluster-ip-range", type=_checked(parse_cidr),
                   default=os.environ.get("FLOTILLA_SERVICE_CIDR", DEFAULT_SERVICE_CIDR),
                   help="IPv4 range of Service ClusterIPs; its first 16 addresses are only given on request "
                        "(env FLOTILLA_SERVICE_CIDR)")
    p.add_argument("--service-node-port-range", type=_checked(parse_port_range), default=DEFAULT_NODE_PORT_RANGE,
                   help="range of Service NodePorts, low-high inclusive")
    p.add_argument("--service-allocation-repair-after", type=float, default=REPAIR_AFTER_SECONDS,
                   help="seconds after which a ClusterIP/NodePort record whose Service is gone is freed")
    defaults = PodDefaults()
    p.add_argument("--default-not-ready-toleration-seconds", type=int, default=defaults.not_ready_toleration_seconds,
                   help="tolerationSeconds of the node.kubernetes.io/not-ready:NoExecute toleration added to "
                        "every pod that has none (Kubernetes: 300)")
    p.add_argument("--default-unreachable-toleration-seconds", type=int,
                   default=defaults.unreachable_toleration_seconds,
                   help="tolerationSeconds of the node.kubernetes.io/unreachable:NoExecute toleration added to "
                        "every pod that has none (Kubernetes: 300)")

    p.add_argument("--authorization", choices=("on", "off"), default="on",
                   help="check every request against the authorization table (off: only for benchmarks)")
    p.add_argument("--authorization-config", type=_checked(load_config), default=None, metavar="PATH",
                   help="the authorization table (YAML, see docs/security.md); default: the built-in "
                        "services/apiserver/rbac.yaml")
    p.add_argument("--rate-limit-qps", type=float, default=2000.0,
                   help="requests per second each principal may make (token bucket refill); 0 = unlimited")
    p.add_argument("--rate-limit-burst", type=int, default=4000,
                   help="requests each principal may make at once (token bucket size)")
    p.add_argument("--bootstrap-issuer", default=os.environ.get("FLOTILLA_BOOTSTRAP_ISSUER"), metavar="PATH",
                   help="the account's user issuer (issuer.json of the cluster's credentials): enables node join "
                        "with bootstrap tokens (env FLOTILLA_BOOTSTRAP_ISSUER; docs/node-join.md)")

if __name__ == "__main__":
    run_service("apiserver", serve, _args)
