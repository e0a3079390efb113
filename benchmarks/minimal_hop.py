"""The ceiling an API server written with nats-py can reach here: a responder that does nothing but
what every API create must do (take the request, KV-create with CAS on "no previous revision",
reply), while an ordered consumer follows the bucket as the watch cache does. No decoding,
validation or defaults. benchmarks/api.py runs it beside the API server and prints its rate.

    .venv/bin/python -m benchmarks.minimal_hop NATS_URL
"""
from __future__ import annotations

import asyncio
import sys

import nats
import uvloop

from services.apiserver.store import StateLog
from services.lib.inbox import MessageQueue, subscribe
from services.lib.requester import requester

BUCKET = "minimal_hop"
SUBJECT = "bench.minimal_hop.create"


async def serve(url: str) -> None:
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    js = nc.jetstream()
    await StateLog(nc, BUCKET).ensure()  # configured like the state log (history, storage, direct get)
    publisher = requester(nc)  # and write as it writes (services/lib/requester.py)
    # Read as the API server reads (services/lib/inbox.py): nats-py's `messages` iterator costs a task
    # and an asyncio.wait per message, more than everything else this responder does.
    _, requests = await subscribe(nc, SUBJECT, queue="minimal_hop")
    changes = MessageQueue()
    await js.subscribe(f"$KV.{BUCKET}.>", ordered_consumer=True, cb=changes.put,
                       pending_msgs_limit=-1, pending_bytes_limit=-1)

    async def handle(msg) -> None:
        key = msg.headers["key"] if msg.headers else "k"
        await publisher.js_publish(f"$KV.{BUCKET}.{key}", msg.data, 10.0, {"Nats-Expected-Last-Subject-Sequence": "0"})
        await msg.respond(msg.data)

    async def follow() -> None:
        async for m in changes:
            int(m.reply.split(".")[5])  # the stream sequence: what the watch cache reads of every message

    async with asyncio.TaskGroup() as tg:
        tg.create_task(follow())
        async for msg in requests:
            tg.create_task(handle(msg))


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1]))
