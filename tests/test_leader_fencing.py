"""Leader step-down and fencing with real processes: the leader is frozen (SIGSTOP) past its lease, the
standby takes over, then the old leader is resumed (SIGCONT). It must step down and write nothing.

The evidence is what the cluster records, not the processes' own word: who holds the Lease, which
scheduler identity the Scheduled events name, and the most pods a ReplicaSet ever had at once as seen
on a watch. The resumed process' log must also say it lost leadership.

Also: the renew deadline bounds a renew stuck in a request (the API server frozen), and `check()`
refuses right after a freeze even before the renew loop has run (in-process, against a real API).

The bus: a replica controller whose link to NATS is cut (a TCP relay, tests/relay.py) steps down
within its lease while still cut off, the standby leads, and after the link comes back the old one
writes nothing; a link that holds back what the leader sends (a partition that heals late) delivers
its writes after the successor took over, and the API server refuses them (the write fence).
"""
from __future__ import annotations

import asyncio
import signal
import time

import pytest

from schemas import ApiError
from services.lib.client import Api
from services.lib.leader import LeaderElector, NotLeader

from relay import relay_to
from test_replicaset import rs_body
from test_scheduler import node_obj, pod_body

LEASE = "2"  # seconds: a short lease so a freeze outlasts it quickly
NS = "flotilla-system"


async def holder(api, name: str) -> str | None:
    try:
        return (await api.leases.get(name, NS)).spec.holder_identity
    except ApiError as exc:
        if exc.reason == "NotFound":  # until the first candidate creates it
            return None
        raise


async def wait_holder(api, name: str, identity: str, wait_for, timeout: float = 30.0) -> None:
    async def check():
        return await holder(api, name) == identity
    await wait_for(check, timeout, f"{identity} to hold the Lease {name}")


async def scheduled_by(api, names: list[str]) -> dict[str, set[str]]:
    """pod name -> identities of the schedulers that recorded a Scheduled event for it."""
    out: dict[str, set[str]] = {n: set() for n in names}
    for e in (await api.events.list()).items:
        if e.reason == "Scheduled" and e.involved_object.name in out:
            out[e.involved_object.name].add(e.source.host if e.source else "")
    return out


async def events_for(api, names: list[str], wait_for) -> dict[str, set[str]]:
    """Once every pod has its Scheduled event (recorded off the bind path, so a little later)."""
    async def check():
        by = await scheduled_by(api, names)
        return by if all(by.values()) else None
    return await wait_for(check, 30, f"Scheduled events for {names[:3]}...")


async def test_scheduler_resumed_after_its_lease_expired_binds_nothing(api, start_service, wait_for) -> None:
    old = start_service("scheduler", "--identity", "sched-old", "--lease-duration", LEASE,
                        "--initial-backoff", "0.2", "--max-backoff", "1")
    await wait_holder(api, "flotilla-scheduler", "sched-old", wait_for)
    new = start_service("scheduler", "--identity", "sched-new", "--lease-duration", LEASE,
                        "--initial-backoff", "0.2", "--max-backoff", "1")
    for i in range(3):
        await api.nodes.create(node_obj(f"n{i}"))
    await api.pods.create(pod_body("before"))

    async def bound(names: list[str]):
        pods = {p.metadata.name: p.spec.node_name for p in (await api.pods.list()).items}
        return all(pods.get(n) for n in names)
    await wait_for(lambda: bound(["before"]), 30, "the first pod bound by the leader")
    assert await events_for(api, ["before"], wait_for) == {"before": {"sched-old"}}

    old.signal(signal.SIGSTOP)
    try:
        await wait_holder(api, "flotilla-scheduler", "sched-new", wait_for)
        during = [f"during-{i}" for i in range(3)]
        for n in during:
            await api.pods.create(pod_body(n))
        await wait_for(lambda: bound(during), 30, "pods created during the freeze bound by the new leader")
    finally:
        old.signal(signal.SIGCONT)
    # Pods arriving right as the old leader wakes: if it still believed it led, it would bind some.
    after = [f"after-{i}" for i in range(20)]
    for n in after:
        await api.pods.create(pod_body(n))
    await wait_for(lambda: bound(after), 30, "pods created after the resume bound")
    by = await events_for(api, during + after, wait_for)
    await asyncio.sleep(1.0)  # a late event from the old leader (written off the bind path) lands by now
    by = await scheduled_by(api, during + after)
    wrong = {n: ids for n, ids in by.items() if ids != {"sched-new"}}
    assert not wrong, f"pods not scheduled by the new leader alone: {wrong}"
    assert old.alive and new.alive
    assert await holder(api, "flotilla-scheduler") == "sched-new"
    await wait_for(lambda: "lost leadership" in old.log_text(), 30, "the resumed scheduler to log its step-down")


