"""Request options as NATS headers (docs/api.md, "Request headers"): Flotilla-Resource-Version,
Flotilla-Dry-Run, Flotilla-Label-Selector / -Field-Selector, set with the real `nats req -H K:V` and
with nats-py's `headers=`. A dry run answers as the write would and leaves the state log as it was."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client

from conftest import connect, creds_for
from natscli import need_nats, run_nats

STATE_LOG = "KV_flotilla"


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "1000"]}]}}


@pytest.fixture
async def admin(api, nats_url: str) -> AsyncIterator[Client]:
    """A raw connection as the admin (the plain `flo.api.v1.<resource>.<verb>` subjects)."""
    client = await connect(nats_url)
    try:
        yield client
    finally:
        await client.close()


async def req(client: Client, subject: str, body: Any, **headers: str) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await client.request(f"flo.api.v1.{subject}", data, timeout=10,
                               headers={k.replace("_", "-"): v for k, v in headers.items()} or None)
    return json.loads(msg.data)


def cli_req(url: str, subject: str, body: Any, *headers: str) -> dict[str, Any]:
    """`nats req --raw flo.api.v1.<subject> BODY -H K:V …` as the admin; the reply's JSON."""
    args = ["req", "--raw", f"flo.api.v1.{subject}", json.dumps(body)]
    for h in headers:
        args += ["-H", h]
    result = run_nats([*args, "-s", url, "--creds", creds_for(url, "admin") or ""], timeout=60)
    assert result.returncode == 0, f"nats {' '.join(args)}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


async def log_head(nc: Client) -> tuple[int, int]:
    """The state log's last sequence and message count: a write of any kind moves the first."""
    state = (await nc.jetstream().stream_info(STATE_LOG)).state
    return state.last_seq, state.messages


async def test_dry_run_with_the_cli_answers_as_written_and_writes_nothing(api, admin: Client, nc: Client,
                                                                         nats_url: str) -> None:
    need_nats()
    web = await req(admin, "pods.create", pod("web"))
    rv = web["metadata"]["resourceVersion"]
    head = await log_head(nc)

    created = cli_req(nats_url, "pods.create", pod("dry"), "Flotilla-Dry-Run:All")
    assert created["kind"] == "Pod" and created["metadata"]["uid"], created
    assert "resourceVersion" not in created["metadata"], created  # nothing was written, so no version
    assert created["status"]["phase"] == "Pending"  # defaulted as a real create would be
    assert created["spec"]["restartPolicy"] == "Always"

    changed = dict(web, metadata={**web["metadata"], "labels": {"app": "web", "tier": "x"}})
    updated = cli_req(nats_url, "pods.update", changed, "Flotilla-Dry-Run:All")
    assert updated["metadata"]["labels"] == {"app": "web", "tier": "x"}
    assert updated["metadata"]["resourceVersion"] == rv  # unchanged: the object was not written

    patched = cli_req(nats_url, "pods.patch", {"name": "web", "patch": {"metadata": {"labels": {"tier": "y"}}}},
                      "Flotilla-Dry-Run:All")
    assert patched["metadata"]["labels"] == {"app": "web", "tier": "y"}

    deleted = cli_req(nats_url, "pods.delete", {"name": "web", "gracePeriodSeconds": 0}, "Flotilla-Dry-Run:All")
    assert deleted["metadata"]["name"] == "web"

    svc = cli_req(nats_url, "services.create", {"metadata": {"name": "front"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80}]}}, "Flotilla-Dry-Run:All")
    assert svc["spec"]["clusterIP"], svc  # the address it would get, taken by no record

    assert await log_head(nc) == head  # not one write: no object, no tombstone, no ClusterIP record
    assert (await req(admin, "pods.get", {"name": "dry"}))["code"] == 404
    assert (await req(admin, "services.get", {"name": "front"}))["code"] == 404
    still = await req(admin, "pods.get", {"name": "web"})
    assert still["metadata"]["resourceVersion"] == rv and still["metadata"]["labels"] == {"app": "web"}
    assert not still["metadata"].get("deletionTimestamp")


async def test_dry_run_refuses_what_the_write_would_refuse(api, admin: Client, nc: Client, nats_url: str) -> None:
    await req(admin, "pods.create", pod("web"))
    head = await log_head(nc)
    dup = await req(admin, "pods.create", pod("web"), Flotilla_Dry_Run="All")
    assert (dup["code"], dup["reason"]) == (409, "AlreadyExists"), dup
    bad = await req(admin, "pods.create", {"metadata": {"name": "Bad_Name"}, "spec": pod("x")["spec"]},
                    Flotilla_Dry_Run="All")
    assert (bad["code"], bad["reason"]) == (422, "Invalid"), bad
    stale = await req(admin, "pods.patch", {"name": "web", "patch": {"metadata": {"labels": {"a": "b"}}}},
                      Flotilla_Dry_Run="All", Flotilla_Resource_Version="1")
    assert (stale["code"], stale["reason"]) == (409, "Conflict"), stale
    gone = await req(admin, "pods.delete", {"name": "nope"}, Flotilla_Dry_Run="All")
    assert gone["code"] == 404, gone
    # Authorized like the write: the proxy may publish on its subjects, but not create pods (rbac.yaml).
    proxy = await connect(nats_url, "proxy")
    try:
        refused = await req(proxy, "user.proxy.pods.create", pod("r"), Flotilla_Dry_Run="All")
    finally:
        await proxy.close()
    assert (refused["code"], refused["reason"]) == (403, "Forbidden"), refused
    assert await log_head(nc) == head


