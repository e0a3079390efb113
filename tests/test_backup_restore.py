"""Backing the state log up with the real `nats` CLI and restoring it into a new nats-server
(docs/operating.md): every object comes back with its uid and resourceVersion, and the suite runs
on the restored state (the Deployment's pods Ready again, new objects can be made)."""
from __future__ import annotations

import re
import shlex
import uuid
from pathlib import Path

import pytest

from conftest import connect, creds_for, wait_apiserver_ready
from flotilla.credentials import ClusterCredentials
from flotilla.natsserver import NatsServer
from natscli import need_nats, run_nats
from schemas import RESOURCES
from services.lib.client import Api
from services.lib.podutil import is_ready

REPO = Path(__file__).resolve().parent.parent
OPERATING = REPO / "docs" / "operating.md"
STATE_DIR_IN_DOCS = "~/.local/state/flotilla/up"  # flotilla up's default; here: the test's tmp_path
BUCKET = "flotilla"
# The state log and its events (services/apiserver/store.py); KV_flotilla-bootstrap (node-join
# tokens) exists only where node join is configured, which this suite is not.
STREAMS = (f"KV_{BUCKET}", f"KV_{BUCKET}-events")
CONTROLLERS = ("scheduler", "replicaset", "deployment", "endpoints")


def web(name: str, replicas: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "web", "image": "web:v1",
                                         "command": ["python3", "-m", "http.server", "8080", "--bind", "$(POD_IP)"],
                                         "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}}}


async def everything(api: Api) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(resource, namespace, name) -> (uid, resourceVersion) of every object the API serves."""
    found: dict[tuple[str, str, str], tuple[str, str]] = {}
    for r in RESOURCES.values():
        for obj in (await api.resource(r.name).list_all()).items:
            m = obj.metadata
            found[(r.name, m.namespace or "", m.name)] = (m.uid, m.resource_version)
    return found


async def ready_pods(api: Api, app: str) -> list:
    pods = (await api.pods.list("shop", label_selector=f"app={app}")).items
    return [p for p in pods if is_ready(p) and not p.metadata.deletion_timestamp]


def documented(verb: str) -> list[list[str]]:
    """The `nats … backup stream …` / `… backup restore stream …` lines of docs/operating.md, as argv
    after `nats` (a leading `NATS_URL=…` dropped: the test says which server), with the test's
    state directory for the docs' one: the commands the test runs are the documented ones."""
    lines = []
    for line in re.findall(r"^((?:NATS_URL=\S+ )?nats .*)$", OPERATING.read_text(), re.M):
        argv = shlex.split(line.replace(STATE_DIR_IN_DOCS, "{state}"))
        argv = argv[1:] if argv[0].startswith("NATS_URL=") else argv
        if " ".join(argv).find(verb) >= 0:
            lines.append(argv[1:])
    return lines


def run_documented(verb: str, server: NatsServer, state: Path) -> list[str]:
    """Run each documented line of `verb` against `server`; the streams they name."""
    creds_for(server.url, "apiserver")  # writes <state>/auth/creds/apiserver.creds, which the lines name
    streams = []
    for argv in documented(verb):
        argv = [a.replace("{state}", str(state)) for a in argv]
        result = run_nats(argv, {"NATS_URL": server.url}, timeout=120)
        assert result.returncode == 0 and "error" not in result.stderr.lower(), \
            f"nats {' '.join(argv)}: {result.returncode}\n{result.stdout}\n{result.stderr}"
        streams.append(Path(argv[argv.index("stream") + 1]).name)  # the stream, or its backup's directory
    return streams


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_cli_backup_restores_into_a_new_server_and_the_cluster_comes_back(
        tmp_path: Path, nats_server: NatsServer, apiserver, start_service, connect_api, wait_for) -> None:
    need_nats()
    servers = await apiserver(1)
    procs = [start_service(c) for c in CONTROLLERS] + [start_service("nodeagent", "--node-name", "n1")]
    api = await connect_api()
    await api.namespaces.create({"metadata": {"name": "shop"}})
    await api.deployments.create(web("web", 2))
    await api.services.create({"metadata": {"name": "web", "namespace": "shop"},
                               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    await wait_for(lambda: _count_is(ready_pods(api, "web"), 2), 120, "2 ready web pods")
    pods_before = {p.metadata.name: p.metadata.uid for p in await ready_pods(api, "web")}

    # The backup, with the controllers and the node agent stopped first: a backup is a point in time,
    # and this test compares the restored state with what the API served at that point.
    for proc in procs:
        proc.stop()
    before = await everything(api)
    assert run_documented("backup stream", nats_server, tmp_path) == list(STREAMS)

    # Everything stops; a new nats-server (empty store, another port) for the same cluster credentials.
    for proc in servers:
        proc.stop()
    nats_server.stop()
    creds = ClusterCredentials.ensure(tmp_path / "auth")
    restored = NatsServer(tmp_path / "nats-restored", max_payload="8MB", extra_config=creds.server_config(),
                          probe_creds=creds.creds_path("admin"))
    restored.start()
    new: list = []
    try:
        assert run_documented("backup restore stream", restored, tmp_path) == list(STREAMS)
        identity = f"restored-apiserver-{uuid.uuid4().hex[:8]}"
        new.append(start_service("apiserver", "--nats-url", restored.url, "--identity", identity, nats=False))
        await wait_apiserver_ready(new[0], identity, restored.url)
        client = await connect(restored.url)
        try:
            api2 = Api(client)
            after = await everything(api2)
            assert after == before, _diff(before, after)

            new += [start_service(c, "--nats-url", restored.url, nats=False) for c in CONTROLLERS]
            new.append(start_service("nodeagent", "--nats-url", restored.url, "--node-name", "n1", nats=False))
            ready = await wait_for(lambda: _count_is(ready_pods(api2, "web"), 2), 120,
                                   "the Deployment's 2 pods Ready on the restored state")
            assert {p.metadata.name: p.metadata.uid for p in ready} == pods_before  # the same pods, not new ones
            # The node agent is back on the restored state: it renews the Lease the backup holds.
            lease_rv = int(before[("leases", "flotilla-node-lease", "n1")][1])
            await wait_for(lambda: _lease_renewed(api2, lease_rv), 60, "node n1's Lease renewed")
            # The whole chain works: deployment -> replicaset -> scheduler -> node agent -> endpoints.
            await api2.deployments.scale("web", 3, namespace="shop")
            await wait_for(lambda: _count_is(ready_pods(api2, "web"), 3), 120, "a third pod, made after the restore")
            await wait_for(lambda: _ready_addresses(api2, 3), 60, "3 ready addresses in the web Endpoints")
            ns = await api2.namespaces.create({"metadata": {"name": "after-restore"}})
            # The log goes on from the restored sequence (Events have a sequence of their own).
            assert int(ns.metadata.resource_version) > max(int(rv) for k, (_, rv) in before.items() if k[0] != "events")
        finally:
            await client.close()
    finally:
        for proc in new:  # before their server goes, so that they stop cleanly
            proc.stop()
        restored.stop()


async def _count_is(pods, n: int) -> list | None:
    found = await pods
    return found if len(found) == n else None


async def _lease_renewed(api: Api, rv: int) -> bool:
    return int((await api.leases.get("n1", "flotilla-node-lease")).metadata.resource_version) > rv


async def _ready_addresses(api: Api, n: int) -> bool:
    ep = await api.endpoints.get("web", "shop")
    return sum(len(s.addresses) for s in ep.subsets) == n


def _diff(before: dict, after: dict) -> str:
    lost = sorted(set(before) - set(after))
    extra = sorted(set(after) - set(before))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"lost {lost}, new {extra}, changed {[(k, before[k], after[k]) for k in changed]}"