async def test_replicaset_controller_resumed_after_its_lease_expired_creates_nothing(
        api, start_service, connect_api, wait_for) -> None:
    old = start_service("replicaset", "--identity", "rsc-old", "--lease-duration", LEASE)
    await wait_holder(api, "flotilla-replicaset", "rsc-old", wait_for)
    new = start_service("replicaset", "--identity", "rsc-new", "--lease-duration", LEASE)
    await api.replicasets.create(rs_body("web", 2))

    async def live() -> int:
        return sum(1 for p in (await api.pods.list(label_selector="app=web")).items
                   if not p.metadata.deletion_timestamp)
    await wait_for(lambda: _eq(live(), 2), 30, "2 pods from the leader")

    # Every pod the watch ever shows alive at once: two leaders both creating shows up as a count above
    # the replicas asked for, even if the extra pods are deleted again right after.
    watcher = await connect_api()
    alive: set[str] = set()
    most = {"n": 0}
    start_rv = (await watcher.pods.list(label_selector="app=web")).resource_version
    for p in (await watcher.pods.list(label_selector="app=web")).items:
        if not p.metadata.deletion_timestamp:
            alive.add(p.metadata.name)

    async def record() -> None:
        async for type_, pod in watcher.pods.watch(label_selector="app=web", resource_version=start_rv):
            if type_ == "DELETED" or pod.metadata.deletion_timestamp:
                alive.discard(pod.metadata.name)
            elif type_ in ("ADDED", "MODIFIED"):
                alive.add(pod.metadata.name)
            most["n"] = max(most["n"], len(alive))

    async with asyncio.TaskGroup() as tg:
        rec = tg.create_task(record())
        old.signal(signal.SIGSTOP)
        try:
            await wait_holder(api, "flotilla-replicaset", "rsc-new", wait_for)
            await api.replicasets.scale("web", 4)
            await wait_for(lambda: _eq(live(), 4), 30, "4 pods from the new leader")
        finally:
            old.signal(signal.SIGCONT)
        # The old leader wakes with queued work and a view that lags; more scaling right away gives a
        # second leader something to double.
        await api.replicasets.scale("web", 8)
        await wait_for(lambda: _eq(live(), 8), 30, "8 pods after the resume")
        await asyncio.sleep(1.5)  # a second leader's extra creates would show by now
        rec.cancel()

    assert most["n"] <= 8, f"{most['n']} pods alive at once for 8 replicas: two leaders wrote"
    assert old.alive and new.alive
    assert await holder(api, "flotilla-replicaset") == "rsc-new"
    assert await live() == 8
    await wait_for(lambda: "lost leadership" in old.log_text(), 30, "the resumed controller to log its step-down")


async def _eq(value, n: int) -> bool:
    return await value == n


async def test_leader_steps_down_at_the_renew_deadline_while_the_api_hangs(apiserver, nc, start_service,
                                                                             wait_for) -> None:
    """The API server is frozen: requests are accepted by NATS and never answered, and the client's
    own retries of one `get` last far longer than a lease. The leader must step down once its renew
    deadline passes (1.4 s here), not when the stuck request finally gives up (about 50 s), because a
    standby reaching another API server may already lead. Thawed, it leads again and schedules."""
    (server,) = await apiserver(1)
    api = Api(nc)
    sched = start_service("scheduler", "--identity", "sched-solo", "--lease-duration", LEASE,
                          "--initial-backoff", "0.2", "--max-backoff", "1")
    await wait_holder(api, "flotilla-scheduler", "sched-solo", wait_for)
    await wait_for(lambda: "became leader" in sched.log_text(), 30, "the scheduler to log that it leads")
    server.signal(signal.SIGSTOP)
    try:
        # Generous, but well short of the ~50 s a stuck renew takes to fail without the deadline.
        await wait_for(lambda: "lost leadership" in sched.log_text(), 25, "the leader to step down while the API hangs")
        assert "renew deadline passed" in sched.log_text()
    finally:
        server.signal(signal.SIGCONT)
    await api.nodes.create(node_obj("n0"))
    await api.pods.create(pod_body("after-thaw"))

    async def bound():
        return (await api.pods.get("after-thaw")).spec.node_name == "n0"
    await wait_for(bound, 60, "the pod bound once the scheduler leads again")
    assert sched.log_text().count("became leader") >= 2
    assert sched.alive



