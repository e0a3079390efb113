"""`flotilla up`: the whole suite on this machine — an embedded nats-server and every service as
its own supervised OS process. Ctrl-C (or SIGTERM) stops the services, then NATS, and exits 0.

The nats-server is supervised too (a Supervisor of its own, so that it stops after the services):
killed, it is restarted at once on the same port with the same JetStream store, and the services,
which reconnect forever, carry on without being restarted themselves.

Runnable on its own as `python -m flotilla.up [flags]`; the CLI mounts the same flags as `up`.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import nats.errors

import msgspec

from services.lib import permissions
from services.lib.inbox import Inbox
from services.lib.tls import client_ssl_context

from . import contexts
from .credentials import ClusterCredentials
from .natsserver import NatsServer
from .supervisor import ProcessSpec, Supervisor, first_completed
from .tlsgen import TlsFiles, default_hosts, ensure_tls, nats_tls_config

# Start order; stop() runs it backwards, so node agents go first and API servers last.
SERVICES = ("apiserver", "scheduler", "replicaset", "deployment", "gc", "endpoints", "nodelifecycle", "proxy",
            "nodeagent")
API_READY_TIMEOUT = 30.0
NATS = "nats-server"  # its name in the supervisor's console lines
# A crashed bus stops the whole suite, so the first restart is all but immediate; one that keeps
# crashing still backs off (0.1, 0.2, 0.4 ... 30 s) like any other child.
NATS_BACKOFF_INITIAL = 0.1
DESCRIPTION = ("Run the whole suite on this machine: an embedded nats-server and every service as its own "
               "supervised process. Ctrl-C stops everything.")
DEMO_MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "demo.yaml"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "flotilla" / "up"


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats-url", default=None,
                        help="use this NATS server instead of starting an embedded one")
    parser.add_argument("--nats-port", type=_count, default=4222,
                        help="client port of the embedded NATS (0 = any free port; default 4222)")
    parser.add_argument("--listen", default="127.0.0.1",
                        help="address the embedded NATS listens on (default 127.0.0.1; beyond loopback "
                             "TLS is on unless --no-tls)")
    parser.add_argument("--auth", action=argparse.BooleanOptionalAction, default=True,
                        help="NATS auth for the embedded NATS: a credential per component, node and user "
                             "(default on; --no-auth: anyone may connect, as before)")
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=None,
                        help="TLS for the embedded NATS (a CA and a certificate made in the state dir); "
                             "default: on when --listen is beyond loopback")
    parser.add_argument("--name", default="local",
                        help="the cluster's name: its context in the flotilla config and the nats CLI's "
                             "`flotilla-<name>` context (default %(default)s)")
    parser.add_argument("--state-dir", type=Path, default=default_state_dir(),
                        help="where NATS data, logs and service state live (default %(default)s)")
    parser.add_argument("--nodes", type=_count, default=3, help="node agents to run (default 3)")
    parser.add_argument("--apiservers", type=_count, default=2, help="API server replicas (default 2)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log level of every service")
    parser.add_argument("--demo", action="store_true",
                        help="once up, apply the demo manifest deploy/examples/demo.yaml")


def service_exists(name: str) -> bool:
    """Whether `python -m services.<name>` would run, without importing the service's package."""
    spec = importlib.util.find_spec(f"services.{name}")
    locations = spec.submodule_search_locations if spec else None
    return any((Path(loc) / "__main__.py").is_file() for loc in locations or ())


class Security(msgspec.Struct, frozen=True):
    """What the embedded NATS asks of clients: credentials per principal, and the CA to trust."""
    credentials: ClusterCredentials | None = None
    tls: TlsFiles | None = None

    def flags(self, principal: str) -> list[str]:
        """The flags that give a service process its own identity on the bus."""
        out: list[str] = []
        if self.credentials is not None:
            if principal.startswith("node-"):
                out += ["--creds", str(self.credentials.node_creds(principal[len("node-"):]))]
            else:
                out += ["--creds", str(self.credentials.creds_path(principal))]
        if self.tls is not None:
            out += ["--tls-ca", self.tls.ca]
        return out

    def creds(self, principal: str) -> str | None:
        return str(self.credentials.creds_path(principal)) if self.credentials else None

    @property
    def ca(self) -> str | None:
        return self.tls.ca if self.tls else None


