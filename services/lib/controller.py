"""The reconcile loop shared by every controller: a work queue of keys and N workers calling one
level-triggered `reconcile(key)`; errors requeue with back-off, a returned delay requeues later."""
from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client

from schemas import ApiError

from .client import Api
from .informer import Informer
from .leader import LeaderElector
from .log import get_logger
from .registry import register
from .runner import run_service
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

    def enqueue_batched(self, key: str, period: float) -> None:
        self.queue.add_batched(key, period)

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


class ControllerParts(msgspec.Struct, frozen=True):
    """What a leader-elected controller process runs: its informers, its reconcile loop, and how to
    queue every key when it becomes leader."""

    informers: list[Informer]
    controller: Controller
    resync: Callable[[], None]


def controller_main(service: str, build: Callable[[Api, argparse.Namespace], ControllerParts],
                    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """`python -m services.<service>` for a controller: the shared flags (lease duration, workers),
    leader election on the Lease `flotilla-<service>`, service registration, and the run. `build`
    gets an Api whose writes are fenced by the elector (reads, so its informers, are not)."""

    def arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--lease-duration", type=float, default=4.0,
                   help="leader lease duration (s); a standby takes over about this long after the leader died")
        p.add_argument("--workers", type=int, default=4, help="keys reconciled at once")
        if add_arguments:
            add_arguments(p)

    async def main(args: argparse.Namespace, nc: Client) -> None:
        # The elector's own Lease writes go unfenced (they are what decides the term); everything the
        # controller writes carries the term and is refused once it is over (services/lib/leader.py).
        principal = args.principal  # set by run_service: its credentials' name, else the service's
        elector = LeaderElector(Api(nc, user=principal), f"flotilla-{service}", args.identity,
                                lease_duration=args.lease_duration, renew_deadline=args.lease_duration * 0.7,
                                retry_period=min(1.0, args.lease_duration / 5))
        parts = build(Api(nc, fence=elector, user=principal), args)
        svc = await register(nc, service, args.identity, principal=principal)
        try:
            await run_controller_service(parts.informers, parts.controller, elector, parts.resync)
        finally:
            await svc.stop()

    run_service(service, main, arguments)
