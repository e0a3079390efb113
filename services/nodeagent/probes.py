"""Liveness, readiness and startup probes with Kubernetes' semantics.

Handlers: exec (run beside the container: its environment, working directory and cgroups; exit 0
is success), httpGet (to the pod IP unless `host` is set; a status in 200-399 is success),
tcpSocket (a connection is success). grpc probes are not supported and always fail, saying so.

Timing: nothing runs before `initialDelaySeconds` after the container started; then a probe every
`periodSeconds`, each given `timeoutSeconds`. A result flips after `successThreshold` consecutive
successes or `failureThreshold` consecutive failures. Until the startup probe succeeds, liveness
and readiness do not run. Initial results: liveness success, readiness failure (or, for a
container adopted after an agent restart, the readiness it had), startup failure.
"""
from __future__ import annotations

import asyncio
import math
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from schemas.pod import Container, LifecycleHandler, Probe

from services.lib.log import get_logger

from .environment import expand, mapping_for
from .runtime import Handle, Runtime

log = get_logger("flotilla.nodeagent.probes")

USER_AGENT = "flotilla-probe/0.1"


def _why(exc: BaseException) -> str:
    """`connection refused`, as Go (and so Kubernetes' probe messages) words an OS error."""
    errno = getattr(exc, "errno", None)
    return os.strerror(errno).lower() if isinstance(errno, int) and errno > 0 else str(exc)


@dataclass
class ProbeTarget:
    runtime: Runtime
    handle: Handle
    container: Container
    pod_ip: str
    env: dict[str, str]
    cwd: Path


def resolve_port(port: int | str, container: Container) -> int:
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    for p in container.ports:
        if p.name == port:
            return p.container_port
    raise ValueError(f"port {port!r} is not a named port of container {container.name!r}")


async def _http_status(host: str, port: int, path: str, scheme: str, headers: dict[str, str]) -> int:
    ctx = None
    if scheme.upper() == "HTTPS":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    try:
        fields = {"Host": f"{host}:{port}", "User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close",
                  **headers}
        head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        writer.write(head.encode("latin-1"))
        await writer.drain()
        line = await reader.readline()
        parts = line.split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ValueError(f"malformed HTTP response: {line[:80]!r}")
        return int(parts[1])
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass  # the peer closed first: the status is what counts


async def run_probe(probe: Probe, target: ProbeTarget) -> tuple[bool, str]:
    """One probe attempt: (success, message for a failure)."""
    timeout = float(probe.timeout_seconds or 1)
    if probe.exec is not None:
        cmd = [expand(a, mapping_for(target.env)) for a in probe.exec.command]
        code, output = await target.runtime.exec(target.handle, cmd, target.env, target.cwd, timeout)
        if code is None:
            return False, f"command {cmd!r} timed out after {timeout:g}s"
        if code != 0:
            return False, output.strip() or f"command {cmd!r} exited with {code}"
        return True, ""
    if probe.http_get is not None:
        g = probe.http_get
        host = g.host or target.pod_ip
        path = g.path or "/"
        scheme = (g.scheme or "HTTP").lower()
        try:
            port = resolve_port(g.port, target.container)
        except ValueError as exc:
            return False, str(exc)
        url = f"{scheme}://{host}:{port}{path}"
        try:
            code = await asyncio.wait_for(_http_status(host, port, path, scheme,
                                                       {h.name: h.value for h in g.http_headers}), timeout)
        except TimeoutError:
            return False, f'Get "{url}": context deadline exceeded (timeout {timeout:g}s)'
        except (ValueError, ssl.SSLError) as exc:
            return False, f'Get "{url}": {exc}'
        except OSError as exc:
            return False, f'Get "{url}": dial tcp {host}:{port}: connect: {_why(exc)}'
        if 200 <= code < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {code}"
    if probe.tcp_socket is not None:
        t = probe.tcp_socket
        host = t.host or target.pod_ip
        try:
            port = resolve_port(t.port, target.container)
        except ValueError as exc:
            return False, str(exc)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except TimeoutError:
            return False, f"dial tcp {host}:{port}: i/o timeout"
        except OSError as exc:
            return False, f"dial tcp {host}:{port}: connect: {_why(exc)}"
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return True, ""
    if probe.grpc is not None:
        return False, "grpc probes are not supported by Flotilla's process runtime"
    return False, "the probe has no handler"


async def run_hook(handler: LifecycleHandler, target: ProbeTarget, timeout: float) -> tuple[bool, str]:
    """A postStart or preStop hook: the same three handlers as a probe, given `timeout` to finish."""
    as_probe = Probe(exec=handler.exec, http_get=handler.http_get, tcp_socket=handler.tcp_socket,
                     timeout_seconds=max(1, math.ceil(timeout)))
    return await run_probe(as_probe, target)


OnResult = Callable[["ProbeWorker", bool], Awaitable[None]]
OnFailure = Callable[["ProbeWorker", str], Awaitable[None]]


class ProbeWorker:
    """Runs one probe of one container instance for as long as the instance runs."""

    def __init__(self, kind: str, probe: Probe, target: ProbeTarget, started_at: float, on_result: OnResult,
                 on_failure: OnFailure, gate: asyncio.Event | None = None, initial: bool | None = None):
        self.kind = kind
        self.probe = probe
        self.target = target
        self.started_at = started_at  # wall time the container started
        self.on_result = on_result
        self.on_failure = on_failure
        self.gate = gate
        self.result = initial if initial is not None else (kind == "liveness")
        self.successes = 0
        self.failures = 0

    @property
    def title(self) -> str:
        return self.kind.capitalize()

    async def run(self) -> None:
        p = self.probe
        period = float(p.period_seconds or 10)
        success_needed = p.success_threshold or 1
        failure_needed = p.failure_threshold or 3
        if self.gate is not None:
            await self.gate.wait()
        delay = self.started_at + (p.initial_delay_seconds or 0) - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        while True:
            began = time.monotonic()
            try:
                ok, message = await run_probe(p, self.target)
            except Exception as exc:  # a bug in a probe handler counts as a failed attempt
                log.exception("probe attempt crashed", probe=self.kind, container=self.target.container.name)
                ok, message = False, f"probe error: {exc!r}"
            if ok:
                self.successes += 1
                self.failures = 0
                if not self.result and self.successes >= success_needed:
                    self.result = True
                    await self.on_result(self, True)
            else:
                self.failures += 1
                self.successes = 0
                await self.on_failure(self, message)
                if self.failures >= failure_needed and (self.result or self.kind != "readiness"):
                    self.result = False
                    await self.on_result(self, False)
            if self.kind == "startup" and self.result:
                return  # started: the startup probe is done for this instance
            await asyncio.sleep(max(0.0, period - (time.monotonic() - began)))
