"""Bad input, property-based: malformed JSON, wrong types, unknown fields, huge payloads, invalid names,
selectors, quantities and enums, stale versions — sent as raw JSON to every verb of several resources.

Every reply must be a `Status` with the right code, the API server must still be running, and the state
log must be unchanged (its streams' last sequences are compared around every single request).

Each property runs as the admin (plain subjects) and, with fewer examples, as `reader`, `scheduler` and
the node agent of `node-1`, each on a connection with that principal's own NATS credentials and on its
own subjects (docs/security.md). For them a 403 Forbidden naming the principal is an allowed outcome
too, and a subject their NATS permissions do not let them publish on must be refused by NATS itself
(a permissions violation) without a message reaching the API server.
"""
from __future__ import annotations

import asyncio
import copy
import inspect
import json
import time
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from conftest import connect
from schemas import API_PREFIX, RESOURCES
from schemas.names import dns1123_label_error, dns1123_subdomain_error
from schemas.quantity import QuantityError, parse_quantity
from schemas.selectors import SelectorError, parse_field_selector, parse_label_selector
from schemas.status import CODES
from services.lib import permissions
from kvkeys import live_keys

STREAMS = ("KV_flotilla", "KV_flotilla-events")
STATUS_KINDS = ("pods", "nodes", "replicasets", "deployments", "services", "namespaces")
ALL_VERBS = ("create", "get", "list", "update", "patch", "delete", "status", "watch", "bind", "scale")
MAX_REQUEST = 1536 * 1024  # 1.5 MB, Kubernetes' object limit: over it a request is refused before decoding
OTHER_EXAMPLES = 30  # per property and extra identity: the admin's runs are the deep ones

CONTAINERS = [{"name": "c", "image": "busybox:1.36", "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}],
               "resources": {"requests": {"cpu": "100m"}}}]
TEMPLATE = {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": CONTAINERS}}
# One valid object of each kind: created as the seed, and the base every bad body is made from.
OBJECTS: dict[str, dict[str, Any]] = {
    "pods": {"kind": "Pod", "metadata": {"name": "web-1", "labels": {"a": "b"}},
             "spec": {"containers": CONTAINERS, "nodeName": "node-1", "restartPolicy": "Always",
                      "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}]}},
    "replicasets": {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs"},
                    "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": TEMPLATE}},
    "deployments": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "dep"},
                    "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": TEMPLATE,
                             "strategy": {"type": "RollingUpdate"}}},
    "services": {"kind": "Service", "metadata": {"name": "svc"},
                 "spec": {"selector": {"a": "b"}, "ports": [{"port": 80}], "type": "ClusterIP"}},
    "nodes": {"kind": "Node", "metadata": {"name": "node-1"},
              "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}, "status": {"capacity": {"cpu": "4"}}},
    "namespaces": {"kind": "Namespace", "metadata": {"name": "extra"}},
    "leases": {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l1"},
               "spec": {"holderIdentity": "me", "leaseDurationSeconds": 10}},
    "endpoints": {"kind": "Endpoints", "metadata": {"name": "svc"},
                  "subsets": [{"addresses": [{"ip": "127.0.0.5"}], "ports": [{"port": 80}]}]},
    "events": {"kind": "Event", "metadata": {"name": "ev1"}, "involvedObject": {"kind": "Pod", "name": "web-1"},
               "reason": "Test", "type": "Normal", "count": 1},
}
KINDS = sorted(OBJECTS)
NAMESPACED = [r for r in KINDS if RESOURCES[r].namespaced]

# Typed fields of each body, to put a value of another JSON type in.
_META = [("kind", str), ("apiVersion", str), ("metadata", dict), ("metadata.name", str), ("metadata.labels", dict),
         ("metadata.labels.a", str), ("metadata.annotations", dict), ("metadata.finalizers", list),
         ("metadata.ownerReferences", list), ("metadata.generation", int), ("metadata.resourceVersion", str)]
_TEMPLATE = [("spec.template", dict), ("spec.template.spec.containers", list), ("spec.template.spec.containers.0.name", str),
             ("spec.selector", dict), ("spec.selector.matchLabels", dict), ("spec.replicas", int), ("spec.minReadySeconds", int)]
