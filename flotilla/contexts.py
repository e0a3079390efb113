"""Flotilla context files (a kubeconfig for the bus), and the matching `nats` CLI contexts.

The file (default `$XDG_CONFIG_HOME/flotilla/config`, see docs/contexts.md):

    apiVersion: flotilla.io/v1
    kind: Config
    current-context: local
    contexts:
    - name: local
      server: nats://127.0.0.1:4222
      creds: /abs/path/admin.creds
      ca: /abs/path/ca.pem
      natsContext: flotilla-local

Which context the CLI uses (resolve()):
1. `--context X`, else env FLOTILLA_CONTEXT=X: X is a context file (a path: it contains a `/` or
   names an existing file; its current-context, or its only context), else the name of a context
   in the default file.
2. Else, unless FLOTILLA_NATS_URL / NATS_URL is set (an older habit that keeps meaning what it
   meant), the default file's current-context.
3. Else none: the URL and credentials come from flags and FLOTILLA_NATS_* as before contexts.
An explicit `--nats-url` overrides the context's server, FLOTILLA_NATS_CREDS its creds,
FLOTILLA_NATS_CA its CA (the variables the services read).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import msgspec
import msgspec.yaml

from services.lib import natsjwt, permissions

API_VERSION = "flotilla.io/v1"
KIND = "Config"


class ContextError(Exception):
    """A context file that cannot be used, or a context that does not exist; the message says which."""


class NamedContext(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True,
                   rename={"nats_context": "natsContext"}):
    name: str
    server: str
    creds: str | None = None
    ca: str | None = None
    nats_context: str | None = None


class ConfigFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True,
                 rename={"api_version": "apiVersion", "current_context": "current-context"}):
    api_version: str = API_VERSION
    kind: str = KIND
    current_context: str | None = None
    contexts: list[NamedContext] = msgspec.field(default_factory=list)

    def get(self, name: str) -> NamedContext | None:
        return next((c for c in self.contexts if c.name == name), None)


class ResolvedContext(msgspec.Struct, kw_only=True, frozen=True):
    """What the CLI connects with. `name`/`file` are None when no context file was involved."""
    server: str
    creds: str | None = None
    ca: str | None = None
    name: str | None = None
    file: str | None = None
    nats_context: str | None = None

    def describe(self) -> str:
        """For error lines: which context (and file) was used."""
        if self.name is None:
            return "no context"
        return f'context "{self.name}" from {self.file}'


class NatsCliContext(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The keys natscli (jsm.go natscontext.Settings) reads from `<name>.json`."""
    description: str = ""
    url: str = ""
    creds: str = ""
    ca: str = ""
    inbox_prefix: str = ""


# -- paths --------------------------------------------------------------------------------------

def config_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    return config_home(env) / "flotilla" / "config"


def nats_context_path(name: str, env: Mapping[str, str] | None = None) -> Path:
    return config_home(env) / "nats" / "context" / f"{name}.json"


# -- reading and writing ------------------------------------------------------------------------

