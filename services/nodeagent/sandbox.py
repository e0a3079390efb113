"""The per-pod sandbox directory and its volumes.

`<state>/pods/<uid>/` is the pod's sandbox and the working directory of its containers (unless a
container sets `workingDir`). Volumes live in `<sandbox>/volumes/<name>/`:

- emptyDir: a directory there, shared by every container of the pod, removed with the pod
  (`medium: Memory` and `sizeLimit` are recorded, not acted on);
- hostPath: the host path itself (created for DirectoryOrCreate / empty type);
- configMap, secret, persistentVolumeClaim: not supported (the container waits with
  CreateContainerConfigError).

A `volumeMount` cannot really be mounted at its `mountPath` without a mount namespace (the
process runtime uses none: a container sees the host's file system). So each mount is exposed
(1) as a symlink `<sandbox>/<mountPath without the leading />` -> the volume (so relative paths
from the working directory work: mountPath /data is ./data), and (2) as the environment variable
`FLOTILLA_VOLUME_<NAME>` with the volume's absolute path (usable in `$(...)` expansion of command
and args). A container's `subPath` points its symlink at that sub-directory. Since the containers
of a pod share the sandbox, one mountPath must name the same volume in all of them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from schemas import Pod
from schemas.pod import Container

from .environment import ConfigError


class Sandboxes:
    def __init__(self, root: Path):
        self.root = root

    def path(self, uid: str) -> Path:
        return self.root / uid

    def volumes_dir(self, uid: str) -> Path:
        return self.path(uid) / "volumes"

    def create(self, pod: Pod) -> Path:
        uid = pod.metadata.uid or ""
        sandbox = self.path(uid)
        sandbox.mkdir(parents=True, exist_ok=True)
        for v in pod.spec.volumes:
            if v.empty_dir is not None:
                (self.volumes_dir(uid) / v.name).mkdir(parents=True, exist_ok=True)
        return sandbox

    def volume_path(self, pod: Pod, name: str) -> Path:
        for v in pod.spec.volumes:
            if v.name != name:
                continue
            if v.empty_dir is not None:
                return self.volumes_dir(pod.metadata.uid or "") / v.name
            if v.host_path is not None:
                path = Path(v.host_path.path)
                kind = v.host_path.type or ""
                if kind in ("", "DirectoryOrCreate"):
                    path.mkdir(parents=True, exist_ok=True)
                elif kind == "Directory" and not path.is_dir():
                    raise ConfigError(f'hostPath volume "{name}": {path} is not a directory')
                elif kind in ("File", "Socket", "CharDevice", "BlockDevice") and not path.exists():
                    raise ConfigError(f'hostPath volume "{name}": {path} does not exist')
                return path
            kind = next(k for k in ("config_map", "secret", "persistent_volume_claim") if getattr(v, k) is not None)
            raise ConfigError(f'volume "{name}": {kind.replace("_", " ")} volumes are not supported by Flotilla')
        raise ConfigError(f'volume "{name}" is not defined in the pod')

    def mount(self, pod: Pod, container: Container) -> dict[str, str]:
        """Expose the container's volume mounts in the sandbox; returns {volume name: path}."""
        sandbox = self.path(pod.metadata.uid or "")
        exposed: dict[str, str] = {}
        for m in container.volume_mounts:
            target = self.volume_path(pod, m.name)
            if m.sub_path:
                if m.sub_path.startswith("/") or ".." in Path(m.sub_path).parts:
                    raise ConfigError(f'volumeMount "{m.name}": subPath must be a relative path without ".."')
                target = target / m.sub_path
                target.mkdir(parents=True, exist_ok=True)
            exposed.setdefault(m.name, str(target))
            rel = Path(m.mount_path.lstrip("/"))
            if not rel.parts or ".." in rel.parts:
                raise ConfigError(f'volumeMount "{m.name}": mountPath {m.mount_path!r} '
                                  "cannot be exposed in the sandbox")
            link = sandbox / rel
            if link.is_symlink():
                if Path(link.readlink()) != target:
                    raise ConfigError(f'mountPath {m.mount_path} already shows another volume in this pod '
                                      f"({link.readlink()}); containers of a pod share one sandbox, so a mountPath "
                                      "must name the same volume in all of them")
                continue
            if link.exists():
                raise ConfigError(f"mountPath {m.mount_path} collides with {link} in the pod sandbox")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target)
        return exposed

    def working_dir(self, pod: Pod, container: Container) -> Path:
        sandbox = self.path(pod.metadata.uid or "")
        wd = container.working_dir
        if not wd:
            return sandbox
        rel = sandbox / wd.lstrip("/")
        if rel.is_dir():  # inside the sandbox (e.g. a volume's mountPath)
            return rel
        if Path(wd).is_dir():
            return Path(wd)
        raise ConfigError(f"workingDir {wd} exists neither in the pod sandbox nor on the host")

    def remove(self, uid: str) -> None:
        shutil.rmtree(self.path(uid), ignore_errors=True)

    def known(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [p.name for p in self.root.iterdir() if p.is_dir()]
