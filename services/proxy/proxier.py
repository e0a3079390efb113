"""The proxy loop: informers on Services and Endpoints -> routes and listening sockets.

Handlers rebuild one service's routes and listeners synchronously (no work queue: each change is
applied before the next watch event is read, so routing follows the API within one event). New
connections read the route when they arrive; established ones keep their backend, and only the
listeners of the changed service are opened or closed."""
from __future__ import annotations

import asyncio
import errno
import socket
import time

from schemas.cluster import Endpoints, Service
from services.lib.client import Api
from services.lib.events import EventRecorder
from services.lib.informer import Informer, object_key
from services.lib.log import get_logger

from .pump import PUMPS
from .routes import Listen, Route, listens, proxied, ready_endpoints, route_key

log = get_logger("flotilla.proxy")

RETRY_FIRST = 1.0
RETRY_MAX = 30.0
RETRY_TICK = 0.2
CONNECT_TIMEOUT = 3.0


class Listener:
    """One listening socket (ip, port) serving a route; when it cannot bind it waits to be retried."""

    def __init__(self, ip: str, port: int, service: str, route: str):
        self.ip, self.port, self.service, self.route = ip, port, service, route
        self.sock: socket.socket | None = None
        self.task: asyncio.Task[None] | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.warned = False

    @property
    def addr(self) -> tuple[str, int]:
        return self.ip, self.port


