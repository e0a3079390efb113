"""`flotilla delete KIND NAME... | KIND/NAME... | -f FILE | KIND -l SEL | KIND --all`."""
from __future__ import annotations

import argparse
import asyncio

from schemas import ApiError, Resource

from ..context import CliError, Context
from ..kinds import display_kind, parse_targets
from . import Command
from .apply import add_file_arguments, load_documents, target_namespace

CASCADE = {"background": "Background", "foreground": "Foreground", "orphan": "Orphan",
           "true": "Background", "false": "Orphan"}


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", metavar="KIND", help="resource type (pod web-1 web-2), or kind/name (pod/web-1)")
    p.add_argument("names", nargs="*", metavar="NAME", help="names (or more kind/name)")
    add_file_arguments(p, "delete", required=False)
    p.add_argument("-l", "--selector", help="delete every object of KIND matching this label selector")
    p.add_argument("--all", action="store_true", help="delete every object of KIND in the namespace")
    p.add_argument("--grace-period", type=int, default=-1,
                   help="seconds a pod gets to stop; -1 keeps the pod's own (default), 0 deletes at once")
    p.add_argument("--now", action="store_true", help="same as --grace-period=1")
    p.add_argument("--cascade", nargs="?", const="background", default="background", type=str.lower,
                   choices=sorted(CASCADE), help="what happens to dependents: background (default), foreground or orphan")
    p.add_argument("--wait", nargs="?", const=True, default=True, type=_flag, metavar="true|false",
                   help="wait until the objects are gone (default true; --timeout bounds the wait)")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="same as --wait=false")
    p.add_argument("--ignore-not-found", action="store_true", help="a missing object is not an error")


async def _targets(ctx: Context) -> list[tuple[Resource, str, str | None]]:
    """(resource, name, namespace) of everything to delete, in order."""
    assert ctx.api is not None
    args = ctx.args
    out: list[tuple[Resource, str, str | None]] = []
    if args.filename:
        if args.kind or args.names:
            raise CliError("give either -f FILE or KIND NAME..., not both")
        docs, failures = load_documents(ctx, args.filename)
        if failures:
            raise CliError("not deleting anything: the manifests above could not be read")
        for doc, r in docs:
            if not doc.name:
                raise CliError(f"{doc.where}: metadata.name is required to delete")
            out.append((r, doc.name, target_namespace(ctx, doc, r)))
        return out
    targets = parse_targets([args.kind, *args.names] if args.kind else [])
    for t in targets:
        ns = ctx.namespace if t.resource.namespaced else None
        if t.names:
            if args.selector or args.all:
                raise CliError("names cannot be given together with --selector or --all")
            out += [(t.resource, name, ns) for name in t.names]
        elif args.selector or args.all:
            found = await ctx.api.resource(t.resource.name).list_all(ns, args.selector or None)
            out += [(t.resource, o.metadata.name, ns) for o in found.items]
        else:
            raise CliError("resource(s) were provided, but no name was specified; "
                           "give names, --selector (-l) or --all")
    return out


async def _wait_gone(ctx: Context, r: Resource, name: str, ns: str | None, deadline: float) -> bool:
    assert ctx.api is not None
    client = ctx.api.resource(r.name)
    loop = asyncio.get_running_loop()
    delay = 0.1
    while True:
        try:
            await client.get(name, ns)
        except ApiError as err:
            if err.reason == "NotFound":
                return True
            raise
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 2, 1.0)


async def run(ctx: Context) -> int:
    assert ctx.api is not None
    args = ctx.args
    grace = 1 if args.now else (args.grace_period if args.grace_period >= 0 else None)
    policy = CASCADE[args.cascade]
    status = 0
    deleted: list[tuple[Resource, str, str | None]] = []
    targets = await _targets(ctx)
    if not targets and (args.selector or args.all):
        ctx.warn("No resources found")
    for r, name, ns in targets:
        try:
            await ctx.api.resource(r.name).delete(name, ns, grace_period_seconds=grace, propagation_policy=policy)
        except ApiError as err:
            if err.reason == "NotFound" and args.ignore_not_found:
                continue
            ctx.report(err)
            status = 1
            continue
        ctx.print(f'{display_kind(r)} "{name}" deleted')
        deleted.append((r, name, ns))
    if args.wait and deleted:
        deadline = asyncio.get_running_loop().time() + ctx.timeout
        for r, name, ns in deleted:
            if not await _wait_gone(ctx, r, name, ns, deadline):
                ctx.warn(f"error: timed out after {ctx.timeout:g}s waiting for {r.name}/{name} to be deleted "
                         "(it is still being deleted; --timeout waits longer, --wait=false not at all)")
                return 1
    return status


COMMANDS = [Command("delete", "Delete resources by file names, kind and names, or label selector", arguments, run)]
