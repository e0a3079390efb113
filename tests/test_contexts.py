"""Flotilla context files: parsing and its errors, which context wins, and the files `flotilla up`
writes (its Flotilla context and the `nats` CLI's). The TLS/auth end of contexts is in test_tls.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flotilla.contexts import (ContextError, ResolvedContext, default_config_path, load, nats_context_path,
                               resolve, write_cluster_contexts, write_nats_cli_context)
from flotilla.credentials import ClusterCredentials
from flotilla.natsserver import free_port

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config(current: str | None, *contexts: tuple[str, str], extra: str = "") -> str:
    lines = ["apiVersion: flotilla.io/v1", "kind: Config"]
    if current:
        lines.append(f"current-context: {current}")
    lines.append("contexts:" if contexts else "contexts: []")
    for name, server in contexts:
        lines += [f"- name: {name}", f"  server: {server}"]
    return "\n".join(lines) + "\n" + extra


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose XDG_CONFIG_HOME is empty, with none of the variables that pick a server."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "config")}


# ---- the file and its errors ------------------------------------------------------------------

def test_load_reads_every_field(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", config("a", ("a", "nats://h:1"), ("b", "nats://h:2")).replace(
        "  server: nats://h:1\n",
        "  server: nats://h:1\n  creds: /x/admin.creds\n  ca: /x/ca.pem\n  natsContext: flotilla-a\n"))
    cfg = load(path)
    assert cfg.current_context == "a"
    a = cfg.get("a")
    assert a is not None and (a.server, a.creds, a.ca, a.nats_context) == \
        ("nats://h:1", "/x/admin.creds", "/x/ca.pem", "flotilla-a")
    assert cfg.get("b") is not None and cfg.get("b").creds is None


@pytest.mark.parametrize(("text", "expected"), [
    (config("a", ("a", "nats://h:1")).replace("server: nats://h:1", "server: 4222"), "$.contexts[0].server"),
    (config("a", ("a", "nats://h:1")).replace("server: nats://h:1", "server: nats://h:1\n  sever: x"), "sever"),
    (config("a", ("a", "nats://h:1")).replace("  server: nats://h:1\n", ""), "server"),
    (config("a", ("a", "nats://h:1")).replace("flotilla.io/v1", "v1"), "apiVersion"),
    (config("a", ("a", "nats://h:1"), ("a", "nats://h:2")), "contexts[1].name 'a' appears twice"),
    (config("a", ("a", "''")), "contexts[0].server is empty"),
    ("contexts: [\n", "not valid YAML"),
])
def test_bad_file_names_the_file_and_the_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ContextError) as err:
        load(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_current_context_that_does_not_exist(home: dict[str, str]) -> None:
    write(default_config_path(home), config("gone", ("a", "nats://h:1")))
    with pytest.raises(ContextError, match="current-context 'gone' is not among its contexts \\(a\\)"):
        resolve(env=home)


# ---- which context wins -----------------------------------------------------------------------

def test_precedence_flag_then_env_then_default_file(tmp_path: Path, home: dict[str, str]) -> None:
    write(default_config_path(home), config("dflt", ("dflt", "nats://d:1"), ("named", "nats://n:1")))
    flag_file = write(tmp_path / "flag.yaml", config("f", ("f", "nats://f:1")))
    env_file = write(tmp_path / "env.yaml", config("e", ("e", "nats://e:1")))

    assert resolve(env=home).server == "nats://d:1"  # the default file's current-context
    env = {**home, "FLOTILLA_CONTEXT": str(env_file)}
    assert resolve(env=env).server == "nats://e:1"
    assert resolve(str(flag_file), env=env).server == "nats://f:1"
    # A name (not a path) is a context of the default file.
    assert resolve("named", env=env).server == "nats://n:1"
    assert resolve(env={**home, "FLOTILLA_CONTEXT": "named"}).name == "named"


def test_overrides_and_legacy_environment(tmp_path: Path, home: dict[str, str]) -> None:
    write(default_config_path(home), config("d", ("d", "nats://d:1")).replace(
        "  server: nats://d:1\n", "  server: nats://d:1\n  creds: admin.creds\n  ca: tls/ca.pem\n"))
    got = resolve(env=home)
    base = default_config_path(home).parent
    # Relative paths are relative to the file, as in a kubeconfig.
    assert got == ResolvedContext(server="nats://d:1", creds=str(base / "admin.creds"), ca=str(base / "tls/ca.pem"),
                                  name="d", file=str(default_config_path(home)))
    # An explicit --nats-url replaces the server only; FLOTILLA_NATS_CREDS the creds only.
    got = resolve(nats_url="nats://x:9", env={**home, "FLOTILLA_NATS_CREDS": "/other.creds"})
    assert (got.server, got.creds, got.ca, got.name) == ("nats://x:9", "/other.creds", str(base / "tls/ca.pem"), "d")
    # FLOTILLA_NATS_URL without a chosen context means what it meant before contexts: the default
    # file is not read at all.
    got = resolve(env={**home, "FLOTILLA_NATS_URL": "nats://legacy:1"})
    assert got == ResolvedContext(server="nats://legacy:1")
    got = resolve(env={**home, "FLOTILLA_NATS_URL": "tls://legacy:1", "FLOTILLA_NATS_CREDS": "/c.creds",
                       "FLOTILLA_NATS_CA": "/ca.pem"})
    assert got == ResolvedContext(server="tls://legacy:1", creds="/c.creds", ca="/ca.pem")
    assert resolve(env={**home, "FLOTILLA_NATS_CA": "/ca2.pem"}).ca == "/ca2.pem"  # over the context's
    # ...but a chosen context beats it.
    assert resolve("d", env={**home, "FLOTILLA_NATS_URL": "nats://legacy:1"}).server == "nats://d:1"


def test_no_context_anywhere(home: dict[str, str]) -> None:
    assert resolve(env=home) == ResolvedContext(server="nats://127.0.0.1:4222")
    with pytest.raises(ContextError, match="no context 'prod'.*does not exist"):
        resolve("prod", env=home)


def test_unknown_name_and_ambiguous_file(tmp_path: Path, home: dict[str, str]) -> None:
    write(default_config_path(home), config(None, ("a", "nats://a:1"), ("b", "nats://b:1")))
    with pytest.raises(ContextError, match="no context 'c' in .* \\(it has: a, b\\)"):
        resolve("c", env=home)
    assert resolve(env=home) == ResolvedContext(server="nats://127.0.0.1:4222")  # no current-context
    with pytest.raises(ContextError, match="has no current-context and several contexts"):
        resolve(str(default_config_path(home)), env=home)
    single = write(tmp_path / "one.yaml", config(None, ("only", "nats://o:1")))
    assert resolve(str(single), env=home).name == "only"


# ---- what `flotilla up` writes ----------------------------------------------------------------

def test_nats_cli_context_keys(tmp_path: Path, home: dict[str, str]) -> None:
    path = write_nats_cli_context("flotilla-x", "tls://127.0.0.1:4222", str(tmp_path / "a.creds"),
                                  str(tmp_path / "ca.pem"), "_INBOX.admin", env=home)
    assert path == Path(home["XDG_CONFIG_HOME"]) / "nats" / "context" / "flotilla-x.json"
    body = json.loads(path.read_text())
    # natscli (jsm.go natscontext.Settings) reads exactly these keys.
    assert body == {"description": "Flotilla cluster (flotilla-x)", "url": "tls://127.0.0.1:4222",
                    "creds": str(tmp_path / "a.creds"), "ca": str(tmp_path / "ca.pem"),
                    "inbox_prefix": "_INBOX.admin"}
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_cluster_contexts_merge_and_select(tmp_path: Path, home: dict[str, str]) -> None:
    creds = ClusterCredentials.ensure(tmp_path / "auth")
    admin, reader = str(creds.creds_path("admin")), str(creds.creds_path("reader"))
    # Someone's own context is already there and current.
    write(default_config_path(home), config("mine", ("mine", "nats://mine:1"), ("local", "nats://old:1")))

    paths = write_cluster_contexts("local", "tls://127.0.0.1:5000", admin, str(tmp_path / "ca.pem"), reader, env=home)

    assert paths == [default_config_path(home), nats_context_path("flotilla-local", home),
                     nats_context_path("flotilla-local-reader", home)]
    cfg = load(default_config_path(home))
    assert cfg.current_context == "local"
    assert [c.name for c in cfg.contexts] == ["mine", "local"]  # kept, and the old "local" replaced
    local = cfg.get("local")
    assert local is not None and (local.server, local.creds, local.ca, local.nats_context) == \
        ("tls://127.0.0.1:5000", admin, str(tmp_path / "ca.pem"), "flotilla-local")
    assert cfg.get("mine").server == "nats://mine:1"
    assert json.loads(paths[1].read_text())["inbox_prefix"] == "_INBOX.admin"
    assert json.loads(paths[2].read_text())["creds"] == reader
    assert json.loads(paths[2].read_text())["inbox_prefix"] == "_INBOX.reader"
    got = resolve(env=home)
    assert (got.name, got.creds) == ("local", admin)


# ---- the CLI ------------------------------------------------------------------------------------

def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "NATS_"))}
    return subprocess.run([sys.executable, "-m", "flotilla", *args], capture_output=True, text=True,
                          env={**base, **env}, cwd=REPO, timeout=60)


def test_cli_bad_context_file(tmp_path: Path, home: dict[str, str]) -> None:
    bad = write(tmp_path / "bad.yaml", config("a", ("a", "nats://h:1")).replace("server: nats://h:1", "server: [1]"))
    result = cli(home, "get", "pods", "--context", str(bad))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: bad context file {bad}: Expected `str`, got `array` - at "
                                          f"`$.contexts[0].server`"]


def test_cli_uses_the_chosen_context(tmp_path: Path, home: dict[str, str]) -> None:
    """Which server the CLI dials shows in its connect error: nothing listens on these ports."""
    dead = [free_port() for _ in range(3)]
    write(default_config_path(home), config("d", ("d", f"nats://127.0.0.1:{dead[0]}")))
    env_file = write(tmp_path / "env.yaml", config("e", ("e", f"nats://127.0.0.1:{dead[1]}")))
    flag_file = write(tmp_path / "flag.yaml", config("f", ("f", f"nats://127.0.0.1:{dead[2]}")))

    def dialed(env: dict[str, str], *args: str) -> str:
        result = cli(env, "get", "pods", "--timeout", "1", *args)
        assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
        return result.stderr

    assert f"at nats://127.0.0.1:{dead[0]}:" in dialed(home)
    assert f'context "d" from {default_config_path(home)}' in dialed(home)
    env = {**home, "FLOTILLA_CONTEXT": str(env_file)}
    assert f"at nats://127.0.0.1:{dead[1]}:" in dialed(env)
    assert f"at nats://127.0.0.1:{dead[2]}:" in dialed(env, "--context", str(flag_file))
    assert f"at nats://127.0.0.1:{dead[0]}:" in dialed(env, "--context", "d")
