"""What a test needs from the host. Under CI=true a missing requirement fails the test: CI is set up to
have it (root, the cgroup v1 memory controller, docker-compose which .ci/run installs), so its absence
there is a broken CI, not an optional feature. Elsewhere (a laptop, a non-root shell) the test skips.
Keep plain pytest.skip for what is truly optional everywhere."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def need(condition: bool, reason: str) -> None:
    """Carry on if `condition`; otherwise fail under CI=true and skip elsewhere, saying `reason`."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI=true requires this: {reason}", pytrace=False)
    pytest.skip(reason)


def is_root() -> bool:
    return os.geteuid() == 0


def has_cgroup_v1(controller: str, mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """A cgroup v1 hierarchy with `controller` is mounted (the hybrid layout of DESIGN §8)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        _, _, after = line.partition(" - ")
        fields = after.split()
        if len(fields) >= 3 and fields[0] == "cgroup" and controller in fields[2].split(","):
            return True
    return False


__all__ = ["has_cgroup_v1", "in_ci", "is_root", "need"]
