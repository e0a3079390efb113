"""A cluster's TLS material for the bus: a private CA and a server certificate it signs.

    files = ensure_tls(state / "tls", default_hosts())   # TlsFiles(ca=..., cert=..., key=...)

Idempotent, so `flotilla up` can call it on every start: valid files are reused (clients keep
trusting the same CA), a server certificate that is expiring, not signed by the CA on disk, not
matching its key, or missing one of the requested names is reissued (by the same CA). Keys are EC
P-256, written 0600; the CA lives 10 years, the server certificate 1 year.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.lib.log import get_logger

log = get_logger("flotilla.tlsgen")

CA_DAYS = 3650
SERVER_DAYS = 365
# Reissue a certificate this long before it expires, so a cluster restarted now does not stop
# working in the middle of next week.
RENEW_BEFORE = dt.timedelta(days=30)
# Backdated a little: a client whose clock runs slightly behind would otherwise reject a fresh cert.
CLOCK_SKEW = dt.timedelta(minutes=5)

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"


class TlsFiles(msgspec.Struct, frozen=True):
    ca: str     # CA certificate (PEM): what clients trust (`--tls-ca`, a context's `ca`)
    cert: str   # server certificate (PEM) for nats-server's tls { cert_file }
    key: str    # its private key (PEM, 0600) for tls { key_file }


class TlsGenError(RuntimeError):
    pass


def default_hosts(extra: Iterable[str] = ()) -> list[str]:
    """The names clients dial a local or compose cluster by: loopback, this host, compose's `nats`."""
    hosts = ["127.0.0.1", "::1", "localhost", socket.gethostname(), "nats", *extra]
    return list(dict.fromkeys(h for h in hosts if h))


def nats_tls_config(files: TlsFiles) -> str:
    """The nats-server config block that serves `files` (for NatsServer(extra_config=...))."""
    return (f"tls {{\n  cert_file: {json.dumps(files.cert)}\n  key_file: {json.dumps(files.key)}\n"
            f"  timeout: 5\n}}\n")


def ensure_tls(directory: str | Path, hosts: Iterable[str], *, now: dt.datetime | None = None) -> TlsFiles:
    """Make sure `directory` holds a valid CA and a server certificate for every name in `hosts`."""
    folder = Path(directory).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    now = now or dt.datetime.now(dt.timezone.utc)
    wanted = _names(hosts)
    files = TlsFiles(ca=str(folder / CA_CERT), cert=str(folder / SERVER_CERT), key=str(folder / SERVER_KEY))

    ca = _load_ca(folder, now)
    if ca is None:
        ca = _new_ca(now)
        # A new CA first, then the server cert: a crash in between leaves a cert the next run
        # sees as not signed by the CA, and reissues.
        _write(folder / CA_KEY, _key_pem(ca[1]), 0o600)
        _write(folder / CA_CERT, ca[0].public_bytes(serialization.Encoding.PEM), 0o644)
        log.info("tls ca created", dir=str(folder), expires=ca[0].not_valid_after_utc.isoformat())
    ca_cert, ca_key = ca

    why = _server_cert_problem(folder, ca_cert, wanted, now)
    if why is not None:
        old = _existing_sans(folder)
        names = list(dict.fromkeys([*wanted, *old]))  # keep names older clients may still dial
        cert, key = _new_server_cert(ca_cert, ca_key, names, now)
        _write(folder / SERVER_KEY, _key_pem(key), 0o600)
        _write(folder / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        log.info("tls server certificate issued", dir=str(folder), reason=why,
                 names=",".join(names), expires=cert.not_valid_after_utc.isoformat())
    return files


# -- checks -------------------------------------------------------------------------------------

def _load_ca(folder: Path, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    if not cert_path.exists() and not key_path.exists():
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        # Replacing a broken CA silently would break every client that trusts the old one; but a
        # half-written pair (one file missing) cannot be trusted by anyone yet, so make a new one.
        if cert_path.exists() and key_path.exists():
            raise TlsGenError(f"cannot read the cluster CA in {folder} ({e}); remove {cert_path} and "
                              f"{key_path} to make a new one (clients must then be given the new {CA_CERT})") from None
        log.warning("tls ca incomplete, making a new one", dir=str(folder), error=str(e))
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_key(cert, key):
        raise TlsGenError(f"{key_path} is not the key of {cert_path}; remove both to make a new CA")
    if cert.not_valid_after_utc - RENEW_BEFORE < now:
        log.warning("tls ca expiring, making a new one", dir=str(folder),
                    expires=cert.not_valid_after_utc.isoformat())
        return None
    return cert, key


def _server_cert_problem(folder: Path, ca: x509.Certificate, wanted: list[str], now: dt.datetime) -> str | None:
    """Why the server certificate on disk must be reissued, or None if it is fine."""
    try:
        cert = x509.load_pem_x509_certificate((folder / SERVER_CERT).read_bytes())
        key = serialization.load_pem_private_key((folder / SERVER_KEY).read_bytes(), password=None)
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as e:
        return f"unreadable: {e}"
    if not _same_key(cert, key):
        return "key does not match"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by the current CA"
    if cert.not_valid_after_utc - RENEW_BEFORE < now:
        return "expiring"
    missing = [n for n in wanted if n not in _sans(cert)]
    if missing:
        return f"missing names {','.join(missing)}"
    return None


def _existing_sans(folder: Path) -> list[str]:
    try:
        return _sans(x509.load_pem_x509_certificate((folder / SERVER_CERT).read_bytes()))
    except (OSError, ValueError):
        return []


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*ext.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in ext.get_values_for_type(x509.IPAddress))]


def _same_key(cert: x509.Certificate, key: object) -> bool:
    public = getattr(key, "public_key", None)
    if public is None:
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(cert.public_key().public_bytes(*fmt) == public().public_bytes(*fmt))


def _names(hosts: Iterable[str]) -> list[str]:
    """Normalised names: IPs in their canonical text (so '::0001' and '::1' are one name)."""
    out: list[str] = []
    for h in hosts:
        h = h.strip()
        if not h:
            continue
        try:
            out.append(str(ipaddress.ip_address(h)))
        except ValueError:
            out.append(h.lower())
    return list(dict.fromkeys(out))


# -- issuing ------------------------------------------------------------------------------------

def _new_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Flotilla"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"Flotilla cluster CA {socket.gethostname()}")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _new_server_cert(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: list[str],
                     now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    dns = [n for n in names if not _is_ip(n)]
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Flotilla"),
                         x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else "nats")])
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            # Never beyond the CA: a verifier would reject the chain once the CA expires anyway.
            .not_valid_after(min(now + dt.timedelta(days=SERVER_DAYS), ca.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically, with `mode` from the start: a key must never exist world-readable, even briefly."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