class Proxy:
    def __init__(self, api: Api, nodeport_addresses: list[str], datapath: str = "protocol",
                 host: str | None = None, connect_timeout: float = CONNECT_TIMEOUT):
        self.api = api
        self.nodeport_addresses = nodeport_addresses
        self.pump = PUMPS[datapath]
        self.connect_timeout = connect_timeout
        self.services: Informer[Service] = Informer(api.services)
        self.endpoints: Informer[Endpoints] = Informer(api.endpoints)
        self.recorder = EventRecorder(api, "flotilla-proxy", host)
        self.routes: dict[str, Route] = {}
        self.service_routes: dict[str, set[str]] = {}
        self.listeners: dict[tuple[str, int], Listener] = {}
        self.service_listeners: dict[str, set[tuple[str, int]]] = {}
        # Sockets whose accept task was cancelled but has not closed them yet: binding the same
        # address again waits for them quietly instead of reporting the port as taken.
        self.closing: set[tuple[str, int]] = set()
        self.failed: set[tuple[str, int]] = set()  # listeners waiting for their retry
        self.waiting: dict[tuple[str, int], set[str]] = {}  # address -> Services it is refused to
        self._events: asyncio.Queue[tuple[Service, str, str]] = asyncio.Queue()
        self._tg: asyncio.TaskGroup | None = None
        self.connections = 0

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self.services.add_handlers(lambda s: self.sync(object_key(s)), lambda _, s: self.sync(object_key(s)),
                                       lambda s: self.sync(object_key(s)))
            self.endpoints.add_handlers(lambda e: self.sync(object_key(e)), lambda _, e: self.sync(object_key(e)),
                                        lambda e: self.sync(object_key(e)))
            tg.create_task(self.services.run())
            tg.create_task(self.endpoints.run())
            tg.create_task(self._retry_loop())
            tg.create_task(self._record_events())
            await self.services.wait_synced()
            await self.endpoints.wait_synced()
            log.info("caches synced", services=len(self.services.store), listeners=len(self.listeners))

    # ---- routing table --------------------------------------------------------------------------
    def sync(self, key: str) -> None:
        svc = self.services.get(key)
        eps = self.endpoints.get(key)
        wanted: list[Listen] = listens(key, svc, self.nodeport_addresses) if svc is not None else []
        routes: set[str] = set()
        if svc is not None and proxied(svc):
            affinity = svc.spec.session_affinity == "ClientIP"
            for port in svc.spec.ports:
                if port.protocol != "TCP":
                    continue
                rk = route_key(key, port)
                routes.add(rk)
                ready = ready_endpoints(eps, port)
                route = self.routes.get(rk)
                if route is None:
                    self.routes[rk] = Route(rk, ready, affinity)
                else:
                    route.update(ready, affinity)
        for rk in self.service_routes.get(key, set()) - routes:
            self.routes.pop(rk, None)
        if routes:
            self.service_routes[key] = routes
        else:
            self.service_routes.pop(key, None)

        want = {(w.ip, w.port): w.route for w in wanted}
        mine = self.service_listeners.get(key, set())
        for addr in mine - want.keys():
            self._close(addr)
            # A Service that wanted this address while we held it gets it now.
            for other in self.waiting.pop(addr, set()) - {key}:
                self.sync(other)
        for addr in [a for a, keys in self.waiting.items() if key in keys and a not in want]:
            self.waiting[addr].discard(key)
            if not self.waiting[addr]:
                del self.waiting[addr]
        for addr, rk in want.items():
            current = self.listeners.get(addr)
            if current is not None and current.service == key:
                current.route = rk
                continue
            if current is not None:  # another Service already serves this address
                waiting = self.waiting.setdefault(addr, set())
                if key not in waiting:  # said once, not on every change of this Service
                    waiting.add(key)
                    assert svc is not None
                    log.warning("address already served by another Service", service=key,
                                address=f"{addr[0]}:{addr[1]}", by=current.service)
                    self._report(svc, "PortInUse", f"{addr[0]}:{addr[1]} is already served by Service {current.service}")
                continue
            listener = Listener(addr[0], addr[1], key, rk)
            self.listeners[addr] = listener
            self._open(listener)
        if want:
            self.service_listeners[key] = {a for a in want if self.listeners.get(a) and self.listeners[a].service == key}
        else:
            self.service_listeners.pop(key, None)

    # ---- listeners ------------------------------------------------------------------------------
    def _open(self, listener: Listener) -> None:
        if listener.addr in self.closing:
            listener.retry_at = time.monotonic() + RETRY_TICK
            self.failed.add(listener.addr)
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind(listener.addr)
            sock.listen(4096)
        except OSError as exc:
            sock.close()
            listener.failures += 1
            delay = min(RETRY_FIRST * 2 ** (listener.failures - 1), RETRY_MAX)
            listener.retry_at = time.monotonic() + delay
            self.failed.add(listener.addr)
            if not listener.warned:  # once per listener, not per retry
                listener.warned = True
                reason = "PortInUse" if exc.errno == errno.EADDRINUSE else "FailedToListen"
                log.warning("cannot listen; will retry", service=listener.service, address=f"{listener.ip}:{listener.port}",
                            reason=reason, error=exc.strerror or str(exc))
                svc = self.services.get(listener.service)
                if svc is not None:
                    self._report(svc, reason, f"cannot listen on {listener.ip}:{listener.port}: {exc.strerror or exc}")
            return
        listener.sock = sock
        self.failed.discard(listener.addr)
        if listener.warned:
            log.info("listening after retries", service=listener.service, address=f"{listener.ip}:{listener.port}",
                     attempts=listener.failures + 1)
        else:
            log.info("listening", service=listener.service, address=f"{listener.ip}:{listener.port}")
        listener.failures = 0
        listener.warned = False
        assert self._tg is not None
        listener.task = self._tg.create_task(self._serve(listener, sock))
        # A done callback, not a `finally` in _serve: a task cancelled before its first step never
        # runs its body, and its socket would stay bound (and the address blocked) for good.
        listener.task.add_done_callback(lambda _: self._closed(listener.addr, sock))

    def _closed(self, addr: tuple[str, int], sock: socket.socket) -> None:
        sock.close()
        self.closing.discard(addr)

    def _close(self, addr: tuple[str, int]) -> None:
        listener = self.listeners.pop(addr, None)
        self.failed.discard(addr)
        if listener is None:
            return
        log.info("listener closed", service=listener.service, address=f"{addr[0]}:{addr[1]}")
        if listener.task is not None:
            self.closing.add(addr)
            listener.task.cancel()

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(RETRY_TICK)
            now = time.monotonic()
            for addr in list(self.failed):
                listener = self.listeners.get(addr)
                if listener is None:
                    self.failed.discard(addr)
                elif listener.sock is None and listener.retry_at <= now:
                    self._open(listener)

    def _report(self, svc: Service, reason: str, message: str) -> None:
        self._events.put_nowait((svc, reason, message))

    async def _record_events(self) -> None:
        while True:
            svc, reason, message = await self._events.get()
            await self.recorder.record(svc, "Warning", reason, message)

    # ---- connections ----------------------------------------------------------------------------
    async def _serve(self, listener: Listener, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as conns:
            while True:
                try:
                    conn, peer = await loop.sock_accept(sock)
                except OSError as exc:  # EMFILE and friends: the listener itself is fine
                    log.warning("accept failed", address=f"{listener.ip}:{listener.port}", error=str(exc))
                    await asyncio.sleep(0.1)
                    continue
                conns.create_task(self._guarded(listener, conn, peer[0]))

    async def _guarded(self, listener: Listener, conn: socket.socket, client_ip: str) -> None:
        """One connection's failure is that connection's alone: it must not end the listener's
        task group (which would close every connection of the Service, and the proxy with it)."""
        try:
            await self._connection(listener, conn, client_ip)
        except Exception:  # a bug in the data path: log it with the route, close this connection
            log.exception("connection crashed", route=listener.route, client=client_ip)
            conn.close()

    async def _connection(self, listener: Listener, conn: socket.socket, client_ip: str) -> None:
        loop = asyncio.get_running_loop()
        rk = listener.route  # read now: a renamed service port moves the listener to another route
        route = self.routes.get(rk)
        candidates = route.candidates(client_ip) if route is not None else []
        backend: socket.socket | None = None
        for ep in candidates:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await loop.sock_connect(sock, ep)
            except (OSError, TimeoutError) as exc:
                sock.close()
                log.debug("endpoint failed; trying the next", route=rk, endpoint=f"{ep[0]}:{ep[1]}", error=repr(exc))
                continue
            backend = sock
            assert route is not None
            route.connected(client_ip, ep)
            break
        if backend is None:
            # No ready endpoint (or none accepted): reject at once, as Kubernetes does.
            log.debug("connection rejected", route=rk, client=client_ip, endpoints=len(candidates))
            conn.close()
            return
        self.connections += 1
        for s in (conn, backend):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self.pump(conn, backend)
        except OSError as exc:  # reset while wiring the transports
            log.debug("connection failed", route=rk, error=repr(exc))
            conn.close()
            backend.close()
