"""The API server's write fence (schemas/fencing.py, services/apiserver/fencing.py) against a real
API server: a write carrying a Flotilla-Fence header is served only while the named Lease is held by
that holder in that term; a refused write is 409 Conflict "fenced: ..." and stores nothing. Requests
without the header (the CLI, people, node agents) and reads are never fenced.

The requests are raw NATS requests with headers, as `nats req -H` sends them, plus one round through
the client library's `Api(nc, fence=...)` with two real electors, where the old leader's write that
had already passed its local check reaches the server only after the successor took over.
"""
from __future__ import annotations

import asyncio
import json
import time

from nats.aio.client import Client

from schemas import ApiError, Lease, LeaseSpec, ObjectMeta
from schemas.fencing import FENCE_HEADER, Fence
from services.lib.client import Api, Fenced
from services.lib.codec import encode
from services.lib.leader import LeaderElector, NotLeader

from test_replicaset import rs_body

NS = "flotilla-system"


def pod(name: str, labels: dict | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "c", "image": "img", "command": ["sleep", "3600"]}]}}


async def raw(nc: Client, resource: str, verb: str, body: dict, fence: str | None = None) -> dict:
    headers = {FENCE_HEADER: fence} if fence is not None else None
    msg = await nc.request(f"flo.api.v1.{resource}.{verb}", json.dumps(body).encode(), timeout=10, headers=headers)
    return json.loads(msg.data)


def refused(reply: dict) -> bool:
    return reply.get("kind") == "Status" and reply.get("code") == 409 and reply["message"].startswith("fenced: ")


async def test_stale_term_refused_current_term_and_unfenced_writes_served(api: Api, nc: Client) -> None:
    lease = await api.leases.create(Lease(metadata=ObjectMeta(name="fence-a", namespace=NS),
                                          spec=LeaseSpec(holder_identity="leader-1", lease_transitions=3)))
    current = Fence(NS, "fence-a", "leader-1", 3).header()
    stale_term = Fence(NS, "fence-a", "leader-1", 2).header()
    stale_holder = Fence(NS, "fence-a", "leader-0", 3).header()
    before = await api.pods.create(pod("target"))
    await api.replicasets.create(rs_body("rs", 1))

    # Each write verb with a stale fence: refused, naming who holds the lease now; nothing stored.
    for fence in (stale_term, stale_holder):
        r = await raw(nc, "pods", "patch", {"namespace": "default", "name": "target",
                                            "patch": {"metadata": {"labels": {"by": "stale"}}}}, fence)
        assert refused(r), r
        assert "lease flotilla-system/fence-a is now held by leader-1 (term 3)" in r["message"], r
        assert refused(await raw(nc, "pods", "create", pod("stale-create"), fence))
        assert refused(await raw(nc, "pods", "delete", {"namespace": "default", "name": "target"}, fence))
        assert refused(await raw(nc, "pods", "bind", {"namespace": "default", "name": "target", "nodeName": "n1"},
                                 fence))
        stored = await api.pods.get("target")
        stored.metadata.labels = {"by": "stale"}
        assert refused(await raw(nc, "pods", "update", json.loads(encode(stored)), fence))
        assert refused(await raw(nc, "pods", "status", json.loads(encode(stored)), fence))
        assert refused(await raw(nc, "replicasets", "scale", {"namespace": "default", "name": "rs", "replicas": 5},
                                 fence))
    after = await api.pods.get("target")
    assert after.metadata.resource_version == before.metadata.resource_version
    assert after.metadata.labels == {} and not after.metadata.deletion_timestamp and not after.spec.node_name
    assert (await api.replicasets.get("rs")).spec.replicas == 1
    try:
        await api.pods.get("stale-create")
        raise AssertionError("a create with a stale fence was stored")
    except ApiError as exc:
        assert exc.reason == "NotFound"

    # Reads are not fenced, whatever the header says.
    got = await raw(nc, "pods", "get", {"namespace": "default", "name": "target"}, stale_term)
    assert got["kind"] == "Pod"

    # The current term writes; so does a client without any fence.
    r = await raw(nc, "pods", "patch", {"namespace": "default", "name": "target",
                                        "patch": {"metadata": {"labels": {"by": "leader"}}}}, current)
    assert r["kind"] == "Pod" and r["metadata"]["labels"] == {"by": "leader"}, r
    r = await raw(nc, "pods", "patch", {"namespace": "default", "name": "target",
                                        "patch": {"metadata": {"labels": {"by": "cli"}}}})
    assert r["kind"] == "Pod" and r["metadata"]["labels"] == {"by": "cli"}, r
    assert (await raw(nc, "pods", "create", pod("by-leader"), current))["kind"] == "Pod"

    # The lease changes hands: yesterday's current term is refused from the next write on.
    lease = await api.leases.get("fence-a", NS)
    lease.spec.holder_identity, lease.spec.lease_transitions = "leader-2", 4
    await api.leases.update(lease)
    r = await raw(nc, "pods", "patch", {"namespace": "default", "name": "target",
                                        "patch": {"metadata": {"labels": {"by": "old"}}}}, current)
    assert refused(r) and "held by leader-2 (term 4)" in r["message"], r
    assert (await api.pods.get("target")).metadata.labels == {"by": "cli"}


