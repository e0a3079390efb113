"""The API server process: subscriptions on the API subjects, concurrent dispatch, the watch caches,
default namespaces and the namespace sweep."""
from __future__ import annotations

import argparse
import asyncio
import time

import nats.errors
import nats.js.errors as jserr
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import API_PREFIX, DEFAULT_NAMESPACES, RESOURCES, ApiError, Resource
from schemas.fencing import FENCE_HEADER
from services.lib.codec import encode
from services.lib.inbox import MessageQueue, subscribe
from services.lib.log import get_logger
from services.lib.natsjwt import Issuer
from services.lib.registry import ServedEndpoint, register

from .allocator import DEFAULT_NODE_PORT_RANGE, DEFAULT_SERVICE_CIDR, REPAIR_AFTER_SECONDS, ServiceAllocator
from .authz import Authorizer, load_config, rate_limit_of
from .bootstrap import Bootstrap
from .defaults import PodDefaults
from .fencing import FenceChecker
from .objects import Objects
from .options import DryRunLog, dry_run_reply, header_options
from .ratelimit import RateLimiter
from .store import StateLog
from .watch import WatchServer, WatchSession
from .watchcache import Cached as WatchCacheEntry
from .watchcache import WatchCache

log = get_logger("flotilla.apiserver")

QUEUE_GROUP = "flotilla-apiserver"
MAX_IN_FLIGHT = 1024
_READ_VERBS = frozenset(("get", "list", "watch"))
EVENT_EXPIRY_CHECK_SECONDS = 30.0
# Kubernetes' object limit (etcd's value limit), checked on the raw message before anything decodes it.
MAX_BODY_BYTES = 1536 * 1024
ADMIN = "admin"
INTERNAL = "apiserver"  # the manager of the API server's own writes (default namespaces, the sweep)


def principal_of(subject: str) -> str:
    """Who calls, named by the subject: `flo.api.v1.user.<p>.…` is <p>, `flo.api.v1.node.<n>.…` is
    node-<n>, the plain subjects are the admin's (NATS permissions keep everyone else off them)."""
    parts = subject.split(".", 5)
    if len(parts) > 5:
        if parts[3] == "user":
            return parts[4]
        if parts[3] == "node":
            return "node-" + parts[4]
    return ADMIN


def node_of(principal: str) -> str | None:
    """A node-<n> principal gets the node restriction, whichever subject form it came on."""
    return principal[5:] if principal.startswith("node-") else None


def _status_bytes(err: ApiError) -> bytes:
    return encode(err.to_status())


