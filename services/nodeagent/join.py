"""Node join, the node's half (Kubernetes' TLS bootstrap on NATS; the API server's half is
services/apiserver/bootstrap.py, the whole story docs/node-join.md).

Before the node agent connects (`run_service(before_connect=...)`): if `<state dir>/node.creds`
exists it is the agent's identity and any token is ignored. Otherwise the bootstrap token (a bearer
user JWT whose only right is one request on `flo.bootstrap.v1.join.<id>`) is exchanged: the agent
makes a fresh user nkey, sends its public key and node name, and writes the user JWT it gets back,
with its seed, to `node.creds` (0600). The seed never leaves the node.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import time
from pathlib import Path

import msgspec
import nats
import nats.errors
from nats.aio.client import Client

from schemas import ApiError
from schemas.bootstrap import JoinRequest, NodeCredentials, join_subject
from services.lib import natsjwt, permissions
from services.lib.codec import encode, raise_for_status
from services.lib.log import get_logger
from services.lib.natsjwt import JwtError
from services.lib.tls import client_ssl_context

log = get_logger("flotilla.nodeagent.join")

CREDS_FILE = "node.creds"
REQUEST_TIMEOUT = 10.0
RETRY_SECONDS = 1.0
# Refusals that no retry can change (the API server's answer stands); anything else is retried.
_FINAL = {"Forbidden", "Invalid", "BadRequest", "NotFound"}
_NOT_CONFIGURED = "node join is not configured"


class JoinError(JwtError):
    """The token cannot be exchanged: the agent exits with this one line (services/lib/runner.py)."""


class _Retry(Exception):
    pass


def token_from_args(args: argparse.Namespace) -> str | None:
    if args.bootstrap_token:
        return args.bootstrap_token.strip()
    if args.bootstrap_token_file:
        try:
            return Path(args.bootstrap_token_file).read_text().strip()
        except OSError as exc:
            raise JoinError(f"cannot read the bootstrap token file {args.bootstrap_token_file}: "
                            f"{exc.strerror or exc}") from None
    return None


async def ensure_credentials(args: argparse.Namespace, state: Path) -> None:
    """Set `args.creds` to the node's own credentials, joining with the bootstrap token if needed."""
    token = token_from_args(args)
    path = state / CREDS_FILE
    if args.creds:  # explicit credentials win (compose, tests, an operator's own)
        if token:
            log.info("bootstrap token ignored", reason="--creds given", creds=args.creds)
        return
    if path.exists():
        name = natsjwt.principal_of_creds(path)
        if name != permissions.node_principal(args.node_name):
            raise JoinError(f"{path} holds the credentials of {name}, not of node-{args.node_name}")
        if token:
            log.info("bootstrap token ignored", reason="the node has joined already", creds=str(path))
        args.creds = str(path)
        return
    if not token:
        return  # an unsecured bus: no credentials at all
    claims = _claims(token)
    jwt, seed = await join(args, token, claims)
    natsjwt.write_creds(path, jwt, seed)
    log.info("joined", node=args.node_name, token=claims.jti, creds=str(path))
    args.creds = str(path)


def _claims(token: str):
    try:
        claims = natsjwt.decode(token, verify=False)  # the server checks it; here only id and expiry
    except JwtError as exc:
        raise JoinError(f"not a bootstrap token: {exc}") from None
    if not claims.jti or claims.name != permissions.bootstrap_principal(claims.jti):
        raise JoinError("not a bootstrap token (create one with `flotilla token create`)")
    if claims.exp and claims.exp <= time.time():
        raise JoinError(_expired(claims.jti, claims.exp))
    return claims


def _expired(token_id: str, exp: int) -> str:
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))
    return f"bootstrap token {token_id} expired at {at}; create a new one with `flotilla token create`"


async def join(args: argparse.Namespace, token: str, claims) -> tuple[str, bytes]:
    """(jwt, seed) of this node's new credentials; retries while NATS or the API server is not there yet."""
    seed = natsjwt.new_seed("user")
    body = encode(JoinRequest(node_name=args.node_name, public_key=natsjwt.public_key(seed)))
    while True:
        if claims.exp and claims.exp <= time.time():
            raise JoinError(_expired(claims.jti, claims.exp))
        try:
            nc = await _connect(args, token, claims.jti)
        except _Retry as exc:
            log.warning("join: NATS not reachable yet; retrying", error=str(exc))
            await asyncio.sleep(RETRY_SECONDS)
            continue
        try:
            reply = await nc.request(join_subject(claims.jti), body, timeout=REQUEST_TIMEOUT)
            raise_for_status(reply.data)
            creds = msgspec.json.decode(reply.data, type=NodeCredentials)
            return creds.jwt, seed
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            log.warning("join: no API server answers yet; retrying", error=repr(exc))
        except ApiError as err:
            if err.reason in _FINAL or err.message.startswith(_NOT_CONFIGURED):
                raise JoinError(err.message) from None
            log.warning("join: API server error; retrying", reason=err.reason, error=err.message)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise JoinError(f"unexpected join reply from the API server: {exc}") from None
        finally:
            await nc.close()
        await asyncio.sleep(RETRY_SECONDS)


async def _connect(args: argparse.Namespace, token: str, token_id: str) -> Client:
    """A connection as the bearer token's user: NATS checks the JWT (issuer, expiry) and, for a bearer
    token, no signature; nats-py sends a JWT only with a signature callback, so one is given."""
    def signature(nonce: str) -> bytes:
        return base64.b64encode(natsjwt.keypair(natsjwt.new_seed("user")).sign(nonce.encode()))

    refused: list[str] = []

    async def on_error(exc: Exception) -> None:
        text = str(exc).lower()
        if "authorization" in text or "authentication" in text or "expired" in text:
            refused.append(str(exc))

    try:
        return await nats.connect(
            servers=[u.strip() for u in args.nats_url.split(",")],
            user_jwt_cb=lambda: token.encode(), signature_cb=signature,
            inbox_prefix=permissions.inbox(permissions.bootstrap_principal(token_id)),
            tls=client_ssl_context(args.tls_ca) if args.tls_ca else None,
            name=f"nodeagent-join:{args.node_name}", allow_reconnect=False, connect_timeout=5,
            error_cb=on_error)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        if refused or "authorization" in str(exc).lower():
            raise JoinError(f"the NATS server refused the bootstrap token {token_id}: "
                            f"{refused[0] if refused else exc}") from None
        raise _Retry(repr(exc)) from None
