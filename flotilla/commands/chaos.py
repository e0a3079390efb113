"""`flotilla chaos`: a seeded chaos run against a suite it starts itself, or (`--attach`) a running
`flotilla up`; prints a table, writes a JSON report, exits 1 on any invariant violation."""
from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
from pathlib import Path

from ..context import Context
from . import Command

DESCRIPTION = ("Run a workload (a Deployment of real process pods behind a Service, scaled and rolled) and, from "
               "a seed, kill -9 service processes (with --hollow-nodes, the hollow-node process too), restart NATS, "
               "pause and starve processes, while checking "
               "invariants (convergence, no pod on a missing node, no overcommit, Endpoints = ready pods, no "
               "acknowledged write lost, one leader per term, no error loop in the logs). Exit 1 on a violation.")


def add_chaos_arguments(p: argparse.ArgumentParser) -> None:
    from flotilla.chaos.schedule import KINDS

    p.add_argument("--seed", type=int, default=None, help="seed of the fault schedule (default: a random one, printed)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of faults (default 600)")
    p.add_argument("--nodes", type=int, default=3, help="node agents of the suite started here (default 3)")
    p.add_argument("--apiservers", type=int, default=2, help="API server replicas of the suite started here (default 2)")
    p.add_argument("--hollow-nodes", type=int, default=0,
                   help="the large case: also run this many hollow nodes (one process, a fault target "
                        "too) and a `bulk` Deployment of ~2 pods per hollow node that may only land on "
                        "them (default 0)")
    p.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--attach", action="store_true", help="act on a running `flotilla up` (needs --nats-url)")
    p.add_argument("--nats-url", default=None, help="with --attach: the running suite's NATS URL")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="harness: keep NATS data and logs here (default: a temporary dir); "
                        "--attach: the `flotilla up` state dir whose logs/ to scan (default: up's default)")
    p.add_argument("--converge-timeout", type=float, default=90.0,
                   help="seconds a fault may take to converge before it counts as a violation (default 90)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"fault kinds to draw from (default {','.join(KINDS)})")
    p.add_argument("--min-gap", type=float, default=3.0, help="least seconds between faults (default 3)")
    p.add_argument("--max-gap", type=float, default=12.0, help="most seconds between faults (default 12)")
    p.add_argument("--settle", type=float, default=15.0,
                   help="quiet seconds at the end whose logs must show no error loop (default 15)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the schedule for the seed (for a suite of --nodes/--apiservers) and exit")


def options_from(args: argparse.Namespace):  # -> flotilla.chaos.run.Options
    from flotilla.chaos.run import Options
    from flotilla.chaos.schedule import KINDS

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SystemExit(f"flotilla chaos: unknown fault kinds {unknown} (known: {', '.join(KINDS)})")
    if args.hollow_nodes < 0 or (args.hollow_nodes and args.attach):
        raise SystemExit("flotilla chaos: --hollow-nodes takes a count >= 0, and only for the suite started here "
                         "(not with --attach)")
    return Options(seed=args.seed, duration=args.duration, nodes=args.nodes, apiservers=args.apiservers,
                   hollow_nodes=args.hollow_nodes,
                   attach=args.attach, nats_url=args.nats_url, state_dir=args.state_dir, report=args.report,
                   converge_timeout=args.converge_timeout, kinds=kinds, min_gap=args.min_gap, max_gap=args.max_gap,
                   settle=args.settle)


def dry_run_names(nodes: int, apiservers: int, hollow_nodes: int = 0) -> list[str]:
    """The process names a harness suite of this size has, without starting it."""
    from flotilla.chaos.targets import harness_specs

    return [s.name for s in harness_specs("nats://127.0.0.1:4222", Path("/nonexistent"), nodes=nodes,
                                          apiservers=apiservers, log_level="info", hollow_nodes=hollow_nodes)]


async def run(ctx: Context) -> int:
    from flotilla.chaos.run import run_chaos, schedule_for
    from flotilla.chaos.schedule import schedule_text

    parser = argparse.ArgumentParser(prog="flotilla chaos", description=DESCRIPTION)
    add_chaos_arguments(parser)
    args = parser.parse_args(ctx.args.argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    opts = options_from(args)
    if args.dry_run:
        names = dry_run_names(args.nodes, args.apiservers, args.hollow_nodes)
        print(schedule_text(opts.seed, schedule_for(opts, names)), flush=True)
        return 0
    print(f"flotilla chaos: seed {opts.seed} (replay with --seed {opts.seed})", flush=True)
    # SIGTERM ends the run like Ctrl-C: cancelled, so the suite it started is stopped on the way out
    # (Python's default for SIGTERM would leave every service and pod running).
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    loop.add_signal_handler(signal.SIGTERM, me.cancel)
    try:
        report = await run_chaos(opts, sys.stdout)
    except asyncio.CancelledError:
        print("flotilla chaos: stopped (SIGTERM); the suite it started is stopped", file=sys.stderr, flush=True)
        return 143
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    if args.report:
        print(f"report written to {args.report}", flush=True)
    return 0 if report.ok else 1


COMMANDS = [Command("chaos", "Kill, restart, pause and starve services under a workload; check invariants",
                    lambda p: None, run, bus=False, own_parser=True)]
