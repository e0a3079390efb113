"""`flotilla rollout status|history|undo|pause|resume deployment/NAME` and `flotilla set image`.

Rollback is done here, as kubectl does it for apps/v1: the template of the ReplicaSet of the wanted
revision is copied back into the Deployment, and the controller rolls to it."""
from __future__ import annotations

import argparse
import asyncio
import time

import msgspec

from schemas import ApiError, Deployment, ReplicaSet
from services.lib.client import WatchExpired

from ..context import CliError, Context
from ..kinds import parse_targets
from . import Command

REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
CHANGE_CAUSE = "kubernetes.io/change-cause"


def _deployment_name(ctx: Context, words: list[str]) -> str:
    targets = parse_targets(words)
    if len(targets) != 1 or targets[0].resource.name != "deployments" or len(targets[0].names) != 1:
        raise CliError("name one deployment, e.g. `deployment/web` or `deployment web`")
    return targets[0].names[0]


async def _owned_sets(ctx: Context, d: Deployment) -> list[ReplicaSet]:
    assert ctx.api is not None
    sets = (await ctx.api.replicasets.list_all(namespace=ctx.namespace)).items
    return sorted((rs for rs in sets if any(r.uid == d.metadata.uid and r.controller for r in rs.metadata.owner_references)),
                  key=lambda rs: int(rs.metadata.annotations.get(REVISION, "0") or 0))


def rollout_state(d: Deployment) -> tuple[bool, str]:
    """(done, message) as `kubectl rollout status` words it; raises CliError past the deadline."""
    name = d.metadata.name
    if (d.status.observed_generation or 0) < (d.metadata.generation or 0):
        return False, f'Waiting for deployment spec update to be observed...'
    for c in d.status.conditions:
        if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded":
            raise CliError(f'deployment "{name}" exceeded its progress deadline')
    want = d.spec.replicas or 0
    updated = d.status.updated_replicas or 0
    total = d.status.replicas or 0
    available = d.status.available_replicas or 0
    if updated < want:
        return False, f'Waiting for deployment "{name}" rollout to finish: {updated} out of {want} new replicas have been updated...'
    if total > updated:
        return False, f'Waiting for deployment "{name}" rollout to finish: {total - updated} old replicas are pending termination...'
    if available < updated:
        return False, f'Waiting for deployment "{name}" rollout to finish: {available} of {updated} updated replicas are available...'
    return True, f'deployment "{name}" successfully rolled out'


async def status(ctx: Context) -> int:
    assert ctx.api is not None
    name = _deployment_name(ctx, ctx.args.kind)
    deadline = time.monotonic() + ctx.timeout
    last = ""
    while True:
        d = await ctx.api.deployments.get(name, ctx.namespace)
        done, message = rollout_state(d)
        if message != last:
            ctx.print(message)
            last = message
        if done or not ctx.args.watch:
            return 0 if done else 1
        left = deadline - time.monotonic()
        if left <= 0:
            raise CliError(f"timed out waiting for the rollout of deployment \"{name}\" to finish")
        try:  # wake on the next change of the Deployment (or poll again after a while)
            async with asyncio.timeout(min(left, 5.0)):
                async for _type, _obj in ctx.api.deployments.watch(ctx.namespace, field_selector=f"metadata.name={name}",
                                                                   resource_version=d.metadata.resource_version):
                    break
        except (TimeoutError, WatchExpired):
            pass


async def history(ctx: Context) -> int:
    assert ctx.api is not None
    name = _deployment_name(ctx, ctx.args.kind)
    d = await ctx.api.deployments.get(name, ctx.namespace)
    ctx.print(f"deployment.apps/{name}")
    ctx.print(f"{'REVISION':<10}CHANGE-CAUSE")
    for rs in await _owned_sets(ctx, d):
        ctx.print(f"{rs.metadata.annotations.get(REVISION, '?'):<10}{rs.metadata.annotations.get(CHANGE_CAUSE, '<none>')}")
    return 0


async def undo(ctx: Context) -> int:
    assert ctx.api is not None
    name = _deployment_name(ctx, ctx.args.kind)
    for _ in range(5):
        d = await ctx.api.deployments.get(name, ctx.namespace)
        sets = await _owned_sets(ctx, d)
        current = d.metadata.annotations.get(REVISION)
        if ctx.args.to_revision:
            target = next((rs for rs in sets if rs.metadata.annotations.get(REVISION) == str(ctx.args.to_revision)), None)
            if target is None:
                raise CliError(f"unable to find specified revision {ctx.args.to_revision} in history")
        else:
            older = [rs for rs in sets if rs.metadata.annotations.get(REVISION) != current]
            if not older:
                raise CliError("no rollout history found for deployment \"%s\"" % name)
            target = older[-1]
        template = msgspec.structs.replace(target.spec.template, metadata=msgspec.structs.replace(
            target.spec.template.metadata,
            labels={k: v for k, v in target.spec.template.metadata.labels.items() if k != HASH_LABEL}))
        if msgspec.json.encode(template) == msgspec.json.encode(d.spec.template):
            ctx.print(f"deployment.apps/{name} skipped rollback (current template already matches revision "
                      f"{target.metadata.annotations.get(REVISION)})")
            return 0
        d.spec.template = template
        try:
            await ctx.api.deployments.update(d)
        except ApiError as exc:
            if exc.reason == "Conflict":
                continue
            raise
        ctx.print(f"deployment.apps/{name} rolled back")
        return 0
    raise CliError("the deployment kept changing; try again")


