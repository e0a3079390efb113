"""The bus as an interface, proven with the real `nats` CLI (natscli v0.5.0) against a real, secured
`flotilla up --nodes 2` and the `flotilla-local` / `flotilla-local-reader` contexts it wrote.

One `up` serves the module (starting one costs most of the module's time); each test makes its own
objects, so the order of the tests does not matter."""
from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from natscli import Streaming, need_nats, run_nats
from test_up import READY, Up, running_up

pytestmark = pytest.mark.asyncio(loop_scope="module")

ADMIN = "flotilla-local"
READER = "flotilla-local-reader"
CONTROLLERS = ("replicaset", "deployment", "gc", "endpoints", "nodelifecycle")
SERVICES = {"flotilla-apiserver", "flotilla-scheduler", "flotilla-proxy", "flotilla-nodeagent",
            *(f"flotilla-{c}" for c in CONTROLLERS)}


class Cluster:
    def __init__(self, up: Up) -> None:
        self.up = up
        self.env = {"XDG_CONFIG_HOME": str(up.config_home)}

    def nats(self, *args: str, context: str = ADMIN, timeout: float = 60, stdin: str | None = None,
             wait: str = "10s") -> subprocess.CompletedProcess[str]:
        # --timeout bounds each NATS wait inside the CLI; `timeout` bounds the process (never a hang).
        return run_nats(["--context", context, "--timeout", wait, *args], env=self.env, timeout=timeout,
                        stdin=stdin)

    def req(self, subject: str, body: str, context: str = ADMIN) -> dict[str, Any]:
        """`nats req -r SUBJECT BODY`: the one JSON reply."""
        out = self.nats("req", "-r", subject, body, context=context)
        assert out.returncode == 0 and out.stdout.strip(), out
        return json.loads(out.stdout)

    def streaming(self, *args: str, context: str = ADMIN) -> Streaming:
        return Streaming(["--context", context, *args], env=self.env)

    def services(self) -> list[dict[str, Any]]:
        out = self.nats("micro", "ls", "--json")
        assert out.returncode == 0, out
        return json.loads(out.stdout)

    def restarts(self) -> list[str]:
        """The supervisor's console lines of a service that died (it logs `restarting` before each restart)."""
        return [line for line in self.up.stderr.read_text().splitlines() if 'msg="restarting"' in line]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    need_nats()
    async with running_up(tmp_path_factory.mktemp("natscli"), "--nodes", "2") as up:
        await up.line_starting(READY, timeout=120)
        # The console names the nats context that reaches this cluster (issue 13).
        assert any(line.startswith(f"nats CLI: nats --context {ADMIN} ") for line in up.stdout), up.stdout
        yield Cluster(up)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def payloads(lines: list[str]) -> list[Any]:
    """The JSON payloads `nats sub` printed (each on one line, after its `[#n] Received on` header)."""
    return [json.loads(line) for line in lines if line.startswith(("{", "[{"))]


def watch_events(lines: list[str]) -> list[dict[str, Any]]:
    """Watch messages, batches flattened (docs/api.md §6)."""
    out: list[dict[str, Any]] = []
    for p in payloads(lines):
        out.extend(p if isinstance(p, list) else [p])
    return out


KV_WATCH_LINE = re.compile(r"^\[[^\]]+\] (PUT|DEL|PURGE) (\S+) > (\S+): ?(.*)$")


def kv_values(lines: list[str], key: str) -> list[dict[str, Any]]:
    """The JSON values `nats kv watch` printed for `key` (`[ts] PUT bucket > key: {json}`)."""
    values = []
    for line in lines:
        m = KV_WATCH_LINE.match(line)
        if m and m.group(1) == "PUT" and m.group(3) == key:
            values.append(json.loads(m.group(4)))
    return values


def deployment(name: str, replicas: int, image: str) -> str:
    return json.dumps({"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": name, "namespace": "default"},
                       "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                                "template": {"metadata": {"labels": {"app": name}},
                                             "spec": {"containers": [{"name": "web", "image": image,
                                                                      "command": ["sleep", "3600"]}]}}}})


