"""Watches: from a version, every later change exactly once and in the state log's order, with selectors,
Gone, bookmarks; and (slow, chaos) across a SIGKILLed API server replica and a NATS restart.

The truth a watch is compared with is the JetStream stream itself: resourceVersions are its sequence
numbers, and while a test's writers run nothing else writes the state log, so the sequences since the
watch's start are exactly their writes. Writers record the version of every write they were told of;
tombstones (deletes answer with the object, not the tombstone's version) are read back from the stream.
"""
from __future__ import annotations

import asyncio
import json
import random
import signal
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.client import Client

from schemas import ApiError, Pod
from services.lib.client import Api, WatchExpired
from services.apiserver.store import HISTORY
from services.lib.informer import Informer

STREAM = "KV_flotilla"
PREFIX = "$KV.flotilla.pods.default."
Event = tuple[str, str, int]  # (type, name, resourceVersion)


def pod(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}


async def head(nc: Client) -> int:
    return (await nc.jetstream().stream_info(STREAM)).state.last_seq


class Truth:
    """The ordered writes to pods in `default` since a version: (seq, name, op, labels, node)."""

    def __init__(self) -> None:
        self.writes: dict[int, tuple[str, str, dict[str, str], str | None]] = {}

    def wrote(self, obj: Pod) -> None:
        self.writes[int(obj.metadata.resource_version)] = (obj.metadata.name, "PUT", dict(obj.metadata.labels),
                                                           obj.spec.node_name)

    async def complete(self, nc: Client, since: int, until: int) -> None:
        """Every sequence in (since, until] the writers did not see is a tombstone still in the stream."""
        js = nc.jetstream()
        for seq in range(since + 1, until + 1):
            if seq in self.writes:
                continue
            msg = await js.get_msg(STREAM, seq)
            assert msg.subject.startswith(PREFIX), f"unexpected write {seq} to {msg.subject}"
            assert msg.headers and msg.headers.get("KV-Operation") == "DEL", f"write {seq} not accounted for"
            self.writes[seq] = (msg.subject[len(PREFIX):].replace("_", "."), "DEL", {}, None)

    def expected(self, match: Callable[[dict[str, str], str | None], bool] = lambda labels, node: True) -> list[Event]:
        """The events a watch with this filter must deliver: Kubernetes semantics, an object that stops
        matching is DELETED for the watch, one that starts matching is ADDED."""
        out: list[Event] = []
        last: dict[str, tuple[dict[str, str], str | None]] = {}
        for seq in sorted(self.writes):
            name, op, labels, node = self.writes[seq]
            prev = last.get(name)
            old_ok = prev is not None and match(*prev)
            new_ok = op == "PUT" and match(labels, node)
            if new_ok:
                out.append(("MODIFIED" if old_ok else "ADDED", name, seq))
            elif old_ok:
                out.append(("DELETED", name, seq))
            if op == "PUT":
                last[name] = (labels, node)
            else:
                last.pop(name, None)
        return out


async def stream_events(nc: Client, since: int, until: int) -> list[Event]:
    """The stream's own record of pods in `default` in (since, until] (needs a bucket keeping history)."""
    js = nc.jetstream()
    out: list[Event] = []
    live: set[str] = set()
    for seq in range(since + 1, until + 1):
        msg = await js.get_msg(STREAM, seq)
        if not msg.subject.startswith(PREFIX):
            continue
        name = msg.subject[len(PREFIX):].replace("_", ".")
        if msg.headers and msg.headers.get("KV-Operation") in ("DEL", "PURGE"):
            out.append(("DELETED", name, seq))
            live.discard(name)
        else:
            out.append(("MODIFIED" if name in live else "ADDED", name, seq))
            live.add(name)
    return out


