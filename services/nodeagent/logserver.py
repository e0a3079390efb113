"""Serves container logs on `flo.node.<node>.logs` (protocol: services/lib/logs.py).

Which instance: like the kubelet — without `previous`, the running instance, else the latest
terminated one; with `previous`, the instance before (lastState). `follow` streams new output of
the running instance until it ends (the rest of its file is sent first) or the requester goes
away (a frame it does not acknowledge). Rotation under a follower is handled: when the file
shrank, the rest of the rotated copy is sent before the new content.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from schemas import ApiError
from services.lib.codec import encode
from services.lib.inbox import subscribe
from services.lib.log import get_logger
from services.lib.logs import (ACK_TIMEOUT, CHUNK_BYTES, HEARTBEAT_SECONDS, KIND_HEADER, SEQ_HEADER, LogsRequest,
                               logs_subject)
from services.lib.requester import requester

from .logfiles import read_tail
from .podstate import PodRecord

if TYPE_CHECKING:
    from .agent import NodeAgent

log = get_logger("flotilla.nodeagent.logs")

MAX_STREAMS = 256
FOLLOW_POLL_SECONDS = 0.2


class RequesterGone(Exception):
    pass


class Stream:
    """Frames to one requester's inbox, each acknowledged before the next."""

    def __init__(self, nc: Client, inbox: str):
        self.nc = nc
        self.inbox = inbox
        self.seq = 0
        self.last = time.monotonic()

    async def send(self, kind: str, data: bytes = b"") -> None:
        self.seq += 1
        try:
            await requester(self.nc).request(self.inbox, data, ACK_TIMEOUT,
                                             headers={KIND_HEADER: kind, SEQ_HEADER: str(self.seq)})
        except (NoRespondersError, NatsTimeout):
            raise RequesterGone() from None
        self.last = time.monotonic()

    async def data(self, data: bytes) -> None:
        for i in range(0, len(data), CHUNK_BYTES):
            await self.send("data", data[i:i + CHUNK_BYTES])

    async def error(self, err: ApiError) -> None:
        await self.send("error", encode(err.to_status()))