def pod(name: str, labels: dict[str, str]) -> str:
    return json.dumps({"metadata": {"name": name, "namespace": "default", "labels": labels},
                       "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"]}]}})


async def test_micro_ls_lists_every_service_and_node_agent(cluster: Cluster) -> None:
    services = cluster.services()
    names = [s["name"] for s in services]
    assert SERVICES <= set(names), names
    agents = [s for s in services if s["name"] == "flotilla-nodeagent"]
    assert sorted(a["metadata"].get("node") for a in agents) == ["node-1", "node-2"], agents
    # The table (no --json) names them too: what a person reads.
    table = cluster.nats("micro", "ls")
    assert table.returncode == 0 and all(name in table.stdout for name in SERVICES), table


async def test_micro_info_and_stats_of_the_apiserver(cluster: Cluster) -> None:
    info = cluster.nats("micro", "info", "flotilla-apiserver", "--json")
    assert info.returncode == 0, info
    endpoints = json.loads(info.stdout)["info"]["endpoints"]
    assert endpoints and all(e["subject"].startswith("flo.api.v1") for e in endpoints), endpoints

    def served() -> int:
        out = cluster.nats("micro", "stats", "flotilla-apiserver", "--json")
        assert out.returncode == 0, out
        return sum(e.get("num_requests", 0) for s in json.loads(out.stdout) for e in s.get("endpoints", []))

    before = served()
    for _ in range(3):
        assert cluster.req("flo.api.v1.namespaces.get", '{"name":"default"}')["kind"] == "Namespace"
    assert served() >= before + 3


async def test_kv_watch_shows_a_deployment_rollout_as_json(cluster: Cluster) -> None:
    name = unique("roll")
    key = f"deployments.default.{name}"
    with cluster.streaming("kv", "watch", "flotilla", "deployments.>") as watch:
        created = cluster.req("flo.api.v1.deployments.create", deployment(name, 2, "busybox:1.36"))
        assert created["metadata"]["generation"] == 1, created

        def rolled_out(generation: int, image: str):
            def check(lines: list[str]) -> bool:
                for d in kv_values(lines, key):
                    s, spec = d.get("status", {}), d["spec"]
                    if (d["metadata"]["generation"] == generation and s.get("observedGeneration") == generation
                            and spec["template"]["spec"]["containers"][0]["image"] == image
                            and s.get("updatedReplicas") == 2 and s.get("readyReplicas") == 2
                            and s.get("replicas") == 2):
                        return True
                return False
            return check

        watch.until(rolled_out(1, "busybox:1.36"), timeout=120)
        patched = cluster.req("flo.api.v1.deployments.patch", json.dumps({
            "namespace": "default", "name": name,
            "patch": {"spec": {"template": {"spec": {"containers": [
                {"name": "web", "image": "busybox:1.37", "command": ["sleep", "3600"]}]}}}}}))
        assert patched["metadata"]["generation"] == 2, patched
        lines = watch.until(rolled_out(2, "busybox:1.37"), timeout=180)
    values = kv_values(lines, key)
    # The watch showed the rollout move, not just its end: generation 2 observed while not all
    # replicas were updated yet.
    assert any(v["metadata"]["generation"] == 2 and v.get("status", {}).get("updatedReplicas", 0) < 2
               for v in values), [v.get("status") for v in values]
    assert all("resourceVersion" not in v["metadata"] for v in values)  # the KV revision is it


