"""Template hashing, revision numbers and the ReplicaSets of a Deployment (Kubernetes' deployment util)."""
from __future__ import annotations

import hashlib

import msgspec

from schemas import Deployment, PodTemplateSpec, ReplicaSet

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: PodTemplateSpec, collision_count: int = 0) -> str:
    """A short, stable, DNS-safe hash of the template (without our own hash label)."""
    t = msgspec.structs.replace(template, metadata=msgspec.structs.replace(
        template.metadata, labels={k: v for k, v in template.metadata.labels.items() if k != HASH_LABEL}))
    digest = hashlib.sha256(msgspec.json.encode(t) + str(collision_count).encode()).digest()
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:10])


def same_template(rs: ReplicaSet, d: Deployment) -> bool:
    """The ReplicaSet runs the Deployment's current template (its hash label aside)."""
    a = msgspec.structs.replace(rs.spec.template, metadata=msgspec.structs.replace(
        rs.spec.template.metadata, labels={k: v for k, v in rs.spec.template.metadata.labels.items() if k != HASH_LABEL}))
    return msgspec.json.encode(a) == msgspec.json.encode(d.spec.template)


def revision(obj: ReplicaSet | Deployment) -> int:
    try:
        return int(obj.metadata.annotations.get(REVISION, "0"))
    except ValueError:
        return 0


def resolve_fenceposts(d: Deployment) -> tuple[int, int]:
    """maxSurge (rounded up) and maxUnavailable (rounded down) as pod counts; never both zero."""
    replicas = d.spec.replicas or 0
    ru = d.spec.strategy.rolling_update if d.spec.strategy else None

    def value(v: int | str | None, default: str, round_up: bool) -> int:
        v = default if v is None else v
        if isinstance(v, int):
            return v
        pct = int(v.rstrip("%"))
        n = replicas * pct
        return -(-n // 100) if round_up else n // 100

    surge = value(ru.max_surge if ru else None, "25%", True)
    unavailable = value(ru.max_unavailable if ru else None, "25%", False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable
