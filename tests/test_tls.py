"""TLS for the bus: the generated CA and server certificate (flotilla/tlsgen.py), and the CLI
reaching an API server through a real TLS + auth nats-server with a context, or failing clearly."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats
import pytest
from conftest import ServiceProcess
from cryptography import x509

from flotilla.contexts import write_cluster_contexts
from flotilla.credentials import ClusterCredentials
from flotilla.natsserver import NatsServer
from flotilla.tlsgen import TlsFiles, default_hosts, ensure_tls, nats_tls_config
from natscli import need_nats, run_nats
from services.lib import permissions
from services.lib.tls import client_ssl_context

REPO = Path(__file__).resolve().parent.parent
HOSTS = ["127.0.0.1", "localhost", "nats"]


def sans(path: str) -> set[str]:
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*ext.get_values_for_type(x509.DNSName), *(str(i) for i in ext.get_values_for_type(x509.IPAddress))}


def not_after(path: str) -> dt.datetime:
    return x509.load_pem_x509_certificate(Path(path).read_bytes()).not_valid_after_utc


# ---- the files ----------------------------------------------------------------------------------

def test_generated_files(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path / "tls", [*HOSTS, "::1", "node-a.example"])
    for key in (files.key, str(tmp_path / "tls" / "ca-key.pem")):
        assert os.stat(key).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "tls").st_mode & 0o777 == 0o700
    ca = x509.load_pem_x509_certificate(Path(files.ca).read_bytes())
    server = x509.load_pem_x509_certificate(Path(files.cert).read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    assert sans(files.cert) == {"127.0.0.1", "::1", "localhost", "nats", "node-a.example"}
    now = dt.datetime.now(dt.timezone.utc)
    assert 3640 < (ca.not_valid_after_utc - now).days <= 3650
    assert 360 < (server.not_valid_after_utc - now).days <= 365
    assert ca.public_key().curve.name == "secp256r1" and server.public_key().curve.name == "secp256r1"
    # The server's key is the one the certificate carries (nats-server would refuse otherwise;
    # here the SSL stack checks it).
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files.cert, files.key)


def test_idempotent_and_reissued_when_needed(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    first = ensure_tls(d, HOSTS)
    snapshot = {p.name: p.read_bytes() for p in d.iterdir()}
    assert ensure_tls(d, list(reversed(HOSTS))) == first
    assert {p.name: p.read_bytes() for p in d.iterdir()} == snapshot  # nothing rewritten

    # A name the certificate lacks: a new server certificate, same CA, old names kept.
    ensure_tls(d, ["10.1.2.3"])
    assert (d / "ca.pem").read_bytes() == snapshot["ca.pem"]
    assert (d / "server.pem").read_bytes() != snapshot["server.pem"]
    assert sans(first.cert) == {*HOSTS, "10.1.2.3"}

    # Near its end (within the renewal window): reissued.
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=350)
    before = not_after(first.cert)
    ensure_tls(d, HOSTS, now=later)
    assert not_after(first.cert) > before
    assert (d / "ca.pem").read_bytes() == snapshot["ca.pem"]

    # A lost CA: a new one, and the server certificate it did not sign is reissued.
    (d / "ca.pem").unlink()
    (d / "ca-key.pem").unlink()
    ensure_tls(d, HOSTS)
    assert (d / "ca.pem").read_bytes() != snapshot["ca.pem"]
    x509.load_pem_x509_certificate((d / "server.pem").read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate((d / "ca.pem").read_bytes()))


def test_default_hosts() -> None:
    hosts = default_hosts(["10.0.0.5"])
    assert {"127.0.0.1", "localhost", "nats", "10.0.0.5"} <= set(hosts) and len(hosts) == len(set(hosts))


# ---- a TLS + auth cluster, and the CLI ---------------------------------------------------------

class TlsCluster(msgspec.Struct):
    url: str
    tls: TlsFiles
    creds: ClusterCredentials
    dir: Path


async def _apiserver_serves(url: str, ca: str, creds: str, timeout: float) -> bool:
    nc = await nats.connect(url, tls=client_ssl_context(ca), user_credentials=creds,
                            inbox_prefix=permissions.inbox("admin"), max_reconnect_attempts=-1,
                            reconnect_time_wait=0.2, connect_timeout=5)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = await nc.request("flo.api.v1.namespaces.get", b'{"name":"default"}', timeout=2)
                if json.loads(reply.data).get("kind") == "Namespace":
                    return True
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                pass
            await asyncio.sleep(0.1)
        return False
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    tmp = tmp_path_factory.mktemp("tls")
    tls = ensure_tls(tmp / "tls", HOSTS)
    creds = ClusterCredentials.ensure(tmp / "auth")
    server = NatsServer(tmp / "nats", extra_config=creds.server_config() + nats_tls_config(tls),
                        probe_creds=creds.creds_path("admin"), tls_ca=tls.ca)
    server.start()
    apiserver: ServiceProcess | None = None
    try:
        env = {**os.environ, "XDG_STATE_HOME": str(tmp / "state"), "PYTHONUNBUFFERED": "1"}
        apiserver = ServiceProcess("apiserver", "apiserver", [
            sys.executable, "-m", "services.apiserver", "--nats-url", server.url, "--tls-ca", tls.ca,
            "--creds", str(creds.creds_path(permissions.APISERVER))], tmp / "apiserver.log", env)
        if not asyncio.run(_apiserver_serves(server.url, tls.ca, str(creds.creds_path("admin")), 120)):
            pytest.fail(f"the API server did not serve through TLS within 120s:\n{apiserver.log_tail()}")
        yield TlsCluster(server.url, tls, creds, tmp)
    finally:
        if apiserver is not None:
            apiserver.stop()
        server.close()


def context_file(path: Path, server: str, creds: Path | str | None, ca: str | None, name: str = "tls") -> Path:
    lines = ["apiVersion: flotilla.io/v1", "kind: Config", f"current-context: {name}", "contexts:",
             f"- name: {name}", f"  server: {server}"]
    if creds:
        lines.append(f"  creds: {creds}")
    if ca:
        lines.append(f"  ca: {ca}")
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "NATS_"))}
    env["XDG_CONFIG_HOME"] = str(tmp / "config")  # no default context file
    return subprocess.run([sys.executable, "-m", "flotilla", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cli_through_tls_with_the_ca(tls_cluster: TlsCluster, tmp_path: Path) -> None:
    ctx = context_file(tmp_path / "ctx", tls_cluster.url, tls_cluster.creds.creds_path("admin"), tls_cluster.tls.ca)
    result = cli(tmp_path, "get", "namespaces", "--context", str(ctx))
    assert result.returncode == 0, result.stderr
    assert "default" in result.stdout.split()
    # The same server by name (the certificate names localhost too) and as a nats:// URL (TLS
    # upgraded after INFO, as nats-server requires).
    port = tls_cluster.url.rsplit(":", 1)[1]
    for url in (f"tls://localhost:{port}", f"nats://127.0.0.1:{port}"):
        result = cli(tmp_path, "get", "namespaces", "--context", str(ctx), "--nats-url", url)
        assert result.returncode == 0, (url, result.stderr)


def test_cli_through_tls_from_the_environment(tls_cluster: TlsCluster, tmp_path: Path) -> None:
    """No context: the variables the services read (FLOTILLA_NATS_URL, _CREDS, _CA) work for the CLI."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "NATS_"))}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), FLOTILLA_NATS_URL=tls_cluster.url,
               FLOTILLA_NATS_CREDS=str(tls_cluster.creds.creds_path("admin")), FLOTILLA_NATS_CA=tls_cluster.tls.ca)
    result = subprocess.run([sys.executable, "-m", "flotilla", "get", "namespaces"], capture_output=True,
                            text=True, env=env, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "default" in result.stdout.split()


def test_reader_context_reads_through_its_own_subjects(tls_cluster: TlsCluster, tmp_path: Path) -> None:
    """The reader may publish only on flo.api.v1.user.reader.* and subscribe only to _INBOX.reader.>:
    a CLI that used the admin's subjects or the default inbox would get no answer at all."""
    ctx = context_file(tmp_path / "ctx", tls_cluster.url, tls_cluster.creds.creds_path("reader"), tls_cluster.tls.ca)
    result = cli(tmp_path, "get", "namespaces", "--context", str(ctx), "--timeout", "20")
    assert result.returncode == 0, result.stderr
    assert "default" in result.stdout.split()


def test_reader_context_refused_a_write_says_why(tls_cluster: TlsCluster, tmp_path: Path) -> None:
    """NATS drops a publish the reader may not make, so the request only times out: the CLI says
    what NATS refused, as whom, instead of "no reply"."""
    reader = tls_cluster.creds.creds_path("reader")
    ctx = context_file(tmp_path / "ctx", tls_cluster.url, reader, tls_cluster.tls.ca)
    line = one_error_line(cli(tmp_path, "delete", "pod", "web-1", "--context", str(ctx), "--timeout", "3"))
    assert line.startswith('error: NATS refused it: permissions violation for publish to '
                           '"flo.api.v1.user.reader.pods.delete" (principal \'reader\'')
    assert f'context "tls" from {ctx}, credentials {reader}' in line


def test_cli_without_the_ca_fails_clearly(tls_cluster: TlsCluster, tmp_path: Path) -> None:
    ctx = context_file(tmp_path / "ctx", tls_cluster.url, tls_cluster.creds.creds_path("admin"), None)
    line = one_error_line(cli(tmp_path, "get", "pods", "--context", str(ctx)))
    assert line.startswith(f'error: TLS to NATS at {tls_cluster.url} failed (context "tls" from {ctx}, no CA given)')
    assert "certificate verify failed" in line and "`ca:`" in line


def test_cli_with_another_clusters_ca_fails_clearly(tls_cluster: TlsCluster, tmp_path: Path) -> None:
    other = ensure_tls(tmp_path / "other", HOSTS)
    ctx = context_file(tmp_path / "ctx", tls_cluster.url, tls_cluster.creds.creds_path("admin"), other.ca)
    line = one_error_line(cli(tmp_path, "get", "pods", "--context", str(ctx)))
    assert f"not signed by the CA {other.ca}" in line and f'context "tls" from {ctx}' in line


def test_cli_with_foreign_or_no_credentials_fails_clearly(tls_cluster: TlsCluster, tmp_path: Path) -> None:
    foreign = ClusterCredentials.ensure(tmp_path / "foreign").creds_path("admin")
    ctx = context_file(tmp_path / "ctx", tls_cluster.url, foreign, tls_cluster.tls.ca)
    line = one_error_line(cli(tmp_path, "get", "pods", "--context", str(ctx)))
    assert f"authorization violation with credentials {foreign}" in line
    assert "check that they belong to this cluster" in line

    anonymous = context_file(tmp_path / "anon", tls_cluster.url, None, tls_cluster.tls.ca)
    line = one_error_line(cli(tmp_path, "get", "pods", "--context", str(anonymous)))
    assert "authorization violation with no credentials" in line and "needs credentials" in line


def test_cli_missing_files_are_named(tls_cluster: TlsCluster, tmp_path: Path) -> None:
    ctx = context_file(tmp_path / "ctx", tls_cluster.url, tmp_path / "nope.creds", tls_cluster.tls.ca)
    assert one_error_line(cli(tmp_path, "get", "pods", "--context", str(ctx))) == \
        f'error: credentials file {tmp_path / "nope.creds"} (context "tls" from {ctx}) does not exist'
    ctx = context_file(tmp_path / "ctx", tls_cluster.url, tls_cluster.creds.creds_path("admin"), str(tmp_path / "no.pem"))
    assert one_error_line(cli(tmp_path, "get", "pods", "--context", str(ctx))).startswith(
        f"error: cannot load the CA {tmp_path / 'no.pem'} (context \"tls\" from {ctx})")


async def test_client_context_checks_the_name(tmp_path: Path) -> None:
    """client_ssl_context verifies the chain AND the name: a certificate of this CA issued for other
    names is refused (a plain TLS listener: what is checked here is the handshake, not NATS)."""
    files = ensure_tls(tmp_path / "tls", ["nats"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.cert, files.key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl_context(files.ca),
                                                  server_hostname="nats")
        writer.close()
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl_context(files.ca),
                                          server_hostname="127.0.0.1")
        other = ensure_tls(tmp_path / "other", ["nats"])
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl_context(other.ca),
                                          server_hostname="nats")


def test_cli_refuses_plaintext_when_the_context_gives_a_ca(tmp_path: Path) -> None:
    """nats-py falls back to plaintext when the server offers no TLS, even for tls:// URLs."""
    files = ensure_tls(tmp_path / "tls", HOSTS)
    with NatsServer(tmp_path / "nats") as plain:
        ctx = context_file(tmp_path / "ctx", plain.url.replace("nats://", "tls://"), None, files.ca)
        line = one_error_line(cli(tmp_path, "get", "pods", "--context", str(ctx)))
    assert line.startswith(f"error: NATS at {plain.url.replace('nats://', 'tls://')} does not use TLS, "
                           f'but context "tls" from {ctx} gives a CA ({files.ca})')


def test_nats_cli_uses_the_written_contexts(tls_cluster: TlsCluster, tmp_path: Path) -> None:
    """The contexts `flotilla up` writes work for the real `nats` CLI: TLS with the CA, the creds,
    and the inbox prefix the reader's permissions require."""
    need_nats()
    home = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    write_cluster_contexts("t", tls_cluster.url, str(tls_cluster.creds.creds_path("admin")), tls_cluster.tls.ca,
                           str(tls_cluster.creds.creds_path("reader")), env=home)

    def nats_req(context: str, subject: str) -> subprocess.CompletedProcess[str]:
        return run_nats(["--context", context, "--timeout", "5s", "request", subject, '{"name":"default"}'],
                        env=home, timeout=60)

    admin = nats_req("flotilla-t", "flo.api.v1.namespaces.get")
    assert admin.returncode == 0 and '"kind":"Namespace"' in admin.stdout.replace(" ", ""), admin
    reader = nats_req("flotilla-t-reader", "flo.api.v1.user.reader.namespaces.get")
    assert reader.returncode == 0 and '"kind":"Namespace"' in reader.stdout.replace(" ", ""), reader


def test_cli_dialing_a_name_the_certificate_lacks(tls_cluster: TlsCluster, tmp_path: Path) -> None:
    """127.0.0.1 by another name: ::ffff:127.0.0.1 (IPv4-mapped) is not an address the certificate lists."""
    ctx = context_file(tmp_path / "ctx", tls_cluster.url, tls_cluster.creds.creds_path("admin"), tls_cluster.tls.ca)
    url = f"tls://[::ffff:127.0.0.1]:{tls_cluster.url.rsplit(':', 1)[1]}"
    line = one_error_line(cli(tmp_path, "get", "pods", "--context", str(ctx), "--nats-url", url))
    assert line.startswith(f"error: TLS to NATS at {url} failed (context \"tls\" from {ctx}): certificate verify "
                           f"failed: IP address mismatch, certificate is not valid for '::ffff:127.0.0.1';"), line
    assert "connect by a name or IP the server certificate lists" in line
