"""schemas/: quantities, label and field selectors, names, state-log keys, and the wire shapes."""
from __future__ import annotations

import re
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import RESOURCES, ApiError, Pod, Status, decode_key, lookup
from schemas.names import dns1123_label_error, dns1123_subdomain_error, label_key_error, label_value_error
from schemas.quantity import QuantityError, cpu_millis, format_bytes, parse_quantity, to_int
from schemas.selectors import (Requirement, Selector, SelectorError, parse_field_selector, parse_label_selector,
                               selector_from_struct)
from schemas.base import LabelSelector, LabelSelectorRequirement

SETTINGS = settings(max_examples=150, deadline=None)

# ---- strategies ---------------------------------------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
dns_label = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")
dns_subdomain = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,12}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,12}[a-z0-9])?){0,5}\Z")
label_name = st.from_regex(r"\A[A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?\Z")
label_key = st.one_of(label_name, st.builds(lambda p, n: f"{p}/{n}", dns_subdomain, label_name))
label_value = st.one_of(st.just(""), label_name)
labels = st.dictionaries(label_key, label_value, max_size=5)


@st.composite
def requirements(draw: st.DrawFn) -> Requirement:
    key = draw(label_key)
    op = draw(st.sampled_from(["=", "!=", "in", "notin", "exists", "!"]))
    if op in ("=", "!="):
        return Requirement(key, op, (draw(label_value),))
    if op in ("in", "notin"):
        values = draw(st.lists(label_value, min_size=1, max_size=4))
        return Requirement(key, op, tuple(sorted(set(values))))
    return Requirement(key, op)


