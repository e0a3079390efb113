"""The `flotilla` CLI end to end: a real nats-server, a real API server process, and the CLI run as
a real subprocess (`python -m flotilla.cli`), as a user would run it.

One nats-server and API server serve the whole module; each test works in a namespace of its own.
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import pytest
import yaml

from flotilla.merge import three_way
from flotilla.natsserver import NatsServer
from flotilla.printers import human_duration, pod_status
from schemas import now_iso
from schemas.pod import ContainerState, ContainerStateWaiting, ContainerStatus, Pod
from services.lib.client import Api

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


# ---- fixtures -------------------------------------------------------------------------------------

@dataclass
class CliCluster:
    url: str
    tmp: Path
    apiserver_log: Path


def _stop_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


async def _apiserver_answers(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        while time.monotonic() < deadline:
            try:
                await nc.request("$SRV.PING.flotilla-apiserver", b"", timeout=0.5)
                return True
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.1)
        return False
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliCluster]:
    tmp = tmp_path_factory.mktemp("cli")
    server = NatsServer(tmp / "nats")
    server.start()
    apiserver: subprocess.Popen[bytes] | None = None
    log_path = tmp / "apiserver.log"
    try:
        env = {**os.environ, "XDG_STATE_HOME": str(tmp / "state"), "PYTHONUNBUFFERED": "1"}
        with open(log_path, "wb") as log:
            apiserver = subprocess.Popen([sys.executable, "-m", "services.apiserver", "--nats-url", server.url],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=REPO, env=env, start_new_session=True)
        if not asyncio.run(_apiserver_answers(server.url, 30)):
            pytest.fail(f"the API server did not answer $SRV.PING within 30s:\n{log_path.read_text()[-3000:]}")
        yield CliCluster(server.url, tmp, log_path)
    finally:
        if apiserver is not None:
            _stop_group(apiserver)
        server.close()


def cli_run(cluster: CliCluster, *args: str, stdin: str | None = None, timeout: float = 30,
            url: str | None = None) -> subprocess.CompletedProcess[str]:
    """`flotilla ARGS...` as a subprocess; killed if it outlives `timeout`."""
    env = {**os.environ, "FLOTILLA_NATS_URL": url or cluster.url}
    return subprocess.run([sys.executable, "-m", "flotilla.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=timeout)


def cli_api(cluster: CliCluster, call: Callable[[Api], Awaitable[T]]) -> T:
    """Run one API call from the test (as "another client") on a connection of its own."""
    async def go() -> T:
        nc = await nats.connect(cluster.url, connect_timeout=2, max_reconnect_attempts=1)
        try:
            return await call(Api(nc, timeout=10))
        finally:
            await nc.close()
    return asyncio.run(go())


@pytest.fixture
def cli_ns(cli_cluster: CliCluster) -> str:
    """A fresh namespace for one test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cli_api(cli_cluster, lambda api: api.namespaces.create({"apiVersion": "v1", "kind": "Namespace",
                                                            "metadata": {"name": name}}))
    return name


def pod_manifest(name: str, ns: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "python:3",
                                     "command": ["python3", "-m", "http.server", "8080"],
                                     "readinessProbe": {"httpGet": {"port": 8080}}}]}}


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def table(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines() if line.strip()]


# ---- apply ----------------------------------------------------------------------------------------

