"""What /proc says about a process: its identity (PID + start time), whether it lives, the exit
status of a zombie, and which process carries a given container id in its environment."""
from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
# Fields of /proc/<pid>/stat after the ")" that closes the command name, 0-based:
# 0 state, 1 ppid, 2 pgrp, 3 session, ..., 19 starttime (field 22 of proc(5)), 49 exit_code (field 52).
_STATE, _SESSION, _STARTTIME, _EXIT_CODE = 0, 3, 19, 49


def stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text.rsplit(")", 1)[1].split()


def start_ticks(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[_STARTTIME]) if fields else None


def is_alive(pid: int, ticks: int) -> bool:
    """The process with this PID is the one that started at `ticks`, and it has not exited."""
    fields = stat_fields(pid)
    return bool(fields) and fields[_STATE] not in ("Z", "X") and int(fields[_STARTTIME]) == ticks  # type: ignore[index]


def zombie_status(pid: int, ticks: int) -> int | None:
    """The wait status of our (exited, not yet reaped) process, if it is still a zombie."""
    fields = stat_fields(pid)
    if not fields or fields[_STATE] != "Z" or int(fields[_STARTTIME]) != ticks or len(fields) <= _EXIT_CODE:
        return None
    return int(fields[_EXIT_CODE])


def decode_wait_status(status: int) -> tuple[int, int | None]:
    """(exit code as a shell reports it, terminating signal or None)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return os.WEXITSTATUS(status), None


def boot_id() -> str:
    try:
        return (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return ""


def find_session_leader_with_env(marker: str) -> tuple[int, int] | None:
    """(pid, start ticks) of a live session leader whose environment contains `marker` (NAME=value):
    how a container started just before the agent died, and not yet checkpointed, is found again."""
    needle = marker.encode() + b"\0"
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            env = (entry / "environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if not (env.startswith(needle) or b"\0" + needle in env):
            continue
        fields = stat_fields(pid)
        if fields and fields[_STATE] not in ("Z", "X") and int(fields[_SESSION]) == pid:
            return pid, int(fields[_STARTTIME])
    return None
