"""`flotilla credentials generate`: the secrets directory compose.yaml reads (docs/compose.md).

    flotilla credentials generate [--dir secrets] [--nodes 3] [--host nats ...]

writes, fresh and random per cluster and never committed (the directory is git-ignored):

    <dir>/keys.json, issuer.json, nats-auth.conf   the NATS operator/account keys (ClusterCredentials)
    <dir>/creds/<principal>.creds                  one user per component, admin, reader, node-node-<i>
    <dir>/tls/ca.pem, server.pem, server-key.pem   the bus's CA and the server certificate (+ ca-key.pem)
    <dir>/nats-server.conf                         the whole config of compose's nats service
    <dir>/context.yaml                             a Flotilla context for the host's CLI (admin)

Rerunning it keeps every key and credential that exists and adds what is missing (more node
credentials, TLS names); `--rotate` remakes every user credential with a new signing key (the
state log stays); a new directory is a new cluster (new operator and account, an empty state log).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import msgspec
import msgspec.structs

from services.lib import natsjwt, permissions

from .. import contexts
from ..context import CliError, Context
from ..credentials import ClusterCredentials
from ..tlsgen import TlsFiles, TlsGenError, ensure_tls, nats_tls_config
from . import Command

DEFAULT_DIR = Path("secrets")
DEFAULT_HOSTS = ("nats",)  # compose's service name: what the other containers dial
ALWAYS_HOSTS = ("localhost", "127.0.0.1")  # the host's CLI through the published port
NATS_CONFIG = "nats-server.conf"
CONTEXT_FILE = "context.yaml"
CONTEXT_NAME = "compose"
TLS_DIR = "tls"
# Where compose's nats service finds its files: compose mounts each secret at /run/secrets/<name>
# (compose.yaml's top-level `secrets:` names them so).
SECRETS_MOUNT = "/run/secrets"
NATS_TLS_CERT_SECRET = "nats-tls-cert"
NATS_TLS_KEY_SECRET = "nats-tls-key"
STORE_DIR = "/data/jetstream"  # on the nats-data volume
CLIENT_PORT = 4222
MONITOR_PORT = 8222
# Above the API server's 1.5 MB object limit: a list reply of many objects is larger than any one.
MAX_PAYLOAD = "8MB"
MAX_FILE_STORE = "10GB"


class Generated(msgspec.Struct, frozen=True):
    dir: str
    credentials: ClusterCredentials
    tls: TlsFiles
    nats_config: str
    context: str
    node_creds: list[str]
    written: list[str]  # files new in this run (the rest were kept)


def node_name(i: int) -> str:
    """The node names compose.yaml gives its agents (--node-name node-<i>)."""
    return f"node-{i}"


def nats_config(credentials: ClusterCredentials) -> str:
    """The nats-server config of compose's nats service: every path is where the container sees it."""
    tls = TlsFiles(ca=f"{SECRETS_MOUNT}/ca", cert=f"{SECRETS_MOUNT}/{NATS_TLS_CERT_SECRET}",
                   key=f"{SECRETS_MOUNT}/{NATS_TLS_KEY_SECRET}")
    return "\n".join([
        "# Written by `flotilla credentials generate` (flotilla/commands/credentials.py); rerun it, do not edit.",
        "# compose's nats service reads it as the secret `nats-config`; the paths are the container's.",
        "server_name: flotilla",
        f"port: {CLIENT_PORT}",
        # The monitor has no auth of its own: compose.yaml publishes it on the host's loopback only.
        f"http_port: {MONITOR_PORT}",
        f"max_payload: {MAX_PAYLOAD}",
        "jetstream {",
        f'  store_dir: "{STORE_DIR}"',
        f"  max_file_store: {MAX_FILE_STORE}",
        "}",
        # NATS listens beyond loopback in compose (the containers' network, the published port):
        # TLS on, as `flotilla up --listen` turns it on beyond loopback.
        nats_tls_config(tls).rstrip("\n"),
        credentials.server_config().rstrip("\n"),
    ]) + "\n"