def test_apply_creates_then_unchanged_then_configured(cli_cluster: CliCluster, tmp_path: Path) -> None:
    ns = f"apply-{uuid.uuid4().hex[:8]}"
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "hello", "namespace": ns},
                  "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "hello"}},
                           "template": {"metadata": {"labels": {"app": "hello"}},
                                        "spec": {"containers": [{"name": "hello", "image": "python:3",
                                                                 "ports": [{"containerPort": 8080}]}]}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hello", "namespace": ns},
               "spec": {"selector": {"app": "hello"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}

    def write(pod_labels: dict[str, str]) -> Path:
        # The namespace comes last in the file: apply must create it first anyway.
        docs = [pod_manifest("web-1", ns, pod_labels), deployment, service, namespace]
        path = tmp_path / "app.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        return path

    path = write({"app": "web"})
    assert ok(cli_run(cli_cluster, "apply", "-f", str(path))).splitlines() == [
        f"namespace/{ns} created", "pod/web-1 created", "deployment/hello created", "service/hello created"]
    # Server defaults (restartPolicy, probe timings, strategy, ...) do not count as changes.
    assert ok(cli_run(cli_cluster, "apply", "-f", str(path))).splitlines() == [
        f"namespace/{ns} unchanged", "pod/web-1 unchanged", "deployment/hello unchanged", "service/hello unchanged"]

    path = write({"app": "web", "tier": "front"})
    assert ok(cli_run(cli_cluster, "apply", "-f", str(path))).splitlines() == [
        f"namespace/{ns} unchanged", "pod/web-1 configured", "deployment/hello unchanged", "service/hello unchanged"]
    pod = json.loads(ok(cli_run(cli_cluster, "get", "pod", "web-1", "-n", ns, "-o", "json")))
    assert pod["metadata"]["labels"] == {"app": "web", "tier": "front"}

    # A label dropped from the manifest is removed; a directory applies its files; stdin works too.
    write({"app": "web"})
    assert "pod/web-1 configured" in ok(cli_run(cli_cluster, "apply", "-f", str(tmp_path))).splitlines()
    pod = json.loads(ok(cli_run(cli_cluster, "get", "pod", "web-1", "-n", ns, "-o", "json")))
    assert pod["metadata"]["labels"] == {"app": "web"}
    assert ok(cli_run(cli_cluster, "apply", "-f", "-", stdin=json.dumps(service))) == "service/hello unchanged\n"

    # Someone else scales the deployment: re-applying the manifest puts its replicas back.
    cli_api(cli_cluster, lambda api: api.deployments.scale("hello", 5, ns))
    assert "deployment/hello configured" in ok(cli_run(cli_cluster, "apply", "-f", str(path))).splitlines()
    dep = yaml.safe_load(ok(cli_run(cli_cluster, "get", "deploy/hello", "-n", ns, "-o", "yaml")))
    assert dep["spec"]["replicas"] == 2


def test_apply_reports_a_bad_document_and_applies_the_others(cli_cluster: CliCluster, cli_ns: str,
                                                             tmp_path: Path) -> None:
    bad = pod_manifest("bad-1", cli_ns)
    bad["spec"]["containers"][0]["colour"] = "blue"
    unknown = {"apiVersion": "v9", "kind": "Gadget", "metadata": {"name": "g"}}
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump_all([bad, unknown, pod_manifest("good-1", cli_ns)]))

    result = cli_run(cli_cluster, "apply", "-f", str(path))
    assert result.returncode == 1
    assert result.stdout == "pod/good-1 created\n"
    errors = result.stderr.splitlines()
    assert any(line.startswith("Error from server (BadRequest): ") and 'unknown field "spec.containers[0].colour"'
               in line and str(path) in line for line in errors), errors
    assert any('no matches for kind "Gadget"' in line and "(document 2)" in line and str(path) in line
               for line in errors), errors
    missing = cli_run(cli_cluster, "get", "pod", "bad-1", "-n", cli_ns)
    assert missing.returncode == 1


# ---- get ------------------------------------------------------------------------------------------

def test_get_table_json_yaml_selectors_and_all_namespaces(cli_cluster: CliCluster, cli_ns: str) -> None:
    for name, app in (("web-1", "web"), ("web-2", "web"), ("db-1", "db")):
        cli_api(cli_cluster, lambda api: api.pods.create(pod_manifest(name, cli_ns, {"app": app})))

    rows = table(ok(cli_run(cli_cluster, "get", "pods", "-n", cli_ns)))
    assert rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [r[:4] for r in rows[1:]] == [["db-1", "0/1", "Pending", "0"], ["web-1", "0/1", "Pending", "0"],
                                         ["web-2", "0/1", "Pending", "0"]]
    assert rows[1][4].endswith("s")

    wide = table(ok(cli_run(cli_cluster, "get", "po", "db-1", "-n", cli_ns, "-o", "wide")))
    assert wide == [["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"],
                    ["db-1", "0/1", "Pending", "0", wide[1][4], "<none>", "<none>"]]

    one = json.loads(ok(cli_run(cli_cluster, "get", "pod/web-1", "-n", cli_ns, "-o", "json")))
    assert one["kind"] == "Pod" and one["metadata"]["name"] == "web-1" and one["metadata"]["namespace"] == cli_ns
    many = json.loads(ok(cli_run(cli_cluster, "get", "pods", "-n", cli_ns, "-o", "json")))
    assert many["kind"] == "List" and [p["metadata"]["name"] for p in many["items"]] == ["db-1", "web-1", "web-2"]
    as_yaml = yaml.safe_load(ok(cli_run(cli_cluster, "get", "po", "web-2", "-n", cli_ns, "-o", "yaml")))
    assert as_yaml["kind"] == "Pod" and as_yaml["spec"]["restartPolicy"] == "Always"  # a server default

    selected = table(ok(cli_run(cli_cluster, "get", "pods", "-l", "app=web", "-n", cli_ns)))
    assert [r[0] for r in selected[1:]] == ["web-1", "web-2"]
    assert ok(cli_run(cli_cluster, "get", "pods", "-n", cli_ns, "-l", "app in (db)", "-o", "name")) == "pod/db-1\n"
    fields = ok(cli_run(cli_cluster, "get", "pods", "-n", cli_ns, "--field-selector", "metadata.name=web-2",
                        "-o", "name"))
    assert fields == "pod/web-2\n"

    everywhere = table(ok(cli_run(cli_cluster, "get", "pods", "-A", "-l", "app=db")))
    assert everywhere[0] == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [cli_ns, "db-1"] in [r[:2] for r in everywhere[1:]]

    namespaces = table(ok(cli_run(cli_cluster, "get", "ns")))
    assert namespaces[0] == ["NAME", "STATUS", "AGE"]
    assert [cli_ns, "Active"] in [r[:2] for r in namespaces[1:]]


def test_get_errors_and_empty_lists(cli_cluster: CliCluster, cli_ns: str) -> None:
    missing = cli_run(cli_cluster, "get", "pod", "nope", "-n", cli_ns)
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): pods "nope" not found'

    unknown = cli_run(cli_cluster, "get", "gadgets")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == 'error: the server doesn\'t have a resource type "gadgets"'

    empty = cli_run(cli_cluster, "get", "deploy", "-n", cli_ns)
    assert empty.returncode == 0 and empty.stdout == ""
    assert empty.stderr.strip() == f"No resources found in {cli_ns} namespace."


