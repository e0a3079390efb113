"""Log a message that repeats (NATS gone, a watch that keeps failing) once, then ever more rarely.

    rate = LogRate(log)                                # one per source of repeats (a connection, an informer)
    rate.warning("refused", "nats error", error=...)   # 1st: logged; then at most one per gap of 1, 2, 4 ... 60 s,
                                                       # carrying suppressed=N, the lines left out since the last one
    burst = rate.clear("refused")                      # the trouble is over: how many, how long, how many unsaid

Counting, not sleeping: nothing is delayed, the lines in between are only counted. A key that stays quiet
for longer than `max_gap` starts over, so the next burst is said at once again.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from .log import Logger


class Burst(msgspec.Struct, frozen=True):
    """What a cleared key had seen since its first occurrence."""
    count: int  # occurrences, logged or not
    suppressed: int  # occurrences not logged since the last logged one
    total_suppressed: int  # occurrences not logged at all
    duration: float  # seconds from the first occurrence to the clear


class _Repeat:
    __slots__ = ("first_at", "last_at", "next_at", "gap", "count", "suppressed", "total_suppressed")

    def __init__(self, now: float, gap: float) -> None:
        self.first_at = self.last_at = now
        self.next_at = now + gap
        self.gap = gap
        self.count = 1
        self.suppressed = 0
        self.total_suppressed = 0


class LogRate:
    def __init__(self, log: Logger, first_gap: float = 1.0, max_gap: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.first_gap = first_gap
        self.max_gap = max_gap
        self._clock = clock
        self._repeats: dict[str, _Repeat] = {}

    def debug(self, key: str, msg: str, **fields: Any) -> bool:
        return self._maybe(self.log.debug, key, msg, fields)

    def info(self, key: str, msg: str, **fields: Any) -> bool:
        return self._maybe(self.log.info, key, msg, fields)

    def warning(self, key: str, msg: str, **fields: Any) -> bool:
        return self._maybe(self.log.warning, key, msg, fields)

    def error(self, key: str, msg: str, **fields: Any) -> bool:
        return self._maybe(self.log.error, key, msg, fields)

    def active(self, key: str) -> bool:
        return key in self._repeats

    @property
    def active_keys(self) -> bool:
        """Whether any key has occurred since it was last cleared (cheap enough to ask per message)."""
        return bool(self._repeats)

    def clear(self, key: str) -> Burst | None:
        """Forget `key` (its trouble is over); None if it had not occurred since the last clear."""
        rep = self._repeats.pop(key, None)
        if rep is None:
            return None
        return Burst(count=rep.count, suppressed=rep.suppressed, total_suppressed=rep.total_suppressed,
                     duration=self._clock() - rep.first_at)

    def clear_all(self) -> dict[str, Burst]:
        return {key: burst for key in list(self._repeats) if (burst := self.clear(key)) is not None}

    def _maybe(self, emit: Callable[..., None], key: str, msg: str, fields: dict[str, Any]) -> bool:
        """Log (and return True) or count the line as suppressed."""
        now = self._clock()
        rep = self._repeats.get(key)
        if rep is None or now - rep.last_at > self.max_gap:
            self._repeats[key] = _Repeat(now, self.first_gap)
            emit(msg, **fields)
            return True
        rep.count += 1
        rep.last_at = now
        if now < rep.next_at:
            rep.suppressed += 1
            rep.total_suppressed += 1
            return False
        rep.gap = min(rep.gap * 2, self.max_gap)
        rep.next_at = now + rep.gap
        suppressed, rep.suppressed = rep.suppressed, 0
        if suppressed:  # a line that repeats at a gap longer than the current one says nothing new
            fields = {**fields, "suppressed": suppressed}
        emit(msg, **fields)
        return True
