"""Common building blocks for every API type: the Struct base, metadata, time stamps."""
from __future__ import annotations

import datetime as _dt
import time as _time

import msgspec


class Model(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, rename="camel", kw_only=True, gc=False):
    """Every API struct: camelCase on the wire, unknown fields rejected, defaults omitted.

    gc=False: API objects never form reference cycles, and keeping tens of thousands of cached
    objects out of the cyclic GC removes long collection pauses from the request path."""


_last_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """RFC 3339 UTC timestamp with second precision, as Kubernetes writes metadata times. Formatted
    once per second: every object write stamps one, and strftime was a visible share of a busy agent."""
    global _last_second
    second = int(_time.time())
    if second != _last_second[0]:
        _last_second = (second, _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(second)))
    return _last_second[1]


def now_micro() -> str:
    """RFC 3339 UTC timestamp with microseconds (Lease renewTime, Event times)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


class OwnerReference(Model):
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ManagedFieldsEntry(Model):
    manager: str | None = None
    operation: str | None = None
    api_version: str | None = None
    time: str | None = None
    subresource: str | None = None
    fields_type: str | None = None
    fields_v1: dict | None = msgspec.field(default=None, name="fieldsV1")


class ObjectMeta(Model):
    name: str = ""
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    deletion_grace_period_seconds: int | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    owner_references: list[OwnerReference] = msgspec.field(default_factory=list)
    finalizers: list[str] = msgspec.field(default_factory=list)
    managed_fields: list[ManagedFieldsEntry] | None = None
    self_link: str | None = None


class ListMeta(Model):
    resource_version: str = ""
    continue_: str | None = msgspec.field(default=None, name="continue")
    remaining_item_count: int | None = None


class Condition(Model):
    """The generic condition shape shared by most kinds."""

    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = None
    last_update_time: str | None = None
    last_heartbeat_time: str | None = None
    last_probe_time: str | None = None
    observed_generation: int | None = None


class LabelSelectorRequirement(Model):
    key: str
    operator: str
    values: list[str] = msgspec.field(default_factory=list)


class LabelSelector(Model):
    match_labels: dict[str, str] = msgspec.field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = msgspec.field(default_factory=list)


class TopObject(Model, tag_field="kind"):
    """A top-level kind: `kind` is the struct tag (always encoded), apiVersion filled in on creation."""

    api_version: str = ""
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)

    def __post_init__(self) -> None:
        if not self.api_version:
            self.api_version = API_VERSIONS[type(self).__name__]


# kind -> apiVersion, filled in by each kind module at import time
API_VERSIONS: dict[str, str] = {}
