"""Authorization: RBAC-like roles (verbs × resources, optionally × names and namespaces) bound to
principals, read from a YAML table (rbac.yaml beside this file, or `--authorization-config PATH`).

Checked on every request, so the table is compiled per principal into a dict keyed by
(resource, verb): an allowed request costs two dict lookups. Only rules limited to names or
namespaces need the request's target, read with a lenient decoder that skips everything else."""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import msgspec
import yaml

from schemas import RESOURCES, ApiError, Resource
from schemas.resources import VERBS

DEFAULT_CONFIG = Path(__file__).with_name("rbac.yaml")
MAX_CACHED_PRINCIPALS = 65536  # glob-bound principals are compiled on first sight; an unbounded
# stream of made-up names (open NATS) must not grow the cache for ever


class Rule(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    verbs: list[str]
    resources: list[str]
    names: list[str] | None = None
    namespaces: list[str] | None = None

    def describe(self, role: str) -> str:
        text = f"role {role} allows {','.join(self.verbs)} on {','.join(self.resources)}"
        if self.names:
            text += f" named {','.join(self.names)}"
        if self.namespaces:
            text += f" in namespace {','.join(self.namespaces)}"
        return text


class Binding(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    role: str
    principals: list[str]


class RateLimit(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    qps: float
    burst: int


class AuthorizationConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel", frozen=True):
    roles: dict[str, list[Rule]]
    bindings: list[Binding]
    api_version: str = "flotilla.io/v1"
    kind: str = "AuthorizationConfig"
    rate_limits: dict[str, RateLimit] = msgspec.field(default_factory=dict)


class ConfigError(ValueError):
    pass


def load_config(path: str | Path | None = None) -> AuthorizationConfig:
    p = Path(path) if path else DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"authorization config {p}: {exc}") from None
    try:
        cfg = msgspec.convert(raw, AuthorizationConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"authorization config {p}: {exc}") from None
    for role, rules in cfg.roles.items():
        for rule in rules:
            bad = [v for v in rule.verbs if v != "*" and v not in VERBS]
            bad += [r for r in rule.resources if r != "*" and r not in RESOURCES]
            if bad:
                raise ConfigError(f"authorization config {p}: role {role}: unknown verb or resource {bad}")
    for b in cfg.bindings:
        if b.role not in cfg.roles:
            raise ConfigError(f"authorization config {p}: binding to undefined role {b.role!r}")
    return cfg


class _Meta(msgspec.Struct):
    name: str | None = None
    namespace: str | None = None


class _Target(msgspec.Struct):
    """What a names/namespaces rule looks at: `metadata` in object bodies, the top level in requests.
    Unknown fields are skipped (not validated: the verb's strict decoder does that)."""
    name: str | None = None
    namespace: str | None = None
    metadata: _Meta | None = None


_TARGET = msgspec.json.Decoder(_Target)
_OBJECT_BODY_VERBS = frozenset(("create", "update", "status"))

# A grant: ALLOW (unconditional) or the (names, namespaces) pairs of which one must match.
ALLOW = True
Grant = bool | tuple[tuple[frozenset[str] | None, frozenset[str] | None], ...]


class Grants(msgspec.Struct):
    principal: str
    roles: list[str]
    table: dict[tuple[str, str], Grant]
    rules: list[tuple[str, Rule]]


def forbidden(principal: str, verb: str, resource: str, why: str) -> ApiError:
    return ApiError("Forbidden", f'user "{principal}" cannot {verb} {resource}: {why}')


class Authorizer:
    def __init__(self, cfg: AuthorizationConfig):
        self.cfg = cfg
        self._exact: dict[str, list[str]] = {}
        self._globs: list[tuple[str, str]] = []
        for b in cfg.bindings:
            for p in b.principals:
                if any(ch in p for ch in "*?["):
                    self._globs.append((p, b.role))
                else:
                    self._exact.setdefault(p, []).append(b.role)
        self._compiled: dict[str, Grants] = {}
        self._messages: dict[tuple[str, str, str], str] = {}

    def roles_of(self, principal: str) -> list[str]:
        roles = list(self._exact.get(principal, ()))
        roles += [role for pattern, role in self._globs if fnmatch.fnmatchcase(principal, pattern) and role not in roles]
        return roles

    def grants(self, principal: str) -> Grants:
        g = self._compiled.get(principal)
        if g is None:
            g = self._compile(principal)
            if len(self._compiled) < MAX_CACHED_PRINCIPALS:
                self._compiled[principal] = g
        return g

    def _compile(self, principal: str) -> Grants:
        roles = self.roles_of(principal)
        table: dict[tuple[str, str], Any] = {}
        rules: list[tuple[str, Rule]] = []
        for role in roles:
            for rule in self.cfg.roles[role]:
                rules.append((role, rule))
                verbs = VERBS if "*" in rule.verbs else rule.verbs
                resources = RESOURCES.values() if "*" in rule.resources else [RESOURCES[r] for r in rule.resources]
                cond = None
                if rule.names or rule.namespaces:
                    cond = (frozenset(rule.names) if rule.names else None,
                            frozenset(rule.namespaces) if rule.namespaces else None)
                for r in resources:
                    for v in verbs:
                        if v not in r.verbs:
                            continue
                        key = (r.name, v)
                        have = table.get(key)
                        if have is ALLOW:
                            continue
                        table[key] = ALLOW if cond is None else (*(have or ()), cond)
        return Grants(principal, roles, table, rules)

    def check(self, principal: str, resource: Resource, verb: str, body: bytes) -> None:
        """Raise Forbidden unless a rule of the principal's roles allows this request."""
        g = self.grants(principal)
        grant = g.table.get((resource.name, verb))
        if grant is ALLOW:
            return
        if grant is not None and self._conditional(grant, resource, verb, body):
            return
        raise forbidden(principal, verb, resource.name, self._why(g, resource.name, verb))

    @staticmethod
    def _conditional(grant: Grant, resource: Resource, verb: str, body: bytes) -> bool:
        try:
            t = _TARGET.decode(body or b"{}")
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False  # no target to judge: refused (the admin's requests never come here)
        src = t.metadata if verb in _OBJECT_BODY_VERBS else t
        if src is None:
            src = _Meta()
        name = src.name if verb not in ("list", "watch") else None
        namespace = (src.namespace or (None if verb in ("list", "watch") else "default")) if resource.namespaced else None
        for names, namespaces in grant:  # type: ignore[union-attr]
            if names is not None and name not in names:
                continue
            if namespaces is not None and namespace not in namespaces:
                continue
            return True
        return False

    def _why(self, g: Grants, resource: str, verb: str) -> str:
        key = (g.principal, resource, verb)
        msg = self._messages.get(key)
        if msg is None:
            if not g.roles:
                msg = f'no role is bound to user "{g.principal}"'
            else:
                relevant = [rule.describe(role) for role, rule in g.rules
                            if "*" in rule.resources or resource in rule.resources]
                msg = "; ".join(relevant) if relevant else \
                    f"no rule of its roles ({', '.join(g.roles)}) covers {resource}"
            if len(self._messages) < MAX_CACHED_PRINCIPALS:
                self._messages[key] = msg
        return msg



def rate_limit_of(cfg: AuthorizationConfig, principal: str) -> tuple[float, int] | None:
    """The table's (qps, burst) for a principal (exact name first, then globs), or None."""
    hit = cfg.rate_limits.get(principal)
    if hit is None:
        hit = next((limit for pattern, limit in cfg.rate_limits.items()
                    if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(principal, pattern)), None)
    return (hit.qps, hit.burst) if hit is not None else None