async def test_kv_get_ls_history_and_stream_info(cluster: Cluster) -> None:
    name = unique("hist")
    key = f"namespaces._.{name}"
    cluster.req("flo.api.v1.namespaces.create", json.dumps({"metadata": {"name": name}}))
    for i in range(3):
        cluster.req("flo.api.v1.namespaces.patch",
                    json.dumps({"name": name, "patch": {"metadata": {"labels": {"round": str(i)}}}}))
    served = cluster.req("flo.api.v1.namespaces.get", json.dumps({"name": name}))

    raw = cluster.nats("kv", "get", "--raw", "flotilla", key)
    assert raw.returncode == 0, raw
    stored = json.loads(raw.stdout)
    # The stored value is the served object, less the resourceVersion the KV revision carries.
    expected = json.loads(json.dumps(served))
    del expected["metadata"]["resourceVersion"]
    assert stored == expected
    header = cluster.nats("kv", "get", "flotilla", key)
    assert header.returncode == 0 and f"revision: {served['metadata']['resourceVersion']} " in header.stdout, header

    keys = cluster.nats("kv", "ls", "flotilla")
    assert keys.returncode == 0 and key in keys.stdout.split() and "namespaces._.default" in keys.stdout.split(), keys

    history = cluster.nats("kv", "history", "flotilla", key)
    assert history.returncode == 0, history
    rows = [line for line in history.stdout.splitlines() if f" {key} " in line and " PUT " in line]
    revisions = [int(line.split("│")[2]) for line in rows]
    assert len(revisions) == 4 and revisions == sorted(revisions), history.stdout
    assert revisions[-1] == int(served["metadata"]["resourceVersion"])

    info = cluster.nats("stream", "info", "KV_flotilla", "--json")
    assert info.returncode == 0, info
    stream = json.loads(info.stdout)
    assert stream["config"]["subjects"] == ["$KV.flotilla.>"] and stream["config"]["storage"] == "file"
    assert stream["state"]["last_seq"] >= revisions[-1]


async def test_sub_on_the_events_and_a_watch_inbox(cluster: Cluster) -> None:
    name = unique("sub")
    inbox = f"_INBOX.admin.{name}"  # the admin may subscribe anywhere; its inboxes are _INBOX.admin.>
    probe = f"flo.node.{name}.probe"  # a subject the admin may publish to and nobody serves
    with cluster.streaming("sub", "$KV.flotilla-events.>", probe) as events, \
            cluster.streaming("sub", inbox, probe) as watch:
        def publish_probe() -> None:
            assert cluster.nats("pub", probe, "probe").returncode == 0
        # Without this the watch's ACK could reach the inbox before `nats sub` subscribed to it.
        events.until_probed(probe, publish_probe)
        watch.until_probed(probe, publish_probe)
        body = json.dumps({"namespace": "default", "labelSelector": f"app={name}", "resourceVersion": "0"})
        pub = cluster.nats("pub", "flo.api.v1.pods.watch", body, "--reply", inbox)
        assert pub.returncode == 0, pub
        watch.until(lambda ls: any(e.get("type") == "ACK" for e in watch_events(ls)), timeout=30)
        cluster.req("flo.api.v1.pods.create", pod(name, {"app": name}))

        def added(lines: list[str]) -> bool:
            return any(e.get("type") == "ADDED" and e["object"]["metadata"]["name"] == name
                       for e in watch_events(lines))
        lines = watch.until(added, timeout=60)
        seqs = [e["seq"] for e in watch_events(lines)]
        assert seqs == list(range(len(seqs))), seqs  # ACK 0, then 1, 2, … without gaps

        # The scheduler binds the pod and records an Event: the events bucket is on the bus too.
        def scheduled(lines: list[str]) -> bool:
            return any(p.get("kind") == "Event" and p.get("involvedObject", {}).get("name") == name
                       and p.get("reason") == "Scheduled" and " to node-" in p.get("message", "")
                       for p in payloads(lines) if isinstance(p, dict))
        events.until(scheduled, timeout=60)
    cluster.req("flo.api.v1.pods.delete", json.dumps({"namespace": "default", "name": name}))


