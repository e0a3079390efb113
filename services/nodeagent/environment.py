"""A container's environment and command line, as Kubernetes builds them.

Order (later wins): the agent's base variables (PATH, HOME, HOSTNAME, POD_IP, POD_NAME,
POD_NAMESPACE, NODE_NAME, FLOTILLA_*), service links of the pod's namespace
(`<SVC>_SERVICE_HOST/_PORT` and the Docker-link `<SVC>_PORT_*` forms, unless
`enableServiceLinks: false`), then the container's `env` in order, each value `$(VAR)`-expanded
against what came before; `command` and `args` are expanded against the final environment.
`$$(X)` is a literal `$(X)`; references to unknown variables stay as written.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal

from schemas import Pod, Service
from schemas.pod import Container, EnvVarSource
from schemas.quantity import QuantityError, parse_quantity


class ConfigError(Exception):
    """The container's configuration cannot be honoured (CreateContainerConfigError)."""


def expand(text: str, mapping: Callable[[str], str]) -> str:
    """Kubernetes' `$(VAR)` expansion (third_party/forked/golang/expansion)."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            if nxt == "$":
                out.append("$")
                advance = 1
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    out.append(mapping(text[cursor + 2:close]))
                    advance = close - cursor
            else:
                out.append("$" + nxt)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def mapping_for(*contexts: Mapping[str, str]) -> Callable[[str], str]:
    def lookup(name: str) -> str:
        for ctx in contexts:
            if name in ctx:
                return ctx[name]
        return f"$({name})"

    return lookup


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_").replace(".", "_")


def service_env(services: list[Service]) -> dict[str, str]:
    env: dict[str, str] = {}
    for svc in sorted(services, key=lambda s: s.metadata.name):
        ip = svc.spec.cluster_ip
        if not ip or ip == "None" or not svc.spec.ports:
            continue
        name = _env_name(svc.metadata.name)
        first = svc.spec.ports[0]
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(first.port)
        for p in svc.spec.ports:
            if p.name:
                env[f"{name}_SERVICE_PORT_{_env_name(p.name)}"] = str(p.port)
        env[f"{name}_PORT"] = f"{(first.protocol or 'TCP').lower()}://{ip}:{first.port}"
        for p in svc.spec.ports:
            proto = (p.protocol or "TCP").upper()
            prefix = f"{name}_PORT_{p.port}_{proto}"
            env[prefix] = f"{proto.lower()}://{ip}:{p.port}"
            env[f"{prefix}_PROTO"] = proto.lower()
            env[f"{prefix}_PORT"] = str(p.port)
            env[f"{prefix}_ADDR"] = ip
    return env


@dataclass
class PodContext:
    pod: Pod
    node_name: str
    pod_ip: str
    host_ip: str
    sandbox: str
    node_allocatable: dict[str, str | int | float] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)


_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def field_ref(ctx: PodContext, path: str) -> str:
    pod = ctx.pod
    simple = {
        "metadata.name": pod.metadata.name,
        "metadata.namespace": pod.metadata.namespace or "default",
        "metadata.uid": pod.metadata.uid or "",
        "spec.nodeName": ctx.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name or "default",
        "status.podIP": ctx.pod_ip,
        "status.podIPs": ctx.pod_ip,
        "status.hostIP": ctx.host_ip,
        "status.hostIPs": ctx.host_ip,
    }
    if path in simple:
        return simple[path]
    m = _LABEL_REF.match(path)
    if m:
        source = pod.metadata.labels if m.group(1) == "labels" else pod.metadata.annotations
        return source.get(m.group(2), "")
    raise ConfigError(f'unsupported fieldRef fieldPath "{path}"')


def resource_ref(ctx: PodContext, container: Container, resource: str, divisor: str | int | float | None,
                 container_name: str | None) -> str:
    if container_name:
        match = [c for c in ctx.pod.spec.containers + ctx.pod.spec.init_containers if c.name == container_name]
        if not match:
            raise ConfigError(f'resourceFieldRef names container "{container_name}", which the pod does not have')
        container = match[0]
    part, _, name = resource.partition(".")
    if part not in ("limits", "requests") or not name:
        raise ConfigError(f'unsupported resourceFieldRef resource "{resource}"')
    values = container.resources.limits if part == "limits" else container.resources.requests
    raw = values.get(name)
    try:
        if raw is None:  # like Kubernetes: an unset limit reads as the node's allocatable
            raw = ctx.node_allocatable.get(name, 0) if part == "limits" else 0
        value = parse_quantity(raw)
        div = parse_quantity(divisor) if divisor not in (None, "", 0) else Decimal(1)
    except QuantityError as exc:
        raise ConfigError(f"resourceFieldRef {resource}: {exc}") from None
    if div <= 0:
        raise ConfigError(f"resourceFieldRef {resource}: divisor must be positive")
    return str(int((value / div).to_integral_value(rounding=ROUND_CEILING)))


def _from_source(ctx: PodContext, container: Container, src: EnvVarSource, var: str) -> str | None:
    if src.field_ref is not None:
        return field_ref(ctx, src.field_ref.field_path)
    if src.resource_field_ref is not None:
        r = src.resource_field_ref
        return resource_ref(ctx, container, r.resource, r.divisor, r.container_name)
    ref = src.config_map_key_ref or src.secret_key_ref
    kind = "configmap" if src.config_map_key_ref is not None else "secret"
    if ref is not None and ref.optional:
        return None
    name = ref.name if ref is not None else ""
    raise ConfigError(f'{kind} "{name}" not found (env {var}): Flotilla has no ConfigMaps or Secrets yet')


def base_env(ctx: PodContext, volumes: Mapping[str, str]) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": ctx.sandbox,
        "HOSTNAME": ctx.pod.spec.hostname or ctx.pod.metadata.name,
        "POD_IP": ctx.pod_ip,
        "POD_NAME": ctx.pod.metadata.name,
        "POD_NAMESPACE": ctx.pod.metadata.namespace or "default",
        "NODE_NAME": ctx.node_name,
        "FLOTILLA_SANDBOX": ctx.sandbox,
    }
    for key in ("LANG", "LC_ALL", "TZ"):
        if key in os.environ:
            env[key] = os.environ[key]
    for name, path in volumes.items():
        env[f"FLOTILLA_VOLUME_{_env_name(name)}"] = path
    return env


def container_env(ctx: PodContext, container: Container, volumes: Mapping[str, str]) -> dict[str, str]:
    """The full environment of one container; raises ConfigError for what cannot be resolved."""
    base = base_env(ctx, volumes)
    namespace = ctx.pod.metadata.namespace or "default"
    services = service_env([s for s in ctx.services if s.metadata.namespace == namespace]) \
        if ctx.pod.spec.enable_service_links is not False else {}
    own: dict[str, str] = {}
    for src in container.env_from:
        ref = src.config_map_ref or src.secret_ref
        if ref is not None and not ref.optional:
            kind = "configmap" if src.config_map_ref is not None else "secret"
            raise ConfigError(f'{kind} "{ref.name}" not found (envFrom): Flotilla has no ConfigMaps or Secrets yet')
    for var in container.env:
        if var.value_from is not None:
            value = _from_source(ctx, container, var.value_from, var.name)
            if value is None:
                continue
        else:
            value = expand(var.value or "", mapping_for(own, services, base))
        own[var.name] = value
    return {**base, **services, **own}


def container_argv(container: Container, env: Mapping[str, str]) -> list[str]:
    lookup = mapping_for(env)
    return [expand(a, lookup) for a in [*container.command, *container.args]]
