"""Container logs over NATS: the protocol, and the client side used by `flotilla logs`.

The node agent that runs a pod serves its logs on the node-scoped subject `flo.node.<node>.logs`.

Request (published with a reply subject, the requester's inbox), JSON:
    {"namespace": "default", "name": "web-1", "container": "web", "tail": 100,
     "previous": false, "follow": false}
Every field but `name` is optional: `namespace` defaults to `default`, `container` may be left out
when the pod has exactly one container, `tail` is a line count (none = everything), `previous`
selects the last terminated instance of the container, `follow` keeps streaming.

Reply: a stream of frames sent to the inbox, each a NATS *request* the requester acknowledges
with an empty reply (flow control, and the way the agent notices a requester that went away:
"no responders" or no acknowledgement within 10 s ends the stream). Each frame has headers:
    Flo-Logs: data | heartbeat | end | error
    Flo-Seq:  1, 2, 3 ... (per stream; a gap means a lost frame and ends the stream)
`data` carries raw log bytes (at most 64 KiB per frame), `heartbeat` (empty) is sent every 5 s
while following an idle container, `end` closes the stream (the log is complete, or the followed
container ended), and `error` carries a Status JSON body (`{"kind":"Status","code":404,...}`)
and closes the stream.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import ApiError

from .codec import encode, raise_for_status
from .inbox import Inbox

LOGS_SUBJECT = "flo.node.{node}.logs"
KIND_HEADER = "Flo-Logs"
SEQ_HEADER = "Flo-Seq"
HEARTBEAT_SECONDS = 5.0
ACK_TIMEOUT = 10.0
CHUNK_BYTES = 64 * 1024


class LogsRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    name: str
    namespace: str = "default"
    container: str | None = None
    tail: int | None = None
    previous: bool = False
    follow: bool = False


def logs_subject(node: str) -> str:
    return LOGS_SUBJECT.format(node=node)


async def stream_logs(nc: Client, node: str, namespace: str, name: str, container: str | None = None,
                      tail: int | None = None, previous: bool = False, follow: bool = False,
                      timeout: float = 10.0) -> AsyncIterator[bytes]:
    """Yield log chunks as the node agent sends them; ends when the agent says so.

    Raises ApiError: NotFound/BadRequest as the agent answers them, ServiceUnavailable when no
    agent serves `node`, Timeout when the agent stops sending (no frame, not even a heartbeat,
    within `timeout` seconds, or 3 heartbeat intervals while following).
    """
    async with Inbox(nc) as inbox:
        req = LogsRequest(name=name, namespace=namespace or "default", container=container, tail=tail,
                          previous=previous, follow=follow)
        await nc.publish(logs_subject(node), encode(req), reply=inbox.subject)
        idle = max(timeout, 3 * HEARTBEAT_SECONDS) if follow else timeout
        expected = 1
        while True:
            try:
                msg = await inbox.get(idle)
            except TimeoutError:
                raise ApiError("Timeout", f"node agent of {node!r} sent no logs for {idle:g}s") from None
            headers = msg.headers or {}
            if headers.get("Status") == "503":
                raise ApiError("ServiceUnavailable", f"no node agent answers for node {node!r}")
            kind = headers.get(KIND_HEADER)
            if kind is None:
                continue  # not a frame of this protocol
            seq = int(headers.get(SEQ_HEADER, "0"))
            if seq != expected:
                raise ApiError("InternalError",
                               f"log stream from {node!r} lost a frame ({expected} expected, got {seq})")
            expected += 1
            await _ack(msg)
            if kind == "data":
                if msg.data:
                    yield msg.data
            elif kind == "error":
                raise_for_status(msg.data)
                raise ApiError("InternalError", f"log stream from {node!r} failed: {msg.data[:200]!r}")
            elif kind == "end":
                return


async def _ack(msg: Msg) -> None:
    if msg.reply:
        await msg.respond(b"")


async def fetch_logs(nc: Client, node: str, namespace: str, name: str, container: str | None = None,
                     tail: int | None = None, previous: bool = False, timeout: float = 10.0) -> bytes:
    """The whole log (or its last `tail` lines) of one container, as bytes."""
    parts = [chunk async for chunk in stream_logs(nc, node, namespace, name, container, tail, previous,
                                                  follow=False, timeout=timeout)]
    return b"".join(parts)


def follow_logs(nc: Client, node: str, namespace: str, name: str, container: str | None = None,
                tail: int | None = None, timeout: float = 10.0) -> AsyncIterator[bytes]:
    """`flotilla logs -f`: the log so far (or its last `tail` lines), then new output as it comes,
    until the container ends. Breaking out of the loop (or cancelling) tells the agent to stop."""
    return stream_logs(nc, node, namespace, name, container, tail, previous=False, follow=True, timeout=timeout)


__all__ = ["LOGS_SUBJECT", "LogsRequest", "fetch_logs", "follow_logs", "logs_subject", "stream_logs",
           "CHUNK_BYTES", "ACK_TIMEOUT", "HEARTBEAT_SECONDS", "KIND_HEADER", "SEQ_HEADER"]
