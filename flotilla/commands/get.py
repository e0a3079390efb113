"""`flotilla get KIND [NAME...] [-n NS | -A] [-l SEL] [--field-selector SEL] [-o FORMAT] [-w]`."""
from __future__ import annotations

import argparse
import asyncio
from typing import Any

from schemas import ApiError, Resource, TopObject
from services.lib.client import WatchExpired

from .. import printers
from ..context import CliError, Context
from ..kinds import Target, parse_targets
from . import Command

OUTPUTS = ("wide", "json", "yaml", "name")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="KIND", help="resource type (pods, po, deploy, svc, ..., comma separated, or all), "
                                                "or kind/name")
    p.add_argument("names", nargs="*", metavar="NAME", help="names (or more kind/name)")
    add_selection_arguments(p)
    p.add_argument("-o", "--output", choices=OUTPUTS, help="output format: wide, json, yaml or name")
    p.add_argument("--show-labels", action="store_true", help="add a LABELS column")
    p.add_argument("-w", "--watch", action="store_true", help="after listing, watch for changes (Ctrl-C stops)")


def add_selection_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")
    p.add_argument("-l", "--selector", help="label selector, e.g. app=web,tier in (a,b)")
    p.add_argument("--field-selector", help="field selector, e.g. spec.nodeName=node-1,status.phase=Running")


def list_namespace(ctx: Context, r: Resource) -> str | None:
    if not r.namespaced or ctx.args.all_namespaces:
        return None
    return ctx.namespace


def no_resources(ctx: Context, r: Resource) -> str:
    ns = list_namespace(ctx, r)
    return f"No resources found in {ns} namespace." if ns else "No resources found"


async def fetch(ctx: Context, t: Target) -> tuple[list[TopObject], str, list[ApiError]]:
    """The objects of a target (named ones, or a list), the list's version, and per-name errors."""
    assert ctx.api is not None
    client = ctx.api.resource(t.resource.name)
    args = ctx.args
    if t.names:
        if args.all_namespaces and t.resource.namespaced:
            raise CliError("a resource cannot be retrieved by name across all namespaces")
        objs, errors = [], []
        for name in t.names:
            try:
                objs.append(await client.get(name, ctx.namespace))
            except ApiError as err:
                if err.reason != "NotFound":
                    raise
                errors.append(err)
        return objs, "", errors
    result = await client.list_all(list_namespace(ctx, t.resource), args.selector, args.field_selector)
    items = list(result.items)
    if t.resource.name == "events":
        items.sort(key=printers.event_sort_key)  # type: ignore[arg-type]
    return items, result.resource_version, []


async def run(ctx: Context) -> int:
    args = ctx.args
    targets = parse_targets([args.kind, *args.names])
    if args.watch:
        if len(targets) != 1:
            raise CliError("watch is only supported on individual resources and resource collections, "
                           f"but {len(targets)} resource types were given")
        return await watch(ctx, targets[0])
    fetched = [(t, *await fetch(ctx, t)) for t in targets]
    output = args.output
    status = 0
    if output in ("json", "yaml"):
        objs = [o for _, items, _, _ in fetched for o in items]
        single = len(targets) == 1 and len(targets[0].names) == 1 and len(objs) == 1
        data: Any = printers.to_builtins(objs[0]) if single else printers.as_list(
            objs, fetched[0][2] if len(fetched) == 1 else "")
        if objs or not any(t.names for t in targets):
            ctx.print(printers.json_text(data) if output == "json" else printers.yaml_text(data))
    else:
        printed = False
        for t, items, _, _ in fetched:
            if not items:
                continue
            if output == "name":
                for o in items:
                    ctx.print(printers.name_of(t.resource, o))
            else:
                if printed:
                    ctx.print()
                p = printers.ResourcePrinter(t.resource, wide=output == "wide", all_namespaces=args.all_namespaces,
                                             kind_prefix=len(targets) > 1, show_labels=args.show_labels)
                for line in p.render(items):
                    ctx.print(line)
            printed = True
        if not printed and not any(t.names for t in targets):
            ctx.warn(no_resources(ctx, targets[0].resource))
    for _, _, _, errors in fetched:
        for err in errors:
            ctx.report(err)
            status = 1
    return status


async def watch(ctx: Context, t: Target) -> int:
    """List, print, then one line (or object) per change until Ctrl-C; re-watch and relist as needed."""
    assert ctx.api is not None
    args = ctx.args
    r = t.resource
    client = ctx.api.resource(r.name)
    if len(t.names) > 1:
        raise CliError("watch accepts at most one name")
    field_selector = args.field_selector
    if t.names:
        if args.all_namespaces and r.namespaced:
            raise CliError("a resource cannot be retrieved by name across all namespaces")
        by_name = f"metadata.name={t.names[0]}"
        field_selector = f"{field_selector},{by_name}" if field_selector else by_name
    ns = list_namespace(ctx, r)
    printer = printers.ResourcePrinter(r, wide=args.output == "wide", all_namespaces=args.all_namespaces,
                                       show_labels=args.show_labels)
    seen: dict[tuple[str | None, str], str] = {}

    def show(obj: TopObject, header: bool = False) -> None:
        if args.output == "json":
            ctx.print(printers.json_text(obj))
        elif args.output == "yaml":
            ctx.print("---\n" + printers.yaml_text(obj))
        elif args.output == "name":
            ctx.print(printers.name_of(r, obj))
        else:
            if header:
                ctx.print(printer.table.line(printer.table.headers))
            ctx.print(printer.line(obj))

    async def relist(first: bool) -> str:
        result = await client.list_all(ns, args.selector, field_selector)
        items = list(result.items)
        if r.name == "events":
            items.sort(key=printers.event_sort_key)  # type: ignore[arg-type]
        if first and not items and t.names:
            raise ApiError("NotFound", f'{r.name} "{t.names[0]}" not found')
        if first and args.output in (None, "wide"):
            printer.table.fit([printer.row(o) for o in items])
            if items:
                ctx.print(printer.table.line(printer.table.headers))
        for o in items:
            key = (o.metadata.namespace, o.metadata.name)
            if first or seen.get(key) != o.metadata.resource_version:
                show(o)
            seen[key] = o.metadata.resource_version or ""
        return result.resource_version

    rv = await relist(first=True)
    header_due = not seen and args.output in (None, "wide")
    while True:
        try:
            async for type_, obj in client.watch(ns, args.selector, field_selector, resource_version=rv,
                                                 bookmarks=True):
                rv = obj.metadata.resource_version or rv
                if type_ == "BOOKMARK":
                    continue
                key = (obj.metadata.namespace, obj.metadata.name)
                if type_ == "DELETED":
                    seen.pop(key, None)
                else:
                    seen[key] = obj.metadata.resource_version or ""
                show(obj, header=header_due)
                header_due = False
        except WatchExpired as exc:
            if exc.gone:
                rv = await relist(first=False)
            else:
                await asyncio.sleep(0.2)


COMMANDS = [Command("get", "Display one or many resources", arguments, run)]
