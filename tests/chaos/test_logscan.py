"""The error-loop check counts warning/error lines (and tracebacks) stamped after a given time only."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from flotilla.chaos.logscan import recent_problems


def test_only_recent_warnings_errors_and_tracebacks_count(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text(
        'ts=2026-12-04T01:00:00.000Z level=error logger=x msg="old trouble"\n'
        'ts=2026-12-04T01:00:10.000Z level=info logger=x msg=fine\n'
        'ts=2026-12-04T01:00:11.000Z level=warning logger=x msg="nats disconnected"\n'
        'Traceback (most recent call last):\n'
        '  File "x.py", line 1, in <module>\n'
        'ts=2026-12-04T01:00:12.500Z level=error logger=x msg="sync failed" error=boom\n'
        'ts=2026-12-04T01:00:13.000Z level=info logger=x msg="level=warning in a message is not a level"\n')
    since = datetime(2026, 12, 4, 1, 0, 5, tzinfo=timezone.utc).timestamp()
    found = recent_problems(log, since)
    assert [line.split(" ")[0] if line.startswith("ts=") else line for line in found] == [
        "ts=2026-12-04T01:00:11.000Z", "Traceback (most recent call last):", "ts=2026-12-04T01:00:12.500Z"]
    assert recent_problems(tmp_path / "missing.log", since) == []
