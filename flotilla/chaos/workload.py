"""The workload: a Deployment of real process pods (`python3 -m http.server` on the pod's IP, with
a readiness probe) behind a Service, scaled up and rolled (a template env change) during the run."""
from __future__ import annotations

from typing import Any

from schemas import ApiError
from services.lib.client import Api

NAMESPACE = "chaos"
NAME = "web"


def deployment(replicas: int, revision: int, name: str = NAME) -> dict[str, Any]:
    return {
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


def service(name: str = NAME) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


class Workload:
    """Remembers what it asked for, so that convergence means "what the harness last declared"."""

    def __init__(self, api: Api, *, low: int = 2, high: int = 4):
        self.api = api
        self.low = low
        self.high = high
        self.replicas = low
        self.revision = 1

    async def ensure_namespaces(self, *names: str) -> None:
        for ns in names:
            try:
                await self.api.namespaces.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            except ApiError as exc:
                if exc.reason != "AlreadyExists":
                    raise

    async def create(self) -> None:
        for make, client in ((lambda: deployment(self.replicas, self.revision), self.api.deployments),
                             (service, self.api.services)):
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

    async def scale_up(self) -> str:
        """Up to `high` (from `low`); if already up, down first is not a scale-up, so go higher by one."""
        target = self.high if self.replicas < self.high else self.replicas + 1
        await self.api.deployments.scale(NAME, target, NAMESPACE)
        before, self.replicas = self.replicas, target
        return f"scaled {before} -> {target}"

    async def scale_down(self) -> None:
        if self.replicas != self.low:
            await self.api.deployments.scale(NAME, self.low, NAMESPACE)
            self.replicas = self.low

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
