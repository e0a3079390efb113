"""The node agent's flags (`python -m services.nodeagent --help`) and their translation into an AgentConfig."""
from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from schemas.quantity import QuantityError, to_int

from services.lib.config import state_dir

from .agent import AgentConfig
from .network import DEFAULT_POOL
from .node import NodeConfig


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"labels are key=value pairs, got {item!r}")
        labels[key] = value
    return labels


def _bytes(text: str) -> int:
    try:
        return to_int(text)
    except QuantityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--node-name", default=env("FLOTILLA_NODE_NAME", socket.gethostname()),
                   help="the Node this agent registers and runs pods for "
                        "(env FLOTILLA_NODE_NAME; default the hostname)")
    p.add_argument("--cpu", help="cpu capacity to report, e.g. 4 or 3500m (default: the host's CPUs)")
    p.add_argument("--memory", help="memory capacity to report, e.g. 8Gi (default: the host's memory)")
    p.add_argument("--pods", type=int, default=110, help="how many pods this node takes (default 110)")
    p.add_argument("--ephemeral-storage", help="ephemeral-storage capacity (default: the state disk's size)")
    p.add_argument("--node-labels", type=_labels, default={}, help="extra Node labels: k=v,k2=v2")
    p.add_argument("--heartbeat-seconds", type=_positive, default=2.0,
                   help="Lease renewal interval; the lease lasts 4x this (default 2)")
    p.add_argument("--node-status-seconds", type=_positive, default=60.0,
                   help="Node status is written on every condition change and at least this often (default 60)")
    p.add_argument("--backoff-base", type=_positive, default=10.0,
                   help="first container restart back-off, doubling per crash (default 10 s)")
    p.add_argument("--backoff-cap", type=_positive, default=300.0,
                   help="longest restart back-off; it resets after 2x this of running (default 300 s)")
    p.add_argument("--hollow", action="store_true",
                   help="run no processes: pods are reported Running (scale benchmarks only)")
    p.add_argument("--stop-pods-on-exit", action="store_true",
                   help="stop every pod when the agent stops (default: leave them running, to be adopted on restart)")
    p.add_argument("--shutdown-grace-seconds", type=float, default=5.0,
                   help="with --stop-pods-on-exit, the longest grace a pod gets; whoever stops the agent "
                        "should allow it a few seconds more before SIGKILL (default 5)")
    p.add_argument("--pod-cidr", help="this node's pod CIDR (default: a free /24 of --pod-cidr-pool)")
    p.add_argument("--pod-cidr-pool", default=DEFAULT_POOL,
                   help=f"where node pod CIDRs are taken from (default {DEFAULT_POOL})")
    p.add_argument("--container-log-max-size", type=_bytes, default=10 * 2**20,
                   help="rotate a container's log past this size (default 10Mi)")
    p.add_argument("--container-log-max-files", type=int, default=5,
                   help="log files kept per container instance, the live one included (default 5)")
    p.add_argument("--container-log-check-seconds", type=_positive, default=10.0,
                   help="how often log sizes are checked for rotation (default 10)")
    p.add_argument("--sync-workers", type=int, default=4, help="pods reconciled concurrently (default 4)")
    p.add_argument("--bootstrap-token", default=env("FLOTILLA_BOOTSTRAP_TOKEN"),
                   help="join with this token (`flotilla token create`): exchanged once for the node's own "
                        "credentials, kept in <state dir>/node.creds (env FLOTILLA_BOOTSTRAP_TOKEN)")
    p.add_argument("--bootstrap-token-file", default=env("FLOTILLA_BOOTSTRAP_TOKEN_FILE"), metavar="PATH",
                   help="like --bootstrap-token, the token read from a file (env FLOTILLA_BOOTSTRAP_TOKEN_FILE)")


def agent_state_dir(args: argparse.Namespace) -> Path:
    """The agent's own directory: checkpoint, pod sandboxes, node.creds."""
    folder = Path(args.state_dir) if args.state_dir else state_dir(args, f"nodeagent/{args.node_name}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def agent_config(args: argparse.Namespace) -> AgentConfig:
    node = args.node_name
    folder = agent_state_dir(args)
    registration = NodeConfig(
        name=node, cpu=args.cpu, memory=args.memory, pods=args.pods, ephemeral_storage=args.ephemeral_storage,
        labels=args.node_labels, heartbeat=args.heartbeat_seconds, status_seconds=args.node_status_seconds,
        pod_cidr=args.pod_cidr, pod_cidr_pool=args.pod_cidr_pool)
    return AgentConfig(
        registration, state_dir=folder, identity=args.identity, backoff_base=args.backoff_base,
        backoff_cap=args.backoff_cap, hollow=args.hollow, stop_pods_on_exit=args.stop_pods_on_exit,
        shutdown_grace=args.shutdown_grace_seconds, log_max_bytes=args.container_log_max_size,
        log_max_files=args.container_log_max_files, log_check_seconds=args.container_log_check_seconds,
        sync_workers=args.sync_workers)