OBJECT_FIELDS: dict[str, list[tuple[str, type]]] = {
    "pods": _META + [("spec", dict), ("spec.containers", list), ("spec.containers.0", dict), ("spec.containers.0.name", str),
                     ("spec.containers.0.image", str), ("spec.containers.0.command", list),
                     ("spec.containers.0.ports", list), ("spec.containers.0.ports.0.containerPort", int),
                     ("spec.containers.0.env.0.name", str), ("spec.containers.0.resources.requests", dict),
                     ("spec.restartPolicy", str), ("spec.terminationGracePeriodSeconds", int),
                     ("spec.hostNetwork", bool), ("spec.nodeSelector", dict), ("spec.tolerations", list),
                     ("status", dict), ("status.phase", str), ("status.conditions", list)],
    "replicasets": _META + _TEMPLATE,
    "deployments": _META + _TEMPLATE + [("spec.strategy", dict), ("spec.strategy.type", str), ("spec.paused", bool)],
    "services": _META + [("spec", dict), ("spec.ports", list), ("spec.ports.0.port", int), ("spec.selector", dict),
                         ("spec.type", str), ("spec.clusterIP", str)],
    "nodes": _META + [("spec", dict), ("spec.unschedulable", bool), ("spec.taints", list), ("spec.taints.0.key", str),
                      ("status.capacity", dict)],
    "namespaces": _META + [("spec", dict), ("status", dict), ("status.phase", str)],
    "leases": _META + [("spec", dict), ("spec.holderIdentity", str), ("spec.leaseDurationSeconds", int)],
    "endpoints": _META + [("subsets", list), ("subsets.0.addresses", list), ("subsets.0.addresses.0.ip", str),
                          ("subsets.0.ports.0.port", int)],
    "events": _META + [("involvedObject", dict), ("involvedObject.name", str), ("reason", str), ("count", int),
                       ("type", str)],
}
# Where a struct sits in each body: an unknown field there must be refused, naming it.
OBJECT_STRUCTS: dict[str, list[str]] = {
    "pods": ["", "metadata", "spec", "spec.containers.0", "spec.containers.0.ports.0", "spec.tolerations.0", "status"],
    "replicasets": ["", "metadata", "spec", "spec.selector", "spec.template", "spec.template.spec"],
    "deployments": ["", "metadata", "spec", "spec.selector", "spec.template.metadata", "spec.strategy"],
    "services": ["", "metadata", "spec", "spec.ports.0"],
    "nodes": ["", "metadata", "spec", "spec.taints.0", "status"],
    "namespaces": ["", "metadata", "spec", "status"],
    "leases": ["", "metadata", "spec"],
    "endpoints": ["", "metadata", "subsets.0", "subsets.0.addresses.0"],
    "events": ["", "metadata", "involvedObject"],
}


def request_body(verb: str, resource: str) -> tuple[dict[str, Any], list[tuple[str, type]]]:
    """A valid body of a request verb for the seed object, and its typed fields."""
    name = OBJECTS[resource]["metadata"]["name"]
    common = [("name", str), ("namespace", str)]
    return {
        "get": ({"name": name}, common),
        "list": ({}, [("namespace", str), ("labelSelector", str), ("fieldSelector", str), ("limit", int),
                      ("continue", str), ("resourceVersion", str)]),
        "watch": ({}, [("namespace", str), ("labelSelector", str), ("fieldSelector", str), ("resourceVersion", str),
                       ("timeoutSeconds", int), ("allowWatchBookmarks", bool), ("inbox", str)]),
        "delete": ({"name": name}, common + [("gracePeriodSeconds", int), ("propagationPolicy", str),
                                            ("resourceVersion", str), ("uid", str)]),
        "patch": ({"name": name, "patch": {}}, common + [("patch", dict), ("patch.metadata", dict),
                                                        ("patch.metadata.labels", dict), ("patch.metadata.labels.a", str),
                                                        ("patch.metadata.resourceVersion", str)]),
        "bind": ({"name": name, "nodeName": "node-1"}, common + [("nodeName", str), ("resourceVersion", str)]),
        "scale": ({"name": name, "replicas": 1}, common + [("replicas", int), ("resourceVersion", str)]),
    }[verb]


def compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def put(doc: Any, path: str, value: Any) -> Any:
    """A copy of `doc` with `value` at the dotted `path` (digits index lists), creating dicts on the way."""
    doc = copy.deepcopy(doc)
    if not path:
        return value
    parts = path.split(".")
    node = doc
    for part in parts[:-1]:
        key: Any = int(part) if isinstance(node, list) else part
        if isinstance(node, dict) and key not in node:
            node[key] = {}
        node = node[key]
    last: Any = int(parts[-1]) if isinstance(node, list) else parts[-1]
    node[last] = value
    return doc


# ---- strategies -------------------------------------------------------------------------------------

_scalar_dict = st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
WRONG: dict[type, st.SearchStrategy[Any]] = {
    str: st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                   st.lists(st.integers(), max_size=2), _scalar_dict),
    int: st.one_of(st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                   st.lists(st.integers(), max_size=2), _scalar_dict),
    bool: st.one_of(st.text(max_size=5), st.integers(), st.lists(st.integers(), max_size=2), _scalar_dict),
    dict: st.one_of(st.text(max_size=5), st.integers(), st.booleans(), st.lists(st.integers(), max_size=2)),
    list: st.one_of(st.text(max_size=5), st.integers(), st.booleans(), _scalar_dict),
}