async def test_the_reader_context_reads_and_cannot_write(cluster: Cluster) -> None:
    got = cluster.req("flo.api.v1.user.reader.namespaces.get", '{"name":"default"}', context=READER)
    assert got["kind"] == "Namespace", got
    listed = cluster.req("flo.api.v1.user.reader.pods.list", '{"namespace":"default"}', context=READER)
    assert listed["kind"] == "PodList", listed
    kv = cluster.nats("kv", "get", "--raw", "flotilla", "namespaces._.default", context=READER)
    assert kv.returncode == 0 and json.loads(kv.stdout)["metadata"]["name"] == "default", kv
    assert SERVICES <= {s["name"] for s in json.loads(
        cluster.nats("micro", "ls", "--json", context=READER).stdout)}

    # Writing: NATS itself refuses the reader's publish (its permissions mirror role reader), so
    # the CLI reports the violation and no reply comes; the object never exists.
    name = unique("evil")
    create = cluster.nats("req", "-r", "flo.api.v1.user.reader.pods.create", pod(name, {}), context=READER,
                          wait="3s")  # no reply will come: do not wait long for it
    assert 'Permissions Violation for Publish to "flo.api.v1.user.reader.pods.create"' in create.stderr, create
    assert create.stdout.strip() == "", create
    put = cluster.nats("kv", "put", "flotilla", f"pods.default.{name}", "{}", context=READER, wait="3s")
    assert put.returncode != 0 and f'Permissions Violation for Publish to "$KV.flotilla.pods.default.{name}"' \
        in put.stderr, put
    missing = cluster.req("flo.api.v1.pods.get", json.dumps({"namespace": "default", "name": name}))
    assert missing["kind"] == "Status" and missing["code"] == 404, missing


async def test_bad_input_gets_a_status_or_no_responders(cluster: Cluster) -> None:
    before = {s["id"] for s in cluster.services()}

    def status(subject: str, body: str | None = None, stdin: str | None = None) -> dict[str, Any]:
        args = ["req", "-r", subject] + ([body] if body is not None else ["--force-stdin"])
        out = cluster.nats(*args, stdin=stdin)
        assert out.returncode == 0 and out.stdout.startswith('{"kind":"Status"'), out
        return json.loads(out.stdout)

    malformed = status("flo.api.v1.pods.create", "not json")
    assert (malformed["code"], malformed["reason"]) == (400, "BadRequest") and "malformed JSON" in malformed["message"]
    wrong_type = status("flo.api.v1.pods.create", '{"metadata":{"name":5}}')
    assert wrong_type["code"] == 400 and wrong_type["details"]["causes"][0]["field"] == "metadata.name", wrong_type
    not_object = status("flo.api.v1.deployments.patch", '{"name":"x","namespace":"default","patch":[1]}')
    assert not_object["code"] == 400, not_object
    verb = status("flo.api.v1.pods.frobnicate", "{}")
    assert verb["code"] == 400 and "verb 'frobnicate' is not supported" in verb["message"], verb
    resource = status("flo.api.v1.widgets.get", "{}")
    assert resource["code"] == 404, resource
    # Over 1.5 MiB, from stdin (v0.5.0 reads the body from stdin with --force-stdin): refused before decoding.
    big = json.dumps({"metadata": {"name": "big", "annotations": {"a": "x" * 1_700_000}},
                      "spec": {"containers": [{"name": "c", "image": "i"}]}})
    too_large = status("flo.api.v1.pods.create", stdin=big)
    assert (too_large["code"], too_large["reason"]) == (413, "TooLarge"), too_large
    # ...by the byte count, before decoding (the decoder's own limit is a second line of defence)
    assert too_large["message"].startswith(f"request entity too large: {len(big)} bytes"), too_large

    # A subject nobody serves (no such node's logs): NATS answers "no responders" at once.
    nobody = cluster.nats("req", "flo.node.no-such-node.logs", "{}")
    assert "No responders are available" in nobody.stderr and nobody.stdout.strip() == "", nobody

    # Every service is still the same instance (a crash and restart would give it a new id) and
    # the supervisor restarted nothing.
    after = {s["id"] for s in cluster.services()}
    assert before <= after, (before, after)
    assert cluster.restarts() == []
