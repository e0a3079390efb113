"""The node lifecycle controller's pure parts: lease freshness on our own clock, zone states, the
per-zone token bucket, health taints and eviction deadlines, and the API server's default tolerations."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from schemas import ObjectMeta, Pod, Taint, Toleration
from schemas.pod import Container, PodSpec
from services.apiserver.defaults import PodDefaults, apply_defaults
from services.nodelifecycle.health import LeaseTracker
from services.nodelifecycle.taints import NOT_READY, UNREACHABLE, eviction_delay, health_taint_key, with_health_taints
from services.nodelifecycle.zones import TokenBucket, ZoneState, master_disruption, zone_rate, zone_state


def test_lease_freshness_is_judged_on_our_clock_not_the_renew_time() -> None:
    t = LeaseTracker()
    assert t.observe("n1", None, None, now=100.0) == 100.0  # never seen a lease: grace from first sight
    assert t.observe("n1", None, None, now=105.0) == 100.0
    assert t.observe("n1", "7", "2001-01-01T00:00:00.000000Z", now=106.0) == 106.0  # an ancient renewTime is still news
    assert t.observe("n1", "7", "2001-01-01T00:00:00.000000Z", now=120.0) == 106.0  # unchanged: not renewed
    assert t.observe("n1", "8", "2001-01-01T00:00:02.000000Z", now=121.0) == 121.0
    t.forget("n1")
    assert t.observe("n1", "8", "2001-01-01T00:00:02.000000Z", now=200.0) == 200.0
    t.retain({"n2"})  # n1 deleted: made again later, it gets a fresh grace period
    assert t.observe("n1", "8", "2001-01-01T00:00:02.000000Z", now=300.0) == 300.0
    t.retain({"n1"})
    assert t.observe("n1", "8", "2001-01-01T00:00:02.000000Z", now=400.0) == 300.0


def test_zone_states_follow_kubernetes() -> None:
    assert zone_state(3, 0, 0.55) is ZoneState.NORMAL
    assert zone_state(0, 3, 0.55) is ZoneState.FULL
    assert zone_state(0, 1, 0.55) is ZoneState.FULL
    assert zone_state(2, 3, 0.55) is ZoneState.PARTIAL  # 60 % and more than 2
    assert zone_state(1, 2, 0.55) is ZoneState.NORMAL  # 67 % but only 2 down
    assert zone_state(5, 3, 0.55) is ZoneState.NORMAL  # 3 down but 37 %
    assert zone_state(0, 0, 0.55) is ZoneState.NORMAL


def test_zone_rates_and_master_disruption() -> None:
    assert zone_rate(ZoneState.NORMAL, 10, 1.0, 0.1, 50) == 1.0
    assert zone_rate(ZoneState.PARTIAL, 10, 1.0, 0.1, 50) == 0.0  # small zone: stop
    assert zone_rate(ZoneState.PARTIAL, 51, 1.0, 0.1, 50) == 0.1  # large zone: slow down
    assert zone_rate(ZoneState.FULL, 10, 1.0, 0.1, 50) == 1.0  # one zone down while others answer
    assert master_disruption({"a": ZoneState.FULL, "b": ZoneState.FULL})
    assert not master_disruption({"a": ZoneState.FULL, "b": ZoneState.NORMAL})
    assert not master_disruption({})


def test_token_bucket() -> None:
    b = TokenBucket(1.0, now=0.0)
    assert b.try_take(0.0)
    assert not b.try_take(0.5)
    assert b.try_take(1.0)
    assert not b.try_take(1.2)
    assert b.try_take(10.0)
    assert not b.try_take(10.0)  # burst 1: a long wait banks one token, not ten
    b.set_rate(0.0, 11.0)
    assert not b.try_take(100.0)
    b.set_rate(2.0, 100.0)
    assert b.try_take(100.5)
    assert not b.try_take(100.6)
    assert not TokenBucket(0.0).try_take(1e9)


def test_health_taints_replace_only_their_own() -> None:
    other = Taint(key="dedicated", effect="NoExecute", value="gpu")
    taints = [other]
    assert health_taint_key("True") is None
    assert health_taint_key("False") == NOT_READY
    assert health_taint_key("Unknown") == UNREACHABLE
    t1 = with_health_taints(taints, UNREACHABLE, ("NoSchedule", "NoExecute"), "T1")
    assert [(t.key, t.effect, t.time_added) for t in t1] == [
        ("dedicated", "NoExecute", None), (UNREACHABLE, "NoSchedule", "T1"), (UNREACHABLE, "NoExecute", "T1")]
    assert with_health_taints(t1, UNREACHABLE, ("NoSchedule", "NoExecute"), "T2") == t1  # timeAdded kept
    t2 = with_health_taints(t1, NOT_READY, ("NoExecute",), "T3")
    assert [(t.key, t.effect) for t in t2] == [("dedicated", "NoExecute"), (UNREACHABLE, "NoSchedule"),
                                               (NOT_READY, "NoExecute")]
    assert with_health_taints(with_health_taints(t2, None, ("NoExecute",), "x"), None, ("NoSchedule",), "x") == [other]


def test_eviction_delay() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    added = (now - timedelta(seconds=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    taints = [Taint(key=UNREACHABLE, effect="NoExecute", time_added=added),
              Taint(key=UNREACHABLE, effect="NoSchedule", time_added=added)]
    assert eviction_delay(taints, [], now) == 0.0
    assert eviction_delay([taints[1]], [], now) is None  # NoSchedule evicts nothing
    forever = Toleration(key=UNREACHABLE, operator="Exists", effect="NoExecute")
    assert eviction_delay(taints, [forever], now) is None
    ten = Toleration(key=UNREACHABLE, operator="Exists", effect="NoExecute", toleration_seconds=10)
    assert eviction_delay(taints, [ten], now) == 6.0
    assert eviction_delay(taints, [ten, forever], now) == 6.0  # the shortest matching one counts
    assert eviction_delay(taints, [Toleration(key=NOT_READY, operator="Exists", effect="NoExecute")], now) == 0.0
    assert eviction_delay(taints, [Toleration(operator="Exists")], now) is None  # tolerates everything
    old = Toleration(key=UNREACHABLE, operator="Exists", effect="NoExecute", toleration_seconds=2)
    assert eviction_delay(taints, [old], now) == 0.0


def _pod(tolerations: list[Toleration] | None = None, uid: str | None = None) -> Pod:
    return Pod(metadata=ObjectMeta(name="p", uid=uid),
               spec=PodSpec(containers=[Container(name="c", image="x")], tolerations=list(tolerations or [])))


def test_default_tolerations_on_create_only() -> None:
    pod = _pod()
    apply_defaults(pod, PodDefaults(7, 9))
    assert [(t.key, t.operator, t.effect, t.toleration_seconds) for t in pod.spec.tolerations] == [
        (NOT_READY, "Exists", "NoExecute", 7), (UNREACHABLE, "Exists", "NoExecute", 9)]
    apply_defaults(pod, PodDefaults(7, 9))
    assert len(pod.spec.tolerations) == 2  # not duplicated when run again
    stored = _pod(uid="u1")  # an update (the stored pod has a uid): nothing added
    apply_defaults(stored, PodDefaults())
    assert stored.spec.tolerations == []
    apply_defaults(stored, PodDefaults(), creating=True)
    assert len(stored.spec.tolerations) == 2


def test_default_tolerations_respect_the_pods_own() -> None:
    own = Toleration(key=UNREACHABLE, operator="Exists", effect="NoExecute", toleration_seconds=600)
    pod = _pod([own])
    apply_defaults(pod)
    assert [(t.key, t.toleration_seconds) for t in pod.spec.tolerations] == [(UNREACHABLE, 600), (NOT_READY, 10)]
    everything = _pod([Toleration(operator="Exists")])
    apply_defaults(everything)
    assert len(everything.spec.tolerations) == 1
    no_schedule = _pod([Toleration(key=NOT_READY, operator="Exists", effect="NoSchedule")])
    apply_defaults(no_schedule)
    assert len(no_schedule.spec.tolerations) == 3  # a NoSchedule toleration does not cover NoExecute