def _not_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return True
    return False


def _truncations(draw: st.DrawFn) -> bytes:
    body = json.dumps(OBJECTS[draw(st.sampled_from(KINDS))]).encode()
    return body[:draw(st.integers(min_value=1, max_value=len(body) - 1))]


malformed_json = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.text(min_size=1, max_size=200).map(str.encode),
    st.composite(_truncations)(),
    st.sampled_from([b"{", b"}", b"[", b"{'name': 'x'}", b'{"name": "x",}', b'{"name" "x"}', b"nul", b"tru",
                     b'{"name": "\\x"}', b'"unterminated', b"\xff\xfe{}", b'{"a":1}{"b":2}', b"NaN", b"{} []"]),
).filter(_not_json)


def _refused(parse: Any, text: str) -> bool:
    try:
        parse(text)
    except (SelectorError, QuantityError):
        return True
    return False


bad_names = st.one_of(
    st.sampled_from(["*", ">", "a b", "a_b", "Web", "-a", "a-", "a..b", ".a", "a" * 254, "a/b", "ä", "a*", "pods.default.x",
                     "\n", "a\tb", "$KV", "web-1 ", " web-1"]),
    st.text(min_size=1, max_size=80),
)


class Identity(msgspec.Struct, frozen=True):
    """Who sends the bad input: a principal, the subjects it calls on, and what NATS lets it publish."""
    principal: str
    may: tuple[str, ...]  # the API subjects NATS lets it publish on (security_spec / docs/security.md),
    # written out here rather than read from services/lib/permissions.py: a permission too broad there
    # must fail this test, not widen what it expects
    node: str | None = None

    def subject(self, resource: str, verb: str) -> str:
        # Raw subjects on purpose: unknown resources and verbs are part of the input (Resource.subject
        # only names real ones); the forms are docs/security.md's.
        if self.node:
            return f"{API_PREFIX}.node.{self.node}.{resource}.{verb}"
        if self.principal == permissions.ADMIN:
            return f"{API_PREFIX}.{resource}.{verb}"
        return f"{API_PREFIX}.user.{self.principal}.{resource}.{verb}"

    def may_publish(self, subject: str) -> bool:
        return any(_subject_matches(p, subject) for p in self.may)


def _subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a trailing `>` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or token not in ("*", have[i]):
            return False
    return len(want) == len(have)


IDENTITIES = {
    "admin": Identity(permissions.ADMIN, (f"{API_PREFIX}.*.*",)),
    "reader": Identity(permissions.READER, tuple(f"{API_PREFIX}.user.reader.*.{v}" for v in ("get", "list", "watch"))),
    "scheduler": Identity("scheduler", (f"{API_PREFIX}.user.scheduler.>",)),
    "node-1": Identity(permissions.node_principal("node-1"), (f"{API_PREFIX}.node.node-1.>",), node="node-1"),
}
OTHERS = [name for name in IDENTITIES if name != "admin"]


