"""Shared pieces of the benchmarks: an embedded NATS, service processes, the raw JetStream baseline,
latency statistics and RSS readings. Every figure a benchmark prints is measured in that run."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from collections.abc import AsyncIterator, Callable, Iterator

import nats
import nats.js.errors
from nats.js.kv import KeyValue

from flotilla.natsserver import NatsServer
from services.apiserver.store import HISTORY, StateLog
from services.lib.client import Api

ROOT = Path(__file__).resolve().parent.parent


class Unfinished(TimeoutError):
    """The benchmark did not finish what it measures: it says so and exits non-zero (see finish)."""


def finish(main: Callable[[], None]) -> None:
    """Run a benchmark's main; one that did not finish prints why, on stdout beside its figures, and
    exits 1 rather than leaving a partial printout that reads like a result."""
    unfinished: list[BaseException] = []
    try:
        main()
    except* Unfinished as group:
        unfinished.extend(group.exceptions)
    if unfinished:
        for exc in unfinished:
            print(f"BENCHMARK DID NOT FINISH: {exc}", flush=True)
        sys.exit(1)


def pod_json(name: str, pad: int = 0) -> bytes:
    """A ~500-byte pod manifest, the object size DESIGN §8's raw figures were measured with."""
    return (
        '{"apiVersion":"v1","kind":"Pod","metadata":{"name":"%s","labels":{"app":"bench","tier":"web"}},'
        '"spec":{"containers":[{"name":"main","image":"registry.local/bench:1.0","command":["sleep","3600"],'
        '"ports":[{"containerPort":8080}],"resources":{"requests":{"cpu":"10m","memory":"16Mi"}}}]}}' % name
    ).encode() + b" " * pad


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def embedded_nats() -> Iterator[NatsServer]:
    with tempfile.TemporaryDirectory(prefix="flotilla-bench-") as tmp:
        server = NatsServer(Path(tmp) / "js")
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextmanager
def process(name: str, argv: list[str], log_dir: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A benchmark's helper process in its own session, logging to a file; stopped (group) on exit."""
    log_path = (log_dir or Path(tempfile.gettempdir())) / f"bench-{name}-{os.getpid()}-{time.time_ns()}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    try:
        yield proc
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, SIGKILL after 10 s; a group already gone is just reaped."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        return
    except ProcessLookupError:
        proc.wait()
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@contextmanager
def service(module: str, url: str, *args: str, log_dir: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    # Throughput benchmarks drive one principal far past any per-identity rate limit: off unless the
    # benchmark sets its own (a later flag wins).
    unthrottled = ["--rate-limit-qps", "0"] if module == "apiserver" else []
    argv = [sys.executable, "-m", f"services.{module}", "--nats-url", url,
            "--log-level", os.environ.get("BENCH_LOG_LEVEL", "warning"), *unthrottled, *args]
    with process(module, argv, log_dir) as proc:
        yield proc


async def wait_for_service(nc: nats.NATS, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await nc.request(f"$SRV.PING.{name}", b"", timeout=0.5)
            return
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await asyncio.sleep(0.2)
    raise Unfinished(f"{name} did not answer $SRV.PING within {timeout}s")


async def run_pipelined(n: int, in_flight: int, op) -> tuple[float, list[float]]:
    """Run op(i) for i in range(n) with `in_flight` concurrent; returns (seconds, latencies in ms)."""
    latencies: list[float] = []
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            t0 = time.perf_counter()
            await op(i)
            latencies.append((time.perf_counter() - t0) * 1000)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(in_flight):
            tg.create_task(worker())
    return time.perf_counter() - start, latencies


@asynccontextmanager
async def state_log_like_bucket(nc: nats.NATS, prefix: str) -> AsyncIterator[KeyValue]:
    """A scratch bucket made by the API server's own StateLog.ensure, so the raw baseline pays what the
    state log pays (HISTORY revisions per key, file storage, direct get) and follows it if it changes.
    ensure() also makes the `-events` bucket beside it; both are deleted afterwards."""
    js = nc.jetstream()
    name = f"{prefix}_{time.time_ns()}"
    log = StateLog(nc, name)
    await log.ensure()
    try:
        yield await js.key_value(name)
    finally:
        await js.delete_key_value(log.main.name)
        await js.delete_key_value(log.events.name)


async def raw_kv_create_rate(nc: nats.NATS, n: int, in_flight: int) -> float:
    """Raw JetStream KV creates per second on a bucket configured like the state log (the ceiling the
    API is compared with)."""
    async with state_log_like_bucket(nc, "bench_raw") as kv:
        value = pod_json("x")
        secs, _ = await run_pipelined(n, in_flight, lambda i: kv.create(f"pods.default.raw-{i}", value))
    return n / secs


async def raw_kv_cas_rate(nc: nats.NATS, n: int, in_flight: int, keys: int = 1000) -> float:
    """Raw JetStream KV get + CAS update per second, on a bucket configured like the state log."""
    async with state_log_like_bucket(nc, "bench_cas") as kv:
        value = pod_json("x")
        for i in range(keys):
            await kv.create(f"k{i}", value)

        async def op(i: int) -> None:
            key = f"k{i % keys}"
            while True:
                e = await kv.get(key)
                try:
                    await kv.update(key, value, last=e.revision)
                    return
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue

        secs, _ = await run_pipelined(n, in_flight, op)
    return n / secs


async def raw_kv_get_rate(nc: nats.NATS, n: int, in_flight: int, keys: int = 1000) -> float:
    """Raw JetStream KV gets per second, on a bucket configured like the state log."""
    async with state_log_like_bucket(nc, "bench_get") as kv:
        value = pod_json("x")
        for i in range(keys):
            await kv.create(f"k{i}", value)
        secs, _ = await run_pipelined(n, in_flight, lambda i: kv.get(f"k{i % keys}"))
    return n / secs


def baseline_note() -> str:
    """What the raw figures were measured on, for the benchmarks' printouts."""
    return f"state-log bucket config: history {HISTORY}, file storage, direct get"


async def wait_nodes_ready(api: Api, n: int, timeout: float = 300) -> float:
    """Seconds until n Nodes report Ready."""
    t0 = time.monotonic()
    ready = 0
    while time.monotonic() - t0 < timeout:
        nodes = (await api.nodes.list_all()).items
        ready = sum(1 for node in nodes if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions))
        if ready >= n:
            return time.monotonic() - t0
        await asyncio.sleep(1)
    raise Unfinished(f"only {ready}/{n} nodes Ready after {timeout}s")
