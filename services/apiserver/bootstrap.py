"""Node join (Kubernetes' TLS bootstrap, on NATS): the admin mints a short-lived bootstrap token; a
new node agent exchanges it, once, for credentials of its own (`node-<name>`).

    flo.bootstrap.v1.token.create   admin: {"ttlSeconds", "nodeName"?, "description"?} -> BootstrapToken
    flo.bootstrap.v1.token.list     admin: {} -> BootstrapTokenList (records, never the tokens)
    flo.bootstrap.v1.join.<id>      the token's holder: {"nodeName", "publicKey"} -> NodeCredentials

A token is a bearer user JWT (no key proves it, like a Kubernetes bootstrap token) whose only right is
to publish on its own join subject (services/lib/permissions.py for_bootstrap); NATS refuses it once
it expires. The API server keeps a record per token in a KV bucket of its own, `<bucket>-bootstrap`,
and marks it used with a compare-and-set, so a token joins exactly one node however many replicas
serve the subject and however many holders race. The record holds no secret: the token is only
ever in the reply to `create`. The node's seed never leaves the node: it sends its public key, the
API server signs a user JWT for it with the account's signing key (the `--bootstrap-issuer` file).
"""
from __future__ import annotations

import asyncio
import base64
import os
import time

import msgspec
import nats.errors
import nats.js.api as jsapi
import nats.js.errors as jserr
import nkeys
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from schemas import ApiError
from schemas.bootstrap import (BOOTSTRAP_PREFIX, CREATE_SUBJECT, LIST_SUBJECT, MAX_TTL_SECONDS, MIN_TTL_SECONDS,
                               BootstrapToken, BootstrapTokenList, JoinRequest, ListTokensRequest, NodeCredentials,
                               TokenRecord, TokenRequest, parse_rfc3339, rfc3339)
from schemas.names import dns1123_label_error
from services.lib import natsjwt, permissions
from services.lib.codec import encode
from services.lib.inbox import subscribe
from services.lib.log import get_logger
from services.lib.natsjwt import Issuer, JwtError

from .decoding import strict_decode

log = get_logger("flotilla.apiserver.bootstrap")

QUEUE_GROUP = "flotilla-apiserver"  # the API server's: any replica answers
JOIN_SUBJECTS = f"{BOOTSTRAP_PREFIX}.join.*"
# Records age out of the bucket: a record outlives its token (at most MAX_TTL_SECONDS), so a token
# NATS still accepts always has one; a token without a record is refused.
RECORD_MAX_AGE_SECONDS = 24 * 3600
MAX_IN_FLIGHT = 64
TOKEN_ID_LENGTH = 16
NOT_CONFIGURED = "node join is not configured: start the API server with --bootstrap-issuer"


def new_token_id() -> str:
    """16 random characters of lowercase base32: 80 bits, and a valid subject token and KV key."""
    return base64.b32encode(os.urandom(10)).decode().lower()[:TOKEN_ID_LENGTH]


def _forbidden(message: str) -> ApiError:
    return ApiError("Forbidden", message)


def _decode(data: bytes, type_: type, what: str):
    """Strict decoding; a bad body is 422 Invalid naming the field."""
    try:
        return strict_decode(data or b"{}", type_, what)
    except ApiError as err:
        if err.reason != "BadRequest":
            raise
        raise ApiError("Invalid", err.message, field=err.field or "<body>") from None


def _check_node_name(name: str, field: str) -> None:
    # A label, not a subdomain: the name is a token of NATS subjects (flo.api.v1.node.<name>.…).
    err = dns1123_label_error(name)
    if err:
        raise ApiError("Invalid", f"{field}: {err}", field=field)


def _check_public_key(key: str) -> None:
    """A mangled key is refused here rather than as an unusable credential later."""
    try:
        natsjwt.decode_public_key(key, nkeys.PREFIX_BYTE_USER)
    except ValueError:
        raise ApiError("Invalid", "publicKey: not a NATS user public key (U…)", field="publicKey") from None


