"""The agent's local checkpoint (SQLite through aiosqlite): the pods admitted here and their
containers — PID, process start time, restart count, last states — so that a restarted agent
adopts the processes still running instead of starting them again.

Tables: `meta(key, value)` (boot id, node), `pods(uid, namespace, name, data)`,
`containers(pod_uid, name, pid, start_ticks, restart_count, data)`; `data` is the record as JSON.
WAL journal with synchronous=NORMAL: a write survives the agent being killed (it is in the OS
page cache), which is what this checkpoint is for; surviving a power cut is not needed since no
process does.
"""
from __future__ import annotations

from pathlib import Path

import aiosqlite
import msgspec

from .podstate import ContainerRecord, PodCheckpoint, PodRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pods (uid TEXT PRIMARY KEY, namespace TEXT NOT NULL, name TEXT NOT NULL,
                                 data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS containers (pod_uid TEXT NOT NULL, name TEXT NOT NULL, pid INTEGER,
                                       start_ticks INTEGER, restart_count INTEGER NOT NULL,
                                       data TEXT NOT NULL, PRIMARY KEY (pod_uid, name));
"""

_pod_decoder = msgspec.json.Decoder(PodCheckpoint)
_container_decoder = msgspec.json.Decoder(ContainerRecord)
_encoder = msgspec.json.Encoder()


class Checkpoint:
    def __init__(self, path: Path):
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.executescript(_SCHEMA)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("checkpoint is not open")
        return self._db

    async def get_meta(self, key: str) -> str | None:
        async with self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def set_meta(self, key: str, value: str) -> None:
        await self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                              "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    async def load(self) -> list[PodRecord]:
        pods: dict[str, PodRecord] = {}
        async with self.db.execute("SELECT data FROM pods") as cur:
            async for (data,) in cur:
                cp = _pod_decoder.decode(data)
                pods[cp.uid] = PodRecord(cp=cp, containers={})
        async with self.db.execute("SELECT pod_uid, data FROM containers") as cur:
            async for uid, data in cur:
                if uid in pods:
                    rec = _container_decoder.decode(data)
                    pods[uid].containers[rec.name] = rec
        return list(pods.values())

    async def save_pod(self, cp: PodCheckpoint) -> None:
        await self.db.execute(
            "INSERT INTO pods (uid, namespace, name, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(uid) DO UPDATE SET data = excluded.data",
            (cp.uid, cp.namespace, cp.name, _encoder.encode(cp).decode()))

    async def save_container(self, uid: str, rec: ContainerRecord) -> None:
        await self.db.execute(
            "INSERT INTO containers (pod_uid, name, pid, start_ticks, restart_count, data) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(pod_uid, name) DO UPDATE SET pid = excluded.pid, start_ticks = excluded.start_ticks, "
            "restart_count = excluded.restart_count, data = excluded.data",
            (uid, rec.name, rec.pid, rec.start_ticks, rec.restart_count, _encoder.encode(rec).decode()))

    async def delete_pod(self, uid: str) -> None:
        await self.db.execute("DELETE FROM containers WHERE pod_uid = ?", (uid,))
        await self.db.execute("DELETE FROM pods WHERE uid = ?", (uid,))


class MemoryCheckpoint(Checkpoint):
    """No persistence (hollow agents: nothing runs, so nothing needs adopting)."""

    def __init__(self) -> None:
        super().__init__(Path("/dev/null"))
        self._meta: dict[str, str] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    async def set_meta(self, key: str, value: str) -> None:
        self._meta[key] = value

    async def load(self) -> list[PodRecord]:
        return []

    async def save_pod(self, cp: PodCheckpoint) -> None:
        return None

    async def save_container(self, uid: str, rec: ContainerRecord) -> None:
        return None

    async def delete_pod(self, uid: str) -> None:
        return None
