"""NATS decentralized auth: operator, account and user JWTs, and `.creds` files.

The keys and signatures are the `nkeys` library's (nats-io's own ed25519 nkeys). The JWT claims
are written here because the one Python package for them (nats-jwt) calls itself "not well-tested"
and pins years-old dependencies; the format is small and documented by nats-io/jwt (v2): a JOSE
header `{"typ":"JWT","alg":"ed25519-nkey"}`, claims JSON, and the issuer's nkey signature over
`header.claims`, each part base64url without padding.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
import time
from pathlib import Path

import msgspec
import nacl.exceptions
import nacl.signing
import nkeys

_HEADER = b'{"typ":"JWT","alg":"ed25519-nkey"}'
_PREFIX = {"operator": nkeys.PREFIX_BYTE_OPERATOR, "account": nkeys.PREFIX_BYTE_ACCOUNT,
           "user": nkeys.PREFIX_BYTE_USER}
UNLIMITED = -1


class JwtError(ValueError):
    """A token or credentials file that cannot be used, with the reason."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_seed(kind: str) -> bytes:
    """A fresh nkey seed (`SO…`, `SA…`, `SU…`) from the OS's randomness."""
    return nkeys.encode_seed(os.urandom(32), _PREFIX[kind])


def keypair(seed: bytes | str) -> nkeys.KeyPair:
    return nkeys.from_seed(seed.encode() if isinstance(seed, str) else bytes(seed))


def public_key(seed: bytes | str) -> str:
    return keypair(seed).public_key.decode()


# ---- claims (nats-io/jwt v2 field names) ----------------------------------------------------------

class Permission(msgspec.Struct, omit_defaults=True):
    allow: list[str] = msgspec.field(default_factory=list)
    deny: list[str] = msgspec.field(default_factory=list)


class ResponsePermission(msgspec.Struct):
    max: int = 1
    ttl: int = 0  # nanoseconds; 0 = the server's default


class Permissions(msgspec.Struct, omit_defaults=True):
    pub: Permission = msgspec.field(default_factory=Permission)
    sub: Permission = msgspec.field(default_factory=Permission)
    resp: ResponsePermission | None = None


class OperatorNats(msgspec.Struct):
    system_account: str = ""
    type: str = "operator"
    version: int = 2


class AccountLimits(msgspec.Struct):
    subs: int = UNLIMITED
    data: int = UNLIMITED
    payload: int = UNLIMITED
    imports: int = UNLIMITED
    exports: int = UNLIMITED
    wildcards: bool = True
    conn: int = UNLIMITED
    leaf: int = UNLIMITED
    # JetStream is on for an account only with storage limits other than 0.
    mem_storage: int = 0
    disk_storage: int = 0
    streams: int = 0
    consumer: int = 0
    max_bytes_required: bool = False


class AccountNats(msgspec.Struct):
    limits: AccountLimits = msgspec.field(default_factory=AccountLimits)
    signing_keys: list[str] = msgspec.field(default_factory=list)
    type: str = "account"
    version: int = 2


class UserNats(msgspec.Struct):
    pub: Permission = msgspec.field(default_factory=Permission)
    sub: Permission = msgspec.field(default_factory=Permission)
    resp: ResponsePermission | None = None
    subs: int = UNLIMITED
    data: int = UNLIMITED
    payload: int = UNLIMITED
    bearer_token: bool = False
    issuer_account: str = ""
    type: str = "user"
    version: int = 2


class Claims(msgspec.Struct, omit_defaults=True):  # no "exp" when it never expires
    jti: str
    iat: int
    iss: str
    sub: str
    name: str = ""
    exp: int = 0
    nats: OperatorNats | AccountNats | UserNats | dict | None = None


class _AnyClaims(msgspec.Struct):
    """What `decode` reads back: enough to route and check a token without trusting it."""
    iss: str = ""
    sub: str = ""
    name: str = ""
    jti: str = ""
    exp: int = 0
    iat: int = 0
    nats: dict = msgspec.field(default_factory=dict)


def _jti() -> str:
    return base64.b32encode(os.urandom(20)).decode().rstrip("=")


def encode(issuer_seed: bytes | str, subject: str, name: str, nats: OperatorNats | AccountNats | UserNats,
           expires_at: int = 0, jti: str | None = None) -> str:
    """A signed JWT. `expires_at` is a Unix time (0 = never)."""
    kp = keypair(issuer_seed)
    claims = Claims(jti=jti or _jti(), iat=int(time.time()), iss=kp.public_key.decode(), sub=subject,
                    name=name, exp=expires_at, nats=nats)
    signing_input = f"{_b64(_HEADER)}.{_b64(msgspec.json.encode(claims))}"
    return f"{signing_input}.{_b64(kp.sign(signing_input.encode()))}"