class ApiServer:
    def __init__(self, nc: Client, bucket: str, identity: str, replicas: int = 1, bookmark_seconds: float = 2.0,
                 service_cidr: str = DEFAULT_SERVICE_CIDR, node_ports: str = DEFAULT_NODE_PORT_RANGE,
                 allocation_repair_after: float = REPAIR_AFTER_SECONDS, pod_defaults: PodDefaults = PodDefaults(),
                 authorizer: Authorizer | None = None, limiter: RateLimiter | None = None):
        self.nc = nc
        self.identity = identity
        self.log = StateLog(nc, bucket, replicas)
        self.js = self.log.js
        self.cache = WatchCache(nc, self.js, self.log.main)
        self.events_cache = WatchCache(nc, self.js, self.log.events)
        self.allocator = ServiceAllocator(self.log, self.cache, service_cidr, node_ports, allocation_repair_after)
        self.objects = Objects(self.log, self.cache, self.events_cache, self.allocator, pod_defaults)
        self.watches = WatchServer(nc, self.objects, identity, bookmark_seconds)
        self.fences = FenceChecker(self.log)
        o = self.objects
        self._verbs = {"create": o.create, "get": o.get, "list": o.list, "update": o.update, "patch": o.patch,
                       "delete": o.delete, "bind": o.bind, "scale": o.scale}
        # `Flotilla-Dry-Run: All` (options.py): the same verbs over a log that checks writes and makes none.
        dry_log = DryRunLog(nc, bucket, replicas)
        self.dry_objects = Objects(dry_log, self.cache, self.events_cache,
                                   ServiceAllocator(dry_log, self.cache, service_cidr, node_ports, allocation_repair_after),
                                   pod_defaults)
        self.principal = INTERNAL  # who this server is on the bus (serve() sets it from the credentials)
        # One `$SRV` endpoint per resource: `nats micro stats flotilla-apiserver` then says which kind
        # is slow or failing; the requests come in on this server's own subscriptions (see _handle).
        self.endpoints = {r.name: ServedEndpoint(
            r.name, f"{API_PREFIX}.{r.name}.*", QUEUE_GROUP,
            {"verbs": ",".join(r.verbs), "node-subject": f"{API_PREFIX}.node.*.{r.name}.*",
             "user-subject": f"{API_PREFIX}.user.*.{r.name}.*"}) for r in RESOURCES.values()}
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.authz = authorizer  # None: authorization off (benchmarks); the node restriction still holds
        self.limiter = limiter
        self.handled = 0
        self.bootstrap: Bootstrap | None = None  # node join (bootstrap.py), set by serve()

    async def run(self) -> None:
        await self._ensure_buckets()
        async with asyncio.TaskGroup() as tg:
            self.tg = tg
            tg.create_task(self.cache.run(lambda: self.log.head(self.log.main)))
            tg.create_task(self.events_cache.run(lambda: self.log.head(self.log.events)))
            await self.cache.ready.wait()
            await self.events_cache.ready.wait()
            await self._bootstrap_namespaces()
            ack_sub = await self.nc.subscribe(self.watches.ack_prefix + ".*", cb=self.watches.on_ack)
            subs = [await subscribe(self.nc, f"{API_PREFIX}.*.*", queue=QUEUE_GROUP),
                    await subscribe(self.nc, f"{API_PREFIX}.node.*.*.*", queue=QUEUE_GROUP),
                    await subscribe(self.nc, f"{API_PREFIX}.user.*.*.*", queue=QUEUE_GROUP)]
            svc = await register(self.nc, "apiserver", self.identity, principal=self.principal,
                                 endpoints=self.endpoints.values(), bucket=self.log.main.name,
                                 subjects=f"{API_PREFIX}.<resource>.<verb>")
            log.info("serving", subjects=f"{API_PREFIX}.>", bucket=self.log.main.name, rev=self.cache.rev)
            try:
                for _, requests in subs:
                    tg.create_task(self._serve(requests, tg))
                tg.create_task(self._namespace_sweep())
                tg.create_task(self._expire_events())
                tg.create_task(self.allocator.repair_loop())
                if self.bootstrap is not None:
                    tg.create_task(self.bootstrap.run())
                await asyncio.Event().wait()
            finally:
                self.watches.stop_all()
                await svc.stop()
                for sub in (*(s for s, _ in subs), ack_sub):
                    if self.nc.is_connected:
                        await sub.unsubscribe()

    async def _ensure_buckets(self) -> None:
        while True:
            try:
                await self.log.ensure()
                return
            except (jserr.Error, nats.errors.Error, TimeoutError) as exc:
                log.warning("state log not reachable yet; retrying", error=repr(exc))
                await asyncio.sleep(1)

    async def _bootstrap_namespaces(self) -> None:
        for name in DEFAULT_NAMESPACES:
            while True:
                try:
                    await self.objects.create(RESOURCES["namespaces"], encode({"metadata": {"name": name}}), None,
                                              INTERNAL)
                    log.info("namespace created", namespace=name)
                except ApiError as err:
                    if err.reason != "AlreadyExists":
                        raise
                except (jserr.Error, nats.errors.Error, TimeoutError) as exc:  # NATS restarting: try again
                    log.warning("default namespace not created yet; retrying", namespace=name, error=repr(exc))
                    await asyncio.sleep(1)
                    continue
                break

    async def _serve(self, requests: MessageQueue, tg: asyncio.TaskGroup) -> None:
        async for msg in requests:
            # Throttled and oversized requests are answered here, before they take a slot: a flood
            # from one principal then costs a dict lookup per message and cannot starve the others.
            refusal = self._refusal(msg)
            if refusal is not None:
                self._count(msg.subject, time.perf_counter_ns(), refusal)
                await self._reply(msg, _status_bytes(refusal))
                continue
            await self._slots.acquire()
            tg.create_task(self._handle(msg))

    def _refusal(self, msg: Msg) -> ApiError | None:
        if self.limiter is not None:
            wait = self.limiter.admit(principal_of(msg.subject))
            if wait:
                return ApiError("TooManyRequests", f'user "{principal_of(msg.subject)}" is over its request rate '
                                                   f"limit; retry after {wait}s", retry_after=wait)
        if msg.data is not None and len(msg.data) > MAX_BODY_BYTES:
            return ApiError("TooLarge", f"request entity too large: {len(msg.data)} bytes, the limit is "
                                        f"{MAX_BODY_BYTES} bytes")
        return None

    @staticmethod
    async def _reply(msg: Msg, data: bytes) -> None:
        if not msg.reply:
            return
        try:
            await msg.respond(data)
        except nats.errors.Error as exc:
            log.debug("reply failed", subject=msg.subject, error=repr(exc))

    def _route(self, subject: str) -> tuple[Resource, str, str]:
        """The resource, the verb and the principal (see principal_of) of an API subject."""
        parts = subject.split(".")
        principal = ADMIN
        if len(parts) == 7 and parts[3] == "node":
            principal, parts = "node-" + parts[4], parts[:3] + parts[5:]
        elif len(parts) == 7 and parts[3] == "user":
            principal, parts = parts[4], parts[:3] + parts[5:]
        if len(parts) != 5:
            raise ApiError("NotFound", f"no such API subject {subject!r}")
        resource = RESOURCES.get(parts[3])
        if resource is None:
            raise ApiError("NotFound", f"the server could not find the requested resource {parts[3]!r}")
        verb = parts[4]
        if verb not in resource.verbs:
            raise ApiError("BadRequest", f"verb {verb!r} is not supported on {resource.name} "
                                         f"(supported: {', '.join(resource.verbs)})")
        return resource, verb, principal

    def _count(self, subject: str, started_ns: int, err: ApiError | None) -> None:
        """`$SRV.STATS`: a request on its resource's endpoint; errors are the server's (5xx, 429)."""
        parts = subject.split(".")
        name = parts[5] if len(parts) == 7 and parts[3] in ("node", "user") else parts[3] if len(parts) == 5 else ""
        endpoint = self.endpoints.get(name)
        if endpoint is not None:
            failed = err is not None and (err.code >= 500 or err.code == 429)
            verb = parts[-1] if parts[-1] in RESOURCES[name].verbs else "other"  # a bounded set of counters
            endpoint.done(started_ns, f"{err.code} {err.reason}: {err.message}" if failed else None, verb)

    async def _handle(self, msg: Msg) -> None:
        started = time.perf_counter_ns()
        session: WatchSession | None = None
        reply: bytes | None = None
        failure: ApiError | None = None
        try:
            result = await self._dispatch(msg)
            if isinstance(result, WatchSession):
                session = result
            else:
                reply = result
        except ApiError as err:
            failure = err
        except (nats.errors.TimeoutError, TimeoutError):
            failure = ApiError("Timeout", "the state log did not answer in time; try again")
        except (jserr.Error, nats.errors.Error) as exc:
            log.warning("state log error", subject=msg.subject, error=repr(exc))
            failure = ApiError("ServiceUnavailable", f"state log unavailable: {exc!r}")
        except Exception as exc:  # a bug: answer 500, log it, keep serving
            log.exception("internal error", subject=msg.subject)
            failure = ApiError("InternalError", f"internal error: {exc!r}")
        finally:
            self._slots.release()
        if failure is not None:
            reply = _status_bytes(failure)
        self.handled += 1
        self._count(msg.subject, started, failure)
        if session is not None:  # streams until the watcher goes away; holds no request slot
            await session.run(self.objects.cache_for(RESOURCES[session.resource]), self.watches.bookmark_seconds)
        elif reply is not None:
            await self._reply(msg, reply)

    async def _dispatch(self, msg: Msg) -> bytes | WatchSession | None:
        resource, verb, principal = self._route(msg.subject)
        body, dry_run = header_options(verb, msg.headers, msg.data or b"{}")
        if self.authz is not None:
            self.authz.check(principal, resource, verb, body)
        node = node_of(principal)
        if verb not in _READ_VERBS and msg.headers:
            fence = msg.headers.get(FENCE_HEADER)
            if fence is not None:  # a leader's write: only while its term holds (fencing.py)
                await self.fences.check(fence, msg.subject)
        if verb == "watch":
            if not msg.reply:
                raise ApiError("BadRequest", "watch needs a reply subject")
            return await self.watches.open(resource, body, msg.reply, node)
        objects = self.dry_objects if dry_run else self.objects
        if verb == "status":
            reply = await objects.update(resource, body, node, principal, status_only=True)
        elif dry_run:
            reply = await getattr(objects, verb)(resource, body, node, principal)
        else:
            return await self._verbs[verb](resource, body, node, principal)
        return dry_run_reply(verb, reply) if dry_run else reply

    async def _expire_events(self) -> None:
        """Events age out of their bucket (1 h max age) without tombstones: drop them from the cache."""
        while True:
            await asyncio.sleep(EVENT_EXPIRY_CHECK_SECONDS)
            try:
                info = await self.js.stream_info(self.log.events.stream)
            except (jserr.Error, nats.errors.Error, TimeoutError) as exc:
                log.debug("events stream info failed", error=repr(exc))
                continue
            gone = self.events_cache.expire_below(info.state.first_seq)
            if gone:
                log.info("expired events dropped", count=gone)

    async def _namespace_sweep(self) -> None:
        """Level-triggered: content of a terminating namespace is deleted; an empty one is removed."""
        ns_res = RESOURCES["namespaces"]
        while True:
            await asyncio.sleep(1.0)
            for cached in list(self.cache.objects["namespaces"].values()):
                ns = cached.obj
                if not ns.metadata.deletion_timestamp or ns.metadata.finalizers:
                    continue
                remaining = 0
                for r in RESOURCES.values():
                    if not r.namespaced:
                        continue
                    table = self.objects.cache_for(r).objects[r.name]
                    prefix = r.key_prefix(ns.metadata.name)
                    for c in [c for k, c in table.items() if k.startswith(prefix)]:
                        remaining += 1
                        if c.obj.metadata.deletion_timestamp:
                            continue
                        try:
                            await o_delete(self.objects, r, c)
                        except ApiError as err:
                            if err.reason not in ("NotFound", "Conflict"):
                                log.warning("namespace content delete failed", key=c.key, error=err.message)
                if remaining == 0:
                    try:
                        await self.log.delete(self.log.main, cached.key, cached.rev)
                        log.info("namespace deleted", namespace=ns.metadata.name)
                    except ApiError as err:
                        if err.reason != "Conflict":
                            raise


async def o_delete(objects: Objects, r: Resource, c: WatchCacheEntry) -> None:
    await objects.delete(r, encode({"namespace": c.namespace, "name": c.name}), None, INTERNAL)


async def serve(args: argparse.Namespace, nc: Client) -> None:
    cfg = load_config(args.authorization_config)
    authorizer = Authorizer(cfg) if args.authorization == "on" else None
    limiter = RateLimiter(args.rate_limit_qps, args.rate_limit_burst, lambda p: rate_limit_of(cfg, p))
    log.info("authorization", mode=args.authorization, config=str(args.authorization_config or "builtin"),
             qps=args.rate_limit_qps, burst=args.rate_limit_burst)
    server = ApiServer(nc, args.bucket, args.identity, args.replicas, args.bookmark_seconds,
                       args.service_cluster_ip_range, args.service_node_port_range, args.service_allocation_repair_after,
                       PodDefaults(args.default_not_ready_toleration_seconds, args.default_unreachable_toleration_seconds),
                       authorizer, limiter)
    issuer = Issuer.load(args.bootstrap_issuer) if args.bootstrap_issuer else None
    server.bootstrap = Bootstrap(nc, args.bucket, issuer, args.replicas)
    server.principal = args.principal
    await server.run()


