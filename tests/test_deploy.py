"""The compose deployment: compose.yaml is valid, names real services and gives each its own
credentials from the secrets directory `flotilla credentials generate` writes; that directory's
nats-server config, run by a real nats-server with a real API server started from compose's own
environment, refuses anonymous and CA-less clients and keeps a node to its own subjects."""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
import yaml
from cryptography import x509
from nats.aio.client import Client

from flotilla.natsserver import find_binary, free_port
from requirements import need
from schemas import ApiError
from services.apiserver.bootstrap import CREATE_SUBJECT, BootstrapToken, TokenRequest
from services.lib import permissions
from services.lib.client import Api
from services.lib.codec import encode, raise_for_status
from services.lib.natsjwt import principal_of_creds
from services.lib.tls import client_ssl_context

ROOT = Path(__file__).resolve().parent.parent
SECRETS = "/run/secrets/"
POD = {"metadata": {"name": "web-1", "namespace": "default"},
       "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "1"]}]}}


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the caller's FLOTILLA_*/NATS_* settings: only compose's apply."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "NATS_"))}, **extra}


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def generate(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, as a user runs it next to compose.yaml (but in a temporary copy)."""
    out = subprocess.run([sys.executable, "-m", "flotilla.commands.credentials", "generate", *args],
                         capture_output=True, text=True, cwd=cwd, env=clean_env(PYTHONPATH=str(ROOT)),
                         timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    return out


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A copy of compose.yaml with a freshly generated ./secrets beside it."""
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    generate(tmp_path)
    return tmp_path


def secret_file(doc: dict[str, Any], deployment: Path, name: str) -> Path:
    return deployment / doc["secrets"][name]["file"]


def on_host(doc: dict[str, Any], deployment: Path, service: str, nats_url: str) -> dict[str, str]:
    """A service's compose environment, its /run/secrets/<name> paths mapped to the host's files."""
    env = {}
    for key, value in doc["services"][service]["environment"].items():
        value = str(value)
        if value.startswith(SECRETS):
            name = value[len(SECRETS):]
            assert name in doc["services"][service].get("secrets", []), f"{service}: {key} names {name}, not mounted"
            value = str(secret_file(doc, deployment, name))
        env[key] = value
    env["FLOTILLA_NATS_URL"] = nats_url
    return env


def expected_principal(name: str, svc: dict[str, Any]) -> str:
    module = svc["command"][0]
    if module == "services.nodeagent":
        return permissions.node_principal(svc["command"][svc["command"].index("--node-name") + 1])
    return module.removeprefix("services.")


# ---- compose.yaml and the generated directory ---------------------------------------------------------

def test_compose_names_real_services() -> None:
    services = compose()["services"]
    assert "nats" in services
    apiservers = [n for n in services if n.startswith("apiserver")]
    assert len(apiservers) >= 2, "the API server runs as two replicas"
    for name, svc in services.items():
        if name == "nats":
            continue
        module = svc["command"][0]
        assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
        assert importlib.util.find_spec(module + ".__main__") is not None, f"{name}: {module} is not runnable"
    assert (ROOT / "deploy" / "Dockerfile").exists()


def test_compose_gives_each_service_its_own_credentials(deployment: Path) -> None:
    text = (ROOT / "compose.yaml").read_text().lower()
    assert "password" not in text and "flotilla_nats_user" not in text
    doc = compose()
    for name, svc in doc["services"].items():
        if name == "nats":
            continue
        env = svc["environment"]
        assert str(env["FLOTILLA_NATS_URL"]).startswith("tls://"), f"{name}: the bus is TLS in compose"
        assert env["FLOTILLA_NATS_CA"] == SECRETS + "ca" and "ca" in svc["secrets"], name
        creds = str(env["FLOTILLA_NATS_CREDS"])
        assert creds.startswith(SECRETS), name
        secret = creds[len(SECRETS):]
        assert secret in svc["secrets"], f"{name}: {secret} is not mounted"
        # The file behind the secret is the principal's own, not a shared one.
        assert principal_of_creds(secret_file(doc, deployment, secret)) == expected_principal(name, svc), name
        if name.startswith("apiserver"):
            assert env["FLOTILLA_BOOTSTRAP_ISSUER"] == SECRETS + "issuer" and "issuer" in svc["secrets"], name
        else:
            assert "issuer" not in svc["secrets"], f"{name} must not hold the account's signing key"
    nats_svc = doc["services"]["nats"]
    assert nats_svc["command"] == ["-c", SECRETS + "nats-config"]
    assert {"nats-config", "nats-tls-cert", "nats-tls-key"} <= set(nats_svc["secrets"])
    conf = secret_file(doc, deployment, "nats-config").read_text()
    assert f'cert_file: "{SECRETS}nats-tls-cert"' in conf and f'key_file: "{SECRETS}nats-tls-key"' in conf


def test_generate_writes_every_secret_compose_references(deployment: Path) -> None:
    doc = yaml.safe_load((deployment / "compose.yaml").read_text())
    used = {s for svc in doc["services"].values() for s in svc.get("secrets", [])}
    assert used == set(doc["secrets"]), "every declared secret is used, every used one declared"
    for name, spec in doc["secrets"].items():
        path = deployment / spec["file"]
        assert path.is_file(), f"secret {name}: {spec['file']} was not generated"
        assert path.stat().st_mode & 0o777 == 0o600, f"{path} is not 0600"
        assert path.resolve().is_relative_to((deployment / "secrets").resolve()), name
    for folder in (deployment / "secrets").rglob("*"):
        if folder.is_dir():
            assert folder.stat().st_mode & 0o777 == 0o700, folder
    assert (deployment / "secrets").stat().st_mode & 0o777 == 0o700


def test_generate_is_idempotent_and_adds_node_credentials(deployment: Path) -> None:
    secrets = deployment / "secrets"
    kept = {p: p.read_bytes() for p in [secrets / "keys.json", secrets / "tls" / "ca.pem", secrets / "tls" / "ca-key.pem",
                                         secrets / "tls" / "server-key.pem", *(secrets / "creds").glob("*.creds")]}
    kept[secrets / "tls" / "server.pem"] = (secrets / "tls" / "server.pem").read_bytes()
    again = generate(deployment)
    for path, data in kept.items():
        assert path.read_bytes() == data, f"a rerun replaced {path}"
    assert "wrote" not in again.stdout
    del kept[secrets / "tls" / "server.pem"], kept[secrets / "tls" / "server-key.pem"]  # a new name: reissued

    assert not (secrets / "creds" / "node-node-4.creds").exists()
    out = generate(deployment, "--nodes", "4", "--host", "nats.example.org")
    for path, data in kept.items():
        assert path.read_bytes() == data, f"a rerun replaced {path}"
    new = secrets / "creds" / "node-node-4.creds"
    assert principal_of_creds(new) == "node-node-4" and new.stat().st_mode & 0o777 == 0o600
    assert "wrote secrets/creds/node-node-4.creds" in out.stdout and "keys.json" not in out.stdout
    assert "docker compose up" in out.stdout
    # a new name for the certificate: reissued by the same CA, the old names kept
    pem = (secrets / "tls" / "server.pem").read_text()
    sans = x509.load_pem_x509_certificate(pem.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert {"nats", "nats.example.org", "localhost"} <= set(sans.get_values_for_type(x509.DNSName))


def test_credentials_generate_is_a_cli_command(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "flotilla.cli", "credentials", "generate", "--dir", "s", "--nodes", "1"],
                         capture_output=True, text=True, cwd=tmp_path, env=clean_env(PYTHONPATH=str(ROOT)),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "s" / "creds" / "node-node-1.creds").is_file() and (tmp_path / "s" / "nats-server.conf").is_file()


def test_the_secrets_directory_is_git_ignored() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("secrets/keys.json", "secrets/creds/admin.creds", "secrets/tls/ca-key.pem"):
        out = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert out.returncode == 0, f"{path} is not git-ignored: `secrets/` must be in .gitignore"


def test_docker_compose_config_accepts_it(deployment: Path) -> None:
    need(shutil.which("docker-compose") is not None, "docker-compose is not installed (.ci/run installs it)")
    out = subprocess.run(["docker-compose", "-f", str(deployment / "compose.yaml"), "config", "-q"],
                         capture_output=True, text=True, cwd=deployment, timeout=120)
    assert out.returncode == 0, out.stderr


def container_paths_to_host(conf: str, deployment: Path, *, port: int | None = None) -> str:
    """The generated config with the container's paths (and optionally its ports) moved to the host's."""
    doc = compose()
    swaps = {f'"{SECRETS}nats-tls-cert"': f'"{secret_file(doc, deployment, "nats-tls-cert")}"',
             f'"{SECRETS}nats-tls-key"': f'"{secret_file(doc, deployment, "nats-tls-key")}"',
             '"/data/jetstream"': f'"{deployment / "js"}"'}
    if port is not None:
        swaps |= {"\nport: 4222\n": f"\nhost: 127.0.0.1\nport: {port}\n", "\nhttp_port: 8222\n": "\n"}
    for old, new in swaps.items():
        assert conf.count(old) == 1, f"{old} not once in the generated config"
        conf = conf.replace(old, new)
    return conf


def test_generated_nats_config_is_valid(deployment: Path) -> None:
    conf = deployment / "host.conf"
    conf.write_text(container_paths_to_host((deployment / "secrets" / "nats-server.conf").read_text(), deployment))
    out = subprocess.run([find_binary(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout


# ---- a real nats-server and API server from the generated files ------------------------------------

class Cluster:
    """nats-server running the generated config on a free loopback port, and an API server started
    with apiserver-1's compose environment (its secrets mapped to the host's files)."""

    def __init__(self, deployment: Path):
        self.deployment = deployment
        self.port = free_port()
        self.url = f"tls://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def log(self, name: str) -> str:
        return (self.deployment / f"{name}.log").read_text(errors="replace")

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.deployment / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        conf = self.deployment / "nats.conf"
        conf.write_text(container_paths_to_host((self.deployment / "secrets" / "nats-server.conf").read_text(),
                                                self.deployment, port=self.port))
        (self.deployment / "nats.log").write_bytes(b"")
        nats_proc = self.spawn("nats", [find_binary(), "-c", str(conf)])
        deadline = time.monotonic() + 30
        while b"Server is ready" not in (self.deployment / "nats.log").read_bytes():
            assert nats_proc.poll() is None and time.monotonic() < deadline, self.log("nats")
            time.sleep(0.1)
        self.apiserver = self.spawn("apiserver", [sys.executable, "-m", "services.apiserver"],
                                    clean_env(**on_host(compose(), self.deployment, "apiserver-1", self.url)))

    def stop(self) -> None:
        for p in reversed(self.procs):  # SIGTERM: nats-server flushes JetStream as it exits
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()

    async def wait_api(self, api: Api, wait_for: Any) -> None:
        async def up() -> bool:
            assert self.apiserver.poll() is None, self.log("apiserver")
            try:
                return (await api.namespaces.get("default")).metadata.name == "default"
            except ApiError:
                return False

        await wait_for(up, timeout=60, what="the API server, on the generated apiserver creds")


@pytest.fixture
def secured(deployment: Path) -> Iterator[Cluster]:
    cluster = Cluster(deployment)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class Conn:
    """A connection as one principal that records the errors the server sends it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc))

    def violations(self, subject: str) -> list[str]:
        return [e for e in self.errors if f'permissions violation for publish to "{subject.lower()}"' in e.lower()]


async def as_principal(url: str, deployment: Path, creds: str, ca: Path | None) -> Conn:
    c = Conn()
    c.nc = await nats.connect(url, user_credentials=str(deployment / "secrets" / "creds" / f"{creds}.creds"),
                              inbox_prefix=permissions.inbox(creds), tls=client_ssl_context(str(ca)) if ca else None,
                              error_cb=c.on_error, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)
    return c


async def test_the_generated_config_secures_the_bus(secured, wait_for) -> None:
    deployment, url = secured.deployment, secured.url
    ca = deployment / "secrets" / "tls" / "ca.pem"
    admin = await as_principal(url, deployment, "admin", ca)
    node = await as_principal(url, deployment, "node-node-1", ca)
    try:
        api = Api(admin.nc, timeout=5, retries=1)
        await secured.wait_api(api, wait_for)
        # The admin can.
        created = await api.pods.create(POD)
        assert created.metadata.name == "web-1"
        kv = await admin.nc.jetstream().key_value("flotilla")
        assert b'"web-1"' in (await kv.get("pods.default.web-1")).value

        # The host's CLI with the generated context (its admin creds and CA; here on the test's port).
        cli = subprocess.run([sys.executable, "-m", "flotilla.cli", "--context", str(deployment / "secrets" / "context.yaml"),
                              "--nats-url", url, "get", "pods"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                             env=clean_env())
        assert cli.returncode == 0 and "web-1" in cli.stdout, cli.stderr

        # A node uses its node-scoped subjects ...
        node_api = Api(node.nc, node="node-1", timeout=2, retries=1)
        assert (await node_api.namespaces.get("default")).metadata.name == "default"
        # ... and the API server's node restriction still holds on them.
        with pytest.raises(ApiError) as forbidden:
            await node_api.pods.create({**POD, "metadata": {"name": "web-2", "namespace": "default"}})
        assert forbidden.value.reason == "Forbidden"
        # It cannot write the state log: a permission violation, and nothing is stored.
        await node.nc.publish("$KV.flotilla.pods.default.evil", b"{}")
        await node.nc.flush()
        await wait_for(lambda: node.violations("$KV.flotilla.pods.default.evil"), timeout=10,
                       what="a permissions violation on $KV.flotilla")
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get("pods.default.evil")
        # nor call JetStream, another node's subjects, or the admin's.
        for subject, other in (("$JS.API.STREAM.INFO.KV_flotilla", None),
                               ("flo.api.v1.node.node-2.namespaces.get", Api(node.nc, node="node-2", timeout=1, retries=1)),
                               ("flo.api.v1.namespaces.get", Api(node.nc, timeout=1, retries=1))):
            if other is None:
                with pytest.raises(nats.errors.TimeoutError):
                    await node.nc.request(subject, b"", timeout=1)
            else:
                with pytest.raises(ApiError, match="no reply"):
                    await other.namespaces.get("default")
            await wait_for(lambda: node.violations(subject), timeout=10, what=f"a permissions violation on {subject}")

        # Anonymous (even with the CA): refused.
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(url, tls=client_ssl_context(str(ca)), allow_reconnect=False, max_reconnect_attempts=0,
                               connect_timeout=5)
        # Good credentials but not the cluster's CA: the server's certificate is not trusted, over
        # tls:// and over nats:// (the server demands TLS either way).
        for without_ca in (url, url.replace("tls://", "nats://")):
            with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
                c = await as_principal(without_ca, deployment, "admin", None)
                await c.nc.close()
    finally:
        await admin.nc.close()
        await node.nc.close()


async def test_a_node_joins_with_a_bootstrap_token(secured, wait_for) -> None:
    """The API servers hold the issuer (compose's FLOTILLA_BOOTSTRAP_ISSUER): a node added later
    joins with a token instead of generated credentials (docs/compose.md, adding a node)."""
    deployment, url = secured.deployment, secured.url
    ca = deployment / "secrets" / "tls" / "ca.pem"
    admin = await as_principal(url, deployment, "admin", ca)
    try:
        api = Api(admin.nc, timeout=5, retries=1)

        async def token() -> BootstrapToken | None:
            assert secured.apiserver.poll() is None, secured.log("apiserver")
            try:
                reply = await admin.nc.request(CREATE_SUBJECT, encode(TokenRequest(node_name="node-4")), timeout=5)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                return None
            raise_for_status(reply.data)  # "node join is not configured" without the issuer
            return msgspec.json.decode(reply.data, type=BootstrapToken)

        minted = await wait_for(token, timeout=60, what="a bootstrap token from the API server")
        # nodeagent-1's compose service, as a fourth node: no creds of its own, the token instead.
        doc = compose()
        svc = doc["services"]["nodeagent-1"]
        env = on_host(doc, deployment, "nodeagent-1", url)
        del env["FLOTILLA_NATS_CREDS"]
        env |= {"FLOTILLA_BOOTSTRAP_TOKEN": minted.token, "FLOTILLA_IDENTITY": "nodeagent-4",
                "XDG_STATE_HOME": str(deployment / "state")}
        argv = [a if a != "node-1" else "node-4" for a in svc["command"]]
        agent = secured.spawn("nodeagent", [sys.executable, "-m", *argv], clean_env(**env))

        async def registered() -> bool:
            assert agent.poll() is None, secured.log("nodeagent")
            try:
                return (await api.nodes.get("node-4")).metadata.name == "node-4"
            except ApiError:
                return False

        await wait_for(registered, timeout=60, what="node-4 to register")
        joined = list((deployment / "state").rglob("node.creds"))
        assert len(joined) == 1 and principal_of_creds(joined[0]) == "node-node-4"
    finally:
        await admin.nc.close()


async def test_rotate_remakes_every_credential_and_keeps_the_state(secured, wait_for) -> None:
    deployment, url = secured.deployment, secured.url
    secrets = deployment / "secrets"
    ca = secrets / "tls" / "ca.pem"
    admin = await as_principal(url, deployment, "admin", ca)
    try:
        api = Api(admin.nc, timeout=5, retries=1)
        await secured.wait_api(api, wait_for)
        await api.pods.create(POD)
    finally:
        await admin.nc.close()
    secured.stop()
    old = deployment / "old-admin.creds"
    shutil.copy(secrets / "creds" / "admin.creds", old)
    old_creds = {p.name: p.read_bytes() for p in (secrets / "creds").glob("*.creds")}

    out = generate(deployment, "--rotate")
    assert "docker compose up -d --force-recreate" in out.stdout
    for name, data in old_creds.items():
        assert (secrets / "creds" / name).read_bytes() != data, f"{name} was not remade"
    assert set(old_creds) <= {p.name for p in (secrets / "creds").glob("*.creds")}

    secured.start()  # same port and store, the rotated config and credentials
    admin = await as_principal(url, deployment, "admin", ca)
    try:
        api = Api(admin.nc, timeout=5, retries=1)
        await secured.wait_api(api, wait_for)
        assert (await api.pods.get("web-1")).metadata.name == "web-1", "the state log was lost"
    finally:
        await admin.nc.close()
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(url, user_credentials=str(old), tls=client_ssl_context(str(ca)), allow_reconnect=False,
                           max_reconnect_attempts=0, connect_timeout=5)
