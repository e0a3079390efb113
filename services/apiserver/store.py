"""The state log: JetStream KV buckets written with compare-and-set; resourceVersion = stream sequence."""
from __future__ import annotations

import msgspec
import nats.js.api as jsapi
import nats.js.errors as jserr
from nats.aio.client import Client
from nats.js import JetStreamContext

from schemas import ApiError
from services.lib.requester import requester

KV_OP = "KV-Operation"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = (10071, 10164)
EVENT_TTL_SECONDS = 3600.0
# Revisions kept per key. Only the latest is ever read, but a watch cache that falls behind (a NATS
# restart, a pause) must still find the versions superseded meanwhile, or its watchers miss changes.
HISTORY = 16
# JetStream's own limit on a stored object: the API refuses requests over 1.5 MiB before decoding
# (decoding.py), and what it adds (metadata, managedFields, status) stays far below the rest; a value
# beyond this is refused by the server whatever wrote it.
MAX_STORED_VALUE = 2 * 1024 * 1024


class StoredEntry(msgspec.Struct):
    data: bytes
    revision: int


class StreamHead(msgspec.Struct):
    last: int  # the last sequence the stream ever assigned
    empty: bool  # no message left (events aged out, or the stream was purged)


class Bucket(msgspec.Struct):
    name: str
    stream: str
    prefix: str  # "$KV.<bucket>."


# JetStream's message get API (STREAM.MSG.GET): request and reply, as much of them as is read.
class _MsgGetRequest(msgspec.Struct):
    last_by_subj: str


class _JsError(msgspec.Struct):
    code: int = 0
    description: str = ""


class _StoredMsg(msgspec.Struct):
    hdrs: bytes | None = None  # base64 on the wire: msgspec decodes it into bytes
    data: bytes | None = None


class _MsgGetReply(msgspec.Struct):
    message: _StoredMsg | None = None
    error: _JsError | None = None


_MSG_GET = msgspec.json.Encoder()
_MSG_GET_REPLY = msgspec.json.Decoder(_MsgGetReply)