def test_cannot_connect_fails_fast(cli_cluster: CliCluster) -> None:
    from flotilla.natsserver import free_port

    url = f"nats://127.0.0.1:{free_port()}"  # nobody listens: refused
    result = cli_run(cli_cluster, "get", "pods", url=url, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot connect to NATS at {url}")

    # "Fast" counted, not timed: a listener that hangs up on every connection sees how many tries
    # the CLI makes before it gives up (the first and one retry; a reconnect loop would be many).
    attempts = 0
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.2)
        stop = threading.Event()

        def hang_up() -> None:
            nonlocal attempts
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                attempts += 1
                conn.close()
        acceptor = threading.Thread(target=hang_up, daemon=True)
        acceptor.start()
        url = f"nats://127.0.0.1:{listener.getsockname()[1]}"
        try:
            result = cli_run(cli_cluster, "get", "pods", url=url, timeout=120)
        finally:
            stop.set()
            acceptor.join(10)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot connect to NATS at {url}")
    assert 1 <= attempts <= 3, f"{attempts} connection attempts before giving up"


# ---- describe -------------------------------------------------------------------------------------

def test_describe_pod_shows_its_events(cli_cluster: CliCluster, cli_ns: str) -> None:
    pod = cli_api(cli_cluster, lambda api: api.pods.create(pod_manifest("web-1", cli_ns)))
    other = cli_api(cli_cluster, lambda api: api.pods.create(pod_manifest("web-2", cli_ns)))

    def event(name: str, about: Pod, reason: str, message: str, type_: str = "Normal") -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": cli_ns},
                "involvedObject": {"kind": "Pod", "name": about.metadata.name, "namespace": cli_ns,
                                   "uid": about.metadata.uid},
                "reason": reason, "message": message, "type": type_, "source": {"component": "default-scheduler"},
                "firstTimestamp": now_iso(), "lastTimestamp": now_iso(), "count": 1}

    async def create_events(api: Api) -> None:
        await api.events.create(event("web-1.a", pod, "Scheduled", f"Successfully assigned {cli_ns}/web-1 to node-1"))
        await api.events.create(event("web-1.b", pod, "BackOff", "Back-off restarting failed container", "Warning"))
        await api.events.create(event("web-2.a", other, "Scheduled", "not about web-1"))

    cli_api(cli_cluster, create_events)
    out = ok(cli_run(cli_cluster, "describe", "pod", "web-1", "-n", cli_ns))
    lines = out.splitlines()
    assert lines[0].split() == ["Name:", "web-1"]
    assert lines[1].split() == ["Namespace:", cli_ns]
    assert any(line.split() == ["Status:", "Pending"] for line in lines)
    assert any(line.split() == ["Image:", "python:3"] for line in lines)
    assert "Events:" in lines
    events = lines[lines.index("Events:") + 1:]
    assert events[0].split() == ["Type", "Reason", "Age", "From", "Message"]
    assert events[2].split()[:2] == ["Normal", "Scheduled"] and "default-scheduler" in events[2]
    assert events[2].endswith(f"Successfully assigned {cli_ns}/web-1 to node-1")
    assert events[3].split()[:2] == ["Warning", "BackOff"]
    assert "not about web-1" not in out

    listed = table(ok(cli_run(cli_cluster, "get", "events", "-n", cli_ns)))
    assert listed[0] == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert ["Normal", "Scheduled", "pod/web-1"] in [r[1:4] for r in listed[1:]]

    missing = cli_run(cli_cluster, "describe", "pod", "nope", "-n", cli_ns)
    assert missing.returncode == 1 and 'pods "nope" not found' in missing.stderr


