"""Request bodies of the API verbs and the watch event envelope (DESIGN §3)."""
from __future__ import annotations

from typing import Any

import msgspec

from .base import ListMeta, Model


class GetRequest(Model):
    name: str
    namespace: str | None = None


class ListRequest(Model):
    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None
    limit: int | None = None
    continue_: str | None = msgspec.field(default=None, name="continue")
    resource_version: str | None = None


class WatchRequest(Model):
    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None
    resource_version: str | None = None
    timeout_seconds: int | None = None
    allow_watch_bookmarks: bool | None = None
    # Where events go; defaults to the request's reply subject.
    inbox: str | None = None


class DeleteRequest(Model):
    name: str
    namespace: str | None = None
    grace_period_seconds: int | None = None
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
    replicas: int
    namespace: str | None = None
    resource_version: str | None = None


class ObjectList(Model):
    """The reply to `list`: `kind` is e.g. PodList, items are the stored objects as JSON."""

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
