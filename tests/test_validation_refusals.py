"""Semantic refusals as `nats req` would meet them: plain JSON on `flo.api.v1.<resource>.create`
against a real API server, each answered 422 Invalid naming the field, and nothing stored (the key is
absent from the bucket, and the list does not show the object)."""
from __future__ import annotations

import copy
import json
from typing import Any

import nats.js.errors
from nats.aio.client import Client

BUCKET = "flotilla"


def _container(name: str = "main", **extra: Any) -> dict:
    return {"name": name, "image": "busybox:1.36", "command": ["sleep", "3600"], **extra}


def _pod_spec(**extra: Any) -> dict:
    return {"containers": [_container()], **extra}


def _pod(name: str, spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def _workload(kind: str, name: str, selector: dict, template_labels: dict, **spec: Any) -> dict:
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": 1, "selector": selector, **spec,
                     "template": {"metadata": {"labels": template_labels},
                                  "spec": {"containers": [_container("c")]}}}}


def _service(name: str, ports: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": ports}}


# (resource, object, the field the refusal must name)
CASES: list[tuple[str, dict, str]] = [
    ("replicasets", _workload("ReplicaSet", "rs-mismatch", {"matchLabels": {"app": "a"}}, {"app": "b"}),
     "spec.template.metadata.labels"),
    ("replicasets", _workload("ReplicaSet", "rs-expr-mismatch",
                              {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]}, {"app": "b"}),
     "spec.template.metadata.labels"),
    ("deployments", _workload("Deployment", "dep-mismatch", {"matchLabels": {"app": "a"}}, {"app": "b"}),
     "spec.template.metadata.labels"),
    # Empty selector with nothing to default it from (see the report: an empty selector beside labelled
    # template is defaulted from the labels in defaults.py, where apps/v1 refuses it).
    ("replicasets", _workload("ReplicaSet", "rs-empty-selector", {}, {}), "spec.selector"),
    ("deployments", _workload("Deployment", "dep-empty-selector", {}, {}), "spec.selector"),
    ("pods", _pod("dup-containers", {"containers": [_container("main"), _container("main")]}),
     "spec.containers[1].name"),
    ("pods", _pod("dup-volumes", _pod_spec(volumes=[{"name": "data", "emptyDir": {}},
                                                    {"name": "data", "emptyDir": {}}])),
     "spec.volumes[1].name"),
    ("pods", _pod("dup-port-names", {"containers": [_container(ports=[
        {"name": "http", "containerPort": 8080}, {"name": "http", "containerPort": 8081}])]}),
     "spec.containers[0].ports[1].name"),
    ("pods", _pod("unknown-volume", {"volumes": [{"name": "data", "emptyDir": {}}], "containers": [
        _container(volumeMounts=[{"name": "data", "mountPath": "/data"}, {"name": "cache", "mountPath": "/cache"}])]}),
     "spec.containers[0].volumeMounts[1].name"),
    ("replicasets", {**_workload("ReplicaSet", "rs-template-unknown-volume", {"matchLabels": {"app": "a"}}, {"app": "a"}),
                     "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {
                         "metadata": {"labels": {"app": "a"}},
                         "spec": {"containers": [_container(volumeMounts=[{"name": "nope", "mountPath": "/x"}])]}}}},
     "spec.template.spec.containers[0].volumeMounts[0].name"),
    ("deployments", _workload("Deployment", "dep-zero-zero", {"matchLabels": {"app": "a"}}, {"app": "a"},
                              strategy={"type": "RollingUpdate",
                                        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}),
     "spec.strategy.rollingUpdate.maxUnavailable"),
    ("deployments", _workload("Deployment", "dep-zero-zero-pct", {"matchLabels": {"app": "a"}}, {"app": "a"},
                              strategy={"type": "RollingUpdate",
                                        "rollingUpdate": {"maxSurge": "0%", "maxUnavailable": 0}}),
     "spec.strategy.rollingUpdate.maxUnavailable"),
    ("services", _service("multi-unnamed", [{"port": 80}, {"port": 443}]), "spec.ports[0].name"),
    ("services", _service("multi-one-unnamed", [{"name": "http", "port": 80}, {"port": 443}]), "spec.ports[1].name"),
]


async def _request(nc: Client, resource: str, verb: str, body: dict) -> dict:
    msg = await nc.request(f"flo.api.v1.{resource}.{verb}", json.dumps(body).encode(), timeout=10)
    return json.loads(msg.data)


async def _stored(nc: Client, key: str) -> bool:
    kv = await nc.jetstream().key_value(BUCKET)
    try:
        await kv.get(key)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return False
    return True


async def test_refused_as_invalid_naming_the_field(apiserver, nc: Client) -> None:
    # One API server for every case (starting one per case would cost the suite more than the checks);
    # every case is checked and the failures reported together.
    await apiserver(1)
    wrong: list[str] = []
    for resource, obj, field in CASES:
        name = obj["metadata"]["name"]
        reply = await _request(nc, resource, "create", obj)
        if reply.get("kind") != "Status":
            wrong.append(f"{resource} {name}: accepted")
        elif (reply["code"], reply["reason"]) != (422, "Invalid"):
            wrong.append(f"{resource} {name}: {reply['code']} {reply['reason']}, not 422 Invalid: {reply['message']}")
        elif reply.get("details", {}).get("causes", [{}])[0].get("field") != field or field not in reply["message"]:
            wrong.append(f"{resource} {name}: names {reply.get('details')}, not {field}: {reply['message']}")
        if await _stored(nc, f"{resource}.default.{name}"):
            wrong.append(f"{resource} {name}: stored in the bucket")
        listed = await _request(nc, resource, "list", {"namespace": "default"})
        assert listed.get("kind") != "Status", listed
        if name in [item["metadata"]["name"] for item in listed["items"]]:
            wrong.append(f"{resource} {name}: listed")
    assert not wrong, "\n".join(wrong)


async def test_the_same_objects_put_right_are_accepted(apiserver, nc: Client) -> None:
    """The refusals above are for the defect each case carries, not for something else in the object:
    with the defect put right, each is stored (and the bucket check above could see it)."""
    await apiserver(1)
    fixed: list[tuple[str, dict]] = []
    rs = _workload("ReplicaSet", "rs-ok", {"matchLabels": {"app": "a"}}, {"app": "a"})
    fixed.append(("replicasets", rs))
    fixed.append(("deployments", _workload("Deployment", "dep-ok", {"matchLabels": {"app": "a"}}, {"app": "a"},
                                           strategy={"type": "RollingUpdate",
                                                     "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}})))
    fixed.append(("pods", _pod("pod-ok", {"volumes": [{"name": "data", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}],
                                          "containers": [
                                              _container("main", ports=[{"name": "http", "containerPort": 8080},
                                                                        {"name": "https", "containerPort": 8081}],
                                                         volumeMounts=[{"name": "data", "mountPath": "/data"},
                                                                       {"name": "cache", "mountPath": "/cache"}]),
                                              _container("side")]})))
    fixed.append(("services", _service("multi-named", [{"name": "http", "port": 80}, {"name": "https", "port": 443}])))
    for resource, obj in fixed:
        reply = await _request(nc, resource, "create", copy.deepcopy(obj))
        assert reply.get("kind") != "Status", f"{resource} {obj['metadata']['name']} refused: {reply}"
        assert await _stored(nc, f"{resource}.default.{obj['metadata']['name']}")