# ---- quantities -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("500m", Decimal("0.5")), ("1", Decimal(1)), ("1.5", Decimal("1.5")), (".5", Decimal("0.5")),
    ("128Mi", Decimal(128 * 2**20)), ("1Ki", Decimal(1024)), ("2Gi", Decimal(2 * 2**30)),
    ("1k", Decimal(1000)), ("1G", Decimal(10**9)), ("1E", Decimal(10**18)), ("1e3", Decimal(1000)),
    ("1E-3", Decimal("0.001")), ("+2", Decimal(2)), ("-1", Decimal(-1)), ("100n", Decimal("1e-7")),
    ("7u", Decimal("7e-6")), ("0", Decimal(0)),
])
def test_quantities_parse_exactly(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("bad", ["", " 1", "1 ", "abc", "1Q", "1.2.3", "--1", "1e", "Mi", "1 Mi", "1mi", "1KI",
                                 "0x10", "1e99", "1" * 65, "∞", "1,5"])
def test_bad_quantities_are_refused_with_quantity_error(bad: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(bad)


@pytest.mark.parametrize("bad", [True, None, float("nan"), float("inf"), [1], {"a": 1}])
def test_non_quantity_values_are_refused(bad: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(bad)  # type: ignore[arg-type]


def test_cpu_millis_and_integers_round_up_like_kubernetes() -> None:
    assert cpu_millis("1.5") == 1500
    assert cpu_millis("100m") == 100
    assert cpu_millis("0.0001") == 1  # rounded up, never to zero
    assert cpu_millis(2) == 2000
    assert to_int("1Ki") == 1024
    assert to_int("1.5") == 2
    assert to_int("128Mi") == 134217728
    assert format_bytes(3 * 2**30) == "3Gi"
    assert format_bytes(1536) == "1536" and format_bytes(0) == "0"


@SETTINGS
@given(n=st.integers(min_value=0, max_value=10**9),
       suffix=st.sampled_from(["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E"]))
def test_every_suffix_scales_the_number(n: int, suffix: str) -> None:
    factor = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
              "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
              "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}[suffix]
    assert parse_quantity(f"{n}{suffix}") == n * Decimal(factor)


@SETTINGS
@given(n=st.integers(min_value=0, max_value=10**6), exp=st.integers(min_value=-9, max_value=18))
def test_exponent_form(n: int, exp: int) -> None:
    assert parse_quantity(f"{n}e{exp}") == Decimal(n) * Decimal(10) ** exp
    assert parse_quantity(f"{n}E{exp:+d}") == Decimal(n) * Decimal(10) ** exp


@SETTINGS
@given(st.integers(min_value=0, max_value=2**62))
def test_bytes_round_trip_through_format_bytes(n: int) -> None:
    text = format_bytes(n)
    assert to_int(text) == n
    assert re.fullmatch(r"[0-9]+(Ki|Mi|Gi)?", text)


@SETTINGS
@given(st.integers(min_value=0, max_value=10**9))
def test_millicores_round_trip(n: int) -> None:
    assert cpu_millis(f"{n}m") == n
    assert cpu_millis(str(Decimal(n) / 1000)) == n


@SETTINGS
@given(st.text(max_size=80))
def test_any_text_is_a_quantity_or_a_quantity_error(text: str) -> None:
    try:
        value = parse_quantity(text)
    except QuantityError:
        return
    assert isinstance(value, Decimal) and value.is_finite()
    assert text == text.strip() and text  # only well-formed quantities parse


# ---- names ----------------------------------------------------------------------------------------

def test_names() -> None:
    assert dns1123_label_error("web-1") is None
    assert dns1123_label_error("Web") and dns1123_label_error("-a") and dns1123_label_error("a.b")
    assert dns1123_label_error("a" * 64) and dns1123_label_error("")
    assert dns1123_subdomain_error("web.v1.example") is None
    assert dns1123_subdomain_error("a_b") and dns1123_subdomain_error("a..b") and dns1123_subdomain_error("a" * 254)
    assert label_key_error("example.com/app") is None and label_key_error("App_1.x") is None
    assert label_key_error("/app") and label_key_error("Example.com/app") and label_key_error("a/b/c")
    assert label_key_error("-app") and label_key_error("") and label_key_error("a" * 64)
    assert label_value_error("") is None and label_value_error("v1.2_x") is None
    assert label_value_error("-v") and label_value_error("a b") and label_value_error("a" * 64)


# ---- label selectors --------------------------------------------------------------------------------

def test_equality_and_set_based_selectors_parse_and_match() -> None:
    sel = parse_label_selector("app=web, tier in (a,b),!canary,env,track notin (beta),ver!=2")
    assert [(r.key, r.op, r.values) for r in sel.requirements] == [
        ("app", "=", ("web",)), ("tier", "in", ("a", "b")), ("canary", "!", ()), ("env", "exists", ()),
        ("track", "notin", ("beta",)), ("ver", "!=", ("2",))]
    ok = {"app": "web", "tier": "b", "env": "prod", "ver": "1"}
    assert sel.matches(ok)
    assert sel.matches({**ok, "track": "stable"})
    assert not sel.matches({**ok, "track": "beta"})
    assert not sel.matches({**ok, "canary": "yes"})
    assert not sel.matches({**ok, "tier": "c"})
    assert not sel.matches({k: v for k, v in ok.items() if k != "env"})
    assert not sel.matches({**ok, "ver": "2"})
    assert parse_label_selector("app==web").requirements == (Requirement("app", "=", ("web",)),)
    assert parse_label_selector("example.com/app=x").matches({"example.com/app": "x"})
    # != and notin match objects without the label, as in Kubernetes
    assert parse_label_selector("a!=x").matches({}) and parse_label_selector("a notin (x)").matches({})
    assert not parse_label_selector("a in (x)").matches({})
    assert parse_label_selector("a=").matches({"a": ""}) and not parse_label_selector("a=").matches({})


@pytest.mark.parametrize("text", [None, "", "   "])
def test_the_empty_selector_matches_everything(text: str | None) -> None:
    sel = parse_label_selector(text)
    assert sel.empty and sel.matches({}) and sel.matches({"a": "b"})


@pytest.mark.parametrize("bad", [
    "app in a", "app in (a", "app in (a,b", "=a", "app=web,", ",app", "app=a b", "!app=x", "a=b=c",
    "a!b", "a in (b)(c)", "app notin", "-app=x", "app=-x-", "app=(x)", "a b", "a,,b", "!", "!(", "in (x)",
    "app in (a b)", "Example.com/app=x", "app=" + "v" * 64, "a" * 64 + "=x", "app)", "app (x)", "a=b;c=d",
    "tier in (a,-b)", "x" * 5000,
])
def test_bad_label_selectors_are_errors_that_say_why(bad: str) -> None:
    with pytest.raises(SelectorError) as err:
        parse_label_selector(bad)
    assert str(err.value)


@SETTINGS
@given(st.lists(requirements(), max_size=5))
def test_label_selector_text_round_trips(reqs: list[Requirement]) -> None:
    sel = Selector(tuple(reqs))
    assert parse_label_selector(str(sel)) == sel


@SETTINGS
@given(st.lists(requirements(), min_size=1, max_size=5), labels)
def test_a_selector_matches_when_every_requirement_does(reqs: list[Requirement], have: dict[str, str]) -> None:
    sel = parse_label_selector(str(Selector(tuple(reqs))))
    expected = True
    for r in reqs:
        present = r.key in have
        ok = {"=": present and have.get(r.key) in r.values, "in": present and have.get(r.key) in r.values,
              "!=": not present or have[r.key] not in r.values, "notin": not present or have[r.key] not in r.values,
              "exists": present, "!": not present}[r.op]
        expected = expected and ok
    assert sel.matches(have) == expected


@SETTINGS
@given(st.text(max_size=60))
def test_any_text_is_a_selector_or_a_selector_error(text: str) -> None:
    try:
        sel = parse_label_selector(text)
    except SelectorError:
        return
    for r in sel.requirements:  # whatever parsed is made of valid keys and values
        assert label_key_error(r.key) is None
        assert all(label_value_error(v) is None for v in r.values)
    assert parse_label_selector(str(sel)) == sel


def test_selectors_from_match_labels_and_match_expressions() -> None:
    sel = selector_from_struct(LabelSelector(match_labels={"app": "web"}, match_expressions=[
        LabelSelectorRequirement(key="tier", operator="In", values=["a", "b"]),
        LabelSelectorRequirement(key="canary", operator="DoesNotExist")]))
    assert sel.matches({"app": "web", "tier": "a"})
    assert not sel.matches({"app": "web", "tier": "a", "canary": "1"})
    assert not sel.matches({"app": "db", "tier": "a"})
    assert selector_from_struct(None).empty
    for bad, field in [
        (LabelSelector(match_expressions=[LabelSelectorRequirement(key="a", operator="In")]), "values"),
        (LabelSelector(match_expressions=[LabelSelectorRequirement(key="a", operator="Exists", values=["x"])]), "values"),
        (LabelSelector(match_expressions=[LabelSelectorRequirement(key="a", operator="Near", values=["x"])]), "operator"),
        (LabelSelector(match_labels={"a b": "x"}), "matchLabels"),
        (LabelSelector(match_labels={"a": "x y"}), "matchLabels"),
    ]:
        with pytest.raises(SelectorError, match=field):
            selector_from_struct(bad, "spec.selector")


# ---- field selectors --------------------------------------------------------------------------------

POD_FIELDS = RESOURCES["pods"].field_getters


def _pod(name: str, node: str | None = None, phase: str | None = None) -> Pod:
    return msgspec.convert({"metadata": {"name": name, "namespace": "default"},
                            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
                            "status": {"phase": phase}}, Pod)


def test_field_selectors_parse_and_match() -> None:
    sel = parse_field_selector("spec.nodeName=n1, status.phase!=Running,metadata.name==web", set(POD_FIELDS))
    assert sel.value_of("spec.nodeName") == "n1" and sel.value_of("status.phase") is None
    assert sel.matches(_pod("web", "n1", "Pending"), POD_FIELDS)
    assert not sel.matches(_pod("web", "n1", "Running"), POD_FIELDS)
    assert not sel.matches(_pod("web", "n2", "Pending"), POD_FIELDS)
    assert not sel.matches(_pod("db", "n1"), POD_FIELDS)
    unscheduled = parse_field_selector("spec.nodeName=", set(POD_FIELDS))
    assert unscheduled.matches(_pod("a"), POD_FIELDS) and not unscheduled.matches(_pod("a", "n1"), POD_FIELDS)
    assert parse_field_selector("", set(POD_FIELDS)).requirements == ()


@pytest.mark.parametrize("bad,why", [
    ("spec.hostname=x", "not supported"), ("nodeName", "expected FIELD=VALUE"), ("spec.nodeName=b,,status.phase=d", "expected"),
    ("spec.nodeName~x", "expected"), ("x" * 5000, "longer"), ("=x", "expected"), ("metadata.labels=x", "not supported"),
])
def test_bad_field_selectors_name_the_problem(bad: str, why: str) -> None:
    with pytest.raises(SelectorError, match=why):
        parse_field_selector(bad, set(POD_FIELDS))


# ---- state-log keys and subjects ------------------------------------------------------------------

_KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")  # what JetStream KV accepts as a key


@SETTINGS
@given(st.sampled_from(sorted(RESOURCES)), dns_label, dns_subdomain)
def test_keys_reverse_for_every_valid_name_including_dots(resource: str, namespace: str, name: str) -> None:
    r = RESOURCES[resource]
    key = r.key(namespace, name)
    assert _KV_KEY.match(key) and key.count(".") == 2  # the name is one subject token, dots or not
    assert decode_key(key) == (r.name, namespace if r.namespaced else None, name)
    assert key.startswith(r.key_prefix(namespace))


@SETTINGS
@given(dns_subdomain, dns_subdomain)
def test_distinct_names_have_distinct_keys(a: str, b: str) -> None:
    pods = RESOURCES["pods"]
    assert (pods.key("default", a) == pods.key("default", b)) == (a == b)


def test_keys_and_subjects_look_as_documented() -> None:
    pods, nodes = RESOURCES["pods"], RESOURCES["nodes"]
    assert pods.key("default", "web.v1") == "pods.default.web_v1"
    assert nodes.key(None, "node-1.example") == "nodes._.node-1_example"
    assert decode_key("nodes._.node-1_example") == ("nodes", None, "node-1.example")
    assert pods.subject("create") == "flo.api.v1.pods.create"
    assert pods.subject("get", node="n1") == "flo.api.v1.node.n1.pods.get"
    assert lookup("po") is pods and lookup("Pod") is pods and lookup("pod") is pods and lookup("endpoint").kind == "Endpoints"
    with pytest.raises(KeyError):
        lookup("gadgets")


# ---- wire shapes ----------------------------------------------------------------------------------

def test_objects_are_camel_case_json_with_kind_and_api_version() -> None:
    pod = _pod("web", "n1")
    doc = msgspec.json.decode(msgspec.json.encode(pod))
    assert doc["kind"] == "Pod" and doc["apiVersion"] == "v1"
    assert doc["spec"]["nodeName"] == "n1"
    assert msgspec.json.decode(msgspec.json.encode(pod), type=Pod) == pod


def test_unknown_fields_and_wrong_kinds_are_rejected_naming_the_field() -> None:
    with pytest.raises(msgspec.ValidationError, match="bogus"):
        msgspec.json.decode(b'{"kind":"Pod","spec":{"containers":[],"bogus":1}}', type=Pod)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"kind":"Node"}', type=Pod)


def test_status_is_one_shape_and_starts_with_its_kind() -> None:
    data = msgspec.json.encode(ApiError("NotFound", 'pods "x" not found').to_status())
    assert data.startswith(b'{"kind":"Status"')  # what clients test to tell errors from objects
    # exactly DESIGN §3's example
    assert msgspec.json.decode(data) == {"kind": "Status", "code": 404, "reason": "NotFound",
                                         "message": 'pods "x" not found'}
    internal = msgspec.json.decode(msgspec.json.encode(ApiError("InternalError", "boom").to_status()))
    assert (internal["code"], internal["reason"]) == (500, "InternalError")  # never omitted as a default
    err = ApiError("Invalid", "spec.replicas: must be >= 0", field="spec.replicas")
    back = ApiError.from_status(msgspec.json.decode(msgspec.json.encode(err.to_status()), type=Status))
    assert (back.code, back.reason, back.field) == (422, "Invalid", "spec.replicas")
    for reason, code in [("AlreadyExists", 409), ("Conflict", 409), ("Forbidden", 403), ("BadRequest", 400),
                         ("TooLarge", 413), ("Gone", 410), ("Timeout", 504)]:
        assert ApiError(reason, "x").code == code