class LogServer:
    def __init__(self, nc: Client, agent: "NodeAgent"):
        self.nc = nc
        self.agent = agent
        self.node = agent.cfg.node
        self._slots = asyncio.Semaphore(MAX_STREAMS)

    async def run(self) -> None:
        sub, requests = await subscribe(self.nc, logs_subject(self.node))
        try:
            async with asyncio.TaskGroup() as tg:
                async for msg in requests:
                    if not msg.reply:
                        continue
                    await self._slots.acquire()
                    tg.create_task(self._serve(msg))
        finally:
            if self.nc.is_connected:
                await sub.unsubscribe()

    async def _serve(self, msg: Msg) -> None:
        stream = Stream(self.nc, msg.reply)
        try:
            try:
                req = msgspec.json.decode(msg.data, type=LogsRequest)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise ApiError("BadRequest", f"bad logs request: {exc}") from None
            await self._stream(req, stream)
        except ApiError as err:
            try:
                await stream.error(err)
            except RequesterGone:
                pass
        except RequesterGone:
            log.debug("log requester went away", request=msg.data[:200])
        except NatsError as exc:
            log.debug("log stream ended by NATS", error=repr(exc))
        except Exception as exc:  # an unreadable file or a bug: tell the requester, keep serving
            log.exception("log request failed", request=msg.data[:200])
            try:
                await stream.error(ApiError("InternalError", f"reading the log failed: {exc!r}"))
            except (RequesterGone, NatsError):
                pass  # the requester is gone too: nobody left to tell
        finally:
            self._slots.release()

    def _resolve(self, req: LogsRequest) -> tuple[PodRecord, str, Path, str | None]:
        """(pod, container, log file of the instance, id of that instance if it runs and is followable)."""
        sync = self.agent.sync
        rec = sync.find(req.namespace, req.name)
        if rec is None or rec.pod is None:
            raise ApiError("NotFound", f'pods "{req.name}" not found on node "{self.node}"')
        pod = rec.pod
        names = [c.name for c in pod.spec.containers]
        name = req.container
        if name is None:
            if len(names) != 1:
                raise ApiError("BadRequest", f"a container name must be specified for pod {req.name}, "
                                             f"choose one of: [{' '.join(names)}]")
            name = names[0]
        crec = rec.containers.get(name)
        if crec is None:
            raise ApiError("BadRequest", f'container "{name}" is not valid for pod "{req.name}"')
        running = crec.state == "running" and rec.live_of(name).handle is not None
        if req.previous:
            last = crec.terminated if crec.state != "terminated" else crec.previous
            if last is None:
                raise ApiError("BadRequest", f'previous terminated container "{name}" in pod "{req.name}" not found')
            restart, follow_id = last.restart, None
        elif running:
            restart, follow_id = crec.restart_count, crec.container_id
        elif crec.terminated is not None:
            restart, follow_id = crec.terminated.restart, None
        else:
            raise ApiError("BadRequest", f'container "{name}" in pod "{req.name}" is waiting to start: '
                                         f"{crec.reason or 'ContainerCreating'}")
        path = self.agent.logs.path(rec.cp.namespace, rec.cp.name, rec.uid, name, restart)
        return rec, name, path, follow_id

    async def _stream(self, req: LogsRequest, stream: Stream) -> None:
        rec, name, path, follow_id = self._resolve(req)
        files = self.agent.logs.files(path)
        # Offset, rotation count and the first part are taken together (no await in between), so a
        # follower continues exactly where the first part ended.
        try:
            offset = path.stat().st_size if req.follow else 0
        except FileNotFoundError:
            offset = 0
        seen = self.agent.logs.rotations.get(path, 0)
        head = self._upto(files, path, offset, req.tail) if req.follow else read_tail(files, req.tail)
        await stream.data(head)
        if req.follow and follow_id is not None:
            await self._follow(rec, name, follow_id, path, offset, seen, stream)
        await stream.send("end")

    def _upto(self, files: list[Path], path: Path, offset: int, tail: int | None) -> bytes:
        """The log up to `offset` bytes of the live file (tail applied)."""
        rotated = [f for f in files if f != path]
        try:
            with open(path, "rb") as f:
                live = f.read(offset)
        except FileNotFoundError:
            live = b""
        older = b"".join(f.read_bytes() for f in rotated if f.exists())
        data = older + live
        if tail is None:
            return data
        if tail <= 0:
            return b""
        return b"".join(data.splitlines(keepends=True)[-tail:])

    async def _follow(self, rec: PodRecord, name: str, follow_id: str, path: Path, offset: int, seen: int,
                      stream: Stream) -> None:
        """Stream `path` from `offset` (taken when the file had been rotated `seen` times) on."""
        def still_running() -> bool:
            crec = rec.containers.get(name)
            return (not rec.tearing_down and crec is not None and crec.container_id == follow_id
                    and rec.live_of(name).handle is not None)

        logs = self.agent.logs
        while True:
            alive = still_running()  # checked before reading, so the last output is never missed
            moved = logs.rotations.get(path, 0) - seen
            if moved:  # copy-truncated (maybe more than once): the unsent rest is in .<moved> ... .1
                seen += moved
                parts = []  # read all before sending: the next rotation renames them
                for i in range(moved, 0, -1):
                    try:
                        with open(path.with_name(f"{path.name}.{i}"), "rb") as f:
                            f.seek(offset)
                            parts.append(f.read())
                    except FileNotFoundError:
                        pass  # rotated away before we got to it
                    offset = 0
                await stream.data(b"".join(parts))
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read(min(size - offset, 4 * CHUNK_BYTES))
                offset += len(chunk)
                await stream.data(chunk)
                continue
            if not alive:
                return
            if time.monotonic() - stream.last >= HEARTBEAT_SECONDS:
                await stream.send("heartbeat")
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