# ---- delete ---------------------------------------------------------------------------------------

def test_delete_with_grace_period_zero_removes_the_pod(cli_cluster: CliCluster, cli_ns: str) -> None:
    cli_api(cli_cluster, lambda api: api.pods.create(pod_manifest("web-1", cli_ns)))
    assert ok(cli_run(cli_cluster, "delete", "pod", "web-1", "-n", cli_ns, "--grace-period=0")) == \
        'pod "web-1" deleted\n'
    gone = cli_run(cli_cluster, "get", "pod", "web-1", "-n", cli_ns)
    assert gone.returncode == 1 and "NotFound" in gone.stderr

    again = cli_run(cli_cluster, "delete", "pod", "web-1", "-n", cli_ns)
    assert again.returncode == 1
    assert again.stderr.strip() == 'Error from server (NotFound): pods "web-1" not found'
    assert ok(cli_run(cli_cluster, "delete", "pod", "web-1", "-n", cli_ns, "--ignore-not-found")) == ""


def test_delete_waits_for_graceful_deletion_and_gives_up_after_timeout(cli_cluster: CliCluster,
                                                                        cli_ns: str) -> None:
    async def bound_pod(api: Api) -> None:
        # Bound to a node that no node agent runs: nobody confirms the stop, the pod stays Terminating.
        node = f"node-{cli_ns}"
        await api.nodes.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
        await api.pods.create(pod_manifest("slow", cli_ns))
        await api.pods.bind("slow", node, cli_ns)

    cli_api(cli_cluster, bound_pod)
    # Nobody will ever confirm the stop: returning at all (within the generous process timeout)
    # shows the CLI gave up at its --timeout, and says so.
    result = cli_run(cli_cluster, "delete", "pod", "slow", "-n", cli_ns, "--timeout", "1", timeout=120)
    assert result.returncode == 1
    assert result.stdout == 'pod "slow" deleted\n'
    assert "timed out after 1s waiting for pods/slow to be deleted" in result.stderr, result.stderr
    rows = table(ok(cli_run(cli_cluster, "get", "pod", "slow", "-n", cli_ns)))
    assert rows[1][2] == "Terminating"

    assert ok(cli_run(cli_cluster, "delete", "-n", cli_ns, "pod/slow", "--grace-period=0")) == 'pod "slow" deleted\n'
    assert cli_run(cli_cluster, "get", "pod", "slow", "-n", cli_ns).returncode == 1


def test_delete_from_file(cli_cluster: CliCluster, cli_ns: str, tmp_path: Path) -> None:
    path = tmp_path / "pods.yaml"
    path.write_text(yaml.safe_dump_all([pod_manifest("a", cli_ns), pod_manifest("b", cli_ns)]))
    ok(cli_run(cli_cluster, "apply", "-f", str(path)))
    assert ok(cli_run(cli_cluster, "delete", "-f", str(path), "--grace-period", "0")).splitlines() == [
        'pod "a" deleted', 'pod "b" deleted']
    assert cli_run(cli_cluster, "get", "pods", "-n", cli_ns).stderr.startswith("No resources found")


# ---- status ---------------------------------------------------------------------------------------

def test_status_lists_the_apiserver(cli_cluster: CliCluster) -> None:
    out = ok(cli_run(cli_cluster, "status"))
    rows = table(out)
    assert rows[0] == ["SERVICE", "ID", "VERSION", "IDENTITY"]
    assert any(r[0] == "flotilla-apiserver" for r in rows[1:])
    assert "KV_flotilla:" in out and "messages" in out
    assert f"at {cli_cluster.url}" in out