async def test_fence_on_a_missing_lease_is_refused_and_a_malformed_one_is_a_bad_request(api: Api, nc: Client) -> None:
    r = await raw(nc, "pods", "create", pod("p1"), Fence(NS, "no-such-lease", "x", 0).header())
    assert refused(r) and "does not exist" in r["message"], r
    r = await raw(nc, "pods", "create", pod("p2"), "garbage")
    assert r.get("code") == 400 and r.get("reason") == "BadRequest", r
    for name in ("p1", "p2"):
        try:
            await api.pods.get(name)
            raise AssertionError(f"{name} was stored")
        except ApiError as exc:
            assert exc.reason == "NotFound"


async def test_deposed_leaders_write_in_flight_is_refused_through_the_client(api: Api, nc: Client, wait_for) -> None:
    """Two real electors on one lease. The first leads, and its write passes the local check (the
    header is taken) just before it stops: from then on the write is "in flight" (a frozen process,
    a socket buffer on a cut link). The second takes over; the late write is refused as Fenced, the
    first elector is told, and the successor's own fenced writes go through."""
    old = LeaderElector(Api(nc), "fence-e2e", "old-one", lease_duration=1.5, renew_deadline=1.0, retry_period=0.25)
    new = LeaderElector(Api(nc), "fence-e2e", "new-one", lease_duration=1.5, renew_deadline=1.0, retry_period=0.25)

    class InFlight:
        """The old leader's fence as it was when its write passed check(), delivered late."""

        def __init__(self) -> None:
            self.header = old.fence_header()
            self.refusals: list[ApiError] = []

        def fence_header(self) -> str:
            return self.header

        def fenced(self, header: str, err: ApiError) -> None:
            self.refusals.append(err)
            old.fenced(header, err)

    async def idle() -> None:
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as tg:
        old_run = tg.create_task(old.run(idle))
        await wait_for(lambda: old.is_leader, 20, "the first elector to lead")
        old_term = old.term
        late = InFlight()
        old_run.cancel()  # it stops renewing (and leading) with its write still to be delivered
        new_run = tg.create_task(new.run(idle))
        await wait_for(lambda: new.is_leader, 30, "the second elector to take over the expired lease")
        assert new.term == old_term + 1

        await api.pods.create(pod("work"))
        successor = Api(nc, fence=new)
        await successor.pods.patch("work", {"metadata": {"labels": {"by": "new-one"}}})
        try:
            await Api(nc, fence=late).pods.patch("work", {"metadata": {"labels": {"by": "old-one"}}})
            raise AssertionError("the deposed leader's late write was served")
        except Fenced as exc:
            assert f"held by new-one (term {new.term})" in exc.message
        assert len(late.refusals) == 1
        assert (await api.pods.get("work")).metadata.labels == {"by": "new-one"}
        new_run.cancel()


