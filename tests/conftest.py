"""Shared fixtures: a real nats-server, real service processes, and API clients (DESIGN §7: no mocks).

    async def test_something(nats_server, apiserver, api, start_service):
        await apiserver(2, "--bookmark-seconds", "0.3")    # two more API server replicas
        agent = start_service("nodeagent", "--node-name", "n1")
        pod = await api.pods.create({...})

Fixtures (all function-scoped, everything on free ports under tmp_path):

- `nats_server`   a `flotilla.natsserver.NatsServer` with JetStream and an 8 MB max_payload; from
                  async tests restart it with `await nats_server.arestart()` (same port and store).
                  It runs Flotilla's NATS auth (fresh operator/accounts/users per test, see
                  flotilla/credentials.py) unless FLOTILLA_TEST_AUTH=0: every client needs
                  credentials, `bus_creds(principal)` gives them (None without auth), and the
                  fixtures below use the right ones (service processes their own principal's,
                  `nc` and `api` the admin's).
- `nats_url`      its URL.
- `start_service` `start_service(module, *args, name=None, nats=True) -> ServiceProcess`: runs
                  `python -m services.<module> --nats-url URL *args` in its own session (process
                  group), output to `tmp_path/<name>.log`. Every process is killed (the whole group)
                  at teardown, pass or fail, and the logs of all of them are attached to a failure.
- `apiserver`     `await apiserver(n=1, *args) -> list[ServiceProcess]`: n API server replicas, each
                  answering `$SRV.PING.flotilla-apiserver` and serving `namespaces.get default`.
- `nc`            a raw nats-py connection that reconnects forever (survives NATS restarts), with the
                  state log owner's (apiserver's) rights.
- `connect_api`   `await connect_api(node=None, timeout=10.0, user=None) -> Api` on a connection of its
                  own, as that node (`node-<node>`) or user principal (default: admin).
- `api`           one API server process plus an `Api` client on `nc`.
- `wait_for`      `await wait_for(predicate, timeout, what)`: poll a sync or async predicate.
- `ping_service`  `await ping_service("flotilla-apiserver")`: identities of the instances answering PING.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401  (imported up front: its plugin imports it at session end otherwise, where
import nats       # Python 3.11.7's parser can hit "AST constructor recursion depth mismatch")
import pytest
from nats.aio.client import Client

from flotilla.credentials import ClusterCredentials
from flotilla.natsserver import NatsServer
from services.lib import permissions
from services.lib.registry import ping_identities

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0
STOP_GRACE = 3.0
LOG_TAIL_LINES = 60

_running = pytest.StashKey[list["ServiceProcess"]]()


class ServiceProcess:
    """One `python -m services.<module>` process in its own process group, logging to a file."""

    def __init__(self, name: str, module: str, argv: list[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.module = module
        self.argv = argv
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=REPO, env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """Signal the whole process group (a service may have children of its own)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL, as a crash would, and reap it."""
        self.signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, grace: float = STOP_GRACE) -> int:
        """SIGTERM, SIGKILL after `grace` seconds; returns the exit code."""
        if self.alive:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()
        self.signal(signal.SIGKILL)  # leftovers in the group
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "".join(self.log_text().splitlines(keepends=True)[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.proc.returncode}"
        return f"<{self.name} pid={self.pid} {state}>"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the log tail of every service process the test started to its failure report."""
    report = yield
    if report.failed:
        for proc in item.stash.get(_running, []):
            report.sections.append((f"service log {proc.name} ({proc!r}, {proc.log_path})", proc.log_tail()))
    return report


# ---- NATS -------------------------------------------------------------------------------------------

AUTH = os.environ.get("FLOTILLA_TEST_AUTH", "1") != "0"
# The credentials of the test's nats-server (tests that make servers of their own have none).
_CREDENTIALS: dict[str, ClusterCredentials] = {}


