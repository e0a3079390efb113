"""Resource limits through cgroups: which hierarchy is usable on this host (v2, or v1 per
controller), one cgroup per container with its memory and CPU limits, OOM-kill counts, the
processes of a container, and cleanup.

Detection never raises: a host without a usable hierarchy (not root, read-only cgroupfs, v2
without the memory/cpu controllers delegated, ...) gets `enforced == False` and a message saying
why, which the agent logs once and shows in its Node's `ResourceLimitsEnforced` condition.

Layout: v1 `<controller mount>/<agent's own cgroup>/flotilla/<node>/pod<uid>/<container>` (nested
under the agent's cgroup, so a limit on the agent's cgroup still covers its pods); v2
`<mount>/flotilla/<node>/pod<uid>/<container>` (at the top, because v2 forbids processes in a
cgroup that delegates controllers to children, and the agent's own cgroup holds the agent).
"""
from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from services.lib.log import get_logger

from .runtime import Limits

log = get_logger("flotilla.nodeagent.cgroups")

CONTROLLERS = ("memory", "cpu")
CFS_PERIOD_US = 100_000
MIN_CFS_QUOTA_US = 1_000  # the kernel's minimum; Kubernetes clamps to it too


class CgroupError(Exception):
    pass


@dataclass
class Hierarchy:
    controller: str
    version: str  # "v1" or "v2"
    base: Path    # .../flotilla/<node>


def _parse_mountinfo(text: str) -> list[tuple[str, str, str, set[str]]]:
    """(root, mountpoint, fstype, super options) of every cgroup mount."""
    mounts = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype = rfields[0]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        root = fields[3].replace("\\040", " ")
        mountpoint = fields[4].replace("\\040", " ")
        mounts.append((root, mountpoint, fstype, set(rfields[2].split(","))))
    return mounts


