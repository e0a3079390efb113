"""`python -m services.proxy`: the service proxy and cluster DNS, one per node host (not leader-elected:
every host forwards its own traffic, like kube-proxy)."""
from __future__ import annotations

import argparse
import asyncio
import os
import socket

from nats.aio.client import Client

from services.lib.client import Api
from services.lib.log import get_logger
from services.lib.registry import register
from services.lib.runner import run_service

from .dns import ClusterDns
from .proxier import Proxy
from .pump import PUMPS

log = get_logger("flotilla.proxy")


def add_arguments(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--nodeport-addresses", default=env("FLOTILLA_NODEPORT_ADDRESSES", "0.0.0.0"),
                   help="comma-separated addresses NodePorts listen on (default 0.0.0.0: every local address)")
    p.add_argument("--datapath", choices=sorted(PUMPS), default="protocol",
                   help="how bytes are copied (benchmarks/proxy.py compares them)")
    p.add_argument("--dns-address", default=env("FLOTILLA_DNS_ADDRESS", "127.128.0.10"), help="cluster DNS address")
    p.add_argument("--dns-port", type=int, default=int(env("FLOTILLA_DNS_PORT", "53")),
                   help="cluster DNS port (UDP and TCP); 0 = no DNS")
    p.add_argument("--cluster-domain", default=env("FLOTILLA_CLUSTER_DOMAIN", "cluster.local"),
                   help="the cluster's DNS domain")


async def main(args: argparse.Namespace, nc: Client) -> None:
    api = Api(nc, user=args.principal)
    addresses = [a.strip() for a in args.nodeport_addresses.split(",") if a.strip()]
    proxy = Proxy(api, addresses, datapath=args.datapath, host=socket.gethostname())
    svc = await register(nc, "proxy", args.identity, principal=args.principal)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(proxy.run())
            if args.dns_port:
                tg.create_task(_dns(proxy, args))
    finally:
        await svc.stop()


async def _dns(proxy: Proxy, args: argparse.Namespace) -> None:
    # The same informers as the proxy: one list+watch per kind for both.
    server = ClusterDns(proxy.services, proxy.endpoints, args.cluster_domain)
    # A DNS address that cannot be bound (port taken, no privilege for 53) must not take the proxy
    # down with it: say so once and retry with back-off, as for a Service's listener.
    failures = 0
    while True:
        try:
            await server.serve(args.dns_address, args.dns_port)
            return
        except OSError as exc:
            if failures == 0:
                log.warning("cluster DNS cannot listen; will retry", address=f"{args.dns_address}:{args.dns_port}",
                            error=exc.strerror or str(exc))
            failures += 1
            await asyncio.sleep(min(2.0 ** failures, 30.0))


if __name__ == "__main__":
    run_service("proxy", main, add_arguments)
