"""Request bodies of the API verbs and the watch event envelope (DESIGN §3)."""
from __future__ import annotations

from typing import Annotated, Any

import msgspec

from .base import ListMeta, Model

# Kubernetes decodes these as int64 (replicas: int32): a larger JSON number is a BadRequest, not a
# value to compute deadlines with or to store.
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]


class GetRequest(Model):
    name: str
    namespace: str | None = None


class ListRequest(Model):
    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None
    limit: Int64 | None = None
    continue_: str | None = msgspec.field(default=None, name="continue")
    resource_version: str | None = None


class WatchRequest(Model):
    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None
    resource_version: str | None = None
    timeout_seconds: Int64 | None = None
    allow_watch_bookmarks: bool | None = None
    # Where events go; defaults to the request's reply subject.
    inbox: str | None = None


class DeleteRequest(Model):
    name: str
    namespace: str | None = None
    grace_period_seconds: Int64 | None = None
    propagation_policy: str | None = None
    resource_version: str | None = None
    uid: str | None = None


class PatchRequest(Model):
    name: str
    patch: dict[str, Any]
    namespace: str | None = None


class BindRequest(Model):
    name: str
    node_name: str
    namespace: str | None = None
    resource_version: str | None = None


class ScaleRequest(Model):
    name: str
    replicas: Int32
    namespace: str | None = None
    resource_version: str | None = None


class ObjectList(Model, omit_defaults=False):
    """The reply to `list`: `kind` is e.g. PodList, items are the stored objects as JSON.

    Every field is always encoded: an empty list is `"items": []`, as Kubernetes and raw readers expect."""

    kind: str
    api_version: str
    metadata: ListMeta
    items: list[msgspec.Raw] = msgspec.field(default_factory=list)


class WatchEvent(Model):
    """One message of a watch stream. `seq` counts the messages of this watch from 1 (gap => re-watch).

    type: ADDED, MODIFIED, DELETED, BOOKMARK (object carries only metadata.resourceVersion), ERROR
    (object is a Status; Gone means relist).
    """

    type: str
    seq: int
    object: msgspec.Raw


class WatchAck(Model):
    """The first message of a watch (seq 0): the watch is established, from this resourceVersion."""

    type: str
    seq: int
    resource_version: str
    watch_id: str
    bookmark_seconds: float = 2.0
