"""A service that loses the bus says so once, then ever more rarely, then once that it is back.

The real-process test counts lines, never times them: nats-py fails a reconnect attempt every 0.5 s
and the service reports how many failed (failed_attempts=N on "nats reconnected"); what it logged
about the outage must grow like log2(N), not like N.
"""
from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from flotilla.natsserver import NatsServer
from services.lib.log import get_logger
from services.lib.lograte import LogRate

pytestmark = pytest.mark.timeout(180)
OUTAGE = 20.0  # seconds without NATS: ~40 reconnect attempts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rate_with_clock(first_gap: float = 1.0, max_gap: float = 60.0) -> tuple[LogRate, Clock]:
    clock = Clock()
    return LogRate(get_logger("test.lograte"), first_gap=first_gap, max_gap=max_gap, clock=clock), clock


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    """(message, fields) of each line the LogRate let through."""
    return [(r.getMessage(), r.fields) for r in caplog.records if r.name == "test.lograte"]  # type: ignore[attr-defined]


def test_a_repeated_line_is_logged_at_doubling_gaps_with_the_count_left_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="test.lograte")
    rate, clock = rate_with_clock(first_gap=1.0, max_gap=8.0)
    for _ in range(100):  # every 0.5 s for 50 s, as nats-py's failed reconnects
        rate.warning("refused", "nats error", error="refused", test_now=clock.now)
        clock.now += 0.5
    lines = logged(caplog)
    assert {msg for msg, _ in lines} == {"nats error"}
    times = [f["test_now"] - 1000.0 for _, f in lines]
    assert times == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0, 31.0, 39.0, 47.0]  # gaps 1, 2, 4, 8, then capped at 8
    assert "suppressed" not in lines[0][1]
    assert [f["suppressed"] for _, f in lines[1:]] == [1, 3, 7, 15, 15, 15, 15, 15]
    burst = rate.clear("refused")
    assert burst is not None and burst.count == 100 and burst.suppressed == 5
    assert burst.total_suppressed == 100 - len(lines) and burst.duration == 50.0
    assert rate.clear("refused") is None


def test_keys_are_limited_apart_and_a_quiet_key_starts_over(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="test.lograte")
    rate, clock = rate_with_clock(first_gap=1.0, max_gap=4.0)
    assert rate.warning("a", "A") and rate.warning("b", "B")  # another key is not held back by the first
    assert not rate.warning("a", "A")
    clock.now += 4.5  # longer than max_gap without an "a": the next one is news again
    assert rate.warning("a", "A")
    assert logged(caplog) == [("A", {}), ("B", {}), ("A", {})]
    assert set(rate.clear_all()) == {"a", "b"} and not rate.active_keys


async def test_a_service_that_loses_the_bus_logs_it_at_a_falling_rate(
        nats_server: NatsServer, apiserver: Callable[..., Awaitable[Any]], start_service: Callable[..., Any],
        wait_for: Callable[..., Awaitable[Any]]) -> None:
    await apiserver(1)
    scheduler = start_service("scheduler", "--lease-duration", "2")
    await wait_for(lambda: 'msg="became leader"' in scheduler.log_text(), timeout=60, what="the scheduler to lead")
    before = len(scheduler.log_text().splitlines())

    await asyncio.to_thread(nats_server.kill)
    await wait_for(lambda: 'msg="nats disconnected"' in scheduler.log_text(), timeout=30, what="the disconnect")
    await asyncio.sleep(OUTAGE)  # the length of the outage, not a bound on anything
    await nats_server.astart()
    reconnected = await wait_for(
        lambda: re.search(r'^.*msg="nats reconnected".*$', "\n".join(scheduler.log_text().splitlines()[before:]), re.M),
        timeout=60, what="the scheduler to reconnect")

    fields = dict(re.findall(r"(\w+)=(\S+)", reconnected.group(0)))
    attempts = int(fields["failed_attempts"])
    assert attempts >= 10, reconnected.group(0)  # the outage was long enough for the rate to matter

    outage = scheduler.log_text().splitlines()[before:]
    outage = outage[:next(i for i, line in enumerate(outage) if 'msg="nats reconnected"' in line)]
    bus = [line for line in outage if "logger=flotilla.bus" in line]
    # "disconnected", the EOF that caused it, then the refusals at 0, 1, 3, 7, 15 ... s.
    assert len(bus) <= math.log2(attempts) + 3, "\n".join(bus)
    # Everything else the outage made it say (leadership lost, watches ended) is a handful, not per attempt.
    assert len(outage) <= math.log2(attempts) + 12, "\n".join(outage)
    assert float(fields["down_for"].rstrip("s")) > 0 and int(fields["suppressed"]) > 0
    assert scheduler.alive