async def test_resource_version_header_is_the_precondition(api, admin: Client, nats_url: str) -> None:
    need_nats()
    web = await req(admin, "pods.create", pod("web"))
    rv = web["metadata"]["resourceVersion"]
    body = dict(web, metadata={k: v for k, v in web["metadata"].items() if k != "resourceVersion"})
    body["metadata"]["labels"] = {"app": "web", "v": "2"}

    stale = cli_req(nats_url, "pods.update", body, "Flotilla-Resource-Version:1")
    assert (stale["code"], stale["reason"]) == (409, "Conflict"), stale
    ok = cli_req(nats_url, "pods.update", body, f"Flotilla-Resource-Version:{rv}")
    assert ok["metadata"]["labels"]["v"] == "2" and int(ok["metadata"]["resourceVersion"]) > int(rv), ok
    rv2 = ok["metadata"]["resourceVersion"]

    # Both given and different: neither silently wins.
    clash = cli_req(nats_url, "pods.update", dict(body, metadata={**body["metadata"], "resourceVersion": rv2}),
                    f"Flotilla-Resource-Version:{rv}")
    assert (clash["code"], clash["reason"]) == (400, "BadRequest") and "Flotilla-Resource-Version" in clash["message"]
    same = await req(admin, "pods.patch", {"name": "web", "patch": {"metadata": {"resourceVersion": rv2,
                                                                                   "labels": {"v": "3"}}}},
                     Flotilla_Resource_Version=rv2)
    assert same["metadata"]["labels"]["v"] == "3", same
    rv3 = same["metadata"]["resourceVersion"]

    stale_patch = await req(admin, "pods.patch", {"name": "web", "patch": {"metadata": {"labels": {"v": "4"}}}},
                            Flotilla_Resource_Version=rv2)
    assert stale_patch["code"] == 409, stale_patch
    stale_status = await req(admin, "pods.status", dict(same, metadata={**same["metadata"], "resourceVersion": None}),
                             Flotilla_Resource_Version=rv2)
    assert stale_status["code"] == 409, stale_status
    stale_bind = await req(admin, "pods.bind", {"name": "web", "nodeName": "n1"}, Flotilla_Resource_Version=rv2)
    assert stale_bind["code"] == 409, stale_bind
    stale_delete = cli_req(nats_url, "pods.delete", {"name": "web"}, f"Flotilla-Resource-Version:{rv2}")
    assert stale_delete["code"] == 409, stale_delete
    deleted = cli_req(nats_url, "pods.delete", {"name": "web", "gracePeriodSeconds": 0},
                      f"Flotilla-Resource-Version:{rv3}")
    assert deleted["metadata"]["name"] == "web", deleted
    assert (await req(admin, "pods.get", {"name": "web"}))["code"] == 404


async def test_selector_headers_filter_list(api, admin: Client, nats_url: str) -> None:
    need_nats()
    await req(admin, "pods.create", pod("a", app="web"))
    await req(admin, "pods.create", pod("b", app="db"))
    by_label = cli_req(nats_url, "pods.list", {}, "Flotilla-Label-Selector:app=web")
    assert [p["metadata"]["name"] for p in by_label["items"]] == ["a"], by_label
    by_field = await req(admin, "pods.list", {}, Flotilla_Field_Selector="metadata.name=b")
    assert [p["metadata"]["name"] for p in by_field["items"]] == ["b"], by_field
    lower = await req(admin, "pods.list", {}, **{"flotilla-label-selector": "app=db"})  # any case
    assert [p["metadata"]["name"] for p in lower["items"]] == ["b"], lower
    clash = await req(admin, "pods.list", {"labelSelector": "app=db"}, Flotilla_Label_Selector="app=web")
    assert clash["code"] == 400, clash


async def test_header_misuse_is_a_bad_request(api, admin: Client) -> None:
    await req(admin, "pods.create", pod("web"))
    cases = [("pods.create", pod("x"), {"Flotilla_Dry_Run": "yes"}, "Flotilla-Dry-Run"),
             ("pods.get", {"name": "web"}, {"Flotilla_Dry_Run": "All"}, "Flotilla-Dry-Run"),
             ("pods.create", pod("y"), {"Flotilla_Resource_Version": "5"}, "Flotilla-Resource-Version"),
             ("pods.get", {"name": "web"}, {"Flotilla_Label_Selector": "a=b"}, "Flotilla-Label-Selector")]
    for subject, body, headers, named in cases:
        reply = await req(admin, subject, body, **headers)
        assert (reply["code"], reply["reason"]) == (400, "BadRequest") and named in reply["message"], (subject, reply)
    # A body that is not JSON is still the verb's decoder's to name, headers or not.
    broken = await req(admin, "pods.update", b"{not json", Flotilla_Resource_Version="3")
    assert broken["code"] == 400, broken
