"""The API at the message level, as `nats req` / `nats kv get` would use it: raw nats-py and JSON only.

No Flotilla code runs in the test body: requests are plain JSON on the documented subjects
(DESIGN §3) and the state log is read with nats-py's own KV API.
"""
from __future__ import annotations

import json
from typing import Any

import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from kvkeys import live_keys

BUCKET = "flotilla"
STREAM = f"KV_{BUCKET}"


# ---- plain-JSON helpers -----------------------------------------------------------------------------

async def call(nc: Client, resource: str, verb: str, body: Any, node: str | None = None,
               timeout: float = 5.0) -> dict:
    subject = f"flo.api.v1.node.{node}.{resource}.{verb}" if node else f"flo.api.v1.{resource}.{verb}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(subject, data, timeout=timeout)
    return json.loads(msg.data)


async def ok(nc: Client, resource: str, verb: str, body: Any, node: str | None = None) -> dict:
    reply = await call(nc, resource, verb, body, node)
    assert reply.get("kind") != "Status", f"{resource}.{verb} failed: {reply}"
    return reply


async def fails(nc: Client, resource: str, verb: str, body: Any, code: int, reason: str,
                node: str | None = None) -> dict:
    reply = await call(nc, resource, verb, body, node)
    assert reply.get("kind") == "Status", f"{resource}.{verb} should have failed with {code}: {reply}"
    assert (reply["code"], reply["reason"]) == (code, reason), reply
    assert reply["message"]
    return reply


def pod(name: str, ns: str = "default", labels: dict | None = None, node: str | None = None, **spec: Any) -> dict:
    doc: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"]}], **spec},
    }
    if node:
        doc["spec"]["nodeName"] = node
    return doc


def replicaset(name: str, ns: str = "default", replicas: int = 2) -> dict:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}}}


async def stream_head(nc: Client) -> int:
    return (await nc.jetstream().stream_info(STREAM)).state.last_seq


async def kv_json(nc: Client, key: str) -> tuple[dict, int]:
    """What `nats kv get flotilla KEY` shows: the stored JSON and its revision."""
    kv = await nc.jetstream().key_value(BUCKET)
    entry = await kv.get(key)
    assert entry.value is not None
    return json.loads(entry.value), entry.revision


async def kv_missing(nc: Client, key: str) -> bool:
    kv = await nc.jetstream().key_value(BUCKET)
    try:
        await kv.get(key)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return True
    return False


@pytest.fixture
async def server(apiserver, nc: Client) -> Client:
    """One API server; the test talks to it over the raw connection."""
    await apiserver(1)
    return nc


async def make_namespace(nc: Client, name: str) -> dict:
    return await ok(nc, "namespaces", "create", {"kind": "Namespace", "metadata": {"name": name}})


# ---- create / get / the state log -------------------------------------------------------------------

async def test_create_get_and_the_state_log_holds_plain_json(server: Client) -> None:
    nc = server
    created = await ok(nc, "pods", "create", pod("web-1", labels={"app": "web"}))
    assert created["kind"] == "Pod" and created["apiVersion"] == "v1"
    meta = created["metadata"]
    assert meta["name"] == "web-1" and meta["namespace"] == "default" and meta["labels"] == {"app": "web"}
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    assert created["status"]["phase"] == "Pending"

    got = await ok(nc, "pods", "get", {"namespace": "default", "name": "web-1"})
    assert got == created

    stored, revision = await kv_json(nc, "pods.default.web-1")
    assert revision == int(meta["resourceVersion"])  # resourceVersion is the stream sequence
    assert revision == await stream_head(nc)
    assert stored["kind"] == "Pod" and stored["metadata"]["uid"] == meta["uid"]
    assert stored == {**created, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}


async def test_the_default_namespaces_exist_from_the_first_start(server: Client) -> None:
    for name in ("default", "flotilla-system", "flotilla-node-lease"):
        ns = await ok(server, "namespaces", "get", {"name": name})
        assert ns["status"]["phase"] == "Active"
        stored, _ = await kv_json(server, f"namespaces._.{name}")
        assert stored["metadata"]["name"] == name


async def test_names_with_dots_have_reversible_keys(server: Client) -> None:
    nc = server
    await ok(nc, "pods", "create", pod("web.v1.2"))
    await ok(nc, "nodes", "create", {"kind": "Node", "metadata": {"name": "node-1.example.com"}})
    stored, _ = await kv_json(nc, "pods.default.web_v1_2")
    assert stored["metadata"]["name"] == "web.v1.2"
    stored, _ = await kv_json(nc, "nodes._.node-1_example_com")
    assert stored["metadata"]["name"] == "node-1.example.com"
    assert (await ok(nc, "pods", "get", {"name": "web.v1.2"}))["metadata"]["name"] == "web.v1.2"
    listed = await ok(nc, "pods", "list", {"namespace": "default"})
    assert [p["metadata"]["name"] for p in listed["items"]] == ["web.v1.2"]