class Target:
    """The API server under test, its seed objects, and a `send` that checks the invariants."""

    def __init__(self, nc: Client, proc: Any):
        self.nc = nc  # the state log's owner: reads the streams' heads
        self.proc = proc
        self.clients: dict[str, Client] = {}  # each identity's own connection (its credentials, its inbox)
        self.who = "admin"
        self.js = nc.jetstream()
        self.seeds: dict[str, dict[str, Any]] = {}
        self.sent = 0
        self.bus_errors: list[str] = []
        self.denied: dict[str, int] = {}  # publishes NATS must have refused, per subject
        self.object_growth = 0  # bytes the server adds to a pod (defaults, uid, managedFields, ...)

    async def connect(self, url: str) -> None:
        for who, identity in IDENTITIES.items():
            self.clients[who] = await connect(url, identity.principal, error_cb=self.on_bus_error)

    def use(self, who: str) -> None:
        """Send as this identity from now on."""
        self.who = who

    @property
    def identity(self) -> Identity:
        return IDENTITIES[self.who]

    @property
    def client(self) -> Client:
        return self.clients[self.who]

    @property
    def admin(self) -> bool:
        return self.identity.principal == permissions.ADMIN

    async def on_bus_error(self, exc: Exception) -> None:
        self.bus_errors.append(str(exc))

    async def heads(self) -> tuple[int, ...]:
        return tuple([(await self.js.stream_info(s)).state.last_seq for s in STREAMS])

    async def send(self, resource: str, verb: str, body: Any, *codes: int,
                   timeout: float = 10.0) -> dict[str, Any] | None:
        """The reply Status; None when NATS refused the identity's publish (then nothing reached the
        API server). Non-admin identities may also get 403, naming them."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        subject = self.identity.subject(resource, verb)
        before = await self.heads()
        shown = f"{self.identity.principal} {resource}.{verb} {data[:300]!r}"
        reply: dict[str, Any] | None = None
        if not self.identity.may_publish(subject):
            await self._refused_by_nats(subject, data, shown)
        else:
            msg = await self.client.request(subject, data, timeout=timeout)
            try:
                reply = json.loads(msg.data)
            except ValueError:
                raise AssertionError(f"{shown}: reply is not JSON: {msg.data[:200]!r}") from None
            shown = f"{shown} -> {msg.data[:300]!r}"
            assert isinstance(reply, dict) and reply.get("kind") == "Status", f"not refused: {shown}"
            assert isinstance(reply.get("code"), int) and isinstance(reply.get("reason"), str), f"incomplete Status: {shown}"
            assert CODES.get(reply["reason"]) == reply["code"], f"reason and code disagree: {shown}"
            assert reply.get("message"), f"Status without a message: {shown}"
            allowed = codes if self.admin else (*codes, 403)
            assert reply["code"] in allowed, f"expected {allowed}: {shown}"
            if reply["code"] == 403 and 403 not in codes:  # the table's rule, or the node restriction's
                names = [f'user "{self.identity.principal}"'] + ([f'node "{self.identity.node}"'] if self.identity.node else [])
                assert any(reply["message"].startswith(n) for n in names), f"403 not naming the principal: {shown}"
        self.sent += 1
        assert await self.heads() == before, f"the state log changed: {shown}"
        assert self.proc.alive, f"the API server died: {shown}"
        return reply

    async def _refused_by_nats(self, subject: str, data: bytes, shown: str) -> None:
        self.denied[subject] = self.denied.get(subject, 0) + 1
        await self.client.publish(subject, data, reply=self.client.new_inbox())
        # The server's -ERR for a denied PUB may come after the PONG of a flush: wait for it, one
        # error per denied publish (a late error of the previous one must not count for this one).
        expected = f'permissions violation for publish to "{subject.lower()}"'
        deadline = time.monotonic() + 10.0
        while sum(expected in e.lower() for e in self.bus_errors) < self.denied[subject]:
            assert time.monotonic() < deadline, f"NATS let {self.identity.principal} publish: {shown}"
            await asyncio.sleep(0.002)

    def judged(self, reply: dict[str, Any] | None) -> bool:
        """Whether the admin's expectations of the reply apply: it reached the API server and was not
        refused as Forbidden (admins never are)."""
        return reply is not None and (self.admin or reply["code"] != 403)


@pytest.fixture
async def target(apiserver, nc: Client, nats_url: str) -> Any:
    (proc,) = await apiserver(1)
    t = Target(nc, proc)
    for resource in KINDS:  # seeds are the admin's, whoever sends the bad input
        msg = await nc.request(f"flo.api.v1.{resource}.create", json.dumps(OBJECTS[resource]).encode(), timeout=5)
        created = json.loads(msg.data)
        assert created.get("kind") != "Status", created
        t.seeds[resource] = created
    stored = put(t.seeds["pods"], "metadata.resourceVersion", None)  # the state log's copy has none
    del stored["metadata"]["resourceVersion"]
    t.object_growth = len(compact(stored)) - len(compact(OBJECTS["pods"]))
    kv = await nc.jetstream().key_value("flotilla")
    keys, heads = await live_keys(kv), await t.heads()
    try:
        await t.connect(nats_url)
        yield t
    finally:
        for client in t.clients.values():
            await client.close()
    assert proc.alive, "the API server died"
    assert await live_keys(kv) == keys and await t.heads() == heads, "the state log changed"
    assert "internal error" not in proc.log_text(), "the API server logged an internal error"


def per_identity(examples: int = 150, **strategies: st.SearchStrategy[Any]) -> Any:
    """A property as two tests: as the admin with `examples` examples, and (its `_as_others` twin, put
    beside it in this module) as an identity drawn from OTHERS, up to OTHER_EXAMPLES examples per
    identity: one API server for all of them, so the extra identities cost examples, not setups."""
    def make(body: Any) -> Any:
        base = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        admin = settings(max_examples=examples, **base)(given(**strategies)(body))

        params = list(inspect.signature(body).parameters.values())
        signature = inspect.Signature(
            [params[0], inspect.Parameter("identity", inspect.Parameter.POSITIONAL_OR_KEYWORD), *params[1:]])

        async def as_others(*args: Any, **kwargs: Any) -> None:
            arguments = signature.bind(*args, **kwargs).arguments
            arguments["target"].use(arguments.pop("identity"))
            await body(**arguments)

        as_others.__signature__ = signature  # type: ignore[attr-defined]  (what hypothesis and pytest read)
        as_others.__name__ = as_others.__qualname__ = f"{body.__name__}_as_others"
        others = given(identity=st.sampled_from(OTHERS), **strategies)(as_others)
        n = min(examples, OTHER_EXAMPLES) * len(OTHERS)
        globals()[as_others.__name__] = settings(max_examples=n, **base)(others)
        return admin
    return make


# ---- properties -------------------------------------------------------------------------------------

@per_identity(resource=st.sampled_from(KINDS), verb=st.sampled_from(ALL_VERBS), data=malformed_json)
async def test_malformed_json_is_a_bad_request(target: Target, resource: str, verb: str, data: bytes) -> None:
    await target.send(resource, verb, data, 400)


async def test_deeply_nested_json_is_a_bad_request(target: Target) -> None:
    for who in IDENTITIES:
        target.use(who)
        for depth in (50, 500, 900, 2000, 100_000):
            for nested in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
                await target.send("pods", "patch", b'{"name":"web-1","patch":{"metadata":{"labels":' + nested + b"}}}",
                                  400)
                await target.send("pods", "patch", b'{"name":"web-1","patch":{"spec":' + nested + b"}}", 400)
                await target.send("pods", "create", b'{"kind":"Pod","metadata":{"name":"deep","labels":' + nested + b"}}",
                                  400)


@per_identity(data=st.data())
async def test_wrong_types_are_a_bad_request(target: Target, data: st.DataObject) -> None:
    resource = data.draw(st.sampled_from(KINDS), "resource")
    verb = data.draw(st.sampled_from(RESOURCES[resource].verbs), "verb")
    if verb in ("create", "update", "status"):
        body, fields = (target.seeds[resource] if verb != "create" else OBJECTS[resource]), OBJECT_FIELDS[resource]
    else:
        body, fields = request_body(verb, resource)
    path, type_ = data.draw(st.sampled_from(fields), "field")
    value = data.draw(WRONG[type_], "value")
    reply = await target.send(resource, verb, put(body, path, value), 400)
    if target.judged(reply) and (verb != "status" or resource in STATUS_KINDS):
        assert reply["reason"] == "BadRequest"


@per_identity(data=st.data())
async def test_unknown_fields_are_a_bad_request_naming_the_field(target: Target, data: st.DataObject) -> None:
    resource = data.draw(st.sampled_from(KINDS), "resource")
    verb = data.draw(st.sampled_from(RESOURCES[resource].verbs), "verb")
    if verb in ("create", "update", "status"):
        body, where = (target.seeds[resource] if verb != "create" else OBJECTS[resource]), OBJECT_STRUCTS[resource]
    else:
        body, where = request_body(verb, resource)[0], [""] + (["patch", "patch.metadata"] if verb == "patch" else [])
    at = data.draw(st.sampled_from(where), "at")
    name = data.draw(st.from_regex(r"\Azz[A-Za-z0-9]{0,12}\Z"), "name")
    reply = await target.send(resource, verb, put(body, f"{at}.{name}" if at else name, 1), 400)
    # no status subresource: refused before decoding
    if target.judged(reply) and (verb != "status" or resource in STATUS_KINDS):
        assert name in reply["message"] and reply["details"]["causes"][0]["field"].endswith(name)


@per_identity(examples=15, resource=st.sampled_from(KINDS), data=st.data(),
              size=st.integers(min_value=MAX_REQUEST + 1, max_value=6 * 1024 * 1024))
async def test_huge_requests_are_too_large(target: Target, resource: str, data: st.DataObject, size: int) -> None:
    verbs = [v for v in RESOURCES[resource].verbs if v != "status" or resource in STATUS_KINDS]
    verb = data.draw(st.sampled_from(verbs), "verb")
    body = b'{"name":"' + b"x" * (size - 11) + b'"}'
    assert len(body) == size
    reply = await target.send(resource, verb, body, 413)
    assert reply is None or reply["reason"] == "TooLarge"  # size comes before authorization: never a 403


@per_identity(examples=10, short=st.integers(min_value=1, max_value=10**6), where=st.sampled_from(["env", "annotations"]))
async def test_objects_over_the_object_limit_are_refused(target: Target, short: int, where: str) -> None:
    """A request under the request limit whose object is not: what the server adds (defaults, uid,
    managedFields) takes it over the same 1.5 MB, and it must still be refused, not stored."""
    assert target.object_growth > 100, f"the server adds only {target.object_growth} bytes to a pod"
    pod = copy.deepcopy(OBJECTS["pods"])
    pod["metadata"]["name"] = "big"
    if where == "env":
        short = 1 + short % (target.object_growth - 50)  # bytes under the request limit, fewer than the server adds
        pod["spec"]["containers"][0]["env"] = [{"name": "BIG", "value": ""}]
        pod["spec"]["containers"][0]["env"][0]["value"] = "x" * (MAX_REQUEST - short - len(compact(pod)))
        body = compact(pod)  # the stored form is compact too: the growth is measured on it
        assert len(body) == MAX_REQUEST - short
        await target.send("pods", "create", body, 413)
    else:  # annotations have their own, smaller limit (256 KiB): Invalid
        pod["metadata"]["annotations"] = {"big": "x" * (256 * 1024 + short % (MAX_REQUEST - 300 * 1024))}
        await target.send("pods", "create", pod, 422)


@per_identity(resource=st.sampled_from(KINDS), name=bad_names, data=st.data())
async def test_invalid_names_are_refused_and_never_match_another_object(target: Target, resource: str, name: str,
                                                                       data: st.DataObject) -> None:
    invalid = dns1123_label_error if resource == "namespaces" else dns1123_subdomain_error
    assume(invalid(name))  # a drawn text may be a valid name: discarded, not counted as a pass
    # list and watch take no name: the selectors' own test covers them.
    verb = data.draw(st.sampled_from([v for v in RESOURCES[resource].verbs if v not in ("list", "watch")]), "verb")
    if verb == "create":
        await target.send(resource, verb, put(OBJECTS[resource], "metadata.name", name), 422)
    elif verb in ("update", "status"):
        code = 404 if verb == "update" or resource in STATUS_KINDS else 400
        await target.send(resource, verb, put(target.seeds[resource], "metadata.name", name), code)
    else:
        await target.send(resource, verb, put(request_body(verb, resource)[0], "name", name), 404)
        if resource in NAMESPACED:  # a bad namespace with a good name is no way around it either
            body = put(request_body(verb, resource)[0], "namespace", name)
            await target.send(resource, verb, body, 404)


@per_identity(resource=st.sampled_from(KINDS), verb=st.sampled_from(["list", "watch"]), data=st.data())
async def test_invalid_selectors_are_a_bad_request(target: Target, resource: str, verb: str, data: st.DataObject) -> None:
    fields = set(RESOURCES[resource].field_getters)
    which = data.draw(st.sampled_from(["labelSelector", "fieldSelector"]), "which")
    if which == "labelSelector":
        text = data.draw(st.text(min_size=1, max_size=40).filter(lambda t: _refused(parse_label_selector, t)), "selector")
    else:
        text = data.draw(st.text(min_size=1, max_size=40).filter(
            lambda t: _refused(lambda s: parse_field_selector(s, fields), t)), "selector")
    reply = await target.send(resource, verb, {which: text}, 400)
    if target.judged(reply):
        assert reply["details"]["causes"][0]["field"] == which


async def test_bad_paging_and_watch_versions_are_a_bad_request(target: Target) -> None:
    for who in IDENTITIES:
        target.use(who)
        for body in ({"limit": -1}, {"continue": "garbage"}, {"continue": "eyJydiI6IDF9"}, {"limit": 5, "continue": "!!!"}):
            await target.send("pods", "list", body, 400)
        for version in ("abc", "1.5", " ", "0x10"):
            await target.send("pods", "watch", {"resourceVersion": version}, 400)


# (resource, path in the object, allowed values) of every enum the API checks
ENUMS = [
    ("pods", "spec.restartPolicy", ("Always", "OnFailure", "Never")),
    ("pods", "spec.dnsPolicy", ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")),
    ("pods", "spec.containers.0.imagePullPolicy", ("Always", "IfNotPresent", "Never")),
    ("pods", "spec.containers.0.ports.0.protocol", ("TCP", "UDP", "SCTP")),
    ("pods", "spec.containers.0.terminationMessagePolicy", ("File", "FallbackToLogsOnError")),
    ("pods", "spec.tolerations.0.operator", ("Exists", "Equal")),
    ("pods", "spec.tolerations.0.effect", ("NoSchedule", "PreferNoSchedule", "NoExecute")),
    ("pods", "status.phase", ("Pending", "Running", "Succeeded", "Failed", "Unknown")),
    ("replicasets", "spec.template.spec.restartPolicy", ("Always",)),
    ("deployments", "spec.strategy.type", ("RollingUpdate", "Recreate")),
    ("services", "spec.type", ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")),
    ("services", "spec.sessionAffinity", ("None", "ClientIP")),
    ("services", "spec.ports.0.protocol", ("TCP", "UDP", "SCTP")),
    ("nodes", "spec.taints.0.effect", ("NoSchedule", "PreferNoSchedule", "NoExecute")),
    ("namespaces", "status.phase", ("Active", "Terminating")),
    ("endpoints", "subsets.0.ports.0.protocol", ("TCP", "UDP", "SCTP")),
    ("events", "type", ("Normal", "Warning")),
]
QUANTITIES = [
    ("pods", "spec.containers.0.resources.requests.cpu"), ("pods", "spec.containers.0.resources.limits.memory"),
    ("replicasets", "spec.template.spec.containers.0.resources.requests.memory"),
    ("deployments", "spec.template.spec.containers.0.resources.limits.cpu"),
    ("nodes", "status.capacity.memory"), ("nodes", "status.allocatable.cpu"),
]
NEGATIVES = [
    ("replicasets", "spec.replicas"), ("deployments", "spec.replicas"), ("deployments", "spec.revisionHistoryLimit"),
    ("pods", "spec.terminationGracePeriodSeconds"), ("pods", "spec.containers.0.ports.0.containerPort"),
    ("services", "spec.ports.0.port"), ("leases", "spec.leaseDurationSeconds"), ("replicasets", "spec.minReadySeconds"),
]


def _invalid_value_case(draw: st.DrawFn) -> tuple[str, str, Any]:
    kind = draw(st.sampled_from(["enum", "quantity", "negative"]))
    if kind == "enum":
        resource, path, allowed = draw(st.sampled_from(ENUMS))
        value = draw(st.text(min_size=1, max_size=20).filter(lambda v: v not in allowed))
    elif kind == "quantity":
        resource, path = draw(st.sampled_from(QUANTITIES))
        value = draw(st.one_of(st.text(min_size=1, max_size=20), st.sampled_from(["1Q", "1.2.3", "--1", " 1", "1e", "-1"]))
                     .filter(lambda v: _refused(parse_quantity, v) or parse_quantity(v) < 0))
    else:
        resource, path = draw(st.sampled_from(NEGATIVES))
        value = draw(st.integers(max_value=-1))
    return resource, path, value


@per_identity(case=st.composite(_invalid_value_case)(), verb=st.sampled_from(["create", "update", "status"]))
async def test_invalid_enums_quantities_and_negatives_are_invalid(target: Target, case: tuple[str, str, Any],
                                                                  verb: str) -> None:
    resource, path, value = case
    # create resets status and update ignores it: only the status verb takes a status field
    verb = "status" if path.startswith("status.") else "update" if verb == "status" else verb
    base = OBJECTS[resource] if verb == "create" else target.seeds[resource]
    if verb == "create":
        base = put(base, "metadata.name", "fresh")  # not a name that exists, so only the value is wrong
    reply = await target.send(resource, verb, put(base, path, value), 422)
    if target.judged(reply):
        assert reply["reason"] == "Invalid" and reply["details"]["causes"]


INVALID_REQUESTS = [
    ("pods", "delete", {"name": "web-1", "gracePeriodSeconds": -1}, 422),
    ("pods", "delete", {"name": "web-1", "propagationPolicy": "Sideways"}, 400),
    ("replicasets", "scale", {"name": "rs", "replicas": -3}, 422),
    ("deployments", "scale", {"name": "dep", "replicas": -1}, 422),
    ("pods", "bind", {"name": "web-1", "nodeName": ""}, 422),
    ("replicasets", "patch", {"name": "rs", "patch": {"spec": {"replicas": -1}}}, 422),
    ("pods", "patch", {"name": "web-1", "patch": {"metadata": {"labels": {"bad key!": "x"}}}}, 422),
    ("pods", "patch", {"name": "web-1", "patch": []}, 400),
    ("pods", "patch", {"name": "web-1", "patch": {"metadata": {"resourceVersion": 5}}}, 400),
    ("pods", "create", {"kind": "Pod", "metadata": {"name": "x", "namespace": "Not_A_Namespace"},
                        "spec": {"containers": CONTAINERS}}, 422),
    ("pods", "create", {"kind": "Pod", "metadata": {"name": "x", "namespace": "nowhere"}, "spec": {"containers": CONTAINERS}}, 404),
    ("pods", "create", {"kind": "Pod", "metadata": {"generateName": "-Bad"}, "spec": {"containers": CONTAINERS}}, 422),
    ("pods", "create", {"kind": "Node", "metadata": {"name": "x"}}, 400),
    ("pods", "create", {"kind": "Pod", "apiVersion": "apps/v1", "metadata": {"name": "x"}, "spec": {"containers": CONTAINERS}}, 422),
    ("pods", "create", {"kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": []}}, 422),
    ("gadgets", "get", {"name": "x"}, 404),
    ("pods", "explode", {"name": "x"}, 400),
]


async def test_invalid_requests_of_every_kind(target: Target) -> None:
    for who in IDENTITIES:
        target.use(who)
        for resource, verb, body, code in INVALID_REQUESTS:
            await target.send(resource, verb, body, code)


async def test_integers_out_of_range_are_refused(target: Target) -> None:
    """JSON numbers are unbounded; Kubernetes' are int32/int64: beyond that, a Status, never a 500."""
    for who in IDENTITIES:
        target.use(who)
        for resource, verb, field in [
            ("pods", "delete", "gracePeriodSeconds"), ("replicasets", "scale", "replicas"), ("pods", "list", "limit"),
            ("pods", "watch", "timeoutSeconds"), ("pods", "create", "spec.terminationGracePeriodSeconds"),
            ("pods", "create", "spec.activeDeadlineSeconds"), ("replicasets", "create", "spec.replicas"),
            ("deployments", "create", "spec.replicas"), ("services", "create", "spec.ports.0.port"),
        ]:
            for huge in (2**63, 10**30, -(2**63) - 1):
                body = (request_body(verb, resource)[0] if verb != "create"
                        else put(OBJECTS[resource], "metadata.name", "fresh"))
                await target.send(resource, verb, put(body, field, huge), 400, 422)
        await target.send("replicasets", "scale", {"name": "rs", "replicas": 2**31}, 400, 422)
        await target.send("replicasets", "create", put(put(OBJECTS["replicasets"], "metadata.name", "fresh"),
                                                       "spec.replicas", 2**31), 422)