def _parse_self_cgroup(text: str) -> dict[str, str]:
    """controller -> path of this process's cgroup; the v2 path under the key ''."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "":
            paths[""] = parts[2]
        for ctrl in parts[1].split(","):
            if ctrl:
                paths[ctrl] = parts[2]
    return paths


def _join(mountpoint: str, root: str, path: str) -> Path:
    rel = path
    if root != "/" and rel.startswith(root):
        rel = rel[len(root):]
    return Path(mountpoint) / rel.lstrip("/")


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_int_field(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


class Cgroups:
    def __init__(self, node: str, hierarchies: dict[str, Hierarchy], message: str):
        self.node = node
        self.hierarchies = hierarchies
        self.message = message

    @property
    def enforced(self) -> bool:
        return bool(self.hierarchies)

    @property
    def version(self) -> str | None:
        versions = {h.version for h in self.hierarchies.values()}
        return versions.pop() if len(versions) == 1 else ("mixed" if versions else None)

    @classmethod
    def disabled(cls, node: str, why: str) -> "Cgroups":
        return cls(node, {}, why)

    @classmethod
    def detect(cls, node: str, proc: Path = Path("/proc")) -> "Cgroups":
        if os.geteuid() != 0:
            return cls.disabled(node, "resource limits are recorded, not enforced: "
                                      "the node agent is not running as root")
        try:
            mounts = _parse_mountinfo((proc / "self" / "mountinfo").read_text())
            own = _parse_self_cgroup((proc / "self" / "cgroup").read_text())
        except OSError as exc:
            return cls.disabled(node, f"resource limits are recorded, not enforced: cannot read cgroup mounts ({exc})")
        reasons: list[str] = []
        v2 = next(((root, mp) for root, mp, fs, _ in mounts if fs == "cgroup2"), None)
        if v2 is not None:
            found = cls._try_v2(node, Path(v2[1]), reasons)
            if found:
                return cls(node, found, "resource limits enforced with cgroup v2 (memory, cpu)")
        found = {}
        for ctrl in CONTROLLERS:
            mount = next(((root, mp) for root, mp, fs, opts in mounts if fs == "cgroup" and ctrl in opts), None)
            if mount is None:
                reasons.append(f"no cgroup v1 hierarchy has the {ctrl} controller")
                continue
            own_path = own.get(ctrl, "/")
            base = _join(mount[1], mount[0], own_path) / "flotilla" / node
            try:
                cls._probe_v1(ctrl, base)
            except OSError as exc:
                reasons.append(f"cgroup v1 {ctrl} at {base} is not usable ({exc.strerror or exc})")
                continue
            found[ctrl] = Hierarchy(ctrl, "v1", base)
        if found:
            missing = [c for c in CONTROLLERS if c not in found]
            msg = f"resource limits enforced with cgroup v1 ({', '.join(found)})"
            if missing:
                msg += f"; {', '.join(missing)} limits only recorded: {'; '.join(reasons)}"
            return cls(node, found, msg)
        return cls.disabled(node, "resource limits are recorded, not enforced: " + "; ".join(reasons or ["no cgroups"]))

    @staticmethod
    def _probe_v1(ctrl: str, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        test = base / f"probe-{os.getpid()}"
        test.mkdir(exist_ok=True)
        try:
            if ctrl == "memory":
                _write(test / "memory.limit_in_bytes", str(64 * 2**20))
            else:
                _write(test / "cpu.cfs_quota_us", str(CFS_PERIOD_US))
        finally:
            test.rmdir()

    @classmethod
    def _try_v2(cls, node: str, mount: Path, reasons: list[str]) -> dict[str, Hierarchy]:
        try:
            available = set((mount / "cgroup.controllers").read_text().split())
        except OSError as exc:
            reasons.append(f"cgroup v2 at {mount} unreadable ({exc.strerror})")
            return {}
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            reasons.append(f"cgroup v2 at {mount} lacks the {', '.join(missing)} controller(s) "
                           "(hybrid layout: they are bound to v1)")
            return {}
        try:
            level = mount
            for part in ("flotilla", node):
                cls._enable_v2(level)
                level = level / part
                level.mkdir(exist_ok=True)
            cls._enable_v2(level)
            test = level / f"probe-{os.getpid()}"
            test.mkdir(exist_ok=True)
            try:
                _write(test / "memory.max", str(64 * 2**20))
                _write(test / "cpu.max", f"{CFS_PERIOD_US} {CFS_PERIOD_US}")
            finally:
                test.rmdir()
        except OSError as exc:
            reasons.append(f"cgroup v2 at {mount} is not writable ({exc.strerror or exc})")
            return {}
        return {c: Hierarchy(c, "v2", level) for c in CONTROLLERS}

    @staticmethod
    def _enable_v2(level: Path) -> None:
        current = set((level / "cgroup.subtree_control").read_text().split())
        wanted = [c for c in CONTROLLERS if c not in current]
        if wanted:
            _write(level / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))

    # ---- per container ----------------------------------------------------------------------------
    def pod_dirs(self, pod_uid: str) -> list[Path]:
        return sorted({h.base / f"pod{pod_uid}" for h in self.hierarchies.values()})

    def create(self, pod_uid: str, container: str, limits: Limits) -> list[str]:
        """Make (or reuse) the container's cgroups and set its limits; returns their directories."""
        dirs: list[str] = []
        try:
            for ctrl, h in self.hierarchies.items():
                pod_dir = h.base / f"pod{pod_uid}"
                pod_dir.mkdir(parents=True, exist_ok=True)
                if h.version == "v2":
                    self._enable_v2(pod_dir)
                d = pod_dir / container
                d.mkdir(exist_ok=True)
                self._set_limit(h, d, ctrl, limits)
                if str(d) not in dirs:
                    dirs.append(str(d))
        except OSError as exc:
            raise CgroupError(f"cannot set up the container's cgroup: {exc.strerror or exc} ({exc.filename})") from exc
        return dirs

    @staticmethod
    def _set_limit(h: Hierarchy, d: Path, ctrl: str, limits: Limits) -> None:
        if ctrl == "memory":
            if h.version == "v1":
                _write(d / "memory.limit_in_bytes", str(limits.memory_bytes) if limits.memory_bytes else "-1")
            else:
                _write(d / "memory.max", str(limits.memory_bytes) if limits.memory_bytes else "max")
                if (d / "memory.swap.max").exists():
                    _write(d / "memory.swap.max", "0" if limits.memory_bytes else "max")
        elif ctrl == "cpu":
            quota = max(MIN_CFS_QUOTA_US, limits.cpu_millis * CFS_PERIOD_US // 1000) if limits.cpu_millis else None
            shares = max(2, (limits.cpu_request_millis or 0) * 1024 // 1000) if limits.cpu_request_millis else 1024
            if h.version == "v1":
                _write(d / "cpu.cfs_period_us", str(CFS_PERIOD_US))
                _write(d / "cpu.cfs_quota_us", str(quota) if quota else "-1")
                _write(d / "cpu.shares", str(shares))
            else:
                _write(d / "cpu.max", f"{quota if quota else 'max'} {CFS_PERIOD_US}")
                _write(d / "cpu.weight", str(1 + ((shares - 2) * 9999) // 262142))

    @staticmethod
    def procs_files(dirs: list[str]) -> list[str]:
        return [str(Path(d) / "cgroup.procs") for d in dirs]

    @staticmethod
    def oom_kills(dirs: list[str]) -> int:
        for d in map(Path, dirs):
            if (d / "memory.oom_control").exists():
                return _read_int_field(d / "memory.oom_control", "oom_kill")
            if (d / "memory.events").exists():
                return _read_int_field(d / "memory.events", "oom_kill")
        return 0

    @staticmethod
    def pids(dirs: list[str]) -> set[int]:
        found: set[int] = set()
        for d in dirs:
            try:
                found.update(int(x) for x in (Path(d) / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                continue
        return found

    @classmethod
    def kill_all(cls, dirs: list[str], sig: int = signal.SIGKILL) -> int:
        """Signal every process still in the container's cgroups (escaped its session or not)."""
        n = 0
        for pid in cls.pids(dirs):
            try:
                os.kill(pid, sig)
                n += 1
            except ProcessLookupError:
                continue
        return n

    @staticmethod
    def remove(dirs: list[str]) -> bool:
        """Remove container cgroups (and their pod directory once empty); False if one is still busy."""
        done = True
        for d in map(Path, dirs):
            for target in (d, d.parent):
                try:
                    target.rmdir()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    if target == d and exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                        done = False
                    if target == d:
                        break
        return done

    def remove_pod(self, pod_uid: str) -> bool:
        done = True
        for pod_dir in self.pod_dirs(pod_uid):
            if not pod_dir.is_dir():
                continue
            children = [str(c) for c in pod_dir.iterdir() if c.is_dir()]
            self.kill_all(children)
            done = self.remove(children) and done
            try:
                pod_dir.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                done = False
        return done

    def remove_base(self) -> None:
        """Remove this node's (empty) cgroup directories; kept while pods are left running in them."""
        for h in self.hierarchies.values():
            try:
                h.base.rmdir()
            except OSError:
                continue

    def stray_pods(self, known_uids: set[str]) -> list[str]:
        """Pod uids that have cgroups here but are not known to the agent (e.g. a lost checkpoint)."""
        stray: set[str] = set()
        for h in self.hierarchies.values():
            if not h.base.is_dir():
                continue
            for child in h.base.iterdir():
                if child.is_dir() and child.name.startswith("pod") and child.name[3:] not in known_uids:
                    stray.add(child.name[3:])
        return sorted(stray)
