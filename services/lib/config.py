"""Flags and environment every service shares (`--nats-url`, credentials, identity, `--log-level`)."""
from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import msgspec

from schemas import DEFAULT_BUCKET

from .natsjwt import principal_of_creds


class BusConfig(msgspec.Struct, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    creds: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    name: str = "flotilla"
    principal: str | None = None  # who this client is to the API server (its inbox prefix too)


def add_common_arguments(parser: argparse.ArgumentParser, service: str) -> None:
    env = os.environ.get
    parser.add_argument("--nats-url", default=env("FLOTILLA_NATS_URL", env("NATS_URL", "nats://127.0.0.1:4222")),
                        help="NATS server URL(s), comma separated (env FLOTILLA_NATS_URL)")
    parser.add_argument("--creds", default=env("FLOTILLA_NATS_CREDS"), help="NATS credentials file")
    parser.add_argument("--user", default=env("FLOTILLA_NATS_USER"), help="NATS user")
    parser.add_argument("--password", default=env("FLOTILLA_NATS_PASSWORD"), help="NATS password")
    parser.add_argument("--token", default=env("FLOTILLA_NATS_TOKEN"), help="NATS token")
    parser.add_argument("--tls-ca", default=env("FLOTILLA_NATS_CA"),
                        help="CA bundle that signed the NATS server's certificate (env FLOTILLA_NATS_CA)")
    parser.add_argument("--identity", default=env("FLOTILLA_IDENTITY", f"{service}-{socket.gethostname()}-{os.getpid()}"),
                        help="this replica's identity (leader election, logs)")
    parser.add_argument("--log-level", default=env("FLOTILLA_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="log level")
    parser.add_argument("--state-dir", default=env("FLOTILLA_STATE_DIR"),
                        help="where local state lives (default $XDG_STATE_HOME/flotilla/<service>)")
    parser.add_argument("--bucket", default=env("FLOTILLA_BUCKET", DEFAULT_BUCKET), help="state log KV bucket")


def principal(args: argparse.Namespace, service: str) -> str:
    """Who this process is to the API server: the name its credentials carry (the `name` claim of
    its user JWT), else the service's own name (an unsecured bus: the subject is taken at its word)."""
    if args.creds:
        return principal_of_creds(args.creds)
    return service


def bus_config(args: argparse.Namespace, name: str, principal: str | None = None) -> BusConfig:
    return BusConfig(nats_url=args.nats_url, creds=args.creds, user=args.user, password=args.password,
                     token=args.token, tls_ca=args.tls_ca, name=name, principal=principal)


def state_dir(args: argparse.Namespace, service: str) -> Path:
    if args.state_dir:
        path = Path(args.state_dir)
    else:
        base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        path = base / "flotilla" / service
    path.mkdir(parents=True, exist_ok=True)
    return path