def open_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server without auth (any client may use any subject): a module that overrides the
    `nats_server` fixture with it speaks as any principal and sees what the API server's own
    authorization decides (`yield from open_nats_server(tmp_path)`)."""
    server = NatsServer(tmp_path / "nats", max_payload="8MB")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server (JetStream on disk under tmp_path, 8 MB max_payload) on a free port."""
    if AUTH:
        creds = ClusterCredentials.ensure(tmp_path / "auth")
        server = NatsServer(tmp_path / "nats", max_payload="8MB", extra_config=creds.server_config(),
                            probe_creds=creds.creds_path("admin"))
    else:
        server = NatsServer(tmp_path / "nats", max_payload="8MB")
    server.start()
    if AUTH:
        _CREDENTIALS[server.url] = creds
    try:
        yield server
    finally:
        _CREDENTIALS.pop(server.url, None)
        server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


def creds_for(url: str, principal: str = "admin") -> str | None:
    """The creds file of `principal` on the test server at `url` (node agents: `node-<name>`), or
    None when that server runs without auth."""
    creds = _CREDENTIALS.get(url)
    if creds is None and len(_CREDENTIALS) == 1:  # a relay (tests/relay.py) in front of the test's server
        creds = next(iter(_CREDENTIALS.values()))
    if creds is None:
        return None
    if principal.startswith("node-"):
        return str(creds.node_creds(principal[len("node-"):]))
    path = creds.creds_path(principal)
    if not path.exists():
        creds.write_user(principal, permissions.for_principal(principal))
    return str(path)


def cli_env(url: str) -> dict[str, str]:
    """The environment of a `flotilla` CLI subprocess against the test server at `url`: the
    process's own, with the admin's credentials when that server runs Flotilla's auth."""
    creds = creds_for(url)
    return {**os.environ, **({"FLOTILLA_NATS_CREDS": creds} if creds else {})}


@pytest.fixture
def bus_creds(nats_url: str) -> Callable[[str], str | None]:
    """`bus_creds("reader")`: that principal's creds file on this test's server (None without auth)."""
    return lambda principal: creds_for(nats_url, principal)


async def connect(url: str, principal: str | None = "admin", **kwargs: Any) -> Client:
    """A test client that, like the services, never gives up reconnecting; as `principal` (with its
    inbox prefix) when the server runs Flotilla's auth."""
    options: dict[str, Any] = dict(max_reconnect_attempts=-1, reconnect_time_wait=0.2, connect_timeout=5,
                                   pending_size=64 * 1024 * 1024)
    creds = creds_for(url, principal) if principal else None
    if creds:
        options.update(user_credentials=creds, inbox_prefix=permissions.inbox(principal))
    options.update(kwargs)
    return await nats.connect(url, **options)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    """A raw connection with the state log owner's rights (the apiserver principal): tests reach
    under the API with it (JetStream, raw subjects). API clients get the admin's (`api`, `connect_api`)."""
    client = await connect(nats_url, permissions.APISERVER)
    try:
        yield client
    finally:
        await client.close()


# ---- service processes ------------------------------------------------------------------------------

@pytest.fixture
def start_service(request: pytest.FixtureRequest, tmp_path: Path,
                  nats_server: NatsServer) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start `python -m services.<module>` against the test's nats-server (see module doc)."""
    started: list[ServiceProcess] = []
    request.node.stash[_running] = started
    counts: dict[str, int] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(tmp_path / "state")}

    def start(module: str, *args: str, name: str | None = None, nats: bool = True,
              principal: str | None = None) -> ServiceProcess:
        if name is None:
            counts[module] = counts.get(module, 0) + 1
            name = f"{module}-{counts[module]}"
        argv = [sys.executable, "-m", f"services.{module}"]
        if nats:
            argv += ["--nats-url", nats_server.url]
        # Also with nats=False: the test then passes a --nats-url of its own (a relay to this server).
        # Not for a node joining with a bootstrap token: it gets its credentials by joining.
        creds = creds_for(nats_server.url, principal or _principal_of(module, args))
        if creds and "--creds" not in args and "--bootstrap-token" not in args:
            argv += ["--creds", creds]
        argv += list(args)
        proc = ServiceProcess(name, module, argv, tmp_path / f"{name}.log", env)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