async def test_check_fences_a_leader_frozen_past_its_renew_deadline(api, wait_for) -> None:
    """In-process against the real API server: a synchronous sleep freezes the whole event loop, as
    SIGSTOP freezes a process, so the renew loop cannot run. Right after the thaw the `leading` flag
    is still set; `check()` (called before every leader-only write) must refuse anyway, and once the
    lease is renewed (nobody else took it) writes are allowed again."""
    elector = LeaderElector(api, "fence-check", "frozen-one", lease_duration=2.0, renew_deadline=1.4,
                            retry_period=0.4)

    async def lead() -> None:
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(elector.run(lead))
        await wait_for(lambda: elector.is_leader, 20, "the elector to lead")
        elector.check()
        time.sleep(2.0)  # the loop is frozen past the renew deadline (no await: nothing else runs)
        assert elector.is_leader, "the flag lags: nothing could clear it during the freeze"
        with pytest.raises(NotLeader):
            elector.check()

        def fenced_then_leading_again() -> bool:
            try:
                elector.check()
            except NotLeader:
                return False
            return True
        await wait_for(fenced_then_leading_again, 20, "the lease renewed and check() passing again")
        run.cancel()


class MostAlive:
    """The most pods of a selector the watch ever showed alive at once (extra creates by a second
    leader show up here even if they are deleted again right after)."""

    def __init__(self, api, selector: str):
        self.api, self.selector = api, selector
        self.alive: set[str] = set()
        self.most = 0

    async def start(self) -> str:
        listed = await self.api.pods.list(label_selector=self.selector)
        self.alive = {p.metadata.name for p in listed.items if not p.metadata.deletion_timestamp}
        self.most = len(self.alive)
        return listed.resource_version

    async def record(self, since: str) -> None:
        async for type_, pod in self.api.pods.watch(label_selector=self.selector, resource_version=since):
            if type_ == "DELETED" or pod.metadata.deletion_timestamp:
                self.alive.discard(pod.metadata.name)
            elif type_ in ("ADDED", "MODIFIED"):
                self.alive.add(pod.metadata.name)
            self.most = max(self.most, len(self.alive))


async def test_replicaset_leader_cut_off_the_bus_steps_down_and_writes_nothing_after_reconnecting(
        apiserver, nc, nats_server, start_service, connect_api, wait_for) -> None:
    await apiserver(1)
    api = Api(nc)
    relay, url = await relay_to(nats_server.url)
    try:
        old = start_service("replicaset", "--identity", "rsc-old", "--lease-duration", LEASE, "--nats-url", url,
                            nats=False)
        await wait_holder(api, "flotilla-replicaset", "rsc-old", wait_for)
        new = start_service("replicaset", "--identity", "rsc-new", "--lease-duration", LEASE)
        await api.replicasets.create(rs_body("web", 2))

        async def live() -> int:
            return sum(1 for p in (await api.pods.list(label_selector="app=web")).items
                       if not p.metadata.deletion_timestamp)
        await wait_for(lambda: _eq(live(), 2), 30, "2 pods from the leader")
        seen = MostAlive(await connect_api(), "app=web")
        since = await seen.start()
        async with asyncio.TaskGroup() as tg:
            rec = tg.create_task(seen.record(since))
            relay.cut_off()
            # Within its lease, while it still cannot reach anything: its renew deadline, not a reply.
            await wait_for(lambda: "lost leadership" in old.log_text(), 30, "the cut-off leader to step down")
            await wait_holder(api, "flotilla-replicaset", "rsc-new", wait_for)
            await api.replicasets.scale("web", 4)
            await wait_for(lambda: _eq(live(), 4), 30, "4 pods from the new leader")
            accepted = relay.accepted
            relay.restore()
            await wait_for(lambda: relay.accepted > accepted, 30, "the old controller to reconnect")
            # It is back with a view that lags and whatever it buffered while cut off: scaling right
            # away gives a second leader something to double.
            await api.replicasets.scale("web", 8)
            await wait_for(lambda: _eq(live(), 8), 30, "8 pods after the reconnect")
            await asyncio.sleep(1.5)  # a second leader's extra creates would show by now
            rec.cancel()
        assert seen.most <= 8, f"{seen.most} pods alive at once for 8 replicas: two leaders wrote"
        assert await holder(api, "flotilla-replicaset") == "rsc-new"
        assert await live() == 8
        assert old.log_text().count("became leader") == 1, "the reconnected controller led again"
        assert old.alive and new.alive
    finally:
        await relay.stop()


