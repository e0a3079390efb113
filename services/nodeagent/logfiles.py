"""Container log files, laid out like the kubelet's /var/log/pods:
`<state>/logs/<namespace>_<pod>_<uid>/<container>/<restartCount>.log`.

The container process appends to its file itself (O_APPEND), so it keeps logging while the agent
restarts. Rotation is therefore copy-and-truncate (logrotate's copytruncate): when the file grows
past `max_bytes` it is copied to `.1` (older copies shift to `.2` ...; `max_files` counts the live
file too) and truncated; output written between the copy and the truncation can be lost, which
is the price of not having a shim process per container. Only the current and the previous
instance of a container keep their logs (what `--previous` needs), like the kubelet.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


class LogFiles:
    def __init__(self, root: Path, max_bytes: int = 10 * 2**20, max_files: int = 5):
        self.root = root
        self.max_bytes = max_bytes
        self.max_files = max(max_files, 2)
        self.rotations: dict[Path, int] = {}  # per live file, so that followers know what moved

    def pod_dir(self, namespace: str, name: str, uid: str) -> Path:
        return self.root / f"{namespace}_{name}_{uid}"

    def path(self, namespace: str, name: str, uid: str, container: str, restart: int) -> Path:
        return self.pod_dir(namespace, name, uid) / container / f"{restart}.log"

    def rotated(self, path: Path) -> list[Path]:
        """The rotated copies of `path`, newest first."""
        return [p for i in range(1, self.max_files) if (p := path.with_name(f"{path.name}.{i}")).exists()]

    def files(self, path: Path) -> list[Path]:
        """Every file of one container instance's log, oldest first."""
        return [*reversed(self.rotated(path)), *([path] if path.exists() else [])]

    def rotate_if_needed(self, path: Path) -> bool:
        try:
            if path.stat().st_size <= self.max_bytes:
                return False
        except FileNotFoundError:
            return False
        oldest = path.with_name(f"{path.name}.{self.max_files - 1}")
        oldest.unlink(missing_ok=True)
        for i in range(self.max_files - 2, 0, -1):
            src = path.with_name(f"{path.name}.{i}")
            if src.exists():
                src.rename(path.with_name(f"{path.name}.{i + 1}"))
        first = path.with_name(f"{path.name}.1")
        shutil.copyfile(path, first)
        # What the container wrote during the copy goes along too; only what it writes between
        # this last look and the truncation is lost.
        with open(path, "rb") as src, open(first, "ab") as dst:
            src.seek(first.stat().st_size)
            shutil.copyfileobj(src, dst)
        os.truncate(path, 0)
        self.rotations[path] = self.rotations.get(path, 0) + 1
        return True

    def prune(self, namespace: str, name: str, uid: str, container: str, keep: set[int]) -> None:
        """Remove the logs of container instances other than `keep` (restart counts)."""
        folder = self.pod_dir(namespace, name, uid) / container
        if not folder.is_dir():
            return
        for f in folder.iterdir():
            restart = f.name.split(".", 1)[0]
            if restart.isdigit() and int(restart) not in keep:
                f.unlink(missing_ok=True)

    def remove_pod(self, namespace: str, name: str, uid: str) -> None:
        folder = self.pod_dir(namespace, name, uid)
        for path in [p for p in self.rotations if folder in p.parents]:
            del self.rotations[path]
        shutil.rmtree(folder, ignore_errors=True)

    def known_pod_dirs(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.is_dir()] if self.root.is_dir() else []


def read_tail(files: list[Path], lines: int | None) -> bytes:
    """The last `lines` lines of the concatenation of `files` (oldest first); everything if None."""
    if lines is not None and lines <= 0:
        return b""
    parts: list[bytes] = []
    count = 0
    for f in reversed(files):
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            continue
        parts.append(data)
        count += data.count(b"\n")
        if lines is not None and count > lines:
            break
    data = b"".join(reversed(parts))
    if lines is None:
        return data
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept)
