"""Limits in the API server (issue 12): request bodies over 1.5 MB are refused (413 TooLarge) before
anything decodes them, and each principal has a token bucket: a flood from one gets 429
TooManyRequests with retryAfterSeconds while another principal is still served, and the client
library waits that out and retries. Against a real nats-server (open, so the subject names the
principal) and real API server processes."""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.errors import KeyNotFoundError

from conftest import open_nats_server
from flotilla.natsserver import NatsServer
from schemas import ApiError
from services.lib.client import Api

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big", "namespace": "default"},
       "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sleep", "1"]}]}}
LIST = b'{"namespace":"default"}'


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """An open nats-server with an 8 MB max_payload: the test speaks as any principal it names."""
    yield from open_nats_server(tmp_path)


async def raw(nc: Any, subject: str, body: bytes, timeout: float = 20) -> dict[str, Any]:
    return json.loads((await nc.request(subject, body, timeout=timeout)).data)


async def test_a_body_over_one_and_a_half_megabytes_is_refused_and_nothing_is_stored(api: Api, nc) -> None:
    doc = {**POD, "metadata": {**POD["metadata"], "annotations": {"blob": "x" * (1600 * 1024)}}}
    body = json.dumps(doc).encode()
    assert len(body) > 1_572_864
    reply = await raw(nc, "flo.api.v1.pods.create", body)
    assert reply["kind"] == "Status" and reply["code"] == 413 and reply["reason"] == "TooLarge", reply
    assert "1572864" in reply["message"]
    # refused before decoding: not even valid JSON gets another answer
    reply = await raw(nc, "flo.api.v1.pods.create", b"{" * (1600 * 1024))
    assert reply["reason"] == "TooLarge", reply
    with pytest.raises(ApiError) as missing:
        await api.pods.get("big")
    assert missing.value.reason == "NotFound"
    kv = await nc.jetstream().key_value("flotilla")
    with pytest.raises(KeyNotFoundError):
        await kv.get("pods.default.big")
    # just under the limit the request is decoded (and then judged on its merits)
    small = {**POD, "metadata": {**POD["metadata"], "name": "small", "annotations": {"note": "x" * 1024}}}
    assert (await api.pods.create(small)).metadata.name == "small"


async def test_a_flood_from_one_principal_is_throttled_while_another_is_served(apiserver, nc) -> None:
    await apiserver(1, "--rate-limit-qps", "20", "--rate-limit-burst", "40")
    flood = await asyncio.gather(*(raw(nc, "flo.api.v1.user.reader.pods.list", LIST) for _ in range(400)))
    reasons = Counter(r.get("reason", r.get("kind")) for r in flood)
    assert reasons["TooManyRequests"] >= 200, reasons
    assert reasons["PodList"] >= 40, reasons
    throttled = next(r for r in flood if r.get("reason") == "TooManyRequests")
    assert throttled["code"] == 429
    assert isinstance(throttled["details"]["retryAfterSeconds"], int)
    assert throttled["details"]["retryAfterSeconds"] >= 1
    assert 'user "reader"' in throttled["message"]
    # another principal has a bucket of its own: all of its requests are served
    other = await asyncio.gather(*(raw(nc, "flo.api.v1.user.gc.pods.list", LIST) for _ in range(30)))
    assert all(r.get("kind") == "PodList" for r in other), Counter(r.get("reason") for r in other)
    # and the client library waits out the throttling instead of failing
    reader = Api(nc, user="reader")
    await asyncio.gather(*(raw(nc, "flo.api.v1.user.reader.pods.list", LIST) for _ in range(60)))  # empty the bucket
    listed = await asyncio.gather(*(reader.pods.list("default") for _ in range(60)))
    assert len(listed) == 60


async def test_per_principal_rate_limits_come_from_the_table(apiserver, nc, tmp_path) -> None:
    cfg = tmp_path / "rbac.yaml"
    cfg.write_text("roles:\n  all:\n  - verbs: ['*']\n    resources: ['*']\n"
                   "bindings:\n- {role: all, principals: [admin, 'bot-*']}\n"
                   "rateLimits:\n  bot-*: {qps: 2, burst: 5}\n")
    await apiserver(1, "--authorization-config", str(cfg))
    bot = await asyncio.gather(*(raw(nc, "flo.api.v1.user.bot-1.pods.list", LIST) for _ in range(50)))
    reasons = Counter(r.get("reason", r.get("kind")) for r in bot)
    assert reasons["TooManyRequests"] >= 40 and reasons["PodList"] >= 5, reasons
    admin = await asyncio.gather(*(raw(nc, "flo.api.v1.pods.list", LIST) for _ in range(50)))
    assert all(r.get("kind") == "PodList" for r in admin)