class Collector:
    """Runs a watch in a task and records (type, name, resourceVersion) of every event."""

    def __init__(self, api: Api, **watch: Any):
        self.api = api
        self.watch = watch
        self.events: list[Event] = []
        self.bookmarks: list[int] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for type_, obj in self.api.pods.watch(bookmarks=True, **self.watch):
            if type_ == "BOOKMARK":
                self.bookmarks.append(int(obj.metadata.resource_version))
            else:
                self.events.append((type_, obj.metadata.name, int(obj.metadata.resource_version)))

    async def until(self, count: int, wait_for, timeout: float = 20.0) -> list[Event]:
        await wait_for(lambda: len(self.events) >= count or self.task.done(), timeout=timeout,
                       what=f"{count} watch events (have {len(self.events)})")
        if self.task.done():
            self.task.result()  # raise what ended the watch
        await asyncio.sleep(0.5)  # anything beyond the expected would be a duplicate: let it show
        return list(self.events)

    async def close(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, WatchExpired):
            pass


async def churn(api: Api, truth: Truth, prefix: str, workers: int = 8, per_worker: int = 30,
                labels: Callable[[random.Random], dict[str, str]] = lambda r: {}, bind: bool = False) -> None:
    """Concurrent writers: each creates pods, patches them a few times (binding some), deletes most."""

    async def worker(w: int) -> None:
        rnd = random.Random(w)
        for i in range(per_worker):
            name = f"{prefix}-{w}-{i}"
            truth.wrote(await api.pods.create(pod(name, labels(rnd))))
            for _ in range(rnd.randint(0, 3)):
                truth.wrote(await api.pods.patch(name, {"metadata": {"labels": labels(rnd) or {"n": str(rnd.random())[:8]}}}))
            if bind and rnd.random() < 0.6:
                truth.wrote(await api.pods.bind(name, rnd.choice(["node-1", "node-2"])))
            if rnd.random() < 0.7:
                done = await api.pods.delete(name, grace_period_seconds=0)
                assert done.metadata.name == name

    await asyncio.gather(*(worker(w) for w in range(workers)))


# ---- order, exactly once -----------------------------------------------------------------------------

async def test_a_watch_from_a_version_sees_every_later_change_once_in_order(api: Api, connect_api, nc, wait_for) -> None:
    await api.pods.create(pod("before"))
    since = await head(nc)
    watcher = Collector(await connect_api(), namespace="default", resource_version=str(since))
    writers = [await connect_api() for _ in range(4)]
    truth = Truth()
    await asyncio.gather(*(churn(w, truth, f"c{k}", workers=4, per_worker=15) for k, w in enumerate(writers)))
    until = await head(nc)
    await truth.complete(nc, since, until)
    expected = truth.expected()
    assert len(expected) == until - since > 200
    try:
        seen = await watcher.until(len(expected), wait_for)
    finally:
        await watcher.close()
    assert seen == expected  # every change, once, in the stream's order, with the stream's sequence
    assert [rv for _, _, rv in seen] == sorted({rv for _, _, rv in seen})


async def test_watches_with_label_and_field_selectors(api: Api, connect_api, nc, wait_for) -> None:
    since = await head(nc)
    watch_api = await connect_api()
    by_label = Collector(watch_api, namespace="default", label_selector="group in (a),tier!=x", resource_version=str(since))
    by_node = Collector(watch_api, field_selector="spec.nodeName=node-1", resource_version=str(since))
    unscheduled = Collector(watch_api, namespace="default", field_selector="spec.nodeName=", resource_version=str(since))
    both = Collector(watch_api, label_selector="group=b", field_selector="spec.nodeName=node-2",
                     resource_version=str(since))
    truth = Truth()

    def labels(rnd: random.Random) -> dict[str, str]:
        return {"group": rnd.choice("abc"), "tier": rnd.choice("xyz")}

    await churn(await connect_api(), truth, "s", workers=8, per_worker=12, labels=labels, bind=True)
    until = await head(nc)
    await truth.complete(nc, since, until)
    cases = [
        (by_label, lambda lb, node: lb.get("group") == "a" and lb.get("tier") != "x"),
        (by_node, lambda lb, node: node == "node-1"),
        (unscheduled, lambda lb, node: not node),
        (both, lambda lb, node: lb.get("group") == "b" and node == "node-2"),
    ]
    try:
        for collector, match in cases:
            expected = truth.expected(match)
            assert expected and any(t == "DELETED" for t, _, _ in expected)
            assert await collector.until(len(expected), wait_for) == expected
    finally:
        for collector, _ in cases:
            await collector.close()


