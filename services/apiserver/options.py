"""Request options as NATS headers, beside the JSON body form (docs/api.md, "Request headers"), so
that `nats req -H Flotilla-Dry-Run:All …` needs no hand-edited body; and the dry run itself.

A header only fills in the body field it stands for, so every verb keeps one decoder and one code
path. When the body has the field too, both must say the same (a disagreement is a 400: neither
silently wins, since a precondition that is quietly dropped is a lost update)."""
from __future__ import annotations

from typing import Any

import msgspec

from schemas import ApiError

from .store import Bucket, StateLog

RESOURCE_VERSION = "Flotilla-Resource-Version"
DRY_RUN = "Flotilla-Dry-Run"
LABEL_SELECTOR = "Flotilla-Label-Selector"
FIELD_SELECTOR = "Flotilla-Field-Selector"
HEADERS = (RESOURCE_VERSION, DRY_RUN, LABEL_SELECTOR, FIELD_SELECTOR)

WRITE_VERBS = frozenset(("create", "update", "patch", "delete", "status", "bind", "scale"))
# Where each header goes in each verb's body (docs/api.md's bodies); a verb not listed takes no such header.
_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    RESOURCE_VERSION: {"update": ("metadata", "resourceVersion"), "status": ("metadata", "resourceVersion"),
                       "patch": ("patch", "metadata", "resourceVersion"), "delete": ("resourceVersion",),
                       "bind": ("resourceVersion",), "scale": ("resourceVersion",),
                       "list": ("resourceVersion",), "watch": ("resourceVersion",)},
    LABEL_SELECTOR: {"list": ("labelSelector",), "watch": ("labelSelector",)},
    FIELD_SELECTOR: {"list": ("fieldSelector",), "watch": ("fieldSelector",)},
}
_BY_LOWER = {h.lower(): h for h in HEADERS}


def header_options(verb: str, headers: dict[str, str] | None, body: bytes) -> tuple[bytes, bool]:
    """The body with the option headers filled in, and whether this is a dry run."""
    if not headers:
        return body, False
    # NATS header names are case-sensitive on the wire, HTTP habits are not: accept any case.
    found = {_BY_LOWER[k.lower()]: v for k, v in headers.items() if k.lower() in _BY_LOWER}
    if not found:
        return body, False
    dry_run = False
    if DRY_RUN in found:
        if found[DRY_RUN] != "All":
            raise ApiError("BadRequest", f'{DRY_RUN}: Unsupported value: "{found[DRY_RUN]}": supported values: All',
                           field=DRY_RUN)
        if verb not in WRITE_VERBS:
            raise ApiError("BadRequest", f"{DRY_RUN}: {verb} writes nothing; a dry run applies to "
                                         f"{', '.join(sorted(WRITE_VERBS))}", field=DRY_RUN)
        dry_run = True
    fills = [(h, v) for h, v in found.items() if h != DRY_RUN]
    if not fills:
        return body, dry_run
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body, dry_run  # the verb's own decoder says what is wrong with it
    if not isinstance(doc, dict):
        return body, dry_run
    for header, value in fills:
        path = _TARGETS[header].get(verb)
        if path is None:
            raise ApiError("BadRequest", f"{header}: not an option of {verb}", field=header)
        _fill(doc, path, header, value)
    return msgspec.json.encode(doc), dry_run


def _fill(doc: dict[str, Any], path: tuple[str, ...], header: str, value: str) -> None:
    where = doc
    for step in path[:-1]:
        nxt = where.setdefault(step, {})
        if not isinstance(nxt, dict):
            return  # a body of the wrong shape: the verb's decoder names the field
        where = nxt
    present = where.get(path[-1])
    if present not in (None, "") and present != value:
        raise ApiError("BadRequest", f'{header}: "{value}" differs from the body\'s {".".join(path)} "{present}"; '
                                     "give one, or the same in both", field=".".join(path))
    where[path[-1]] = value


def dry_run_reply(verb: str, reply: bytes) -> bytes:
    """A dry-run create gets no resourceVersion (nothing was written; Kubernetes leaves it empty too)."""
    if verb != "create":
        return reply
    return reply.replace(b'"metadata":{"resourceVersion":"0",', b'"metadata":{', 1) \
                .replace(b'"metadata":{"resourceVersion":"0"}', b'"metadata":{}', 1)


class DryRunLog(StateLog):
    """The state log as a dry run sees it: reads are real; a write is checked as JetStream would
    check it (a live key refuses a create, a moved revision refuses a compare-and-set) and then not
    made. The verbs above it run unchanged, so a dry run validates, defaults and authorizes exactly
    as the real write would."""

    async def create(self, bucket: Bucket, key: str, data: bytes) -> int:
        if await self.get(bucket, key) is not None:
            raise ApiError("AlreadyExists", "already exists")
        return 0  # no revision: dry_run_reply drops it

    async def update(self, bucket: Bucket, key: str, data: bytes, revision: int) -> int:
        await self._expect(bucket, key, revision)
        return revision  # unchanged, as Kubernetes answers a dry-run update

    async def delete(self, bucket: Bucket, key: str, revision: int) -> int:
        await self._expect(bucket, key, revision)
        return revision

    async def _expect(self, bucket: Bucket, key: str, revision: int) -> None:
        entry = await self.get(bucket, key)
        if revision <= 0 or entry is None or entry.revision != revision:
            raise ApiError("Conflict", "the object has been modified; please apply your changes "
                                       "to the latest version and try again")
