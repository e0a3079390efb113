"""The fault schedule is a function of the seed (and of the suite's process names): replayable."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flotilla.chaos.schedule import KINDS, NODE_KILL, make_schedule

REPO = Path(__file__).resolve().parents[2]
NAMES = ["apiserver-1", "apiserver-2", "scheduler", "scheduler-b", "replicaset", "deployment", "gc", "endpoints",
         "nodelifecycle", "proxy", "nodeagent-1", "nodeagent-2", "nodeagent-3"]


def test_same_seed_same_schedule_whatever_the_order_of_names() -> None:
    first = make_schedule(42, 600, NAMES)
    assert first == make_schedule(42, 600, list(reversed(NAMES)))
    assert first != make_schedule(43, 600, NAMES)
    assert sum(f.gap + f.hold for f in first) >= 600
    assert {f.kind for f in first} == set(KINDS)  # a 10-minute run draws every kind
    assert [f.index for f in first] == list(range(1, len(first) + 1))


def test_a_node_killed_for_good_is_never_a_target_again() -> None:
    for seed in range(30):
        faults = make_schedule(seed, 600, NAMES)
        kills = [f for f in faults if f.kind == NODE_KILL]
        assert len(kills) <= 1
        if kills:
            later = faults[faults.index(kills[0]) + 1:]
            assert all(f.target != kills[0].target for f in later), seed


def test_no_node_kill_without_a_node_lifecycle_controller() -> None:
    names = [n for n in NAMES if n != "nodelifecycle"]
    assert all(f.kind != NODE_KILL for seed in range(20) for f in make_schedule(seed, 600, names))


def _dry_run(seed: int) -> str:
    return subprocess.run([sys.executable, "-m", "flotilla.cli", "chaos", "--seed", str(seed), "--dry-run",
                           "--duration", "300"], cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_the_cli_prints_the_same_schedule_for_the_same_seed() -> None:
    out = _dry_run(5)
    assert out.startswith("chaos schedule for seed 5:")
    assert out == _dry_run(5)
    assert out != _dry_run(6)