@per_identity(resource=st.sampled_from(KINDS), data=st.data())
async def test_stale_versions_and_existing_names_conflict(target: Target, resource: str, data: st.DataObject) -> None:
    seed = target.seeds[resource]
    current = int(seed["metadata"]["resourceVersion"])
    stale = str(data.draw(st.integers(min_value=1, max_value=10**6).filter(lambda v: v != current), "stale"))
    name = seed["metadata"]["name"]
    verb = data.draw(st.sampled_from([v for v in RESOURCES[resource].verbs if v not in ("get", "list", "watch")]), "verb")
    if verb == "create":
        reply = await target.send(resource, verb, OBJECTS[resource], 409)
        if target.judged(reply):
            assert reply["reason"] == "AlreadyExists"
        return
    body: Any = {
        "update": put(seed, "metadata.resourceVersion", stale),
        "status": put(seed, "metadata.resourceVersion", stale),
        "patch": {"name": name, "patch": {"metadata": {"resourceVersion": stale, "labels": {"x": "y"}}}},
        "delete": {"name": name, "resourceVersion": stale},
        "bind": {"name": name, "nodeName": "node-2", "resourceVersion": stale},
        "scale": {"name": name, "replicas": 5, "resourceVersion": stale},
    }[verb]
    if verb == "status" and resource not in STATUS_KINDS:
        await target.send(resource, verb, body, 400)
        return
    reply = await target.send(resource, verb, body, 409)
    if target.judged(reply):
        assert reply["reason"] == "Conflict"


