"""The processes faults act on: a suite the harness starts itself (nats-server + Supervisor, built
from `flotilla up`'s own specs), or a running `flotilla up` found in /proc."""
from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from flotilla.credentials import ClusterCredentials
from flotilla.natsserver import NatsServer, free_port
from flotilla.supervisor import ProcessSpec, Supervisor
from flotilla.up import Security, admin_options, service_specs, wait_for_apiserver
from services.lib import permissions
from services.lib.natsjwt import principal_of_creds
from services.lib.tls import client_ssl_context

from .schedule import HOLLOW, LEADER_ELECTED, component_of
from .workload import HOLLOW_POOL, POOL_LABEL, REAL_POOL

HOLLOW_PREFIX = "hollow-"  # hollow node names: hollow-0, hollow-1, ...


class Proc(msgspec.Struct):
    name: str
    pid: int
    identity: str | None = None


class Targets(abc.ABC):
    """What every fault needs from the suite, whoever runs it (the harness's own suite, or an
    attached `flotilla up`)."""

    mode = "?"
    nats_url = ""
    log_dir: Path | None = None
    can_kill_for_good = False

    @abc.abstractmethod
    def names(self) -> list[str]:
        ...

    @abc.abstractmethod
    def pid(self, name: str) -> int | None:
        ...

    def identity(self, name: str) -> str:
        return name

    def restarts(self) -> dict[str, int]:
        return {}

    @abc.abstractmethod
    def nats_pid(self) -> int | None:
        ...

    def log_path(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir else None

    async def kill(self, name: str) -> int | None:
        """kill -9 of the service's own process (its supervisor restarts it); the pid killed."""
        pid = self.pid(name)
        if pid is not None:
            signal_pid(pid, signal.SIGKILL)
        return pid

    @abc.abstractmethod
    async def kill_for_good(self, name: str) -> int | None:
        ...

    @abc.abstractmethod
    async def restart_nats(self) -> None:
        ...

    def replicas(self, component: str) -> list[str]:
        return [n for n in self.names() if component_of(n) == component]

    def client_options(self) -> dict[str, object]:
        """nats.connect options of the harness's own client (the admin's credentials)."""
        return {}


def signal_pid(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


class Harness(Targets):
    """Our own suite: an embedded nats-server with a store dir, every service a supervised process."""

    mode = "harness"
    can_kill_for_good = True

    def __init__(self, server: NatsServer, supervisor: Supervisor, log_dir: Path, security: Security = Security()):
        self.server = server
        self.supervisor = supervisor
        self.nats_url = server.url
        self.log_dir = log_dir
        self.security = security
        self.gone: set[str] = set()

    def client_options(self) -> dict[str, object]:
        return admin_options(self.security)

    def names(self) -> list[str]:
        return [n for n in self.supervisor.names if n not in self.gone]

    def pid(self, name: str) -> int | None:
        return self.supervisor.pid(name)

    def restarts(self) -> dict[str, int]:
        return {n: self.supervisor.restarts(n) for n in self.supervisor.names}

    def nats_pid(self) -> int | None:
        return self.server.pid if self.server.running else None

    async def kill_for_good(self, name: str) -> int | None:
        pid = self.pid(name)
        if pid is not None:
            signal_pid(pid, signal.SIGKILL)
        self.gone.add(name)
        await self.supervisor.stop_child(name)  # the supervisor sees it stopped, not crashed: no restart
        return pid

    async def restart_nats(self) -> None:
        def crash_and_start() -> None:
            self.server.kill()  # SIGKILL, as a crash: JetStream recovers from its files
            self.server.start()
        await asyncio.to_thread(crash_and_start)


def harness_specs(nats_url: str, state_dir: Path, *, nodes: int, apiservers: int, log_level: str,
                  standbys: tuple[str, ...] = ("scheduler",), hollow_nodes: int = 0,
                  security: Security = Security()) -> list[ProcessSpec]:
    """`flotilla up`'s specs, with what lets several suites share a machine (a Service range, pod
    addresses and a DNS port of their own), names as leader identities (so that a lease holder names
    the process to kill), and a standby for the components in `standbys` (so that killing the
    leader shows a failover, not just a restart). With `hollow_nodes`, one more process runs that many
    hollow nodes, and every node carries POOL_LABEL (`real` or `hollow`) for the workload's selectors."""
    specs, _skipped = service_specs(nats_url, state_dir, nodes=nodes, apiservers=apiservers, log_level=log_level,
                                    security=security)
    pick = random.SystemRandom()  # not the chaos seed: these only keep concurrent suites apart
    net = f"127.{pick.randint(129, 250)}.{pick.randint(1, 254)}"
    second = pick.randint(64, 126)
    pool = f"127.{second}.0.0/16"
    # The hollow nodes' CIDRs from a pool of their own: they pick theirs from one listing of the Nodes
    # taken while the real agents may still be registering, so a shared pool could hand one out twice.
    hollow_pool = f"127.{second + 1}.0.0/16"
    out: list[ProcessSpec] = []
    for spec in specs:
        comp = component_of(spec.name)
        extra: list[str] = []
        if comp == "apiserver":
            extra = ["--service-cluster-ip-range", f"{net}.0/24"]
        elif comp in LEADER_ELECTED:
            extra = ["--identity", spec.name]
        elif comp == "proxy":
            extra = ["--dns-address", f"{net}.10", "--dns-port", str(free_port()), "--nodeport-addresses", "127.0.0.1"]
        elif comp == "nodeagent":
            extra = ["--pod-cidr-pool", pool, "--heartbeat-seconds", "2", "--cpu", "2", "--memory", "4Gi"]
            if hollow_nodes:
                extra += ["--node-labels", f"{POOL_LABEL}={REAL_POOL}"]
        out.append(msgspec.structs.replace(spec, argv=[*spec.argv, *extra]))
        if comp in standbys:
            name = f"{spec.name}-b"
            log = spec.log_path.parent / f"{name}.log" if spec.log_path else None
            out.append(ProcessSpec(name, [*spec.argv, "--identity", name], env=spec.env, log_path=log))
    if hollow_nodes:
        agent = next((s for s in specs if component_of(s.name) == "nodeagent"), specs[0])
        log = agent.log_path.parent / f"{HOLLOW}.log" if agent.log_path else None
        # Heartbeat 2 s like the real agents: the hollow default of 10 s would be the node lifecycle
        # controller's whole grace, and the nodes would flap Unknown.
        argv = [sys.executable, "-m", "services.nodeagent.hollow", "--nats-url", nats_url, "--log-level", log_level,
                *security.flags(permissions.HOLLOW), "--identity", HOLLOW, "--count", str(hollow_nodes), "--prefix", HOLLOW_PREFIX,
                "--heartbeat-seconds", "2", "--pod-cidr-pool", hollow_pool, "--no-events",
                "--node-labels", f"{POOL_LABEL}={HOLLOW_POOL}"]
        out.append(ProcessSpec(HOLLOW, argv, env=agent.env, log_path=log))
    return out


@contextlib.asynccontextmanager
async def harness(state_dir: Path, *, nodes: int, apiservers: int = 2, log_level: str = "info",
                  standbys: tuple[str, ...] = ("scheduler",), hollow_nodes: int = 0) -> AsyncIterator[Harness]:
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # The bus as `flotilla up` runs it: NATS auth on, every process with its own credentials.
    security = Security(credentials=ClusterCredentials.ensure(state_dir / "auth"))
    assert security.credentials is not None
    server = NatsServer(state_dir / "nats", log_file=logs / "nats.log", extra_config=security.credentials.server_config(),
                        probe_creds=security.creds(permissions.ADMIN))
    await server.astart()
    try:
        specs = harness_specs(server.url, state_dir, nodes=nodes, apiservers=apiservers, log_level=log_level,
                              standbys=standbys, hollow_nodes=hollow_nodes, security=security)
        with open(logs / "supervisor.log", "a") as out:
            async with Supervisor(specs, grace=5.0, backoff_initial=0.5, backoff_max=5.0, out=out) as sup:
                if not await wait_for_apiserver(server.url, 60.0, asyncio.Event(), security):
                    raise RuntimeError(f"no API server answered within 60s; see {logs}")
                yield Harness(server, sup, logs, security)
    finally:
        await server.astop()


class Attached(Targets):
    """A running `flotilla up` (or any suite on one NATS URL): its processes found in /proc by their
    `-m services.<name>` command lines and `--nats-url`, its nats-server by the port it listens on.
    Its own supervisor restarts what we kill; nothing can be killed for good."""

    mode = "attach"

    def __init__(self, nats_url: str, log_dir: Path | None):
        self.nats_url = nats_url
        self.log_dir = log_dir
        self._port = _port_of(nats_url)

    def client_options(self) -> dict[str, object]:
        """The credentials the CLI would use (FLOTILLA_NATS_CREDS, FLOTILLA_NATS_CA)."""
        env = os.environ.get
        creds, ca = env("FLOTILLA_NATS_CREDS"), env("FLOTILLA_NATS_CA")
        options: dict[str, object] = {}
        if creds:
            options.update(user_credentials=creds, inbox_prefix=permissions.inbox(principal_of_creds(creds)))
        if ca:
            options["tls"] = client_ssl_context(ca)
        return options

    def scan(self) -> dict[str, Proc]:
        found: list[tuple[str, Proc]] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if "-m" not in argv:
                continue
            i = argv.index("-m")
            if i + 1 >= len(argv) or not argv[i + 1].startswith("services."):
                continue
            if _port_of(_flag(argv, "--nats-url") or _environ(pid, "FLOTILLA_NATS_URL") or "") != self._port:
                continue
            service = argv[i + 1].removeprefix("services.")
            identity = _flag(argv, "--identity") or f"{service}-{socket.gethostname()}-{pid}"
            if service == "nodeagent":
                node = _flag(argv, "--node-name") or socket.gethostname()
                base = f"nodeagent-{node.removeprefix('node-')}"
            elif service == "apiserver":
                base = identity if identity.startswith("apiserver-") else f"apiserver-{pid}"
            else:
                base = service
            found.append((base, Proc(base, pid, identity)))
        named: dict[str, Proc] = {}
        for base, proc in sorted(found, key=lambda item: item[1].pid):
            name, n = base, 1
            while name in named:  # a second replica of one component
                n += 1
                name = f"{base}-{chr(ord('a') + n - 1)}"
            proc.name = name
            named[name] = proc
        return named

    def names(self) -> list[str]:
        return list(self.scan())

    def pid(self, name: str) -> int | None:
        proc = self.scan().get(name)
        return proc.pid if proc else None

    def identity(self, name: str) -> str:
        proc = self.scan().get(name)
        return proc.identity or name if proc else name

    def nats_pid(self) -> int | None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if not argv or os.path.basename(argv[0]) != "nats-server":
                continue
            if self._port in _nats_ports(int(entry.name), argv):
                return int(entry.name)
        return None

    async def kill_for_good(self, name: str) -> int | None:
        raise RuntimeError("attached to a running suite: its supervisor restarts whatever is killed")

    async def restart_nats(self) -> None:
        # `flotilla up` supervises its nats-server: kill -9 and it starts it again on the same store.
        pid = self.nats_pid()
        if pid is None:
            raise RuntimeError(f"no nats-server listening on port {self._port} found")
        signal_pid(pid, signal.SIGKILL)


def _flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _environ(pid: int, key: str) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = key.encode() + b"="
    return next((e[len(prefix):].decode(errors="replace") for e in env if e.startswith(prefix)), None)


def _port_of(url: str) -> int | None:
    first = url.split(",")[0].strip()
    if not first:
        return None
    tail = first.rsplit(":", 1)
    try:
        return int(tail[1]) if len(tail) == 2 else 4222
    except ValueError:
        return None


def _nats_ports(pid: int, argv: list[str]) -> set[int]:
    """The client ports of a nats-server: from its ports file (flotilla.natsserver writes its config
    with ports_file_dir) or from -p / --port on its command line."""
    ports: set[int] = set()
    flag = _flag(argv, "-p") or _flag(argv, "--port")
    if flag and flag.isdigit():
        ports.add(int(flag))
    config = _flag(argv, "-c") or _flag(argv, "--config")
    if config:
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            text = (cwd / config).read_text()
        except OSError:
            text = ""
        for line in text.splitlines():
            if line.strip().startswith("ports_file_dir:"):
                folder = Path(json.loads(line.split(":", 1)[1].strip()))
                for f in folder.glob(f"*_{pid}.ports"):
                    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
                        ports.add(int(json.loads(f.read_text())["nats"][0].rsplit(":", 1)[1]))
            if line.strip().startswith("listen:"):
                with contextlib.suppress(ValueError):
                    ports.add(int(json.loads(line.split(":", 1)[1].strip()).rsplit(":", 1)[1]))
    return ports