def load(path: str | Path) -> ConfigFile:
    """Read and check a context file; ContextError names the file and the offending field."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ContextError(f"context file {path} does not exist") from None
    except OSError as e:
        raise ContextError(f"cannot read context file {path}: {e.strerror or e}") from None
    if not data.strip():
        return ConfigFile()
    try:
        cfg = msgspec.yaml.decode(data, type=ConfigFile)
    except msgspec.ValidationError as e:
        # msgspec says e.g. "Expected `str`, got `int` - at `$.contexts[0].server`"
        raise ContextError(f"bad context file {path}: {e}") from None
    except msgspec.DecodeError as e:
        raise ContextError(f"context file {path} is not valid YAML: {e}") from None
    if cfg.api_version != API_VERSION:
        raise ContextError(f"bad context file {path}: apiVersion is {cfg.api_version!r}, expected {API_VERSION!r}")
    if cfg.kind != KIND:
        raise ContextError(f"bad context file {path}: kind is {cfg.kind!r}, expected {KIND!r}")
    seen: set[str] = set()
    for i, c in enumerate(cfg.contexts):
        if not c.name:
            raise ContextError(f"bad context file {path}: contexts[{i}].name is empty")
        if c.name in seen:
            raise ContextError(f"bad context file {path}: contexts[{i}].name {c.name!r} appears twice")
        seen.add(c.name)
        if not c.server.strip():
            raise ContextError(f"bad context file {path}: contexts[{i}].server is empty (context {c.name!r})")
    return cfg


def save(path: str | Path, cfg: ConfigFile) -> None:
    # 0600: the file names credential files; nobody else needs to learn where they are.
    _write_atomic(Path(path), msgspec.yaml.encode(cfg), 0o600)


# -- resolution ---------------------------------------------------------------------------------

def resolve(flag: str | None = None, *, nats_url: str | None = None,
            env: Mapping[str, str] | None = None) -> ResolvedContext:
    """What the CLI connects with: see the module docstring for the order.

    `flag` is `--context`, `nats_url` an explicit `--nats-url` (None when not given)."""
    env = os.environ if env is None else env
    selector = flag or env.get("FLOTILLA_CONTEXT") or None
    chosen: tuple[NamedContext, Path] | None = None
    if selector:
        chosen = _select(selector, env)
    elif not (env.get("FLOTILLA_NATS_URL") or env.get("NATS_URL")):
        default = default_config_path(env)
        if default.is_file():
            cfg = load(default)
            if cfg.current_context:
                ctx = cfg.get(cfg.current_context)
                if ctx is None:
                    raise ContextError(f"bad context file {default}: current-context {cfg.current_context!r} "
                                       f"is not among its contexts ({_names(cfg)})")
                chosen = (ctx, default)

    # The services' variables (services/lib/config.py) override a context's creds and CA.
    env_creds = env.get("FLOTILLA_NATS_CREDS") or None
    env_ca = env.get("FLOTILLA_NATS_CA") or None
    if chosen is None:
        server = nats_url or env.get("FLOTILLA_NATS_URL") or env.get("NATS_URL") or "nats://127.0.0.1:4222"
        return ResolvedContext(server=server, creds=env_creds, ca=env_ca)
    ctx, file = chosen
    return ResolvedContext(
        server=nats_url or ctx.server,
        creds=env_creds or _relative_to(ctx.creds, file),
        ca=env_ca or _relative_to(ctx.ca, file),
        name=ctx.name, file=str(file), nats_context=ctx.nats_context,
    )


def _select(selector: str, env: Mapping[str, str]) -> tuple[NamedContext, Path]:
    as_path = Path(selector).expanduser()
    if os.sep in selector or selector.startswith("~") or as_path.is_file():
        cfg = load(as_path)
        name = cfg.current_context or (cfg.contexts[0].name if len(cfg.contexts) == 1 else None)
        if name is None:
            raise ContextError(f"context file {as_path} has no current-context and "
                               f"{'no' if not cfg.contexts else 'several'} contexts ({_names(cfg)})")
        ctx = cfg.get(name)
        if ctx is None:
            raise ContextError(f"bad context file {as_path}: current-context {name!r} is not among its "
                               f"contexts ({_names(cfg)})")
        return ctx, as_path.absolute()
    default = default_config_path(env)
    if not default.is_file():
        raise ContextError(f"no context {selector!r}: {default} does not exist and {selector!r} is not a file "
                           f"(run `flotilla up`, or give the path of a context file)")
    cfg = load(default)
    ctx = cfg.get(selector)
    if ctx is None:
        raise ContextError(f"no context {selector!r} in {default} (it has: {_names(cfg)})")
    return ctx, default


def _names(cfg: ConfigFile) -> str:
    return ", ".join(c.name for c in cfg.contexts) or "none"


def _relative_to(value: str | None, file: Path) -> str | None:
    """Paths in a context file are taken relative to the file, as kubectl does with kubeconfig."""
    if not value:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (file.parent / p))


# -- credentials --------------------------------------------------------------------------------

def creds_name(path: str | Path) -> str:
    """The `name` claim of the user JWT in a NATS creds file (the principal, e.g. "admin").

    Only decoded, not verified: the server verifies; the client only needs the name to pick the
    inbox prefix and the API subjects its permissions allow."""
    try:
        return natsjwt.principal_of_creds(path)
    except natsjwt.JwtError as e:
        raise ContextError(str(e)) from None


def inbox_prefix_for(creds: str | None) -> str | None:
    """`_INBOX.<principal>` for a connection with credentials (its only allowed inbox), else None
    (nats-py's default `_INBOX`)."""
    return permissions.inbox(creds_name(creds)) if creds else None


# -- writing contexts for `flotilla up` ---------------------------------------------------------

def write_nats_cli_context(name: str, url: str, creds: str | None, ca: str | None,
                           inbox_prefix: str | None, *, description: str = "",
                           env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/nats/context/<name>.json`, for `nats --context <name> ...`.

    The nats CLI's selected context (context.txt) is left alone: choosing it is the user's call."""
    path = nats_context_path(name, env)
    body = NatsCliContext(description=description or f"Flotilla cluster ({name})", url=url,
                          creds=_abs(creds), ca=_abs(ca), inbox_prefix=inbox_prefix or "")
    _write_atomic(path, json.dumps(msgspec.to_builtins(body), indent=2).encode() + b"\n", 0o600)
    return path


def write_cluster_contexts(name: str, url: str, admin_creds: str | None, ca: str | None,
                           reader_creds: str | None = None, *,
                           env: Mapping[str, str] | None = None) -> list[Path]:
    """What `flotilla up` writes: the admin context `name` (made current) in the default Flotilla
    file, kept alongside the user's other contexts, and the nats CLI contexts `flotilla-<name>`
    (admin) and `flotilla-<name>-reader`. Returns the paths written."""
    nats_name = f"flotilla-{name}"
    default = default_config_path(env)
    cfg = load(default) if default.is_file() else ConfigFile()
    entry = NamedContext(name=name, server=url, creds=_abs(admin_creds) or None, ca=_abs(ca) or None,
                         nats_context=nats_name)
    others = [c for c in cfg.contexts if c.name != name]
    cfg = ConfigFile(current_context=name, contexts=[*others, entry])
    save(default, cfg)
    written = [default, write_nats_cli_context(
        nats_name, url, admin_creds, ca, inbox_prefix_for(admin_creds),
        description=f"Flotilla cluster {name}: admin", env=env)]
    if reader_creds:
        written.append(write_nats_cli_context(
            f"{nats_name}-reader", url, reader_creds, ca, inbox_prefix_for(reader_creds),
            description=f"Flotilla cluster {name}: read-only", env=env))
    return written


def _abs(path: str | None) -> str:
    return str(Path(path).expanduser().absolute()) if path else ""


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
