"""Recording Events about objects (Scheduled, Started, BackOff, …), aggregated like Kubernetes:
the same reason and message on the same object bumps `count` instead of making a new Event."""
from __future__ import annotations

import hashlib

from schemas import ApiError, Event, ObjectMeta, ObjectReference, TopObject, now_iso
from schemas.cluster import EventSource

from .client import Api, NotLeader
from .log import get_logger

log = get_logger("flotilla.events")


class EventRecorder:
    def __init__(self, api: Api, component: str, host: str | None = None):
        self.api = api
        self.component = component
        self.host = host

    async def record(self, obj: TopObject, type_: str, reason: str, message: str) -> None:
        """Best effort: an event that cannot be written is logged, never raised."""
        meta = obj.metadata
        digest = hashlib.sha1(f"{meta.uid}|{type_}|{reason}|{message}".encode()).hexdigest()[:12]
        name = f"{meta.name}.{digest}"
        now = now_iso()
        ns = meta.namespace or "default"
        try:
            try:
                await self.api.events.create(Event(
                    metadata=ObjectMeta(name=name, namespace=ns),
                    involved_object=ObjectReference(kind=type(obj).__name__, namespace=meta.namespace,
                                                    name=meta.name, uid=meta.uid, api_version=obj.api_version,
                                                    resource_version=meta.resource_version),
                    reason=reason, message=message[:4096], type=type_,
                    source=EventSource(component=self.component, host=self.host),
                    first_timestamp=now, last_timestamp=now, count=1,
                    reporting_component=self.component, reporting_instance=self.host))
            except ApiError as exc:
                if exc.reason != "AlreadyExists":
                    raise
                existing = await self.api.events.get(name, ns)
                existing.count = (existing.count or 1) + 1
                existing.last_timestamp = now
                await self.api.events.update(existing)
        except NotLeader:
            return  # a deposed leader's event (its elector says so once): dropped quietly
        except ApiError as exc:
            log.warning("event not recorded", object=f"{ns}/{meta.name}", reason=reason, error=exc.message)
