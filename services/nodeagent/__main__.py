"""`python -m services.nodeagent --node-name N`: the node agent (Flotilla's kubelet)."""
from __future__ import annotations

import argparse

from nats.aio.client import Client

from services.lib.runner import run_service

from .agent import NodeAgent
from .config import add_arguments, agent_config, agent_state_dir
from .join import ensure_credentials


async def main(args: argparse.Namespace, nc: Client) -> None:
    await NodeAgent(nc, agent_config(args)).run()


async def join(args: argparse.Namespace) -> None:
    """Node join: a bootstrap token becomes the node's own credentials before the agent connects."""
    await ensure_credentials(args, agent_state_dir(args))


if __name__ == "__main__":
    run_service("nodeagent", main, add_arguments, before_connect=join)
