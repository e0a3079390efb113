"""An error loop in a service log: its warning and error lines since a given time. Service logs are
logfmt with a `ts=...Z` first field (services/lib/log.py); a line without one (a traceback's
continuation) takes the time of the line before it. Lines that say `level=warning` or `level=error`
count, and so does the first line of a traceback."""
from __future__ import annotations

import re
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

_TS = re.compile(r"^ts=(\S+?)Z? ")
_LEVEL = re.compile(r"^ts=\S+ level=(warning|error|critical)\b")


def _stamp(line: str) -> float | None:
    m = _TS.match(line)
    if not m:
        return None
    try:
        return datetime.fromisoformat(m.group(1)).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def recent_problems(path: Path, since: float, tail: int = 5000) -> list[str]:
    """Warning/error lines stamped at or after `since` (epoch seconds) among the last `tail` lines."""
    try:
        with open(path, errors="replace") as f:
            lines = deque(f, maxlen=tail)
    except FileNotFoundError:
        return []
    found = []
    last: float | None = None
    for line in lines:
        ts = _stamp(line)
        if ts is not None:
            last = ts
        if last is None or last < since:
            continue
        if _LEVEL.search(line) or line.startswith("Traceback"):
            found.append(line.rstrip("\n"))
    return found