async def test_a_watch_without_a_version_starts_with_the_current_state(api: Api, connect_api, wait_for) -> None:
    for name in ("s1", "s2", "s3"):
        await api.pods.create(pod(name, {"keep": "yes" if name != "s2" else "no"}))
    watcher = Collector(await connect_api(), label_selector="keep=yes")
    try:
        initial = await watcher.until(2, wait_for)
        assert [(t, n) for t, n, _ in initial] == [("ADDED", "s1"), ("ADDED", "s3")]
        changed = await api.pods.patch("s2", {"metadata": {"labels": {"keep": "yes"}}})
        seen = await watcher.until(3, wait_for)
        assert seen[2] == ("ADDED", "s2", int(changed.metadata.resource_version))
    finally:
        await watcher.close()


# ---- Gone, bookmarks, timeouts ---------------------------------------------------------------------

async def test_a_version_older_than_the_watch_cache_remembers_is_gone(apiserver, connect_api, nc, wait_for) -> None:
    (early,) = await apiserver(1)
    api = await connect_api()
    await asyncio.gather(*(api.pods.create(pod(f"old-{i}")) for i in range(10)))
    remembered_from = await head(nc)
    # A replica started now fills its cache from the log's current state: it has no history before it.
    # Kill the first one, whose history reaches back to the start, so that only the new one serves.
    await apiserver(1)
    early.kill()
    raw = await _raw_watch(nc, {"resourceVersion": str(remembered_from - 1)})
    assert (raw["kind"], raw["code"], raw["reason"]) == ("Status", 410, "Gone")
    with pytest.raises(WatchExpired) as expired:
        async for _ in api.pods.watch(resource_version="1"):
            pass
    assert expired.value.gone
    # From exactly what it remembers on, the watch works.
    ack = await _raw_watch(nc, {"resourceVersion": str(remembered_from)})
    assert ack["type"] == "ACK" and ack["resourceVersion"] == str(remembered_from)
    watcher = Collector(await connect_api(), resource_version=str(remembered_from))
    try:
        created = await api.pods.create(pod("new"))
        assert await watcher.until(1, wait_for) == [("ADDED", "new", int(created.metadata.resource_version))]
    finally:
        await watcher.close()
    # The informer's answer to Gone is a relist: it ends up with every object all the same.
    informer = Informer(api.pods, namespace="default")
    informer.resource_version = "1"
    task = asyncio.create_task(informer.run())
    try:
        await wait_for(lambda: informer.synced.is_set(), what="informer synced")
        assert sorted(informer.store) == sorted(["default/new"] + [f"default/old-{i}" for i in range(10)])
    finally:
        task.cancel()


async def test_bookmarks_carry_the_current_version(apiserver, nc, connect_api) -> None:
    await apiserver(1, "--bookmark-seconds", "0.2")
    api = await connect_api()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("flo.api.v1.pods.watch", b'{"namespace":"default","resourceVersion":"0"}', reply=inbox)
    ack = json.loads((await sub.next_msg(timeout=5)).data)
    assert ack["type"] == "ACK" and ack["bookmarkSeconds"] == 0.2
    marks = []
    for _ in range(3):
        ev = json.loads((await sub.next_msg(timeout=2)).data)
        assert ev["type"] == "BOOKMARK"
        assert ev["object"]["kind"] == "Pod" and set(ev["object"]["metadata"]) == {"resourceVersion"}
        marks.append(ev)
    assert [m["seq"] for m in marks] == [1, 2, 3]
    now = str(await head(nc))
    assert all(m["object"]["metadata"]["resourceVersion"] == now for m in marks)
    created = await api.pods.create(pod("b"))
    ev = json.loads((await sub.next_msg(timeout=2)).data)
    assert (ev["type"], ev["seq"], ev["object"]["metadata"]["resourceVersion"]) == \
        ("ADDED", 4, created.metadata.resource_version)
    other = await api.namespaces.create({"metadata": {"name": "elsewhere"}})  # not a pod: only a bookmark shows it
    ev = json.loads((await sub.next_msg(timeout=2)).data)
    assert ev["type"] == "BOOKMARK" and int(ev["object"]["metadata"]["resourceVersion"]) >= int(other.metadata.resource_version)
    await sub.unsubscribe()