def generate(directory: str | Path = DEFAULT_DIR, nodes: int = 3, hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS,
             *, rotate: bool = False) -> Generated:
    """Make `directory` a complete secrets directory for compose; keep whatever is already there
    (with `rotate`, every user credential is made anew: ClusterCredentials.rotate_signing_key)."""
    d = Path(directory).absolute()
    before = _files(d)
    if rotate:
        ClusterCredentials.rotate_signing_key(d)
        before = {p for p in before if p.parent != d / "creds" and p != d / "keys.json"}  # remade: report them
    credentials = ClusterCredentials.ensure(d)
    node_creds = [str(credentials.node_creds(node_name(i))) for i in range(1, nodes + 1)]
    tls = ensure_tls(d / TLS_DIR, [*hosts, *ALWAYS_HOSTS])
    config = d / NATS_CONFIG
    natsjwt.write_private(config, nats_config(credentials))
    context = d / CONTEXT_FILE
    # Paths relative to the file (contexts.py resolves them so): the directory may be moved whole.
    contexts.save(context, contexts.ConfigFile(current_context=CONTEXT_NAME, contexts=[contexts.NamedContext(
        name=CONTEXT_NAME, server=f"tls://127.0.0.1:{CLIENT_PORT}",
        creds=str(credentials.creds_path(permissions.ADMIN).relative_to(d)),
        ca=str(Path(tls.ca).relative_to(d)))]))
    # Everything owner-only: the certificates are not secret, but one rule for the whole directory
    # keeps a key from ever being the exception (tlsgen writes the public ones 0644).
    for path in _files(d):
        path.chmod(0o600)
    for folder in (d, d / "creds", d / TLS_DIR):
        folder.chmod(0o700)
    written = sorted(str(p) for p in _files(d) - before)
    return Generated(dir=str(d), credentials=credentials, tls=tls, nats_config=str(config), context=str(context),
                     node_creds=node_creds, written=written)


def _files(d: Path) -> set[Path]:
    return {p for p in d.rglob("*") if p.is_file()} if d.exists() else set()


def arguments(p: argparse.ArgumentParser) -> None:
    subs = p.add_subparsers(dest="credentials_command", metavar="SUBCOMMAND", required=True)
    g = subs.add_parser("generate", help="write a compose-ready secrets directory (docs/compose.md)",
                        description="Write a secrets directory for compose.yaml: NATS operator-mode credentials "
                                    "(one user per component, node, admin and reader), the bus's TLS CA and "
                                    "certificate, and the nats service's config. Rerunning keeps what exists.")
    g.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                   help="the secrets directory (default %(default)s, next to compose.yaml)")
    g.add_argument("--nodes", type=_count, default=3, help="node credentials node-1..N to make (default 3)")
    g.add_argument("--host", dest="hosts", action="append", metavar="NAME",
                   help="a name or IP clients dial NATS by, for the TLS certificate (repeatable; default: "
                        f"{', '.join(DEFAULT_HOSTS)}; {' and '.join(ALWAYS_HOSTS)} are always in)")
    g.add_argument("--rotate", action="store_true",
                   help="make every user credential anew with a new signing key (old ones are refused once "
                        "nats restarts); the operator, account and state log stay")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


async def run(ctx: Context) -> int:
    args = ctx.args
    if args.credentials_command != "generate":  # argparse allows only generate; a new one lands here
        ctx.warn(f"error: unknown subcommand {args.credentials_command}")
        return 1
    try:
        out = generate(args.dir, args.nodes, args.hosts or list(DEFAULT_HOSTS), rotate=args.rotate)
    except (OSError, TlsGenError, natsjwt.JwtError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CliError(f"cannot write the secrets in {args.dir}: {exc}") from None
    for path in out.written:
        ctx.print(f"wrote {_shown(path)}")
    if not out.written:
        ctx.print(f"nothing new in {_shown(out.dir)}: every key, credential and certificate was kept")
    ignored = " (git-ignored)" if Path(out.dir).name == DEFAULT_DIR.name else "; keep it out of git"
    ctx.print(f"cluster secrets in {_shown(out.dir)}/{ignored}:")
    ctx.print(f"  nats-server config  {_shown(out.nats_config)}")
    ctx.print(f"  admin credentials   {_shown(out.credentials.creds_path(permissions.ADMIN))}")
    ctx.print(f"  CA certificate      {_shown(out.tls.ca)}")
    ctx.print(f"  CLI context         {_shown(out.context)} (admin, tls://127.0.0.1:{CLIENT_PORT})")
    uid = os.getuid()
    env = f"FLOTILLA_UID={uid} " if uid != 1000 else ""  # compose.yaml runs the services as uid 1000 by default
    ctx.print("next:")
    if args.rotate:  # the running containers hold the old credentials and nats the old account JWT
        ctx.print(f"  {env}docker compose up -d --force-recreate")
    else:
        ctx.print(f"  {env}docker compose up -d --build")
    ctx.print(f"  flotilla --context {Path(out.context).absolute()} get nodes")
    return 0


def _shown(path: str | Path) -> str:
    """Relative to the working directory when inside it: what the user would type."""
    p = Path(path)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def main(argv: list[str] | None = None) -> int:
    """`python -m flotilla.commands.credentials generate ...`: the command without the CLI's wiring."""
    import asyncio

    parser = argparse.ArgumentParser(prog="flotilla credentials", description=COMMANDS[0].help)
    arguments(parser)
    try:
        return asyncio.run(run(Context(parser.parse_args(argv))))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


COMMANDS = [Command("credentials", "Generate a cluster's credentials for compose (NATS users, TLS, nats config)",
                    arguments, run, bus=False)]

if __name__ == "__main__":
    sys.exit(main())