def _principal_of(module: str, args: tuple[str, ...]) -> str:
    """Whose credentials a service process runs with: its own principal's (docs/security.md)."""
    if module == "nodeagent.hollow":
        return permissions.HOLLOW
    if module == "nodeagent":
        name = args[args.index("--node-name") + 1] if "--node-name" in args else socket.gethostname()
        return permissions.node_principal(name)
    return module


async def wait_apiserver_ready(proc: ServiceProcess, identity: str, url: str,
                               timeout: float = READY_TIMEOUT) -> None:
    """Until this replica answers PING under its identity and `namespaces.get default` succeeds."""
    client = await connect(url)
    try:
        deadline = time.monotonic() + timeout
        pinged = False
        while True:
            if not proc.alive:
                raise RuntimeError(f"{proc.name} exited with code {proc.proc.returncode} while starting:\n"
                                   f"{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} not ready within {timeout}s (ping answered: {pinged}):\n"
                                   f"{proc.log_tail()}")
            if not pinged:
                pinged = identity in await ping_identities(client, "flotilla-apiserver")
            if pinged:
                try:
                    reply = await client.request("flo.api.v1.namespaces.get", b'{"name":"default"}', timeout=2)
                    if json.loads(reply.data).get("kind") == "Namespace":
                        return
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    pass
            await asyncio.sleep(0.05)
    finally:
        await client.close()


@pytest.fixture
def apiserver(start_service: Callable[..., ServiceProcess],
              nats_server: NatsServer) -> Callable[..., Awaitable[list[ServiceProcess]]]:
    """Factory: `await apiserver(n=1, *args)` starts n API server replicas and waits until each serves."""

    async def start(n: int = 1, *args: str) -> list[ServiceProcess]:
        procs = []
        for _ in range(n):
            identity = f"test-apiserver-{uuid.uuid4().hex[:8]}"
            proc = start_service("apiserver", "--identity", identity, *args)
            procs.append((proc, identity))
        await asyncio.gather(*(wait_apiserver_ready(p, ident, nats_server.url) for p, ident in procs))
        return [p for p, _ in procs]

    return start


@pytest.fixture
async def connect_api(nats_url: str) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Factory: `await connect_api(node=None, timeout=10.0)` -> an `Api` on a connection of its own."""
    from services.lib.client import Api

    clients: list[Client] = []

    async def make(node: str | None = None, timeout: float = 10.0, retries: int = 5, user: str | None = None) -> Api:
        principal = permissions.node_principal(node) if node else (user or "admin")
        client = await connect(nats_url, principal)
        clients.append(client)
        if user:
            return Api(client, node=node, timeout=timeout, retries=retries, user=user)
        return Api(client, node=node, timeout=timeout, retries=retries)

    try:
        yield make
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
async def api(apiserver: Callable[..., Awaitable[list[ServiceProcess]]], nats_url: str) -> AsyncIterator[Any]:
    """One API server process and a typed client for it (as the admin)."""
    from services.lib.client import Api

    await apiserver(1)
    client = await connect(nats_url)
    try:
        yield Api(client)
    finally:
        await client.close()


# ---- helpers ----------------------------------------------------------------------------------------

async def _wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
                    interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")
        await asyncio.sleep(interval)


@pytest.fixture
def ping_service(nc: Client) -> Callable[[str], Awaitable[set[str]]]:
    """`await ping_service("flotilla-apiserver")`: the identities of every instance answering `$SRV.PING`."""

    async def ping(service: str, window: float = 0.3) -> set[str]:
        return await ping_identities(nc, service, window)

    return ping


@pytest.fixture
def wait_for() -> Callable[..., Awaitable[Any]]:
    """`await wait_for(predicate, timeout=10, what="...")`: poll until truthy, return the value."""
    return _wait_for