async def test_server_sets_identity_fields_and_ignores_the_clients(server: Client) -> None:
    doc = pod("mine")
    doc["metadata"].update(uid="i-choose", creationTimestamp="1999-01-01T00:00:00Z", generation=7,
                           deletionTimestamp="1999-01-01T00:00:00Z")
    doc["status"] = {"phase": "Running", "podIP": "10.0.0.1"}
    created = await ok(server, "pods", "create", doc)
    meta = created["metadata"]
    assert meta["uid"] != "i-choose" and not meta["creationTimestamp"].startswith("1999")
    assert meta["generation"] == 1 and "deletionTimestamp" not in meta
    assert created["status"] == {"phase": "Pending", "qosClass": "BestEffort"}


async def test_defaults_are_applied_server_side(server: Client) -> None:
    nc = server
    doc = pod("defaults")
    doc["spec"]["containers"][0].update(
        ports=[{"containerPort": 8080}],
        resources={"limits": {"cpu": "500m", "memory": "128Mi"}},
        livenessProbe={"httpGet": {"port": 8080}},
        image="nginx")
    p = await ok(nc, "pods", "create", doc)
    spec, c = p["spec"], p["spec"]["containers"][0]
    assert spec["restartPolicy"] == "Always"
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["dnsPolicy"] == "ClusterFirst" and spec["schedulerName"] == "default-scheduler"
    # Model omits fields equal to their schema default on the wire: protocol TCP is such a field.
    assert c["ports"][0].get("protocol", "TCP") == "TCP"
    assert c["imagePullPolicy"] == "Always"  # no tag means :latest
    assert c["resources"]["requests"] == {"cpu": "500m", "memory": "128Mi"}  # requests default to limits
    assert c["livenessProbe"] == {"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"}, "initialDelaySeconds": 0,
                                  "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1,
                                  "failureThreshold": 3}
    assert p["status"]["qosClass"] == "Guaranteed"

    d = await ok(nc, "deployments", "create", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}}})
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    assert d["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
    assert d["spec"]["revisionHistoryLimit"] == 10 and d["spec"]["progressDeadlineSeconds"] == 600
    assert d["spec"]["template"]["spec"]["restartPolicy"] == "Always"
    assert d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"

    svc = await ok(nc, "services", "create", {"kind": "Service", "metadata": {"name": "web"},
                                              "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["sessionAffinity"] == "None"
    assert svc["spec"]["ports"][0]["targetPort"] == 80 and svc["spec"]["ports"][0].get("protocol", "TCP") == "TCP"


async def test_generate_name(server: Client) -> None:
    doc = pod("")
    del doc["metadata"]["name"]
    doc["metadata"]["generateName"] = "web-"
    names = set()
    for _ in range(10):
        created = await ok(server, "pods", "create", doc)
        name = created["metadata"]["name"]
        assert name.startswith("web-") and len(name) == len("web-") + 5
        assert created["metadata"]["generateName"] == "web-"
        names.add(name)
        await kv_json(server, f"pods.default.{name}")
    assert len(names) == 10
    listed = await ok(server, "pods", "list", {"namespace": "default"})
    assert {p["metadata"]["name"] for p in listed["items"]} == names


async def test_create_refusals(server: Client) -> None:
    nc = server
    await ok(nc, "pods", "create", pod("once"))
    head = await stream_head(nc)
    await fails(nc, "pods", "create", pod("once"), 409, "AlreadyExists")
    with_rv = pod("with-rv")
    with_rv["metadata"]["resourceVersion"] = "5"
    await fails(nc, "pods", "create", with_rv, 422, "Invalid")
    await fails(nc, "pods", "create", pod("orphan", ns="nowhere"), 404, "NotFound")
    bad = await fails(nc, "pods", "create", pod("Bad_Name"), 422, "Invalid")
    assert bad["details"]["causes"][0]["field"] == "metadata.name"
    unknown = await fails(nc, "pods", "create", {**pod("x"), "spec": {"containers": [], "colour": "red"}}, 400, "BadRequest")
    assert "colour" in unknown["message"] and unknown["details"]["causes"][0]["field"] == "spec.colour"
    assert await stream_head(nc) == head  # nothing written by any refusal
    await make_namespace(nc, "elsewhere")
    await ok(nc, "pods", "create", pod("orphan", ns="elsewhere"))


# ---- list -------------------------------------------------------------------------------------------

async def test_list_with_label_and_field_selectors_and_namespaces(server: Client) -> None:
    nc = server
    await make_namespace(nc, "other")
    await ok(nc, "pods", "create", pod("a1", labels={"app": "a", "tier": "front"}))
    await ok(nc, "pods", "create", pod("a2", labels={"app": "a", "tier": "back"}))
    await ok(nc, "pods", "create", pod("b1", labels={"app": "b"}, node="node-1"))
    await ok(nc, "pods", "create", pod("c1", labels={"app": "c", "canary": "yes"}, node="node-2"))
    await ok(nc, "pods", "create", pod("o1", ns="other", labels={"app": "a"}, node="node-1"))

    async def names(**body: Any) -> list[str]:
        reply = await ok(nc, "pods", "list", body)
        assert reply["kind"] == "PodList" and reply["apiVersion"] == "v1"
        return [f'{p["metadata"]["namespace"]}/{p["metadata"]["name"]}' for p in reply["items"]]

    assert await names() == ["default/a1", "default/a2", "default/b1", "default/c1", "other/o1"]
    assert await names(namespace="default") == ["default/a1", "default/a2", "default/b1", "default/c1"]
    assert await names(namespace="other") == ["other/o1"]
    assert await names(labelSelector="app=a") == ["default/a1", "default/a2", "other/o1"]
    assert await names(namespace="default", labelSelector="app=a,tier in (front)") == ["default/a1"]
    assert await names(labelSelector="app in (b, c)") == ["default/b1", "default/c1"]
    assert await names(labelSelector="app notin (a),!canary") == ["default/b1"]
    assert await names(labelSelector="tier") == ["default/a1", "default/a2"]
    assert await names(labelSelector="app!=a") == ["default/b1", "default/c1"]
    assert await names(fieldSelector="spec.nodeName=node-1") == ["default/b1", "other/o1"]
    assert await names(fieldSelector="spec.nodeName=node-1", namespace="default") == ["default/b1"]
    assert await names(fieldSelector="spec.nodeName=", namespace="default") == ["default/a1", "default/a2"]
    assert await names(fieldSelector="metadata.name=c1") == ["default/c1"]
    assert await names(fieldSelector="metadata.namespace=other") == ["other/o1"]
    assert await names(fieldSelector="status.phase=Pending,spec.nodeName!=node-1", labelSelector="app") == \
        ["default/a1", "default/a2", "default/c1"]
    assert await names(fieldSelector="status.phase=Running") == []
    await fails(nc, "pods", "list", {"labelSelector": "app in (a"}, 400, "BadRequest")
    await fails(nc, "pods", "list", {"fieldSelector": "spec.hostname=x"}, 400, "BadRequest")


async def test_list_pagination_and_resource_version(server: Client) -> None:
    nc = server
    expected = sorted(f"p{i:02d}" for i in range(23))
    for name in expected:
        await ok(nc, "pods", "create", pod(name, labels={"batch": "one"}))
    await ok(nc, "pods", "create", pod("zz-other", labels={"batch": "two"}))
    head = await stream_head(nc)

    whole = await ok(nc, "pods", "list", {"namespace": "default", "labelSelector": "batch=one"})
    assert [p["metadata"]["name"] for p in whole["items"]] == expected
    assert whole["metadata"]["resourceVersion"] == str(head)  # a consistent read at the log's head
    assert "continue" not in whole["metadata"]

    seen: list[str] = []
    pages = 0
    token = None
    while True:
        body: dict[str, Any] = {"namespace": "default", "labelSelector": "batch=one", "limit": 7}
        if token:
            body["continue"] = token
        page = await ok(nc, "pods", "list", body)
        pages += 1
        assert len(page["items"]) <= 7
        assert page["metadata"]["resourceVersion"] == str(head)  # every page is of the first page's version
        seen += [p["metadata"]["name"] for p in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
    assert seen == expected and pages == 4
    await fails(nc, "pods", "list", {"limit": 5, "continue": "not-a-token"}, 400, "BadRequest")

    # Every item carries its own version, the stream sequence of its last write.
    for item in whole["items"]:
        _, revision = await kv_json(nc, f'pods.default.{item["metadata"]["name"]}')
        assert item["metadata"]["resourceVersion"] == str(revision)


# ---- update / status / patch ------------------------------------------------------------------------

async def test_update_is_compare_and_set_on_the_resource_version(server: Client) -> None:
    nc = server
    rs = await ok(nc, "replicasets", "create", replicaset("web"))
    v1 = rs["metadata"]["resourceVersion"]
    assert rs["metadata"]["generation"] == 1

    rs["spec"]["replicas"] = 5
    rs["metadata"]["labels"] = {"tier": "front"}
    updated = await ok(nc, "replicasets", "update", rs)
    v2 = updated["metadata"]["resourceVersion"]
    assert int(v2) > int(v1) and updated["spec"]["replicas"] == 5 and updated["metadata"]["labels"] == {"tier": "front"}
    assert updated["metadata"]["generation"] == 2  # spec changed
    assert updated["metadata"]["uid"] == rs["metadata"]["uid"]

    updated["metadata"]["labels"] = {"tier": "back"}
    relabelled = await ok(nc, "replicasets", "update", updated)
    assert relabelled["metadata"]["generation"] == 2  # metadata-only change: same generation

    head = await stream_head(nc)
    rs["metadata"]["resourceVersion"] = v1  # stale
    rs["spec"]["replicas"] = 9
    conflict = await fails(nc, "replicasets", "update", rs, 409, "Conflict")
    assert "modified" in conflict["message"]
    assert await stream_head(nc) == head
    stored, _ = await kv_json(nc, "replicasets.default.web")
    assert stored["spec"]["replicas"] == 5  # never a silent overwrite

    # status in an update body is ignored; the status verb owns it
    relabelled["status"] = {"replicas": 42}
    after = await ok(nc, "replicasets", "update", relabelled)
    assert after["status"].get("replicas", 0) == 0
    await fails(nc, "replicasets", "update", {**replicaset("absent"), "metadata": {"name": "absent", "resourceVersion": "3"}},
                404, "NotFound")


async def test_pods_are_immutable_but_for_images(server: Client) -> None:
    nc = server
    p = await ok(nc, "pods", "create", pod("im"))
    p["spec"]["containers"][0]["image"] = "busybox:1.37"
    p2 = await ok(nc, "pods", "update", p)
    assert p2["spec"]["containers"][0]["image"] == "busybox:1.37"
    p2["spec"]["restartPolicy"] = "Never"
    await fails(nc, "pods", "update", p2, 422, "Invalid")
    p2 = await ok(nc, "pods", "get", {"name": "im"})
    p2["spec"]["nodeName"] = "node-1"  # nodes are assigned through bind only
    await fails(nc, "pods", "update", p2, 422, "Invalid")


async def test_status_changes_only_status(server: Client) -> None:
    nc = server
    p = await ok(nc, "pods", "create", pod("st", node="node-1"))
    rv = p["metadata"]["resourceVersion"]
    p["status"] = {"phase": "Running", "podIP": "127.1.0.5", "conditions": [{"type": "Ready", "status": "True"}]}
    p["metadata"]["labels"] = {"sneaky": "yes"}
    p["spec"]["containers"][0]["image"] = "other:1"
    s = await ok(nc, "pods", "status", p)
    assert s["status"]["phase"] == "Running" and s["status"]["podIP"] == "127.1.0.5"
    assert s["metadata"].get("labels", {}) == {} and s["spec"]["containers"][0]["image"] == "busybox:1.36"
    assert int(s["metadata"]["resourceVersion"]) > int(rv) and s["metadata"]["generation"] == 1
    stored, _ = await kv_json(nc, "pods.default.st")
    assert stored["status"]["phase"] == "Running" and "labels" not in stored["metadata"]

    p["metadata"]["resourceVersion"] = rv  # stale
    await fails(nc, "pods", "status", p, 409, "Conflict")
    s["status"]["phase"] = "Exploded"
    await fails(nc, "pods", "status", s, 422, "Invalid")
    await fails(nc, "leases", "status", {"kind": "Lease", "metadata": {"name": "x"}}, 400, "BadRequest")


async def test_merge_patch(server: Client) -> None:
    nc = server
    created = await ok(nc, "pods", "create", pod("mp", labels={"app": "web", "drop": "me"}))
    patched = await ok(nc, "pods", "patch", {"namespace": "default", "name": "mp",
                                              "patch": {"metadata": {"labels": {"drop": None, "new": "yes"},
                                                                     "annotations": {"note": "hi"}}}})
    assert patched["metadata"]["labels"] == {"app": "web", "new": "yes"}
    assert patched["metadata"]["annotations"] == {"note": "hi"}
    assert patched["spec"] == created["spec"]
    assert int(patched["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    stored, _ = await kv_json(nc, "pods.default.mp")
    assert stored["metadata"]["labels"] == {"app": "web", "new": "yes"}

    # a resourceVersion inside the patch is a precondition
    stale = {"name": "mp", "patch": {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"],
                                                  "labels": {"x": "y"}}}}
    await fails(nc, "pods", "patch", stale, 409, "Conflict")

    await ok(nc, "replicasets", "create", replicaset("rs"))
    rs = await ok(nc, "replicasets", "patch", {"name": "rs", "patch": {"spec": {"replicas": 4}}})
    assert rs["spec"]["replicas"] == 4 and rs["metadata"]["generation"] == 2
    assert rs["spec"]["template"]["metadata"]["labels"] == {"app": "rs"}  # merged, not replaced
    await fails(nc, "replicasets", "patch", {"name": "rs", "patch": {"spec": {"replicas": -1}}}, 422, "Invalid")
    await fails(nc, "replicasets", "patch", {"name": "nope", "patch": {}}, 404, "NotFound")


# ---- delete -----------------------------------------------------------------------------------------

async def test_delete_is_graceful_for_pods_on_a_node_and_immediate_otherwise(server: Client) -> None:
    nc = server
    await ok(nc, "pods", "create", pod("loose"))
    gone = await ok(nc, "pods", "delete", {"namespace": "default", "name": "loose"})
    assert gone["metadata"]["name"] == "loose"
    await fails(nc, "pods", "get", {"name": "loose"}, 404, "NotFound")
    assert await kv_missing(nc, "pods.default.loose")

    await ok(nc, "pods", "create", pod("bound"))
    await ok(nc, "pods", "bind", {"name": "bound", "nodeName": "node-1"})
    first = await ok(nc, "pods", "delete", {"name": "bound"})
    assert first["metadata"]["deletionTimestamp"] and first["metadata"]["deletionGracePeriodSeconds"] == 30
    still = await ok(nc, "pods", "get", {"name": "bound"})  # the node agent confirms later
    assert still["metadata"]["deletionTimestamp"] == first["metadata"]["deletionTimestamp"]
    stored, _ = await kv_json(nc, "pods.default.bound")
    assert stored["metadata"]["deletionGracePeriodSeconds"] == 30
    shorter = await ok(nc, "pods", "delete", {"name": "bound", "gracePeriodSeconds": 5})
    assert shorter["metadata"]["deletionGracePeriodSeconds"] == 5
    await ok(nc, "pods", "delete", {"name": "bound", "gracePeriodSeconds": 0})
    await fails(nc, "pods", "get", {"name": "bound"}, 404, "NotFound")
    assert await kv_missing(nc, "pods.default.bound")

    p = await ok(nc, "pods", "create", pod("guarded"))
    await ok(nc, "pods", "patch", {"name": "guarded", "patch": {"metadata": {"labels": {"a": "b"}}}})
    await fails(nc, "pods", "delete", {"name": "guarded", "resourceVersion": p["metadata"]["resourceVersion"]},
                409, "Conflict")
    await fails(nc, "pods", "delete", {"name": "guarded", "uid": "someone-else"}, 409, "Conflict")
    await fails(nc, "pods", "delete", {"name": "guarded", "gracePeriodSeconds": -1}, 422, "Invalid")
    await fails(nc, "pods", "delete", {"name": "never-was"}, 404, "NotFound")
    await ok(nc, "pods", "get", {"name": "guarded"})
    # a recreated name is a new object
    await ok(nc, "pods", "delete", {"name": "guarded"})
    again = await ok(nc, "pods", "create", pod("guarded"))
    assert again["metadata"]["uid"] != p["metadata"]["uid"]


async def test_finalizers_hold_a_deletion_until_removed(server: Client) -> None:
    nc = server
    rs = replicaset("fin")
    rs["metadata"]["finalizers"] = ["example.com/hold"]
    await ok(nc, "replicasets", "create", rs)
    held = await ok(nc, "replicasets", "delete", {"name": "fin"})
    assert held["metadata"]["deletionTimestamp"]
    await ok(nc, "replicasets", "get", {"name": "fin"})
    await ok(nc, "replicasets", "patch", {"name": "fin", "patch": {"metadata": {"finalizers": None}}})
    await fails(nc, "replicasets", "get", {"name": "fin"}, 404, "NotFound")
    assert await kv_missing(nc, "replicasets.default.fin")


# ---- bind / scale -----------------------------------------------------------------------------------

async def test_bind(server: Client) -> None:
    nc = server
    p = await ok(nc, "pods", "create", pod("b"))
    bound = await ok(nc, "pods", "bind", {"namespace": "default", "name": "b", "nodeName": "node-1",
                                           "resourceVersion": p["metadata"]["resourceVersion"]})
    assert bound["spec"]["nodeName"] == "node-1"
    assert [c["type"] for c in bound["status"]["conditions"]] == ["PodScheduled"]
    stored, _ = await kv_json(nc, "pods.default.b")
    assert stored["spec"]["nodeName"] == "node-1"
    again = await ok(nc, "pods", "bind", {"name": "b", "nodeName": "node-1"})  # a retried bind is fine
    assert again["metadata"]["resourceVersion"] == bound["metadata"]["resourceVersion"]
    await fails(nc, "pods", "bind", {"name": "b", "nodeName": "node-2"}, 409, "Conflict")
    p2 = await ok(nc, "pods", "create", pod("b2"))
    await ok(nc, "pods", "patch", {"name": "b2", "patch": {"metadata": {"labels": {"x": "y"}}}})
    await fails(nc, "pods", "bind", {"name": "b2", "nodeName": "node-2",
                                     "resourceVersion": p2["metadata"]["resourceVersion"]}, 409, "Conflict")
    await fails(nc, "pods", "bind", {"name": "b2", "nodeName": ""}, 422, "Invalid")
    await fails(nc, "pods", "bind", {"name": "ghost", "nodeName": "node-1"}, 404, "NotFound")
    await fails(nc, "replicasets", "bind", {"name": "x", "nodeName": "node-1"}, 400, "BadRequest")


async def test_scale(server: Client) -> None:
    nc = server
    await ok(nc, "replicasets", "create", replicaset("web", replicas=1))
    scaled = await ok(nc, "replicasets", "scale", {"namespace": "default", "name": "web", "replicas": 7})
    assert scaled["spec"]["replicas"] == 7 and scaled["metadata"]["generation"] == 2
    stored, _ = await kv_json(nc, "replicasets.default.web")
    assert stored["spec"]["replicas"] == 7
    same = await ok(nc, "replicasets", "scale", {"name": "web", "replicas": 7})
    assert same["metadata"]["resourceVersion"] == scaled["metadata"]["resourceVersion"]
    await fails(nc, "replicasets", "scale", {"name": "web", "replicas": -2}, 422, "Invalid")
    await fails(nc, "replicasets", "scale", {"name": "nope", "replicas": 2}, 404, "NotFound")
    d = await ok(nc, "deployments", "create", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}})
    assert d["spec"]["replicas"] == 1
    assert (await ok(nc, "deployments", "scale", {"name": "d", "replicas": 0}))["spec"]["replicas"] == 0
    await fails(nc, "pods", "scale", {"name": "x", "replicas": 1}, 400, "BadRequest")


# ---- watch ------------------------------------------------------------------------------------------

def watch_events(msg: Msg) -> list[dict[str, Any]]:
    """A watch message holds one event, or a JSON array of events when they queued up."""
    data = json.loads(msg.data)
    return data if isinstance(data, list) else [data]


async def test_watch_at_the_message_level(server: Client) -> None:
    nc = server
    await ok(nc, "pods", "create", pod("before"))
    start = await stream_head(nc)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("flo.api.v1.pods.watch", json.dumps({"namespace": "default", "resourceVersion": str(start)}).encode(),
                     reply=inbox)
    ack = json.loads((await sub.next_msg(timeout=5)).data)
    assert ack["type"] == "ACK" and ack["seq"] == 0 and ack["watchId"] and int(ack["resourceVersion"]) >= start

    created = await ok(nc, "pods", "create", pod("w", labels={"v": "1"}))
    patched = await ok(nc, "pods", "patch", {"name": "w", "patch": {"metadata": {"labels": {"v": "2"}}}})
    await ok(nc, "pods", "delete", {"name": "w"})
    tombstone = await stream_head(nc)
    await ok(nc, "pods", "create", pod("elsewhere", ns="flotilla-system"))  # another namespace: not seen

    events = []
    while len(events) < 3:
        events += [e for e in watch_events(await sub.next_msg(timeout=5)) if e["type"] != "BOOKMARK"]
    assert [(e["type"], e["seq"] > 0, e["object"]["metadata"]["name"], e["object"]["metadata"]["resourceVersion"])
            for e in events] == [
        ("ADDED", True, "w", created["metadata"]["resourceVersion"]),
        ("MODIFIED", True, "w", patched["metadata"]["resourceVersion"]),
        ("DELETED", True, "w", str(tombstone)),
    ]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert events[1]["object"]["metadata"]["labels"] == {"v": "2"}
    with pytest.raises(nats.errors.TimeoutError):  # nothing else for this namespace
        while True:
            for msg in watch_events(await sub.next_msg(timeout=0.5)):
                assert msg["type"] == "BOOKMARK", msg
    await sub.unsubscribe()


async def test_watch_from_nothing_starts_with_the_current_objects(server: Client) -> None:
    nc = server
    for name in ("x1", "x2"):
        await ok(nc, "pods", "create", pod(name))
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("flo.api.v1.pods.watch", b'{"namespace":"default","labelSelector":""}', reply=inbox)
    assert json.loads((await sub.next_msg(timeout=5)).data)["type"] == "ACK"
    first: list[dict[str, Any]] = []
    while len(first) < 2:
        first += watch_events(await sub.next_msg(timeout=5))
    assert [(e["type"], e["seq"], e["object"]["metadata"]["name"]) for e in first] == [("ADDED", 1, "x1"), ("ADDED", 2, "x2")]
    await sub.unsubscribe()
    bad = await call(nc, "pods", "watch", {"labelSelector": "a in ("})
    assert (bad["kind"], bad["code"]) == ("Status", 400)


# ---- namespaces -------------------------------------------------------------------------------------

async def test_deleting_a_namespace_deletes_its_content(server: Client, wait_for) -> None:
    nc = server
    await make_namespace(nc, "doomed")
    await make_namespace(nc, "kept")
    for name in ("p1", "p2"):
        await ok(nc, "pods", "create", pod(name, ns="doomed"))
    await ok(nc, "replicasets", "create", replicaset("rs", ns="doomed"))
    await ok(nc, "services", "create", {"kind": "Service", "metadata": {"name": "svc", "namespace": "doomed"},
                                        "spec": {"ports": [{"port": 80}]}})
    await ok(nc, "pods", "create", pod("p1", ns="kept"))

    terminating = await ok(nc, "namespaces", "delete", {"name": "doomed"})
    assert terminating["status"]["phase"] == "Terminating" and terminating["metadata"]["deletionTimestamp"]
    await fails(nc, "pods", "create", pod("late", ns="doomed"), 403, "Forbidden")

    async def namespace_gone() -> bool:
        reply = await call(nc, "namespaces", "get", {"name": "doomed"})
        return reply.get("code") == 404

    await wait_for(namespace_gone, timeout=15, what="namespace doomed to be deleted")
    for resource in ("pods", "replicasets", "services"):
        listed = await ok(nc, resource, "list", {"namespace": "doomed"})
        assert listed["items"] == []
    kv = await nc.jetstream().key_value(BUCKET)
    live = set(await live_keys(kv))
    assert not [k for k in live if ".doomed." in k or k.endswith(".doomed")]
    assert "pods.kept.p1" in live
    await fails(nc, "pods", "create", pod("late", ns="doomed"), 404, "NotFound")


# ---- node-scoped subjects ---------------------------------------------------------------------------

async def test_node_scoped_subjects_enforce_the_node_restriction(server: Client) -> None:
    nc = server
    await ok(nc, "pods", "create", pod("on-a", labels={"x": "1"}, node="node-a"))
    await ok(nc, "pods", "create", pod("on-b", node="node-b"))
    await ok(nc, "pods", "create", pod("unbound"))
    await ok(nc, "nodes", "create", {"kind": "Node", "metadata": {"name": "node-a"}})
    head = await stream_head(nc)

    # node-b may see and touch only its own pods
    await fails(nc, "pods", "get", {"name": "on-a"}, 403, "Forbidden", node="node-b")
    await fails(nc, "pods", "get", {"name": "unbound"}, 403, "Forbidden", node="node-b")
    on_a = await ok(nc, "pods", "get", {"name": "on-a"}, node="node-a")
    on_a["status"] = {"phase": "Running"}
    await fails(nc, "pods", "status", on_a, 403, "Forbidden", node="node-b")
    await fails(nc, "pods", "delete", {"name": "on-a"}, 403, "Forbidden", node="node-b")
    await fails(nc, "pods", "patch", {"name": "on-a", "patch": {"metadata": {"labels": {"x": "2"}}}}, 403, "Forbidden",
                node="node-b")
    await fails(nc, "pods", "create", pod("sneak", node="node-b"), 403, "Forbidden", node="node-b")
    await fails(nc, "pods", "bind", {"name": "unbound", "nodeName": "node-b"}, 403, "Forbidden", node="node-b")
    await fails(nc, "pods", "list", {}, 403, "Forbidden", node="node-b")
    await fails(nc, "pods", "list", {"fieldSelector": "spec.nodeName=node-a"}, 403, "Forbidden", node="node-b")
    await fails(nc, "pods", "watch", {"fieldSelector": "spec.nodeName=node-a"}, 403, "Forbidden", node="node-b")
    await fails(nc, "nodes", "update", {"kind": "Node", "metadata": {"name": "node-a"}}, 403, "Forbidden", node="node-b")
    await fails(nc, "leases", "create", {"kind": "Lease", "metadata": {"name": "node-a", "namespace": "flotilla-node-lease"}},
                403, "Forbidden", node="node-b")
    await fails(nc, "replicasets", "create", replicaset("rs"), 403, "Forbidden", node="node-b")
    assert await stream_head(nc) == head  # nothing written by any refused request
    stored, _ = await kv_json(nc, "pods.default.on-a")
    assert stored["metadata"]["labels"] == {"x": "1"} and "deletionTimestamp" not in stored["metadata"]

    # ... and what is its own, it may
    mine = await ok(nc, "pods", "list", {"fieldSelector": "spec.nodeName=node-b"}, node="node-b")
    assert [p["metadata"]["name"] for p in mine["items"]] == ["on-b"]
    on_b = await ok(nc, "pods", "get", {"name": "on-b"}, node="node-b")
    on_b["status"] = {"phase": "Running", "podIP": "127.2.0.2"}
    assert (await ok(nc, "pods", "status", on_b, node="node-b"))["status"]["phase"] == "Running"
    assert (await ok(nc, "nodes", "create", {"kind": "Node", "metadata": {"name": "node-b"}}, node="node-b"))
    await ok(nc, "leases", "create", {"kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
                                      "metadata": {"name": "node-b", "namespace": "flotilla-node-lease"},
                                      "spec": {"holderIdentity": "node-b", "leaseDurationSeconds": 40}}, node="node-b")
    await ok(nc, "services", "list", {}, node="node-b")
    await ok(nc, "pods", "delete", {"name": "on-b", "gracePeriodSeconds": 0}, node="node-b")
    assert await kv_missing(nc, "pods.default.on-b")


async def test_names_that_are_not_names_never_reach_another_object(server: Client) -> None:
    """Names become subject tokens of keys: `*` or `>` must not match (and update, or delete) another object."""
    nc = server
    victim = await ok(nc, "pods", "create", pod("victim", node="node-1"))
    head = await stream_head(nc)
    for name in ("*", ">", "vic*", "a b", "victim_", "Victim"):
        await fails(nc, "pods", "get", {"name": name}, 404, "NotFound")
        await fails(nc, "pods", "delete", {"name": name, "gracePeriodSeconds": 0}, 404, "NotFound")
        await fails(nc, "pods", "update", {**pod(name), "metadata": {"name": name}}, 404, "NotFound")
        await fails(nc, "pods", "patch", {"name": name, "patch": {"metadata": {"labels": {"x": "y"}}}}, 404, "NotFound")
        await fails(nc, "pods", "get", {"namespace": name, "name": "victim"}, 404, "NotFound")
    assert await stream_head(nc) == head
    assert await ok(nc, "pods", "get", {"name": "victim"}) == victim


async def test_a_grace_period_beyond_what_a_date_can_hold_still_deletes(server: Client) -> None:
    nc = server
    await ok(nc, "pods", "create", pod("slow", node="node-1", terminationGracePeriodSeconds=10**15))
    deleting = await ok(nc, "pods", "delete", {"name": "slow"})
    assert deleting["metadata"]["deletionGracePeriodSeconds"] == 10**15
    assert deleting["metadata"]["deletionTimestamp"] > "2100"
    again = await ok(nc, "pods", "delete", {"name": "slow", "gracePeriodSeconds": 10**16})
    assert again["metadata"] == deleting["metadata"]  # a longer grace never extends a deletion
    await ok(nc, "pods", "create", pod("slower", node="node-1"))
    longest = await ok(nc, "pods", "delete", {"name": "slower", "gracePeriodSeconds": 2**63 - 1})
    assert longest["metadata"]["deletionGracePeriodSeconds"] == 2**63 - 1
    assert longest["metadata"]["deletionTimestamp"] > "2100"
    await ok(nc, "pods", "delete", {"name": "slow", "gracePeriodSeconds": 0})
    assert await kv_missing(nc, "pods.default.slow")


async def test_unknown_resources_and_verbs(server: Client) -> None:
    nc = server
    await fails(nc, "gadgets", "get", {"name": "x"}, 404, "NotFound")
    await fails(nc, "pods", "explode", {"name": "x"}, 400, "BadRequest")
    await fails(nc, "services", "scale", {"name": "x", "replicas": 1}, 400, "BadRequest")
    await fails(nc, "pods", "get", {"name": "x"}, 404, "NotFound")
