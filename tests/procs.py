"""Process checks shared by the tests, from /proc (psutil is not a dependency)."""
from __future__ import annotations

from services.nodeagent.runtime.procfs import stat_fields


def running(pid: int) -> bool:
    """Alive and not a zombie. A process can exit between opening and reading its stat file
    (ProcessLookupError); stat_fields treats that as gone."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")
