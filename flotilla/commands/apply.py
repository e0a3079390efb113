"""`flotilla apply -f FILE|DIR|- ...`: create what is missing, update what differs, report each object.

Idempotent like kubectl: the manifest as applied is kept in an annotation (merge.LAST_APPLIED) so
that a later apply can tell its own earlier settings from server defaults and from other writers.
"""
from __future__ import annotations

import argparse
import copy
from typing import Any

import msgspec

from schemas import ApiError, Resource

from ..context import CliError, Context, no_apiserver
from ..kinds import display_kind
from ..manifests import Document, expand_paths, load_source
from ..merge import LAST_APPLIED, last_applied_text, managed_view, merge_patch, parse_last_applied, three_way
from . import Command

CONFLICT_RETRIES = 5
# Metadata that is the server's: dropped from manifests (e.g. ones saved with `get -o yaml`).
_META_SERVER = ("uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp",
                "deletionGracePeriodSeconds", "selfLink", "managedFields")


class UpdateError(Exception):
    """The server refused the update of an existing object (as opposed to its creation)."""

    def __init__(self, err: ApiError):
        super().__init__(err.message)
        self.err = err


def arguments(p: argparse.ArgumentParser) -> None:
    add_file_arguments(p, "apply", required=True)


def add_file_arguments(p: argparse.ArgumentParser, verb: str, required: bool) -> None:
    p.add_argument("-f", "--filename", action="append", default=[], required=required, metavar="FILE",
                   help=f"file, directory (its .yaml/.yml/.json files) or - for stdin to {verb}; repeatable")


def load_documents(ctx: Context, paths: list[str]) -> tuple[list[tuple[Document, Resource]], int]:
    """Every document with its resource; problems are reported (one line each) and counted."""
    failures = 0
    docs: list[tuple[Document, Resource]] = []
    for source in expand_paths(paths):
        try:
            loaded = load_source(source)
        except CliError as exc:
            ctx.report(exc)
            failures += 1
            continue
        for doc in loaded:
            try:
                docs.append((doc, doc.resource()))
            except CliError as exc:
                ctx.report(exc)
                failures += 1
    return docs, failures


def target_namespace(ctx: Context, doc: Document, r: Resource) -> str | None:
    if not r.namespaced:
        return None
    if doc.namespace and ctx.namespace_given and doc.namespace != ctx.namespace:
        raise CliError(f'the namespace from the provided object "{doc.namespace}" does not match the namespace '
                       f'"{ctx.namespace}". You must pass \'--namespace={doc.namespace}\' to perform this operation.')
    return doc.namespace or ctx.namespace


def normalized(r: Resource, body: dict[str, Any]) -> dict[str, Any]:
    """The manifest in the server's spelling (camelCase, empty defaults omitted), when it decodes;
    otherwise as written, and the server names what is wrong with it."""
    try:
        return msgspec.to_builtins(msgspec.convert(body, r.type))
    except (msgspec.ValidationError, TypeError, ValueError):
        return copy.deepcopy(body)


def desired(r: Resource, doc: Document, namespace: str | None) -> dict[str, Any]:
    """What apply sends: the manifest without server-owned metadata, with the last-applied
    annotation set to the manifest itself. A status is sent along (it matters on create only, e.g.
    for a Node made by hand; the server keeps the stored status on update) but is not managed."""
    body = normalized(r, doc.body)
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    meta = {k: v for k, v in meta.items() if k not in _META_SERVER}
    if namespace:
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    body["metadata"] = meta
    config = {k: v for k, v in copy.deepcopy(body).items() if k != "status"}
    meta["annotations"] = {**annotations, LAST_APPLIED: last_applied_text(config)}
    return body


async def apply_one(ctx: Context, doc: Document, r: Resource) -> str:
    """Create or update one object; returns created / configured / unchanged."""
    assert ctx.api is not None
    client = ctx.api.resource(r.name)
    if not doc.name:
        if isinstance(doc.body.get("metadata"), dict) and doc.body["metadata"].get("generateName"):
            raise CliError(f"from {doc.where}: cannot use generateName with apply")
        raise CliError(f"error validating {doc.where}: metadata.name is required")
    namespace = target_namespace(ctx, doc, r)
    body = desired(r, doc, namespace)
    try:
        await client.create(body)
        return "created"
    except ApiError as err:
        if err.reason != "AlreadyExists":
            raise
    try:
        return await _update(client, doc, namespace, body)
    except ApiError as err:
        if no_apiserver(err):
            raise
        raise UpdateError(err) from err


async def _update(client: Any, doc: Document, namespace: str | None, body: dict[str, Any]) -> str:
    modified = managed_view(body)
    for attempt in range(CONFLICT_RETRIES):
        live_obj = await client.get(doc.name, namespace)
        live = msgspec.to_builtins(live_obj)
        original = parse_last_applied(live)
        patch = three_way(managed_view(original) if original else None, modified, managed_view(live))
        if not patch:
            return "unchanged"
        merged = merge_patch(live, patch)
        merged.setdefault("metadata", {})["resourceVersion"] = live["metadata"].get("resourceVersion")
        try:
            await client.update(merged)
            return "configured"
        except ApiError as err:
            if err.reason != "Conflict" or attempt + 1 == CONFLICT_RETRIES:
                raise
    raise AssertionError("unreachable")


async def run(ctx: Context) -> int:
    docs, failures = load_documents(ctx, ctx.args.filename)
    # Namespaces first, so that what goes into them can be created in the same apply.
    docs.sort(key=lambda d: d[1].name != "namespaces")
    for doc, r in docs:
        try:
            result = await apply_one(ctx, doc, r)
        except (ApiError, UpdateError) as exc:
            err, verb = (exc.err, "updating") if isinstance(exc, UpdateError) else (exc, "creating")
            if no_apiserver(err):
                raise err
            ctx.warn(f'Error from server ({err.reason}): error when {verb} "{doc.source}": {err.message}')
            failures += 1
            continue
        except CliError as exc:
            ctx.report(exc)
            failures += 1
            continue
        ctx.print(f"{display_kind(r)}/{doc.name} {result}")
    if not docs and not failures:
        raise CliError("no objects passed to apply")
    return 1 if failures else 0


COMMANDS = [Command("apply", "Apply a configuration to resources by file name or stdin", arguments, run)]
