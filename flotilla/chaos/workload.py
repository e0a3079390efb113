"""The workload: a Deployment of real process pods (`python3 -m http.server` on the pod's IP, with
a readiness probe) behind a Service, scaled up and rolled (a template env change) during the run.

The large case (`hollow_nodes` > 0) adds a second Deployment, `bulk`, of small pods that may only land
on hollow nodes, and pins `web` to the real agents: both by a nodeSelector on POOL_LABEL, which the
harness sets on every node (`real` on the agents, `hollow` on the hollow nodes). A nodeSelector on
each side rather than a taint on the hollow nodes: the node lifecycle controller owns the taints
there (unreachable/not-ready come and go during faults), and labels are set by each agent itself."""
from __future__ import annotations

from typing import Any

from schemas import ApiError
from services.lib.client import Api

NAMESPACE = "chaos"
NAME = "web"
BULK = "bulk"
POOL_LABEL = "flotilla.dev/chaos-pool"
REAL_POOL = "real"
HOLLOW_POOL = "hollow"


def deployment(replicas: int, revision: int, name: str = NAME,
               node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    d = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "web", "image": "python:3",
                        "command": ["python3", "-m", "http.server", "8080", "--bind", "$(POD_IP)"],
                        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                                {"name": "CHAOS_REVISION", "value": str(revision)}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                        "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}},
                    }],
                },
            },
        },
    }
    if node_selector:
        d["spec"]["template"]["spec"]["nodeSelector"] = dict(node_selector)
    return d


def bulk_deployment(replicas: int) -> dict[str, Any]:
    """Pods for hollow nodes only: nothing runs, so no probe (Ready once "started"), small requests so
    that a few hollow nodes' worth of capacity holds them all. Surge and unavailability of a quarter:
    a replacement of many pods does not go one at a time."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": BULK, "namespace": NAMESPACE, "labels": {"app": BULK}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": BULK}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": BULK}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "nodeSelector": {POOL_LABEL: HOLLOW_POOL},
                    "containers": [{"name": "bulk", "image": "busybox", "command": ["sleep", "infinity"],
                                    "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}}}],
                },
            },
        },
    }


def service(name: str = NAME) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


class Workload:
    """Remembers what it asked for, so that convergence means "what the harness last declared"."""

    def __init__(self, api: Api, *, low: int = 2, high: int = 4, hollow_nodes: int = 0):
        self.api = api
        self.low = low
        self.high = high
        self.replicas = low
        self.revision = 1
        self.hollow_nodes = hollow_nodes
        # ~2 pods per hollow node, and half as many again at a scale-up.
        self.bulk_low = 2 * hollow_nodes
        self.bulk_high = self.bulk_low + max(1, hollow_nodes // 2)
        self.bulk_replicas = self.bulk_low if hollow_nodes else 0

    @property
    def names(self) -> list[str]:
        return [NAME, BULK] if self.hollow_nodes else [NAME]

    def declared(self, name: str) -> int:
        return self.bulk_replicas if name == BULK else self.replicas

    async def ensure_namespaces(self, *names: str) -> None:
        for ns in names:
            try:
                await self.api.namespaces.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            except ApiError as exc:
                if exc.reason != "AlreadyExists":
                    raise

    async def create(self) -> None:
        pin = {POOL_LABEL: REAL_POOL} if self.hollow_nodes else None
        objects = [(lambda: deployment(self.replicas, self.revision, node_selector=pin), self.api.deployments),
                   (service, self.api.services)]
        if self.hollow_nodes:
            objects.append((lambda: bulk_deployment(self.bulk_replicas), self.api.deployments))
        for make, client in objects:
            try:
                await client.create(make())
            except ApiError as exc:
                if exc.reason != "AlreadyExists":
                    raise
        # Attached to a suite where an earlier run left it: start from what is there.
        d = await self.api.deployments.get(NAME, NAMESPACE)
        self.replicas = d.spec.replicas or 0
        env = {e.name: e.value for c in d.spec.template.spec.containers for e in c.env}
        self.revision = int(env.get("CHAOS_REVISION") or 1)
        if self.hollow_nodes:
            self.bulk_replicas = (await self.api.deployments.get(BULK, NAMESPACE)).spec.replicas or 0

    async def scale_up(self) -> str:
        """Up to `high` (from `low`); if already up, down first is not a scale-up, so go higher by one.
        The bulk Deployment (large case) likewise, from `bulk_low` to `bulk_high`."""
        target = self.high if self.replicas < self.high else self.replicas + 1
        await self.api.deployments.scale(NAME, target, NAMESPACE)
        before, self.replicas = self.replicas, target
        said = f"scaled {before} -> {target}"
        if self.hollow_nodes:
            bulk = self.bulk_high if self.bulk_replicas < self.bulk_high else self.bulk_replicas + 1
            await self.api.deployments.scale(BULK, bulk, NAMESPACE)
            said += f", bulk {self.bulk_replicas} -> {bulk}"
            self.bulk_replicas = bulk
        return said

    async def scale_down(self) -> None:
        if self.replicas != self.low:
            await self.api.deployments.scale(NAME, self.low, NAMESPACE)
            self.replicas = self.low
        if self.hollow_nodes and self.bulk_replicas != self.bulk_low:
            await self.api.deployments.scale(BULK, self.bulk_low, NAMESPACE)
            self.bulk_replicas = self.bulk_low

    async def roll(self) -> str:
        """A template change (an env var) starts a rolling update; read-modify-write with the
        version as a CAS, retried on a conflict with the controllers' status writes."""
        self.revision += 1
        for _ in range(10):
            d = await self.api.deployments.get(NAME, NAMESPACE)
            for c in d.spec.template.spec.containers:
                for e in c.env:
                    if e.name == "CHAOS_REVISION":
                        e.value = str(self.revision)
            try:
                await self.api.deployments.update(d)
                return f"rolled to revision {self.revision}"
            except ApiError as exc:
                if exc.reason != "Conflict":
                    raise
        raise ApiError("Conflict", "could not update the Deployment in 10 tries")
