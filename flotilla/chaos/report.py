"""The run's report: every fault with its time, target and time to converge, every invariant
violation; as JSON (msgspec) and as a table for people."""
from __future__ import annotations

from pathlib import Path

import msgspec

from .schedule import Fault


class FaultResult(msgspec.Struct, kw_only=True):
    index: int
    kind: str
    target: str  # what the schedule named
    process: str | None = None  # what it hit (the leader of a component, the replica)
    pid: int | None = None
    during: str | None = None
    workload: str | None = None  # what the workload change was ("scaled 2 -> 4")
    at: float = 0.0  # seconds since the run started
    converge_seconds: float | None = None  # fault start -> every invariant green (None: never)
    converged: bool = False
    note: str | None = None
    # The large case: most hollow nodes not Ready at once while it healed (all of them: a zone-level
    # outage), and how many bulk pods of the fault's start were gone (evicted) once it converged.
    hollow_not_ready_peak: int = 0
    bulk_pods_replaced: int = 0


class ReportViolation(msgspec.Struct, kw_only=True):
    at: float
    invariant: str
    detail: str
    count: int = 1  # consecutive checks it was seen in
    fault: int | None = None  # the fault being healed when it was first seen


class Report(msgspec.Struct, kw_only=True):
    seed: int
    mode: str
    duration: float
    nats_url: str
    started: str
    elapsed: float = 0.0
    schedule: list[Fault] = msgspec.field(default_factory=list)
    faults: list[FaultResult] = msgspec.field(default_factory=list)
    violations: list[ReportViolation] = msgspec.field(default_factory=list)
    acknowledged_writes: int = 0
    unanswered_writes: int = 0
    restarts: dict[str, int] = msgspec.field(default_factory=dict)
    log_problems: dict[str, int] = msgspec.field(default_factory=dict)
    checks: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations and all(f.converged for f in self.faults)

    def write(self, path: Path) -> None:
        data = msgspec.to_builtins(self)
        data["ok"] = self.ok
        path.write_bytes(msgspec.json.format(msgspec.json.encode(data), indent=2) + b"\n")


def table(report: Report) -> str:
    rows = [("#", "AT", "FAULT", "TARGET", "PROCESS", "DURING", "CONVERGED IN")]
    for f in report.faults:
        conv = f"{f.converge_seconds:.1f}s" if f.converged and f.converge_seconds is not None else "NO"
        if f.hollow_not_ready_peak or f.bulk_pods_replaced:
            conv += f"  (hollow nodes not Ready: {f.hollow_not_ready_peak}, bulk pods replaced: {f.bulk_pods_replaced})"
        rows.append((str(f.index), f"{f.at:.1f}s", f.kind, f.target, f.process or "-",
                     f"{f.during} ({f.workload})" if f.during else "-", conv + (f"  {f.note}" if f.note else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    done = [f.converge_seconds for f in report.faults if f.converged and f.converge_seconds is not None]
    lines.append("")
    if done:
        ordered = sorted(done)
        lines.append(f"faults: {len(report.faults)}, converged {len(done)}; time to converge p50 "
                     f"{ordered[len(ordered) // 2]:.1f}s, max {ordered[-1]:.1f}s")
    lines.append(f"acknowledged writes: {report.acknowledged_writes} (unanswered: {report.unanswered_writes}); "
                 f"invariant checks: {report.checks}; elapsed {report.elapsed:.0f}s")
    if report.violations:
        lines.append(f"VIOLATIONS ({len(report.violations)}):")
        lines += [f"  {v.at:7.1f}s  {v.invariant}: {v.detail}" + (f" (x{v.count})" if v.count > 1 else "")
                  + (f" [fault #{v.fault}]" if v.fault else "") for v in report.violations]
    else:
        lines.append("no invariant violations")
    lines.append(f"result: {'OK' if report.ok else 'FAILED'} (seed {report.seed})")
    return "\n".join(lines)