async def test_a_watch_with_a_timeout_ends_with_an_error_event(api: Api, nc) -> None:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("flo.api.v1.pods.watch", b'{"timeoutSeconds": 1}', reply=inbox)
    assert json.loads((await sub.next_msg(timeout=5)).data)["type"] == "ACK"
    while True:
        ev = json.loads((await sub.next_msg(timeout=5)).data)
        if ev["type"] != "BOOKMARK":
            break
    assert ev["type"] == "ERROR" and ev["object"]["kind"] == "Status" and ev["object"]["reason"] == "Timeout"
    await sub.unsubscribe()


async def _raw_watch(nc: Client, body: dict[str, Any]) -> dict[str, Any]:
    """Send a watch request and return the first reply (ACK or Status) as JSON."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish("flo.api.v1.pods.watch", json.dumps(body).encode(), reply=inbox)
        return json.loads((await sub.next_msg(timeout=5)).data)
    finally:
        await sub.unsubscribe()


async def test_a_watch_with_no_api_server_is_an_error_the_informer_retries(nats_server, apiserver, connect_api,
                                                                           wait_for) -> None:
    api = await connect_api(timeout=1.0)
    with pytest.raises(ApiError) as err:  # NATS answers "no responders": not a watch event to decode
        async for _ in api.pods.watch():
            pass
    assert err.value.reason == "ServiceUnavailable"
    informer = Informer(api.pods, resync_backoff=0.05)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.sleep(1.0)
        assert not task.done() and not informer.synced.is_set()
        await apiserver(1)
        await wait_for(lambda: informer.synced.is_set() or task.done(), what="informer synced")
        assert not task.done()
        created = await api.pods.create(pod("late"))
        await wait_for(lambda: "default/late" in informer.store or task.done(), what="informer to see the pod")
        assert informer.store["default/late"].metadata.uid == created.metadata.uid
    finally:
        task.cancel()


async def test_rapid_updates_of_a_few_keys_skip_no_version(api: Api, connect_api, nc, wait_for) -> None:
    """The bucket keeps one revision per key: a version superseded before the watch cache read it would
    be gone from the stream. Hammer a few keys from many clients; every version must still be seen."""
    names = [f"hot-{i}" for i in range(3)]
    for name in names:
        await api.pods.create(pod(name))
    since = await head(nc)
    watcher = Collector(await connect_api(), namespace="default", resource_version=str(since))
    writers = [await connect_api() for _ in range(6)]
    truth = Truth()
    conflicts = 0

    async def hammer(w: Api, k: int) -> None:
        nonlocal conflicts
        for i in range(60):
            while True:  # an unconditional patch may still lose too many races in a row (409), as in Kubernetes
                try:
                    truth.wrote(await w.pods.patch(names[(k + i) % len(names)], {"metadata": {"annotations": {"i": f"{k}-{i}"}}}))
                    break
                except ApiError as err:
                    assert err.reason == "Conflict", err
                    conflicts += 1

    try:
        await asyncio.gather(*(hammer(w, k) for k, w in enumerate(writers) for _ in range(4)))
        until = await head(nc)
        await truth.complete(nc, since, until)
        expected = [("MODIFIED", n, rv) for _, n, rv in truth.expected(lambda lb, node: True)]
        assert len(expected) == until - since == 6 * 4 * 60
        assert await watcher.until(len(expected), wait_for) == expected
    finally:
        await watcher.close()


async def test_a_watch_cache_that_fell_behind_the_kept_history_ends_watches_with_gone(apiserver, connect_api, nc,
                                                                                     wait_for) -> None:
    """The bucket keeps a few revisions per key for a cache that lags. Lagging further than that loses
    versions: the watches must end with Gone (clients relist), never skip changes silently."""
    (proc,) = await apiserver(1, "--bookmark-seconds", "0.3")
    api = await connect_api(timeout=2.0)
    created = await api.pods.create(pod("hot"))
    since = int(created.metadata.resource_version)
    seen: list[Event] = []
    ended: list[WatchExpired] = []

    async def watch() -> None:
        rv = str(since)
        while True:
            try:
                async for type_, obj in api.pods.watch(resource_version=rv):
                    seen.append((type_, obj.metadata.name, int(obj.metadata.resource_version)))
                    rv = obj.metadata.resource_version
            except WatchExpired as exc:
                ended.append(exc)
                if exc.gone:
                    return
            except ApiError:
                await asyncio.sleep(0.1)

    task = asyncio.create_task(watch())
    js = nc.jetstream()
    kv = await js.key_value("flotilla")
    stored = json.loads((await kv.get("pods.default.hot")).value)
    proc.signal(signal.SIGSTOP)  # the API server lags...
    try:
        for info in await js.consumers_info(STREAM):  # ... and its consumer is lost, as in a NATS restart
            await js.delete_consumer(STREAM, info.name)
        for i in range(HISTORY + 4):  # meanwhile the key changes more often than the bucket keeps
            stored["metadata"]["labels"] = {"i": str(i)}
            await kv.put("pods.default.hot", json.dumps(stored).encode())
    finally:
        proc.signal(signal.SIGCONT)
    last = await head(nc)
    try:
        await wait_for(lambda: any(e.gone for e in ended) or task.done(), timeout=20, what="the watch to end with Gone")
        assert not [e for e in seen if e[2] > since]  # nothing delivered across the hole in the history
        raw = await _raw_watch(nc, {"resourceVersion": str(since)})
        assert (raw.get("code"), raw.get("reason")) == (410, "Gone")
        relisted = await api.pods.list()  # the relist sees the latest state
        assert [(p.metadata.name, p.metadata.resource_version, p.metadata.labels) for p in relisted.items] == \
            [("hot", str(last), {"i": str(HISTORY + 3)})]
    finally:
        task.cancel()


# ---- chaos: a replica killed, NATS restarted -------------------------------------------------------

class Rewatcher:
    """A client-side re-watch loop: on WatchExpired it resumes from the last version it saw."""

    def __init__(self, api: Api, since: int):
        self.api = api
        self.rv = str(since)
        self.events: list[Event] = []
        self.resumes = 0
        self.errors: list[ApiError] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                async for type_, obj in self.api.pods.watch(namespace="default", resource_version=self.rv):
                    self.events.append((type_, obj.metadata.name, int(obj.metadata.resource_version)))
                    self.rv = obj.metadata.resource_version
            except WatchExpired as exc:
                assert not exc.gone, f"resuming from {self.rv} was refused as too old: {exc}"
                self.resumes += 1
            except ApiError as exc:  # no API server reachable for a moment
                self.errors.append(exc)
                await asyncio.sleep(0.1)

    def last(self) -> int:
        if self.task.done():
            self.task.result()
        return self.events[-1][2] if self.events else 0

    async def close(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


class Writer:
    """Writes pods in `default` until stopped: creates, label patches, deletes; failures are expected
    while a server is down (the reply is lost, the write may or may not have happened)."""

    def __init__(self, api: Api, workers: int = 3):
        self.api = api
        self.writes: dict[int, str] = {}  # seq -> name, from the replies that did arrive
        self.ok = 0
        self.failed = 0
        self.stopping = asyncio.Event()
        self.tasks = [asyncio.create_task(self._worker(w)) for w in range(workers)]

    async def _worker(self, w: int) -> None:
        rnd = random.Random(w)
        live: list[str] = []
        i = 0
        while not self.stopping.is_set():
            i += 1
            r = rnd.random()
            try:
                if not live or r < 0.4:
                    obj = await self.api.pods.create(pod(f"w{w}-{i}"))
                    live.append(obj.metadata.name)
                elif r < 0.85:
                    obj = await self.api.pods.patch(rnd.choice(live), {"metadata": {"labels": {"n": str(i)}}})
                else:
                    name = live.pop(rnd.randrange(len(live)))
                    await self.api.pods.delete(name, grace_period_seconds=0)
                    obj = None
                if obj is not None:
                    self.writes[int(obj.metadata.resource_version)] = obj.metadata.name
                self.ok += 1
            except ApiError:
                self.failed += 1
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.003)

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.gather(*self.tasks)


def check_watch_against_stream(events: list[Event], since: int, until: int, writes: dict[int, str]) -> None:
    """Only these writers write the state log meanwhile, so its sequences (since, until] are exactly
    their writes: a correct watch of the namespace sees each of them once, in order, none missing."""
    seqs = [rv for _, _, rv in events]
    assert len(seqs) == len(set(seqs)), "a change was delivered twice"
    assert seqs == sorted(seqs), "changes out of order"
    missing = sorted(set(range(since + 1, until + 1)) - set(seqs))
    assert not missing, f"{len(missing)} changes never delivered, e.g. {missing[:10]}"
    assert seqs == list(range(since + 1, until + 1))
    by_seq = {rv: (t, n) for t, n, rv in events}
    for seq, name in writes.items():  # what the writers were told matches what the watch says
        assert by_seq[seq][1] == name and by_seq[seq][0] in ("ADDED", "MODIFIED"), (seq, name, by_seq[seq])
    state: dict[str, bool] = {}
    for t, n, rv in events:  # per object: ADDED, MODIFIED..., DELETED
        assert (t == "ADDED") == (not state.get(n, False)), f"{t} {n} at {rv} after {'live' if state.get(n) else 'nothing'}"
        state[n] = t != "DELETED"


async def run_informer(api: Api) -> tuple[Informer, asyncio.Task]:
    informer = Informer(api.pods, namespace="default")
    return informer, asyncio.create_task(informer.run())


async def check_informer(informer: Informer, api: Api, until: int, wait_for) -> None:
    await wait_for(lambda: int(informer.resource_version or 0) >= until, timeout=30, what="informer to catch up")
    truth = await api.pods.list_all(namespace="default")
    assert {k: o.metadata.resource_version for k, o in informer.store.items()} == \
        {f"default/{o.metadata.name}": o.metadata.resource_version for o in truth.items}


@pytest.mark.slow
async def test_watch_survives_its_api_server_being_killed(apiserver, connect_api, nc, wait_for) -> None:
    args = ("--bookmark-seconds", "0.3")
    (serving,) = await apiserver(1, *args)  # the only replica: it serves the watch
    since = await head(nc)
    watcher = Rewatcher(await connect_api(), since)
    informer, informer_task = await run_informer(await connect_api())
    writer = Writer(await connect_api(timeout=2.0))
    try:
        for round_ in range(2):
            await wait_for(lambda: len(watcher.events) >= 40 * (round_ + 1), timeout=30, what="events before the kill")
            (successor,) = await apiserver(1, *args)
            # The successor's history starts where its cache did: let the watcher pass that point first,
            # so that resuming needs no relist (that case is the Gone test's).
            started_at = await head(nc)
            await wait_for(lambda: watcher.last() >= started_at, timeout=30, what="watcher to pass the successor's start")
            resumes, seen = watcher.resumes, len(watcher.events)
            serving.kill()
            assert not serving.alive
            serving = successor
            await wait_for(lambda: watcher.resumes > resumes and len(watcher.events) >= seen + 40, timeout=30,
                           what="the watch to resume on the surviving replica")
        await writer.stop()
        until = await head(nc)
        await wait_for(lambda: watcher.last() >= until, timeout=30, what=f"watcher to reach {until}")
        await asyncio.sleep(0.5)
        check_watch_against_stream(watcher.events, since, until, writer.writes)
        assert watcher.resumes >= 2 and writer.ok > 100
        await check_informer(informer, await connect_api(), until, wait_for)
        assert informer.relists == 1 and informer.rewatches >= 2  # resumed from its version, never relisted
    finally:
        await writer.stop()
        await watcher.close()
        informer_task.cancel()


@pytest.mark.slow
async def test_watch_survives_a_nats_restart(nats_server, apiserver, connect_api, nc, wait_for) -> None:
    await apiserver(2, "--bookmark-seconds", "0.3")
    since = await head(nc)
    watcher = Rewatcher(await connect_api(), since)
    informer, informer_task = await run_informer(await connect_api())
    writer = Writer(await connect_api(timeout=2.0))
    try:
        await wait_for(lambda: len(watcher.events) >= 60, timeout=30, what="events before the restart")
        await nats_server.arestart()  # same port, same store: JetStream keeps the state log
        after = writer.ok
        await wait_for(lambda: writer.ok >= after + 60, timeout=40, what="the API to serve writes again")
        resumed = len(watcher.events)
        await wait_for(lambda: len(watcher.events) >= resumed + 40, timeout=30, what="the watch to go on")
        await writer.stop()
        until = await head(nc)
        await wait_for(lambda: watcher.last() >= until, timeout=30, what=f"watcher to reach {until}")
        await asyncio.sleep(0.5)
        check_watch_against_stream(watcher.events, since, until, writer.writes)
        api = await connect_api()
        created = await api.pods.create(pod("after-restart"))
        assert (await api.pods.get("after-restart")).metadata.uid == created.metadata.uid
        await check_informer(informer, api, int(created.metadata.resource_version), wait_for)
    finally:
        await writer.stop()
        await watcher.close()
        informer_task.cancel()


async def _fake_watch_server(nc: Client, messages: list[bytes]) -> Any:
    """Answers watch requests on flo.api.v1.pods.watch with `messages`, as a server would stream them."""
    async def serve(msg) -> None:
        for data in messages:
            await nc.publish(msg.reply, data)
    return await nc.subscribe("flo.api.v1.pods.watch", cb=serve)


def _event(seq: int, name: str, rv: int) -> dict[str, Any]:
    return {"type": "ADDED", "seq": seq, "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {
        "name": name, "namespace": "default", "resourceVersion": str(rv)}, "spec": {"containers": []}}}


async def test_a_watch_whose_ack_was_lost_is_restarted_not_crashed(nats_server, nc) -> None:
    """Across a NATS restart the ACK can be published before the watcher's inbox is subscribed again:
    the stream then starts with an event (or a batch). That is a lost start, so WatchExpired (the
    informer watches again), never a decoding error that would kill the service."""
    client = Api(nc, timeout=2)
    for first in (json.dumps(_event(1, "a", 5)).encode(), json.dumps([_event(1, "a", 5), _event(2, "b", 6)]).encode(),
                  b"not json"):
        sub = await _fake_watch_server(nc, [first])
        with pytest.raises(WatchExpired):
            async for _ in client.pods.watch():
                pass
        await sub.unsubscribe()


async def test_a_batch_of_events_is_delivered_in_order_and_checked_for_gaps(nats_server, nc) -> None:
    ack = {"type": "ACK", "seq": 0, "resourceVersion": "4", "watchId": "x", "bookmarkSeconds": 2.0}
    client = Api(nc, timeout=2)
    sub = await _fake_watch_server(nc, [json.dumps(ack).encode(),
                                        json.dumps([_event(1, "a", 5), _event(2, "b", 6)]).encode(),
                                        json.dumps(_event(3, "c", 7)).encode(),
                                        json.dumps([_event(4, "d", 8), _event(6, "e", 9)]).encode()])
    seen = []
    with pytest.raises(WatchExpired, match="gap: expected 5, got 6"):
        async for type_, pod in client.pods.watch():
            seen.append((type_, pod.metadata.name, pod.metadata.resource_version))
    assert seen == [("ADDED", "a", "5"), ("ADDED", "b", "6"), ("ADDED", "c", "7"), ("ADDED", "d", "8")]
    await sub.unsubscribe()
