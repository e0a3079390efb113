"""Flags and environment every service shares (`--nats-url`, credentials, identity, `--log-level`)."""
from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import msgspec

from schemas import DEFAULT_BUCKET


class BusConfig(msgspec.Struct, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    creds: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    name: str = "flotilla"


def add_common_arguments(parser: argparse.ArgumentParser, service: str) -> None:
    env = os.environ.get
    parser.add_argument("--nats-url", default=env("FLOTILLA_NATS_URL", env("NATS_URL", "nats://127.0.0.1:4222")),
                        help="NATS server URL(s), comma separated (env FLOTILLA_NATS_URL)")
    parser.add_argument("--creds", default=env("FLOTILLA_NATS_CREDS"), help="NATS credentials file")
    parser.add_argument("--user", default=env("FLOTILLA_NATS_USER"), help="NATS user")
    parser.add_argument("--password", default=env("FLOTILLA_NATS_PASSWORD"), help="NATS password")
    parser.add_argument("--token", default=env("FLOTILLA_NATS_TOKEN"), help="NATS token")
    parser.add_argument("--identity", default=env("FLOTILLA_IDENTITY", f"{service}-{socket.gethostname()}-{os.getpid()}"),
                        help="this replica's identity (leader election, logs)")
    parser.add_argument("--log-level", default=env("FLOTILLA_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="log level")
    parser.add_argument("--state-dir", default=env("FLOTILLA_STATE_DIR"),
                        help="where local state lives (default $XDG_STATE_HOME/flotilla/<service>)")
    parser.add_argument("--bucket", default=env("FLOTILLA_BUCKET", DEFAULT_BUCKET), help="state log KV bucket")


def bus_config(args: argparse.Namespace, name: str) -> BusConfig:
    return BusConfig(nats_url=args.nats_url, creds=args.creds, user=args.user, password=args.password,
                     token=args.token, name=name)


def state_dir(args: argparse.Namespace, service: str) -> Path:
    if args.state_dir:
        path = Path(args.state_dir)
    else:
        base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        path = base / "flotilla" / service
    path.mkdir(parents=True, exist_ok=True)
    return path