class Bootstrap:
    """Serves the bootstrap subjects beside the API (the same queue group), until cancelled."""

    def __init__(self, nc: Client, js_bucket_prefix: str, issuer: Issuer | None, replicas: int = 1):
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.bucket = f"{js_bucket_prefix}-bootstrap"
        self.issuer = issuer
        self.replicas = replicas
        self.kv: KeyValue | None = None
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def run(self) -> None:
        if self.issuer is not None:
            await self._ensure_bucket()
        subs = [await subscribe(self.nc, f"{BOOTSTRAP_PREFIX}.token.*", queue=QUEUE_GROUP),
                await subscribe(self.nc, JOIN_SUBJECTS, queue=QUEUE_GROUP)]
        log.info("serving", subjects=f"{BOOTSTRAP_PREFIX}.>", bucket=self.bucket, configured=self.issuer is not None)
        try:
            async with asyncio.TaskGroup() as tg:
                for _, requests in subs:
                    tg.create_task(self._serve(requests, tg))
        finally:
            for sub, _ in subs:
                if self.nc.is_connected:
                    await sub.unsubscribe()

    async def _ensure_bucket(self) -> None:
        while True:
            try:
                try:
                    self.kv = await self.js.key_value(self.bucket)
                except jserr.BucketNotFoundError:
                    self.kv = await self.js.create_key_value(jsapi.KeyValueConfig(
                        bucket=self.bucket, history=1, ttl=RECORD_MAX_AGE_SECONDS, storage=jsapi.StorageType.FILE,
                        replicas=self.replicas, description="Flotilla bootstrap token records (24h)"))
                    log.info("bucket created", bucket=self.bucket)
                return
            except (jserr.Error, nats.errors.Error, TimeoutError) as exc:
                log.warning("bootstrap bucket not reachable yet; retrying", bucket=self.bucket, error=repr(exc))
                await asyncio.sleep(1)

    async def _serve(self, requests, tg: asyncio.TaskGroup) -> None:
        async for msg in requests:
            await self._slots.acquire()  # concurrent, bounded: a slow KV write never holds the others
            tg.create_task(self._handle(msg))

    async def _handle(self, msg: Msg) -> None:
        try:
            try:
                reply = await self._dispatch(msg)
            except ApiError as err:
                reply = encode(err.to_status())
            except (nats.errors.TimeoutError, TimeoutError):
                reply = encode(ApiError("Timeout", "the token store did not answer in time; try again").to_status())
            except (jserr.Error, nats.errors.Error) as exc:
                log.warning("token store error", subject=msg.subject, error=repr(exc))
                reply = encode(ApiError("ServiceUnavailable", f"token store unavailable: {exc!r}").to_status())
            except Exception as exc:  # a bug: answer 500, log it, keep serving
                log.exception("internal error", subject=msg.subject)
                reply = encode(ApiError("InternalError", f"internal error: {exc!r}").to_status())
        finally:
            self._slots.release()
        if msg.reply:
            try:
                await msg.respond(reply)
            except nats.errors.Error as exc:
                log.debug("reply failed", subject=msg.subject, error=repr(exc))

    async def _dispatch(self, msg: Msg) -> bytes:
        if self.issuer is None or self.kv is None:
            raise ApiError("ServiceUnavailable", NOT_CONFIGURED)
        if msg.subject == CREATE_SUBJECT:
            return await self.create(msg.data)
        if msg.subject == LIST_SUBJECT:
            _decode(msg.data, ListTokensRequest, "token list")
            return await self.list()
        parts = msg.subject.split(".")
        if len(parts) == 5 and parts[3] == "join":
            return await self.join(parts[4], msg.data)
        raise ApiError("NotFound", f"no such bootstrap subject {msg.subject!r}")

    async def create(self, data: bytes) -> bytes:
        assert self.issuer is not None and self.kv is not None
        req: TokenRequest = _decode(data, TokenRequest, "BootstrapToken")
        if not MIN_TTL_SECONDS <= req.ttl_seconds <= MAX_TTL_SECONDS:
            raise ApiError("Invalid", f"ttlSeconds: must be between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}, "
                                      f"not {req.ttl_seconds}", field="ttlSeconds")
        if req.node_name is not None:
            _check_node_name(req.node_name, "nodeName")
        if len(req.description) > 1024:
            raise ApiError("Invalid", "description: at most 1024 characters", field="description")
        token_id = new_token_id()
        now = int(time.time())
        expires = now + req.ttl_seconds
        # The key behind the token is thrown away: a bearer JWT needs no signature of its holder.
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        user_key = nkeys.from_seed(bytearray(seed)).public_key.decode()
        token = self.issuer.user_jwt(permissions.bootstrap_principal(token_id), user_key,
                                     permissions.for_bootstrap(token_id), expires_at=expires, bearer=True,
                                     jti=token_id)
        record = TokenRecord(id=token_id, expires_at=rfc3339(expires), created_at=rfc3339(now),
                             node_name=req.node_name, description=req.description)
        await self.kv.create(token_id, encode(record))
        log.info("token created", token=token_id, node=req.node_name, expires=record.expires_at)
        return encode(BootstrapToken(id=token_id, expires_at=record.expires_at, token=token))

    async def list(self) -> bytes:
        assert self.kv is not None
        items: list[TokenRecord] = []
        try:
            keys = await self.kv.keys()
        except jserr.NoKeysError:
            keys = []
        for key in keys:
            try:
                entry = await self.kv.get(key)
            except jserr.KeyNotFoundError:  # aged out or deleted since the listing
                continue
            if entry.value:
                items.append(msgspec.json.decode(entry.value, type=TokenRecord))
        items.sort(key=lambda r: (r.created_at, r.id))
        return encode(BootstrapTokenList(items=items))

    async def join(self, token_id: str, data: bytes) -> bytes:
        assert self.issuer is not None and self.kv is not None
        req: JoinRequest = _decode(data, JoinRequest, "join")
        _check_node_name(req.node_name, "nodeName")
        _check_public_key(req.public_key)
        try:
            entry = await self.kv.get(token_id)
        except jserr.KeyNotFoundError:
            entry = None
        if entry is None or not entry.value:
            log.warning("join refused", token=token_id, node=req.node_name, reason="unknown")
            raise _forbidden("unknown bootstrap token")
        record = msgspec.json.decode(entry.value, type=TokenRecord)
        now = int(time.time())
        if now >= parse_rfc3339(record.expires_at):
            log.warning("join refused", token=token_id, node=req.node_name, reason="expired")
            raise _forbidden(f"bootstrap token {token_id} expired at {record.expires_at}")
        if record.used_by is not None and (record.used_by, record.used_key) == (req.node_name, req.public_key):
            log.info("join repeated", token=token_id, node=req.node_name)
            return self._credentials(req)
        if record.used_by is not None:
            log.warning("join refused", token=token_id, node=req.node_name, reason="used", used_by=record.used_by)
            raise _forbidden(f"bootstrap token {token_id} was already used by node {record.used_by} "
                             f"at {record.used_at}")
        if record.node_name is not None and record.node_name != req.node_name:
            log.warning("join refused", token=token_id, node=req.node_name, reason="node name",
                        allowed=record.node_name)
            raise _forbidden(f"bootstrap token {token_id} may only join as node {record.node_name}, "
                             f"not {req.node_name}")
        record.used_by, record.used_at, record.used_key = req.node_name, rfc3339(now), req.public_key
        try:
            # Compare-and-set on the revision read above: of two racing joins, one write wins.
            await self.kv.update(token_id, encode(record), last=entry.revision)
        except jserr.KeyWrongLastSequenceError:
            winner = await self._used_by(token_id)
            log.warning("join refused", token=token_id, node=req.node_name, reason="lost race", used_by=winner)
            raise _forbidden(f"bootstrap token {token_id} was already used by node {winner[0]} at {winner[1]}")
        log.info("node joined", token=token_id, node=req.node_name, principal=permissions.node_principal(req.node_name))
        return self._credentials(req)

    def _credentials(self, req: JoinRequest) -> bytes:
        assert self.issuer is not None
        try:
            jwt = self.issuer.user_jwt(permissions.node_principal(req.node_name), req.public_key,
                                       permissions.for_node(req.node_name))
        except JwtError as exc:
            raise ApiError("Invalid", f"publicKey: {exc}", field="publicKey") from None
        return encode(NodeCredentials(node_name=req.node_name, jwt=jwt))

    async def _used_by(self, token_id: str) -> tuple[str, str]:
        try:
            entry = await self.kv.get(token_id)  # type: ignore[union-attr]
            record = msgspec.json.decode(entry.value or b"{}", type=TokenRecord)
            return record.used_by or "?", record.used_at or "?"
        except (jserr.KeyNotFoundError, msgspec.ValidationError):
            return "?", "?"
