"""Requests and limits: the kubelet's admission check (does the pod fit what is left of the node's
allocatable?) and the per-container limits handed to the runtime.

A pod that does not fit is rejected like the kubelet does it: phase Failed, reason
`OutOf<resource>`, and it never runs. A limit no process can live under (memory below 4 MiB)
leaves the container waiting with CreateContainerError.
"""
from __future__ import annotations

from decimal import Decimal

from schemas import Pod
from schemas.pod import Container
from schemas.quantity import QuantityError, cpu_millis, parse_quantity, to_int

from .runtime import Limits

MIN_MEMORY_LIMIT = 4 * 2**20
ADMITTED_RESOURCES = ("cpu", "memory", "ephemeral-storage")


def _amount(resource: str, value: str | int | float) -> int:
    return cpu_millis(value) if resource == "cpu" else to_int(value)


def pod_requests(pod: Pod) -> dict[str, int]:
    """Effective requests (cpu in millicores, others in units): the sum over app containers, or the
    largest init container's if that is more (init containers run one at a time)."""
    total: dict[str, int] = {}
    for c in pod.spec.containers:
        for name, q in c.resources.requests.items():
            try:
                total[name] = total.get(name, 0) + _amount(name, q)
            except QuantityError:
                continue
    for c in pod.spec.init_containers:
        for name, q in c.resources.requests.items():
            try:
                total[name] = max(total.get(name, 0), _amount(name, q))
            except QuantityError:
                continue
    return total


def admit(pod: Pod, admitted: list[Pod], allocatable: dict[str, str | int | float]) -> tuple[str, str] | None:
    """None if the pod fits beside the `admitted` ones; else (reason, message) of the rejection."""
    try:
        max_pods = to_int(allocatable.get("pods", 110))
    except QuantityError:
        max_pods = 110
    if len(admitted) + 1 > max_pods:
        return "OutOfpods", (f"Pod was rejected: Node didn't have enough resource: pods, requested: 1, "
                             f"used: {len(admitted)}, capacity: {max_pods}")
    wanted = pod_requests(pod)
    used: dict[str, int] = {}
    for other in admitted:
        for name, amount in pod_requests(other).items():
            used[name] = used.get(name, 0) + amount
    for name in ADMITTED_RESOURCES:
        if name not in allocatable or not wanted.get(name):
            continue
        try:
            capacity = _amount(name, allocatable[name])
        except QuantityError:
            continue
        if wanted[name] > capacity - used.get(name, 0):
            return f"OutOf{name}", (f"Pod was rejected: Node didn't have enough resource: {name}, "
                                    f"requested: {wanted[name]}, used: {used.get(name, 0)}, capacity: {capacity}")
    return None


def container_limits(c: Container) -> Limits:
    """The limits to enforce; raises ValueError with a CreateContainerError message if impossible."""
    limits = Limits()
    mem = c.resources.limits.get("memory")
    if mem is not None:
        value = parse_quantity(mem)
        if value < MIN_MEMORY_LIMIT:
            raise ValueError(f"memory limit {mem} is below the minimum of 4Mi a process can start under")
        limits.memory_bytes = int(value.to_integral_value(rounding="ROUND_CEILING"))
    cpu = c.resources.limits.get("cpu")
    if cpu is not None:
        millis = cpu_millis(cpu)
        if millis <= 0:
            raise ValueError(f"cpu limit {cpu} must be more than 0")
        limits.cpu_millis = millis
    req = c.resources.requests.get("cpu")
    if req is not None and parse_quantity(req) > Decimal(0):
        limits.cpu_request_millis = cpu_millis(req)
    return limits
