"""What the scheduler needs to know about a pod, computed once per pod (requests, ports, owner)."""
from __future__ import annotations

import msgspec

from schemas import Pod
from schemas.quantity import QuantityError, cpu_millis, to_int

# Kubernetes scores a pod without requests as if it asked for this much (not used for fitting).
DEFAULT_CPU_MILLIS = 100
DEFAULT_MEMORY = 200 * 1024 * 1024


class PodInfo(msgspec.Struct):
    key: str
    pod: Pod
    cpu: int  # millicores requested
    memory: int  # bytes requested
    score_cpu: int  # requests with Kubernetes' non-zero defaults, for scoring
    score_memory: int
    host_ports: frozenset[tuple[str, str, int]]  # (hostIP, protocol, port)
    owner_uid: str | None
    plain: bool  # no node selector, node affinity or host ports: on a plain node only resources matter


def _quantity(value: str | int | float, cpu: bool) -> int:
    try:
        return cpu_millis(value) if cpu else to_int(value)
    except QuantityError:
        return 0  # the API server validated it; be lenient with anything older


def pod_info(key: str, pod: Pod) -> PodInfo:
    cpu = memory = 0
    score_cpu = score_memory = 0
    for c in pod.spec.containers:
        req = c.resources.requests
        c_cpu = _quantity(req["cpu"], True) if "cpu" in req else 0
        c_mem = _quantity(req["memory"], False) if "memory" in req else 0
        cpu += c_cpu
        memory += c_mem
        score_cpu += c_cpu or DEFAULT_CPU_MILLIS
        score_memory += c_mem or DEFAULT_MEMORY
    for c in pod.spec.init_containers:  # init containers run alone: the pod needs the larger of the two
        req = c.resources.requests
        cpu = max(cpu, _quantity(req["cpu"], True) if "cpu" in req else 0)
        memory = max(memory, _quantity(req["memory"], False) if "memory" in req else 0)
    ports = frozenset((p.host_ip or "0.0.0.0", p.protocol or "TCP", p.host_port)
                      for c in pod.spec.containers for p in c.ports if p.host_port)
    owner = next((r.uid for r in pod.metadata.owner_references if r.controller), None)
    plain = not pod.spec.node_selector and not ports and not (pod.spec.affinity and pod.spec.affinity.node_affinity)
    return PodInfo(key, pod, cpu, memory, score_cpu, score_memory, ports, owner, plain)
