"""Concurrency: compare-and-set on the resourceVersion under real races, and API server replicas in one
queue group answering alike (DESIGN §2, §3)."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest

from schemas import ApiError, Pod
from services.lib.client import Api

ROUNDS = 60


def pod(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}


def copy(obj: Pod) -> Pod:
    return msgspec.convert(msgspec.to_builtins(obj), Pod)


def annotated(obj: Pod, **annotations: str) -> Pod:
    new = copy(obj)
    new.metadata.annotations = {**new.metadata.annotations, **annotations}
    return new


def split(results: list[Any]) -> tuple[list[Any], list[BaseException]]:
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    return wins, losses


def assert_conflicts(losses: list[BaseException], reason: str = "Conflict") -> None:
    for err in losses:
        assert isinstance(err, ApiError), repr(err)
        assert (err.code, err.reason) == (409, reason), repr(err)


async def clients(connect_api, n: int = 2) -> list[Api]:
    """Separate connections, so the racing requests really travel in parallel."""
    return [await connect_api() for _ in range(n)]


@pytest.mark.parametrize("replicas", [1, 2])
async def test_two_updates_from_one_version_exactly_one_wins(apiserver, connect_api, replicas: int) -> None:
    await apiserver(replicas)
    a, b = await clients(connect_api)
    await a.pods.create(pod("race"))
    winners = {"a": 0, "b": 0}
    for i in range(ROUNDS):
        current = await a.pods.get("race")
        results = await asyncio.gather(a.pods.update(annotated(current, writer=f"a-{i}")),
                                       b.pods.update(annotated(current, writer=f"b-{i}")),
                                       return_exceptions=True)
        wins, losses = split(results)
        assert len(wins) == 1 and len(losses) == 1, results
        assert_conflicts(losses)
        won: Pod = wins[0]
        assert int(won.metadata.resource_version) > int(current.metadata.resource_version)  # type: ignore[arg-type]
        stored = await b.pods.get("race")
        assert stored.metadata.resource_version == won.metadata.resource_version
        assert stored.metadata.annotations["writer"] == won.metadata.annotations["writer"]
        winners[won.metadata.annotations["writer"][0]] += 1
    assert sum(winners.values()) == ROUNDS


async def test_every_verb_racing_from_one_version_exactly_one_wins(apiserver, connect_api) -> None:
    await apiserver(2)
    a, b, c, d = await clients(connect_api, 4)
    for i in range(ROUNDS // 2):
        name = f"multi-{i}"
        await a.pods.create(pod(name))
        await a.pods.bind(name, "node-1")
        current = await a.pods.get(name)
        rv = current.metadata.resource_version
        with_status = copy(current)
        with_status.status.phase = "Running"
        results = await asyncio.gather(
            a.pods.update(annotated(current, by="update")),
            b.pods.update_status(with_status),
            c.pods.patch(name, {"metadata": {"resourceVersion": rv, "labels": {"by": "patch"}}}),
            d.pods.delete(name, resource_version=rv, grace_period_seconds=0),
            return_exceptions=True)
        wins, losses = split(results)
        assert len(wins) == 1 and len(losses) == 3, results
        which = [i for i, r in enumerate(results) if not isinstance(r, BaseException)][0]
        if which == 3:  # the delete won: the others found a stale version, or no pod at all
            assert all(isinstance(e, ApiError) and e.reason in ("Conflict", "NotFound") for e in losses), losses
            with pytest.raises(ApiError) as err:
                await a.pods.get(name)
            assert err.value.code == 404
            continue
        assert_conflicts(losses)
        after = await a.pods.get(name)
        assert after.metadata.resource_version == wins[0].metadata.resource_version
        effects = (after.metadata.annotations.get("by") == "update", after.status.phase == "Running",
                   after.metadata.labels.get("by") == "patch")
        assert effects == tuple(k == which for k in range(3))  # the winner's change, and only it


async def test_read_modify_write_loops_lose_no_update(apiserver, connect_api) -> None:
    await apiserver(2)
    apis = await clients(connect_api, 6)
    await apis[0].pods.create({**pod("counter"), "metadata": {"name": "counter", "annotations": {"n": "0"}}})
    per_worker = 20
    conflicts = 0

    async def worker(api: Api) -> None:
        nonlocal conflicts
        done = 0
        while done < per_worker:
            cur = await api.pods.get("counter")
            try:
                await api.pods.update(annotated(cur, n=str(int(cur.metadata.annotations["n"]) + 1)))
                done += 1
            except ApiError as err:
                assert err.reason == "Conflict", err
                conflicts += 1

    await asyncio.gather(*(worker(api) for api in apis))
    final = await apis[0].pods.get("counter")
    assert final.metadata.annotations["n"] == str(per_worker * len(apis))
    assert conflicts > 0  # the workers did race


@pytest.mark.parametrize("recreate", [False, True], ids=["new-name", "over-a-tombstone"])
async def test_concurrent_creates_of_one_name_exactly_one_wins(apiserver, connect_api, recreate: bool) -> None:
    await apiserver(2)
    apis = await clients(connect_api, 4)
    for i in range(ROUNDS // 3):
        name = f"same-{i}"
        if recreate:  # a deleted key leaves a tombstone; creating over it is a CAS on the tombstone
            await apis[0].pods.create(pod(name))
            await apis[0].pods.delete(name)
        results = await asyncio.gather(*(api.pods.create(pod(name, {"by": str(k)}))
                                         for k, api in enumerate(apis) for _ in range(2)), return_exceptions=True)
        wins, losses = split(results)
        assert len(wins) == 1 and len(losses) == 7, results
        assert_conflicts(losses, "AlreadyExists")
        stored = await apis[0].pods.get(name)
        assert stored.metadata.uid == wins[0].metadata.uid


async def test_concurrent_binds_to_different_nodes_exactly_one_wins(apiserver, connect_api) -> None:
    await apiserver(2)
    apis = await clients(connect_api, 3)
    for i in range(ROUNDS // 3):
        name = f"bind-{i}"
        created = await apis[0].pods.create(pod(name))
        results = await asyncio.gather(*(api.pods.bind(name, f"node-{k}", resource_version=created.metadata.resource_version)
                                         for k, api in enumerate(apis)), return_exceptions=True)
        wins, losses = split(results)
        assert len(wins) == 1 and len(losses) == 2, results
        assert_conflicts(losses)
        assert (await apis[0].pods.get(name)).spec.node_name == wins[0].spec.node_name


async def test_generate_name_under_concurrency_gives_distinct_names(apiserver, connect_api) -> None:
    await apiserver(2)
    apis = await clients(connect_api, 4)
    body = {"kind": "Pod", "metadata": {"generateName": "gen-", "labels": {"g": "1"}},
            "spec": {"containers": [{"name": "c", "image": "x:1"}]}}
    created = await asyncio.gather(*(apis[k % 4].pods.create(body) for k in range(200)))
    names = {p.metadata.name for p in created}
    assert len(names) == 200
    listed = await apis[0].pods.list(label_selector="g=1")
    assert {p.metadata.name for p in listed.items} == names


async def _raw(nc, subject: str, body: dict) -> bytes:
    return (await nc.request(subject, json.dumps(body).encode(), timeout=5)).data


QUERIES = [
    ("flo.api.v1.pods.get", {"namespace": "default", "name": "q-7"}),
    ("flo.api.v1.pods.get", {"namespace": "default", "name": "q.dotted"}),
    ("flo.api.v1.pods.get", {"namespace": "default", "name": "absent"}),
    ("flo.api.v1.pods.list", {"namespace": "default"}),
    ("flo.api.v1.pods.list", {"labelSelector": "parity in (even)", "limit": 4}),
    ("flo.api.v1.pods.list", {"fieldSelector": "spec.nodeName=node-1"}),
    ("flo.api.v1.namespaces.list", {}),
    ("flo.api.v1.pods.list", {"labelSelector": "bad in ("}),
]


async def test_replicas_in_one_queue_group_give_the_same_answers(apiserver, api: Api, nc, ping_service) -> None:
    first, second = await apiserver(2)
    assert len(await ping_service("flotilla-apiserver")) == 3  # the `api` fixture's one, plus two
    for i in range(12):
        await api.pods.create(pod(f"q-{i}", {"parity": "even" if i % 2 == 0 else "odd"}))
    await api.pods.create(pod("q.dotted"))
    await api.pods.bind("q-3", "node-1")

    async def answers() -> list[bytes]:
        return [await _raw(nc, subject, body) for subject, body in QUERIES]

    expected = await answers()
    assert json.loads(expected[0])["metadata"]["name"] == "q-7"
    assert json.loads(expected[2])["code"] == 404
    assert [p["metadata"]["name"] for p in json.loads(expected[5])["items"]] == ["q-3"]
    # Many rounds: the queue group spreads them over all three replicas; every answer is the same bytes.
    for _ in range(40):
        assert await asyncio.gather(*(_raw(nc, s, b) for s, b in QUERIES)) == expected
    # Each replica alone: kill the others one by one (SIGKILL) and ask again.
    procs = [p for p in [first, second]]
    third, = await apiserver(1)
    for proc in procs:
        proc.kill()
        for _ in range(10):
            assert await answers() == expected
    assert third.alive


async def test_a_write_is_visible_at_once_through_any_replica(apiserver, connect_api) -> None:
    await apiserver(3)
    writer, reader = await clients(connect_api)
    for i in range(80):
        created = await writer.pods.create(pod(f"ryw-{i}", {"ryw": str(i)}))
        listed, got = await asyncio.gather(reader.pods.list(label_selector=f"ryw={i}"), reader.pods.get(f"ryw-{i}"))
        assert [p.metadata.name for p in listed.items] == [f"ryw-{i}"]  # a list without version is consistent
        assert int(listed.resource_version) >= int(created.metadata.resource_version)  # type: ignore[arg-type]
        assert got.metadata.resource_version == created.metadata.resource_version