def service_specs(nats_url: str, state_dir: Path, *, nodes: int, apiservers: int, log_level: str,
                  available: Callable[[str], bool] = service_exists,
                  security: Security = Security()) -> tuple[list[ProcessSpec], list[str]]:
    """The processes to supervise, and the services skipped because their module is missing."""
    env = {
        "FLOTILLA_NATS_URL": nats_url,
        # Services keep local state under $XDG_STATE_HOME/flotilla/<service>: pointing it inside the
        # state dir keeps two `up`s (or a test's) from sharing node agent checkpoints.
        "XDG_STATE_HOME": str(state_dir / "state"),
        "PYTHONUNBUFFERED": "1",
    }
    logs = state_dir / "logs"
    specs: list[ProcessSpec] = []
    skipped: list[str] = []
    for service in SERVICES:
        if not available(service):
            skipped.append(service)
            continue
        base = [sys.executable, "-m", f"services.{service}", "--nats-url", nats_url, "--log-level", log_level]
        if service == "apiserver":
            issuer = (["--bootstrap-issuer", str(security.credentials.issuer_path)]
                      if security.credentials is not None else [])
            instances = [(f"apiserver-{i}", [*base, *security.flags(permissions.APISERVER), *issuer,
                                             "--identity", f"apiserver-{i}"]) for i in range(1, apiservers + 1)]
        elif service == "nodeagent":
            # Stopping `flotilla up` stops the pods too, so no process outlives it (a bare SIGTERM to
            # an agent elsewhere leaves its pods running, like a kubelet restart).
            instances = [(f"nodeagent-{i}", [*base, *security.flags(permissions.node_principal(f"node-{i}")),
                                             "--node-name", f"node-{i}", "--stop-pods-on-exit"])
                         for i in range(1, nodes + 1)]
        else:
            instances = [(service, [*base, *security.flags(service)])]
        specs += [ProcessSpec(name, argv, env=env, log_path=logs / f"{name}.log") for name, argv in instances]
    return specs, skipped


async def wait_for_apiserver(nats_url: str, timeout: float, stop: asyncio.Event,
                             security: Security = Security()) -> bool:
    """True once an API server answers `$SRV.PING` (nats micro), False on timeout or stop."""
    deadline = asyncio.get_running_loop().time() + timeout

    async def quiet(exc: Exception) -> None:
        pass  # connection trouble is expected while things start; the timeout reports it

    while not stop.is_set() and asyncio.get_running_loop().time() < deadline:
        try:
            # One retry at most: nats-py retries a refused first connect even without allow_reconnect
            # (60 x 2 s by default), which would outlast our own deadline.
            nc = await nats.connect(nats_url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=1,
                                    reconnect_time_wait=0.2, error_cb=quiet, **admin_options(security))
        except (OSError, nats.errors.Error):
            await _sleep_unless(stop, 0.5)
            continue
        try:
            while not stop.is_set() and asyncio.get_running_loop().time() < deadline:
                if await _apiserver_pings(nc):
                    return True
        finally:
            await nc.close()
    return False


def admin_options(security: Security) -> dict[str, object]:
    """nats.connect options of the admin on this cluster."""
    options: dict[str, object] = {}
    creds = security.creds(permissions.ADMIN)
    if creds:
        options.update(user_credentials=creds, inbox_prefix=permissions.inbox(permissions.ADMIN))
    if security.ca:
        options["tls"] = client_ssl_context(security.ca)
    return options


async def _apiserver_pings(nc: nats.NATS) -> bool:
    # `$SRV.PING` (not `$SRV.PING.<name>`) so that the check holds whatever prefix the service
    # registers under ("apiserver", "flotilla-apiserver"): every service answers, we pick it out.
    async with Inbox(nc) as inbox:
        await nc.publish("$SRV.PING", reply=inbox.subject)
        while True:
            try:
                msg = await inbox.get(0.5)
            except TimeoutError:
                return False
            try:
                name = json.loads(msg.data).get("name", "")
            except (ValueError, AttributeError):
                continue  # e.g. the empty 503 "no responders" status
            if str(name).endswith("apiserver"):
                return True


async def apply_demo(nats_url: str, stop: asyncio.Event, security: Security = Security()) -> None:
    if not DEMO_MANIFEST.is_file() or importlib.util.find_spec("flotilla.cli") is None:
        print(f"note: no demo applied ({DEMO_MANIFEST} or the flotilla CLI is missing)", flush=True)
        return
    env = dict(os.environ)
    if security.creds(permissions.ADMIN):
        env["FLOTILLA_NATS_CREDS"] = str(security.creds(permissions.ADMIN))
    if security.ca:
        env["FLOTILLA_NATS_CA"] = security.ca
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flotilla.cli", "apply", "-f", str(DEMO_MANIFEST), "--nats-url", nats_url, env=env)
    await first_completed(proc.wait(), stop.wait())
    if proc.returncode is None:  # Ctrl-C while applying
        proc.terminate()
        await proc.wait()
    elif proc.returncode != 0:
        print(f"note: applying the demo failed (exit {proc.returncode}); the suite keeps running", flush=True)


