"""`flotilla chaos`: a workload, seeded faults (kill -9, NATS restarts, pauses, CPU starvation) and
invariants checked all along, against a suite the harness starts itself or a running `flotilla up`.

    schedule.py    the seeded fault schedule (same seed, same schedule)
    invariants.py  the checks, as pure functions of a cluster snapshot, plus the lease tracker
    ledger.py      the client-side ledger of acknowledged writes
    targets.py     the processes faults act on: a suite of our own, or one found in /proc
    workload.py    the Deployment + Service the run keeps busy (scale-ups, rolling updates)
    logscan.py     warning/error lines in the tail of each service log
    report.py      the JSON report and its table
    run.py         the run itself
"""