async def _set_paused(ctx: Context, paused: bool) -> int:
    assert ctx.api is not None
    name = _deployment_name(ctx, ctx.args.kind)
    await ctx.api.deployments.patch(name, {"spec": {"paused": paused or None}}, ctx.namespace)
    ctx.print(f"deployment.apps/{name} {'paused' if paused else 'resumed'}")
    return 0


async def pause(ctx: Context) -> int:
    return await _set_paused(ctx, True)


async def resume(ctx: Context) -> int:
    return await _set_paused(ctx, False)


async def set_image(ctx: Context) -> int:
    assert ctx.api is not None
    if ctx.args.what != "image":
        raise CliError(f"unknown `set` subcommand {ctx.args.what!r}: only `set image` exists")
    targets, pairs = [], {}
    for word in ctx.args.rest:
        if "=" in word:
            container, _, image = word.partition("=")
            if not container or not image:
                raise CliError(f"expected CONTAINER=IMAGE, got {word!r}")
            pairs[container] = image
        else:
            targets.append(word)
    if not targets or not pairs:
        raise CliError("usage: flotilla set image deployment/NAME CONTAINER=IMAGE ...")
    for target in parse_targets(targets):
        for name in target.names:
            await _set_images(ctx, target.resource.name, name, pairs)
            ctx.print(f"{target.resource.kind.lower()}.apps/{name} image updated")
    return 0


async def _set_images(ctx: Context, resource: str, name: str, pairs: dict[str, str]) -> None:
    """Read-modify-write, again on Conflict: controllers write the object's status meanwhile."""
    assert ctx.api is not None
    client = ctx.api.resource(resource)
    for _ in range(10):
        obj = await client.get(name, ctx.namespace)
        spec = obj.spec.template.spec if hasattr(obj.spec, "template") else obj.spec
        missing = set(pairs) - {c.name for c in spec.containers} - {"*"}
        if missing:
            raise CliError(f"unable to find container named {sorted(missing)[0]!r} in {resource}/{name}")
        for c in spec.containers:
            if c.name in pairs or "*" in pairs:
                c.image = pairs.get(c.name, pairs.get("*"))
        try:
            await client.update(obj)
            return
        except ApiError as exc:
            if exc.reason != "Conflict":
                raise
    raise CliError(f"{resource}/{name} kept changing; try again")


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="+", metavar="deployment/NAME", help="the deployment")


def _status_args(p: argparse.ArgumentParser) -> None:
    _target(p)
    p.add_argument("-w", "--watch", default=True, action=argparse.BooleanOptionalAction,
                   help="keep watching until the rollout finishes (default true)")


def _undo_args(p: argparse.ArgumentParser) -> None:
    _target(p)
    p.add_argument("--to-revision", type=int, default=0, help="the revision to roll back to (default: the previous)")


def _set_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["image"], help="what to set")
    p.add_argument("rest", nargs="+", metavar="deployment/NAME CONTAINER=IMAGE", help="target and images")


def _rollout_args(p: argparse.ArgumentParser) -> None:
    from ..cli import add_global_arguments  # imported late: the CLI module imports the commands

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, helptext, fn, args in (
            ("status", "show the rollout's progress until it finishes", status, _status_args),
            ("history", "list the revisions", history, _target),
            ("undo", "roll back to the previous (or a given) revision", undo, _undo_args),
            ("pause", "stop rolling out template changes", pause, _target),
            ("resume", "resume a paused rollout", resume, _target)):
        sp = sub.add_parser(action, help=helptext)
        add_global_arguments(sp, top=False)
        args(sp)
        sp.set_defaults(rollout_action=fn)


async def rollout(ctx: Context) -> int:
    return await ctx.args.rollout_action(ctx)


COMMANDS = [
    Command("rollout", "Manage the rollout of a Deployment: status, history, undo, pause, resume", _rollout_args, rollout),
    Command("set", "Set fields of an object: `set image deployment/NAME CONTAINER=IMAGE`", _set_args, set_image),
]