# ---- forbidden, though valid ------------------------------------------------------------------------

def _new_pod(name: str) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": name}, "spec": {"containers": CONTAINERS, "nodeName": "node-1"}}


# (identity, resource, verb, a valid body that identity may not send, and the admin may)
FORBIDDEN_WRITES = [
    ("reader", "pods", "create", _new_pod("by-reader")),
    ("scheduler", "nodes", "delete", {"name": "node-2"}),
    ("scheduler", "pods", "create", _new_pod("by-scheduler")),
    ("node-1", "pods", "create", _new_pod("by-node-1")),
    ("node-1", "nodes", "delete", {"name": "node-1"}),
]


async def test_a_valid_write_not_allowed_is_forbidden_naming_the_principal(apiserver, nc: Client, nats_url: str) -> None:
    (proc,) = await apiserver(1)
    for kind, body in (("nodes", OBJECTS["nodes"]), ("nodes", put(OBJECTS["nodes"], "metadata.name", "node-2"))):
        created = json.loads((await nc.request(f"flo.api.v1.{kind}.create", json.dumps(body).encode(), timeout=5)).data)
        assert created.get("kind") != "Status", created
    t = Target(nc, proc)
    await t.connect(nats_url)
    try:
        for who, resource, verb, body in FORBIDDEN_WRITES:
            t.use(who)
            subject = t.identity.subject(resource, verb)
            data = json.dumps(body).encode()
            shown = f"{who} {resource}.{verb}"
            before = await t.heads()
            if t.identity.may_publish(subject):
                reply = json.loads((await t.client.request(subject, data, timeout=10)).data)
            else:  # NATS refuses it on the identity's own connection; the API server refuses it all the same
                await t._refused_by_nats(subject, data, shown)
                reply = json.loads((await nc.request(subject, data, timeout=10)).data)  # as an open NATS would let it
            assert reply.get("kind") == "Status" and reply["code"] == 403 and reply["reason"] == "Forbidden", (shown, reply)
            assert f'user "{t.identity.principal}" cannot {verb} {resource}' in reply["message"], (shown, reply)
            assert await t.heads() == before, f"a forbidden write changed the state log: {shown}"
            admin = json.loads((await nc.request(IDENTITIES["admin"].subject(resource, verb), data, timeout=10)).data)
            assert admin.get("kind") != "Status" or admin.get("status") == "Success", (shown, admin)
            assert await t.heads() != before, f"the admin's write left no trace in the state log: {shown}"
    finally:
        for client in t.clients.values():
            await client.close()
    assert "internal error" not in proc.log_text()