def test_status_without_an_apiserver_fails(cli_cluster: CliCluster, tmp_path: Path) -> None:
    with NatsServer(tmp_path / "bare") as bare:
        result = cli_run(cli_cluster, "status", url=bare.url)
        get = cli_run(cli_cluster, "get", "pods", url=bare.url)
    assert result.returncode == 1
    assert "no API server answers" in result.stderr
    assert get.returncode == 1
    assert get.stderr.startswith(f"error: no API server answers at {bare.url}")


# ---- watch ----------------------------------------------------------------------------------------

class LineReader:
    """Lines of a child's stdout through a thread, so that a test can wait for one with a timeout."""

    def __init__(self, stream: Any):
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no matching line within {timeout}s; got {self.seen}") from None
            if line is None:
                raise AssertionError(f"output ended without a matching line; got {self.seen}")
            self.seen.append(line)
            if predicate(line):
                return line


def test_get_watch_prints_a_row_when_a_pod_is_created(cli_cluster: CliCluster, cli_ns: str) -> None:
    cli_api(cli_cluster, lambda api: api.pods.create(pod_manifest("first", cli_ns)))
    env = {**os.environ, "FLOTILLA_NATS_URL": cli_cluster.url, "PYTHONUNBUFFERED": "1"}
    # A shell without job control starts its background jobs with SIGINT ignored, and the child would
    # inherit that (Python then leaves Ctrl-C ignored): give the CLI the terminal's default.
    proc = subprocess.Popen([sys.executable, "-m", "flotilla.cli", "get", "pods", "-n", cli_ns, "-w"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        out = LineReader(proc.stdout)
        assert out.wait_for(lambda line: line.startswith("NAME"), 15).split() == \
            ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        out.wait_for(lambda line: line.startswith("first "), 5)
        cli_api(cli_cluster, lambda api: api.pods.create(pod_manifest("second", cli_ns)))
        row = out.wait_for(lambda line: line.startswith("second "), 10).split()
        assert row[:4] == ["second", "0/1", "Pending", "0"]
        cli_api(cli_cluster, lambda api: api.pods.delete("second", cli_ns, grace_period_seconds=0))
        out.wait_for(lambda line: line.startswith("second "), 10)  # the deletion is a row too
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: a quiet exit
        proc.wait(10)
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    finally:
        _stop_group(proc, grace=2)


# ---- pure helpers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [(0, "0s"), (5, "5s"), (119, "119s"), (125, "2m5s"), (180, "3m"),
                                           (45 * 60, "45m"), (3 * 3600, "3h"), (3 * 3600 + 60, "3h1m"),
                                           (20 * 3600, "20h"), (4 * 86400, "4d"), (4 * 86400 + 7200, "4d2h"),
                                           (30 * 86400, "30d"), (3 * 365 * 86400, "3y"), (-1, "0s"),
                                           (-5, "<invalid>")])
def test_age_is_formatted_like_kubectl(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_three_way_merge_ignores_server_defaults_and_removes_what_the_manifest_dropped() -> None:
    original = {"spec": {"containers": [{"name": "a", "image": "x"}], "nodeSelector": {"disk": "ssd"}}}
    live = {"spec": {"containers": [{"name": "a", "image": "x", "terminationMessagePath": "/dev/termination-log"}],
                     "nodeSelector": {"disk": "ssd"}, "restartPolicy": "Always"}}
    assert three_way(original, original, live) == {}
    dropped = {"spec": {"containers": [{"name": "a", "image": "x"}]}}
    assert three_way(original, dropped, live) == {"spec": {"nodeSelector": None}}
    changed = {"spec": {"containers": [{"name": "a", "image": "y"}], "nodeSelector": {"disk": "ssd"}}}
    assert three_way(original, changed, live) == {"spec": {"containers": [{"name": "a", "image": "y"}]}}


def test_pod_status_column() -> None:
    pod = Pod()
    assert pod_status(pod) == "Pending"
    pod.status.phase = "Running"
    pod.status.container_statuses = [ContainerStatus(name="a", state=ContainerState(
        waiting=ContainerStateWaiting(reason="CrashLoopBackOff")))]
    assert pod_status(pod) == "CrashLoopBackOff"
    pod.metadata.deletion_timestamp = now_iso()
    assert pod_status(pod) == "Terminating"
