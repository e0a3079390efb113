"""The reconcile loop shared by every controller: a work queue of keys and N workers calling one
level-triggered `reconcile(key)`; errors requeue with back-off, a returned delay requeues later."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from schemas import ApiError

from .informer import Informer
from .leader import LeaderElector
from .log import get_logger
from .workqueue import WorkQueue

Reconcile = Callable[[str], Awaitable[float | None]]


class Controller:
    def __init__(self, name: str, reconcile: Reconcile, workers: int = 4, max_retry_delay: float = 30.0):
        self.name = name
        self.reconcile = reconcile
        self.workers = workers
        self.queue = WorkQueue(max_delay=max_retry_delay)
        self.log = get_logger(f"flotilla.{name}")
        self.synced = 0

    def enqueue(self, key: str) -> None:
        self.queue.add(key)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.queue.run_delayed())
            for _ in range(self.workers):
                tg.create_task(self._worker())

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                again = await self.reconcile(key)
            except ApiError as exc:
                level = self.log.debug if exc.reason in ("Conflict", "NotFound", "AlreadyExists") else self.log.warning
                level("reconcile failed; will retry", key=key, reason=exc.reason, error=exc.message,
                      retries=self.queue.failures(key))
                self.queue.add_rate_limited(key)
            except Exception:  # a bug in reconcile: log it with the key, retry with back-off
                self.log.exception("reconcile crashed; will retry", key=key)
                self.queue.add_rate_limited(key)
            else:
                self.queue.forget(key)
                self.synced += 1
                if again is not None:
                    self.queue.add_after(key, again)
            finally:
                self.queue.done(key)


async def run_controller_service(informers: list[Informer], controller: Controller, elector: LeaderElector,
                                 resync: Callable[[], None]) -> None:
    """The shape of every controller process: informers always run (a standby stays warm); the work
    queue is drained only while this replica holds the leader lease. On becoming leader every key is
    queued once (`resync`), so nothing that changed while another replica led is missed."""

    async def lead() -> None:
        resync()
        await controller.run()

    async with asyncio.TaskGroup() as tg:
        for inf in informers:
            tg.create_task(inf.run())
        for inf in informers:
            await inf.wait_synced()
        controller.log.info("caches synced", objects=sum(len(i.store) for i in informers))
        tg.create_task(elector.run(lead))
