"""The fault schedule, drawn from one seed: the same seed (and the same set of components) always
gives the same list, so a failing run can be replayed. Times are gaps between faults, not wall-clock
instants: each fault waits until the previous one has converged, so a slow machine stretches the
run but does not reorder it."""
from __future__ import annotations

import random

import msgspec

# Fault kinds. `kill` is kill -9 of one process (restarted by its supervisor); for a leader-elected
# component with several replicas the target is resolved to the current leader when it fires.
KILL = "kill"
NODE_KILL = "node-kill"  # kill -9 of a node agent that is not restarted: its pods must move
NATS_RESTART = "nats-restart"
PAUSE = "pause"  # SIGSTOP for `hold` seconds, then SIGCONT: a partitioned process
SLOW = "slow"  # SIGSTOP/SIGCONT duty cycle for `hold` seconds: CPU starvation
KINDS = (KILL, NODE_KILL, NATS_RESTART, PAUSE, SLOW)

# What the workload is doing when the fault fires.
SCALE_UP = "scale-up"
ROLLOUT = "rollout"
DURING = (None, SCALE_UP, ROLLOUT)

LEADER_ELECTED = ("scheduler", "replicaset", "deployment", "gc", "endpoints", "nodelifecycle")
NATS = "nats"
HOLLOW = "hollow"  # the process of the large case's hollow nodes: kill/pause/slow silence all of them at once

# Relative weights of the kinds; kill is the common case.
WEIGHTS = {KILL: 6, NODE_KILL: 1, NATS_RESTART: 1, PAUSE: 2, SLOW: 1}


class Fault(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    kind: str
    target: str  # a process name ("apiserver-2", "nodeagent-1"), a component ("scheduler"), or "nats"
    during: str | None = None
    gap: float = 0.0  # seconds of quiet before it fires
    hold: float = 0.0  # how long a pause or a slow-down lasts
    duty: float = 0.0  # share of each second a slowed process spends stopped

    def describe(self) -> str:
        extra = f" {self.hold:.0f}s" if self.hold else ""
        extra += f" {self.duty:.0%} stopped" if self.duty else ""
        during = f" during {self.during}" if self.during else ""
        return f"#{self.index} +{self.gap:.1f}s {self.kind} {self.target}{extra}{during}"


def component_of(name: str) -> str:
    """`apiserver-2` -> `apiserver`, `nodeagent-1` -> `nodeagent`, `scheduler-b` -> `scheduler`."""
    for group in ("apiserver", "nodeagent", *LEADER_ELECTED, "proxy"):
        if name == group or name.startswith(group + "-"):
            return group
    return name


def make_schedule(seed: int, duration: float, processes: list[str], *, kinds: tuple[str, ...] = KINDS,
                  min_gap: float = 3.0, max_gap: float = 12.0, nats: bool = True,
                  max_node_kills: int = 1) -> list[Fault]:
    """Faults whose gaps add up to `duration`. `processes` are the supervised process names; they are
    sorted first so that the order they were discovered in does not change the schedule."""
    rng = random.Random(seed)
    names = sorted(set(processes))
    components = sorted({component_of(n) for n in names})
    agents = [n for n in names if component_of(n) == "nodeagent"]
    usable = [k for k in kinds if k != NATS_RESTART or nats]
    if NODE_KILL in usable and (len(agents) < 2 or "nodelifecycle" not in components):
        usable.remove(NODE_KILL)  # nothing would move the pods of a dead node, or nowhere to move them
    faults: list[Fault] = []
    killed: set[str] = set()
    node_kills = 0
    elapsed = 0.0
    while elapsed < duration and usable:
        gap = round(rng.uniform(min_gap, max_gap), 1)
        kind = rng.choices(usable, weights=[WEIGHTS[k] for k in usable])[0]
        alive_agents = [a for a in agents if a not in killed]
        hold = duty = 0.0
        if kind == NATS_RESTART:
            target = NATS
        elif kind == NODE_KILL:
            if node_kills >= max_node_kills or len(alive_agents) < 2:
                kind = KILL
            target = rng.choice(alive_agents)
        else:
            # A leader-elected component counts once however many replicas it has (the leader is hit).
            pool = sorted({component_of(n) if component_of(n) in LEADER_ELECTED else n
                           for n in names if n not in killed})
            target = rng.choice(pool)
        if kind == NODE_KILL:
            node_kills += 1
            killed.add(target)
        if kind == PAUSE:
            hold = round(rng.uniform(2.0, 8.0), 1)
        elif kind == SLOW:
            hold, duty = round(rng.uniform(5.0, 15.0), 1), 0.9
        during = rng.choice(DURING)
        faults.append(Fault(index=len(faults) + 1, kind=kind, target=target, during=during, gap=gap,
                            hold=hold, duty=duty))
        elapsed += gap + hold
    return faults


def schedule_text(seed: int, faults: list[Fault]) -> str:
    return "\n".join([f"chaos schedule for seed {seed}: {len(faults)} faults", *(f.describe() for f in faults)])