def decode(token: str, verify: bool = True) -> _AnyClaims:
    """The claims of a JWT; with `verify`, its signature must be its issuer's (`iss`)."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JwtError("not a JWT (expected three dot-separated parts)")
    try:
        claims = msgspec.json.decode(_unb64(parts[1]), type=_AnyClaims)
        if verify:
            _verify_key(claims.iss).verify(f"{parts[0]}.{parts[1]}".encode(), _unb64(parts[2]))
    except nacl.exceptions.BadSignatureError:
        raise JwtError(f"bad JWT signature (not made by its issuer {claims.iss[:8]}…)") from None
    except (msgspec.DecodeError, binascii.Error, ValueError) as exc:
        raise JwtError(f"malformed JWT: {exc}") from None
    return claims


def decode_public_key(public: str, prefix: int | None = None) -> bytes:
    """The 32 ed25519 key bytes of an nkey public key — base32 of a prefix byte, the key, and a
    CRC-16 of both (`nkeys` decodes only seeds) — or ValueError when it is not one (of that kind)."""
    try:
        raw = base64.b32decode(public + "=" * (-len(public) % 8))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 35 or not nkeys.valid_public_prefix_byte(raw[0]) or (prefix is not None and raw[0] != prefix) \
            or bytes(nkeys.crc16_checksum(raw[:33])) != raw[33:]:
        raise ValueError(f"not an nkey public key: {public[:8]}…")
    return raw[1:33]


def _verify_key(public: str) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(decode_public_key(public))


def user_nats(permissions: Permissions, issuer_account: str = "", bearer: bool = False) -> UserNats:
    return UserNats(pub=permissions.pub, sub=permissions.sub, resp=permissions.resp,
                    bearer_token=bearer, issuer_account=issuer_account)


# ---- .creds files (the format nats-py, the nats CLI and nsc read) ---------------------------------

_CREDS = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""
_BLOCK = re.compile(r"-{3,}BEGIN [A-Z ]+-{3,}\s*\n(.+?)\n\s*-{3,}END [A-Z ]+-{3,}", re.S)


def creds_text(jwt: str, seed: bytes | str) -> str:
    return _CREDS.format(jwt=jwt, seed=seed.decode() if isinstance(seed, bytes) else seed)


def write_private(path: Path, text: str) -> None:
    """Write a secret: 0600 from the first byte (no window where another user can read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_creds(path: Path, jwt: str, seed: bytes | str) -> Path:
    write_private(path, creds_text(jwt, seed))
    return path


def read_creds(path: str | Path) -> tuple[str, str]:
    """(jwt, seed) of a creds file."""
    try:
        blocks = _BLOCK.findall(Path(path).read_text())
    except OSError as exc:
        raise JwtError(f"cannot read credentials {path}: {exc.strerror or exc}") from None
    if len(blocks) < 2:
        raise JwtError(f"{path} is not a NATS credentials file (needs a JWT and a seed block)")
    return blocks[0].strip(), blocks[1].strip()


def principal_of_creds(path: str | Path) -> str:
    """The identity a creds file names: its user JWT's `name` claim."""
    jwt, _ = read_creds(path)
    name = decode(jwt, verify=False).name
    if not name:
        raise JwtError(f"the user JWT in {path} has no name claim")
    return name


# ---- an account's user issuer (the API server mints node credentials with it) --------------------

class IssuerFile(msgspec.Struct):
    account: str  # the account's public key (A…)
    signing_seed: str  # one of the account's signing keys (SA…)


class Issuer:
    """Signs user JWTs for one account with one of its signing keys (the account key stays offline)."""

    def __init__(self, account: str, signing_seed: str):
        self.account = account
        self.signing_seed = signing_seed

    @classmethod
    def load(cls, path: str | Path) -> Issuer:
        try:
            f = msgspec.json.decode(Path(path).read_bytes(), type=IssuerFile)
        except (OSError, msgspec.DecodeError) as exc:
            raise JwtError(f"cannot read the issuer file {path}: {exc}") from None
        return cls(f.account, f.signing_seed)

    def save(self, path: Path) -> None:
        write_private(path, msgspec.json.encode(IssuerFile(self.account, self.signing_seed)).decode())

    def user_jwt(self, name: str, user_public_key: str, permissions: Permissions, expires_at: int = 0,
                 bearer: bool = False, jti: str | None = None) -> str:
        if not user_public_key.startswith("U"):
            raise JwtError(f"not a user public key: {user_public_key[:8]}…")
        return encode(self.signing_seed, user_public_key, name, user_nats(permissions, self.account, bearer),
                      expires_at=expires_at, jti=jti)

    def new_user(self, name: str, permissions: Permissions, expires_at: int = 0) -> tuple[str, bytes]:
        """(jwt, seed) of a fresh user key."""
        seed = new_seed("user")
        return self.user_jwt(name, public_key(seed), permissions, expires_at), seed
