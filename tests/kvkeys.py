"""Listing a KV bucket's live keys from tests, as `nats kv ls` would."""
from __future__ import annotations

import asyncio

import nats.js.errors
from nats.js.kv import KeyValue


async def live_keys(kv: KeyValue, attempts: int = 3) -> list[str]:
    """nats-py's `keys()` raises NoKeysError when its watcher reports "nothing pending" before the
    first entry arrives, which happens now and then on a busy machine even for a full bucket.
    Asking again settles it; a bucket that is really empty still gives []."""
    for attempt in range(attempts):
        try:
            return sorted(await kv.keys())
        except nats.js.errors.NoKeysError:
            await asyncio.sleep(0.1 * (attempt + 1))
    return []