def tls_by_default(listen: str) -> bool:
    """TLS unless NATS listens on loopback only (where nothing on the wire leaves the machine)."""
    return not (listen in ("::1", "localhost") or listen.startswith("127."))


async def run_up(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).expanduser().absolute()
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    with _stop_on(stop, signal.SIGINT, signal.SIGTERM):
        if args.nats_url:  # someone else's NATS: its credentials come from the environment, as for any client
            await _run_services(args, args.nats_url, state_dir, stop, Security())
        else:
            tls_on = args.tls if args.tls is not None else tls_by_default(args.listen)
            security = Security(
                credentials=ClusterCredentials.ensure(state_dir / "auth") if args.auth else None,
                tls=ensure_tls(state_dir / "tls", default_hosts([args.listen])) if tls_on else None)
            extra = ((security.credentials.server_config() if security.credentials else "")
                     + (nats_tls_config(security.tls) if security.tls else ""))
            server = NatsServer(state_dir / "nats", port=args.nats_port, host=args.listen,
                                log_file=state_dir / "logs" / "nats.log", extra_config=extra,
                                probe_creds=security.creds(permissions.ADMIN), tls_ca=security.ca)
            # Leaving this block stops NATS: last, once _run_services has stopped the services,
            # which may still talk to it while they stop.
            async with Supervisor([server.process_spec(NATS)], hooks={NATS: server}, grace=server.stop_timeout,
                                  backoff_initial=NATS_BACKOFF_INITIAL) as nats_supervisor:
                error = await nats_supervisor.wait_started(NATS)
                if error is not None and not stop.is_set():
                    hint = (f" (is something else on port {args.nats_port}? try --nats-port 0, or --nats-url to use it)"
                            if "address already in use" in error else "")
                    print(f"flotilla up: could not start NATS{hint}: {error}", file=sys.stderr)
                    return 1
                if not stop.is_set():
                    await _run_services(args, server.url, state_dir, stop, security)
    print("Flotilla stopped", flush=True)
    return 0


def _write_contexts(args: argparse.Namespace, nats_url: str, security: Security) -> None:
    """The admin context where the flotilla CLI finds it by default, and `nats --context` ones."""
    written = contexts.write_cluster_contexts(args.name, nats_url, security.creds(permissions.ADMIN), security.ca,
                                              security.creds(permissions.READER))
    nats_name = f"flotilla-{args.name}"
    print(f"Context {args.name!r} (admin) written to {written[0]}: the flotilla CLI uses it by default", flush=True)
    print(f"nats CLI: nats --context {nats_name} micro ls   (read-only: --context {nats_name}-reader)", flush=True)


async def _run_services(args: argparse.Namespace, nats_url: str, state_dir: Path, stop: asyncio.Event,
                        security: Security) -> None:
    logs = state_dir / "logs"
    specs, skipped = service_specs(nats_url, state_dir, nodes=args.nodes, apiservers=args.apiservers,
                                   log_level=args.log_level, security=security)
    for service in skipped:
        print(f"note: services.{service} is not there yet (no __main__); not starting it", flush=True)
    async with Supervisor(specs) as supervisor:
        if any(name.startswith("apiserver-") for name in supervisor.names):
            if not await wait_for_apiserver(nats_url, API_READY_TIMEOUT, stop, security) and not stop.is_set():
                print(f"note: the API server has not answered within {API_READY_TIMEOUT:g}s; "
                      f"see {logs / 'apiserver-1.log'}", flush=True)
        if not stop.is_set():
            if not args.nats_url:
                _write_contexts(args, nats_url, security)
            print(f"Flotilla is up: NATS at {nats_url}, logs in {logs}; Ctrl-C stops everything", flush=True)
            if args.nats_url:  # no context written: the environment is how the CLI finds this cluster
                print(f"export FLOTILLA_NATS_URL={nats_url}", flush=True)
            if args.demo:
                await apply_demo(nats_url, stop, security)
        await stop.wait()
        print("Stopping Flotilla ...", flush=True)


@contextlib.contextmanager
def _stop_on(stop: asyncio.Event, *signals: signal.Signals) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flotilla up", description=DESCRIPTION)
    add_up_arguments(parser)
    return asyncio.run(run_up(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
