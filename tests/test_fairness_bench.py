"""A tiny run of benchmarks/fairness.py: it runs to the end on a secured nats-server, prints every row,
and its counts mean something: with a low rate limit the flood is throttled (429s counted), with the
limit effectively off it never is. No figure of the run is asserted on (the machine is shared)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(280)]


def _sections(out: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in out.splitlines():
        if line.startswith("-- "):
            current = line[3:]
            sections[current] = []
        else:
            sections.setdefault(current, []).append(line)
    return sections


def _count(lines: list[str], row: str) -> int:
    for line in lines:
        if line.startswith(row):
            return int(line[len(row):].split()[0])
    raise AssertionError(f"no row {row!r} in {lines}")


def test_fairness_benchmark_smoke() -> None:
    argv = [sys.executable, "benchmarks/fairness.py", "--seconds", "1.5", "--flood-concurrency", "8",
            "--flood-processes", "1", "--limit-qps", "50", "--limit-burst", "50", "--creates", "300", "--raw", "300",
            "--rounds", "1"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=260)
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr[-3000:]}"
    sections = _sections(out)
    limited = next(v for k, v in sections.items() if k.startswith("fairness, rate limit on"))
    unlimited = next(v for k, v in sections.items() if k.startswith("fairness, rate limit effectively off"))
    for lines in (limited, unlimited):
        assert any(re.match(r"victim \(scheduler\) get, alone +p50 [\d.]+ ms +p99 [\d.]+ ms", ln) for ln in lines), out
        assert any(re.match(r"victim \(scheduler\) get, under flood +p50 [\d.]+ ms +p99 [\d.]+ ms", ln) for ln in lines), out
        assert not any(ln.startswith("flood other replies") for ln in lines), out  # no timeouts, no victim failures
    accepted_row = "flood (reader, 1 x 8 in flight) accepted"
    throttled_row = "flood (reader) refused 429 TooManyRequests"
    assert _count(limited, accepted_row) > 0 and _count(limited, throttled_row) > 0, out
    assert _count(unlimited, accepted_row) > 0 and _count(unlimited, throttled_row) == 0, out
    cost = sections["cost of authorization (pod creates, 64 in flight, rate limit off)"]
    for row in ("raw JetStream KV create, 64 in flight", "API pod create, authorization off (round 1)",
                "API pod create, authorization on (round 1)", "cost of authorization (1 - on/off)"):
        assert any(ln.startswith(row) for ln in cost), f"no row {row!r}:\n{out}"
