"""Turning what users type (`po`, `deploy/hello`, `pods,svc`, `all`) into resources and names."""
from __future__ import annotations

from dataclasses import dataclass, field

from schemas import RESOURCES, Resource, lookup

from .context import CliError

# kubectl's `all`: the workload kinds a user looks at first.
ALL = ("pods", "services", "deployments", "replicasets")


def resolve(word: str) -> Resource:
    try:
        return lookup(word)
    except KeyError:
        raise CliError(f'the server doesn\'t have a resource type "{word}"') from None


def display_kind(r: Resource) -> str:
    """`pod`, `deployment`: the prefix of `pod/web-1` in kubectl's output."""
    return r.kind.lower()


@dataclass
class Target:
    resource: Resource
    names: list[str] = field(default_factory=list)


def parse_targets(words: list[str]) -> list[Target]:
    """`pods` | `pods a b` | `pod/a svc/b` | `pods,svc` | `all` -> one Target per resource, in order."""
    if not words:
        raise CliError("you must specify the type of resource, e.g. `pods` "
                       f"(one of: {', '.join(sorted(RESOURCES))})")
    targets: list[Target] = []

    def target(r: Resource) -> Target:
        for t in targets:
            if t.resource.name == r.name:
                return t
        targets.append(Target(r))
        return targets[-1]

    if "/" in words[0]:
        for word in words:
            kind, sep, name = word.partition("/")
            if not sep or not kind or not name:
                raise CliError(f"there is no need to specify a resource type as a separate argument when "
                               f"passing arguments in resource/name form (got {word!r})")
            target(resolve(kind)).names.append(name)
        return targets
    for kind in words[0].split(","):
        if kind == "all":
            for name in ALL:
                target(RESOURCES[name])
        elif kind:
            target(resolve(kind))
    names = words[1:]
    if names:
        if len(targets) > 1:
            raise CliError("names can be given for only one resource type at a time; use `kind/name` instead")
        for name in names:
            if "/" in name:
                raise CliError(f"there is no need to specify a resource type as a separate argument when "
                               f"passing arguments in resource/name form (got {name!r})")
        targets[0].names.extend(names)
    return targets