class StateLog:
    """The two buckets (objects; short-lived events) and the compare-and-set writes on them."""

    def __init__(self, nc: Client, bucket: str, replicas: int = 1, timeout: float = 10.0):
        self.js: JetStreamContext = nc.jetstream(timeout=timeout)
        self.requester = requester(nc)
        self.timeout = timeout
        self.replicas = replicas
        self.main = Bucket(bucket, f"KV_{bucket}", f"$KV.{bucket}.")
        events = f"{bucket}-events"
        self.events = Bucket(events, f"KV_{events}", f"$KV.{events}.")

    async def ensure(self) -> None:
        """Create the buckets on first start (idempotent; an existing bucket is reused as is)."""
        for bucket, ttl in ((self.main, None), (self.events, EVENT_TTL_SECONDS)):
            try:
                await self.js.stream_info(bucket.stream)
                continue
            except jserr.NotFoundError:
                pass
            await self.js.create_key_value(jsapi.KeyValueConfig(
                bucket=bucket.name, history=HISTORY, storage=jsapi.StorageType.FILE, replicas=self.replicas,
                direct=True, ttl=ttl, max_value_size=MAX_STORED_VALUE,
                description="Flotilla state log" if ttl is None else "Flotilla events (1h)"))

    async def head(self, bucket: Bucket) -> StreamHead:
        """The stream's last sequence: a reader that has applied it has seen every write so far. When
        the stream is empty no reader will ever be delivered that sequence: see WatchCache.observe_head."""
        info = await self.js.stream_info(bucket.stream)
        return StreamHead(last=info.state.last_seq, empty=info.state.messages == 0)

    async def get(self, bucket: Bucket, key: str) -> StoredEntry | None:
        try:
            msg = await self.js.get_msg(bucket.stream, subject=bucket.prefix + key, direct=True)
        except jserr.NotFoundError:
            return None
        if msg.headers and msg.headers.get(KV_OP) in ("DEL", "PURGE"):
            return None
        return StoredEntry(msg.data or b"", msg.seq)

    async def latest(self, bucket: Bucket, key: str) -> bytes | None:
        """The key's current value, never older than the write that last acknowledged it (what a
        fence must judge by). Through the connection's requester: nats-py's `get_msg` costs several
        times as much. With replicated buckets any replica answers a direct get, possibly one that
        lags, so the stream leader is asked instead (the message get API)."""
        subject = bucket.prefix + key
        if self.replicas > 1:
            return await self._leader_get(bucket, subject)
        msg = await self.requester.request(f"$JS.API.DIRECT.GET.{bucket.stream}.{subject}", b"", self.timeout)
        headers = msg.headers or {}
        if not msg.data and headers.get("Status") == "404":
            return None
        if headers.get("Status"):
            raise ApiError("ServiceUnavailable", f"state log direct get failed: {headers.get('Status')} "
                                                 f"{headers.get('Description', '')}".rstrip())
        if headers.get(KV_OP) in ("DEL", "PURGE"):
            return None
        return msg.data

    async def _leader_get(self, bucket: Bucket, subject: str) -> bytes | None:
        msg = await self.requester.request(f"$JS.API.STREAM.MSG.GET.{bucket.stream}",
                                           _MSG_GET.encode(_MsgGetRequest(last_by_subj=subject)), self.timeout)
        reply = _MSG_GET_REPLY.decode(msg.data)
        if reply.error is not None:
            if reply.error.code == 404:
                return None
            raise ApiError("ServiceUnavailable", f"state log message get failed: {reply.error.description}")
        if reply.message is None:
            return None
        if reply.message.hdrs and any(f"{KV_OP}: {op}".encode() in reply.message.hdrs for op in ("DEL", "PURGE")):
            return None
        return reply.message.data or b"{}"

    async def _publish(self, bucket: Bucket, key: str, data: bytes, expected: int, op: str | None = None) -> int:
        headers = {EXPECTED_LAST_SUBJECT_SEQ: str(expected)}
        if op:
            headers[KV_OP] = op
        ack = await self.requester.js_publish(bucket.prefix + key, data, self.timeout, headers)
        return ack.seq

    async def create(self, bucket: Bucket, key: str, data: bytes) -> int:
        """Write a new key; AlreadyExists if it is live. A deleted key has a tombstone to CAS over."""
        try:
            return await self._publish(bucket, key, data, 0)
        except jserr.APIError as err:
            if err.err_code not in WRONG_LAST_SEQUENCE:
                raise
        try:
            last = await self.js.get_msg(bucket.stream, subject=bucket.prefix + key, direct=True)
        except jserr.NotFoundError:
            last = None
        if last is None or not (last.headers and last.headers.get(KV_OP) in ("DEL", "PURGE")):
            raise ApiError("AlreadyExists", "already exists")
        try:
            return await self._publish(bucket, key, data, last.seq)
        except jserr.APIError as err:
            if err.err_code in WRONG_LAST_SEQUENCE:
                raise ApiError("AlreadyExists", "already exists") from None
            raise

    async def update(self, bucket: Bucket, key: str, data: bytes, revision: int) -> int:
        """CAS on the caller's revision (server-enforced); a stale revision is a Conflict."""
        if revision <= 0:
            raise ApiError("Conflict", "an update needs the object's resourceVersion")
        try:
            return await self._publish(bucket, key, data, revision)
        except jserr.APIError as err:
            if err.err_code in WRONG_LAST_SEQUENCE:
                raise ApiError("Conflict", "the object has been modified; please apply your changes "
                                           "to the latest version and try again") from None
            raise

    async def delete(self, bucket: Bucket, key: str, revision: int) -> int:
        """Tombstone the key, only if it is still at `revision` (so a concurrent write is never lost)."""
        try:
            return await self._publish(bucket, key, b"", revision, op="DEL")
        except jserr.APIError as err:
            if err.err_code in WRONG_LAST_SEQUENCE:
                raise ApiError("Conflict", "the object has been modified; delete precondition failed") from None
            raise