async def test_replicaset_leaders_writes_held_on_its_link_are_fenced_when_they_arrive(
        apiserver, nc, nats_server, start_service, connect_api, wait_for) -> None:
    """The old leader's link holds back what it sends (replies and watch events still reach it): it
    sees the ReplicaSet scaled and creates pods, each create passing its local check, but they reach
    the API server only after its lease expired and the standby created those pods itself. The API
    server refuses them (fenced), so the successor's work stands: never more pods than replicas."""
    (server,) = await apiserver(1)
    api = Api(nc)
    relay, url = await relay_to(nats_server.url)
    lease = "4"  # long enough that the held creates are sent well inside the old leader's renew deadline
    try:
        old = start_service("replicaset", "--identity", "rsc-old", "--lease-duration", lease, "--nats-url", url,
                            nats=False)
        await wait_holder(api, "flotilla-replicaset", "rsc-old", wait_for)
        new = start_service("replicaset", "--identity", "rsc-new", "--lease-duration", lease)
        await api.replicasets.create(rs_body("web", 2))

        async def live() -> int:
            return sum(1 for p in (await api.pods.list(label_selector="app=web")).items
                       if not p.metadata.deletion_timestamp)
        await wait_for(lambda: _eq(live(), 2), 30, "2 pods from the leader")
        seen = MostAlive(await connect_api(), "app=web")
        since = await seen.start()
        async with asyncio.TaskGroup() as tg:
            rec = tg.create_task(seen.record(since))
            relay.hold()
            await api.replicasets.scale("web", 6)
            await wait_holder(api, "flotilla-replicaset", "rsc-new", wait_for)
            await wait_for(lambda: _eq(live(), 6), 30, "6 pods from the new leader")
            assert "lost leadership" in old.log_text()
            relay.release()

            def fenced_writes() -> int:
                return sum(1 for line in server.log_text().splitlines()
                           if 'msg="write fenced"' in line and "writer=rsc-old" in line)
            # Its held creates arrive now: refused (the API server logs each), or landing as extra pods.
            await wait_for(lambda: fenced_writes() or seen.most > 6, 30, "the old leader's held writes to arrive")
            await asyncio.sleep(1.5)  # anything else it sent has landed (or been refused) by now
            rec.cancel()
        assert seen.most <= 6, f"{seen.most} pods alive at once for 6 replicas: the old leader's writes landed"
        assert fenced_writes() >= 1
        assert await live() == 6
        assert await holder(api, "flotilla-replicaset") == "rsc-new"
        assert old.alive and new.alive
        print(f"fenced writes of the old leader: {fenced_writes()}")
    finally:
        await relay.stop()


async def test_scheduler_binds_held_on_its_link_are_fenced_when_they_arrive(
        apiserver, nc, nats_server, start_service, wait_for) -> None:
    """As above for the scheduler: its binds of pods it saw while its link held back what it sent
    arrive after the standby bound those pods; the API server refuses them, the successor's
    placements stand, and no Scheduled event names the old scheduler."""
    (server,) = await apiserver(1)
    api = Api(nc)
    relay, url = await relay_to(nats_server.url)
    lease = "4"
    try:
        old = start_service("scheduler", "--identity", "sched-old", "--lease-duration", lease, "--nats-url", url,
                            "--initial-backoff", "0.2", "--max-backoff", "1", nats=False)
        await wait_holder(api, "flotilla-scheduler", "sched-old", wait_for)
        new = start_service("scheduler", "--identity", "sched-new", "--lease-duration", lease,
                            "--initial-backoff", "0.2", "--max-backoff", "1")
        for i in range(3):
            await api.nodes.create(node_obj(f"n{i}"))
        await api.pods.create(pod_body("before"))

        async def placements(names: list[str]) -> dict[str, str] | None:
            pods = {p.metadata.name: p.spec.node_name for p in (await api.pods.list()).items}
            return {n: pods[n] for n in names} if all(pods.get(n) for n in names) else None
        await wait_for(lambda: placements(["before"]), 30, "the first pod bound by the leader")

        relay.hold()
        during = [f"during-{i}" for i in range(6)]
        for n in during:
            await api.pods.create(pod_body(n))
        await wait_holder(api, "flotilla-scheduler", "sched-new", wait_for)
        placed = await wait_for(lambda: placements(during), 30, "the pods bound by the new leader")
        relay.release()

        def fenced_writes() -> int:
            return sum(1 for line in server.log_text().splitlines()
                       if 'msg="write fenced"' in line and "writer=sched-old" in line)
        await wait_for(fenced_writes, 30, "the old scheduler's held binds refused by the API server")
        await asyncio.sleep(1.5)  # a late event from the old scheduler lands by now
        assert await placements(during) == placed
        by = await events_for(api, during, wait_for)
        assert all(ids == {"sched-new"} for ids in by.values()), by
        assert await holder(api, "flotilla-scheduler") == "sched-new"
        assert old.alive and new.alive
        print(f"fenced writes of the old scheduler: {fenced_writes()}")
    finally:
        await relay.stop()