async def test_a_fenced_leader_steps_down_at_once_and_sends_no_more_writes(apiserver, nc: Client, wait_for) -> None:
    """The lease is taken from under a leader that has not noticed yet (its renew loop runs once a
    second here). Its next write is refused by the API server; from then on it does not lead (its
    work is cancelled), says so once, and its further writes are refused locally without being sent:
    the API server refuses exactly one. Later it leads again, in a new term."""
    (server,) = await apiserver(1)
    api = Api(nc)
    elector = LeaderElector(api, "fence-stepdown", "leader-x", lease_duration=3.0, renew_deadline=2.0,
                            retry_period=1.0)
    fenced_api = Api(nc, fence=elector)
    await api.pods.create(pod("work"))
    cancelled = asyncio.Event()

    async def lead() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(elector.run(lead))
        await wait_for(lambda: elector.is_leader, 20, "the elector to lead")
        first_term = elector.term
        lease = await api.leases.get("fence-stepdown", NS)
        lease.spec.holder_identity = "usurper"
        lease.spec.lease_transitions = first_term + 1
        await api.leases.update(lease)
        try:
            await fenced_api.pods.patch("work", {"metadata": {"labels": {"by": "x"}}})
            raise AssertionError("a write of a term that is over was served")
        except Fenced:
            pass
        assert not elector.is_leader  # at once, not at the next renew
        await asyncio.wait_for(cancelled.wait(), 10)
        for _ in range(5):
            try:
                await fenced_api.pods.patch("work", {"metadata": {"labels": {"by": "x"}}})
                raise AssertionError("a write after the step-down was served")
            except NotLeader as exc:
                assert not isinstance(exc, Fenced), "the write was sent to the API server"
        log = server.log_text()
        assert log.count('msg="write fenced"') == 1, log
        assert (await api.pods.get("work")).metadata.labels == {}
        # The usurper never renews: the lease expires and the elector takes it back, in a new term.
        await wait_for(lambda: elector.is_leader, 30, "the elector to lead again")
        assert elector.term == first_term + 2
        await fenced_api.pods.patch("work", {"metadata": {"labels": {"by": "x"}}})
        run.cancel()


async def test_a_reacquire_by_the_same_identity_is_a_new_term(api: Api, nc: Client, wait_for) -> None:
    """A leader frozen past its renew deadline steps down and, nobody else being there, takes its own
    lease again: that is a new term, so a write it had in flight from before the freeze is refused."""
    elector = LeaderElector(api, "fence-reacquire", "solo", lease_duration=2.0, renew_deadline=1.4,
                            retry_period=0.4)

    async def idle() -> None:
        await asyncio.Event().wait()

    await api.pods.create(pod("work"))
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(elector.run(idle))
        await wait_for(lambda: elector.is_leader, 20, "the elector to lead")
        term, before_freeze = elector.term, elector.fence_header()
        time.sleep(2.0)  # the loop is frozen past the renew deadline, as SIGSTOP would freeze it
        await wait_for(lambda: elector.is_leader and elector.term == term + 1, 20, "the elector to lead in a new term")
        r = await raw(nc, "pods", "patch", {"namespace": "default", "name": "work",
                                            "patch": {"metadata": {"labels": {"by": "before-freeze"}}}}, before_freeze)
        assert refused(r) and f"held by solo (term {term + 1})" in r["message"], r
        assert (await api.pods.get("work")).metadata.labels == {}
        run.cancel()


async def test_the_fence_reads_the_lease_both_ways_it_can(nc: Client) -> None:
    """In-process FenceChecker on a real state log: the direct get (one replica) and the stream
    leader's message get (replicated buckets, whose direct gets any replica may answer) agree on a
    current lease, a changed one, a deleted one (tombstone) and one that never existed."""
    from services.apiserver.fencing import FenceChecker
    from services.apiserver.store import StateLog

    state = StateLog(nc, "fence-reads")
    await state.ensure()
    key = "leases.flotilla-system.lead"
    rev = await state.create(state.main, key, encode(Lease(
        metadata=ObjectMeta(name="lead", namespace=NS), spec=LeaseSpec(holder_identity="a", lease_transitions=2))))
    current = Fence(NS, "lead", "a", 2).header()
    for replicas in (1, 3):
        state.replicas = replicas  # only changes how the checker reads (a single server has one replica)
        checker = FenceChecker(state)
        await checker.check(current, "t")
        for bad in (Fence(NS, "lead", "a", 1).header(), Fence(NS, "lead", "b", 2).header()):
            try:
                await checker.check(bad, "t")
                raise AssertionError(f"{bad} passed with replicas={replicas}")
            except ApiError as exc:
                assert exc.reason == "Conflict" and "held by a (term 2)" in exc.message, exc.message
        try:
            await checker.check(Fence(NS, "never", "a", 0).header(), "t")
            raise AssertionError("a fence on a lease that never existed passed")
        except ApiError as exc:
            assert "does not exist" in exc.message
    rev = await state.delete(state.main, key, rev)
    for replicas in (1, 3):
        state.replicas = replicas
        try:
            await FenceChecker(state).check(current, "t")
            raise AssertionError(f"a fence on a deleted lease passed with replicas={replicas}")
        except ApiError as exc:
            assert "does not exist" in exc.message, exc.message
