"""Request/reply and JetStream publishes through services/lib/requester.py on a real nats-server: the
replies reach the right caller, and each failure is the error nats-py itself raises."""
from __future__ import annotations

import asyncio

import nats.errors
import nats.js.api as jsapi
import nats.js.errors as jserr
import pytest

from services.lib.requester import requester


async def test_many_concurrent_requests_each_get_their_own_reply(nc) -> None:
    async def echo(msg) -> None:
        await msg.respond(b"re:" + msg.data)

    await nc.subscribe("req.echo", cb=echo)
    r = requester(nc)
    assert requester(nc) is r  # one per connection
    replies = await asyncio.gather(*(r.request("req.echo", str(i).encode(), 5.0) for i in range(500)))
    assert [m.data for m in replies] == [b"re:%d" % i for i in range(500)]


async def test_no_responders_and_timeout(nc) -> None:
    r = requester(nc)
    with pytest.raises(nats.errors.NoRespondersError):
        await r.request("req.nobody", b"", 2.0)

    async def silent(msg) -> None:
        return None

    await nc.subscribe("req.silent", cb=silent)
    with pytest.raises(nats.errors.TimeoutError):
        await r.request("req.silent", b"", 0.2)
    # The expired request left nothing behind that a late reply could find.
    assert not r._pending


async def test_js_publish_acks_and_compare_and_set_errors(nc) -> None:
    js = nc.jetstream()
    await js.create_key_value(jsapi.KeyValueConfig(bucket="req", history=2))
    r = requester(nc)
    ack = await r.js_publish("$KV.req.a", b"1", 5.0, {"Nats-Expected-Last-Subject-Sequence": "0"})
    assert (ack.stream, ack.seq) == ("KV_req", 1)
    with pytest.raises(jserr.BadRequestError) as err:  # what nats-py raises for a failed CAS
        await r.js_publish("$KV.req.a", b"2", 5.0, {"Nats-Expected-Last-Subject-Sequence": "0"})
    assert err.value.err_code == 10071
    ack2 = await r.js_publish("$KV.req.a", b"2", 5.0, {"Nats-Expected-Last-Subject-Sequence": "1"})
    assert ack2.seq == 2
    assert (await (await js.key_value("req")).get("a")).value == b"2"
    with pytest.raises(jserr.NoStreamResponseError):
        await r.js_publish("no.stream.here", b"", 2.0)
