"""A TCP relay between one client and the nats-server that a test can cut or hold (nothing of Flotilla
is mocked: it is the network that goes away).

- `cut_off()`: every connection closed, new ones refused (the client sees the bus gone and
  reconnects once `restore()` is called).
- `hold()`: the connections stay open but what the client sends is kept back (the server->client
  direction still flows), until `release()` delivers all of it at once: a partition that heals, or a
  socket buffer flushed late. Requests the client made meanwhile then reach the server late.
"""
from __future__ import annotations

import asyncio


class Relay:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.cut = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.accepted = 0
        self.held = 0
        self._upstream_open = asyncio.Event()
        self._upstream_open.set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"nats://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self.writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            # Either side closing (or the relay being cut) ends both directions.
            try:
                while data := await src.read(65536):
                    if upstream and not self._upstream_open.is_set():
                        self.held += 1  # one chunk waits here; what follows waits in the socket
                        await self._upstream_open.wait()
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass  # the other side went away: closing below is all there is to do
            finally:
                dst.close()

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(pump(reader, up_writer, True))
                tg.create_task(pump(up_reader, writer, False))
        finally:
            self.writers -= {writer, up_writer}

    def cut_off(self) -> None:
        self.cut = True
        for w in list(self.writers):
            w.close()

    def restore(self) -> None:
        self.cut = False

    def hold(self) -> None:
        self.held = 0
        self._upstream_open.clear()

    def release(self) -> None:
        self._upstream_open.set()

    async def stop(self) -> None:
        self.release()
        self.cut_off()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def relay_to(nats_url: str) -> tuple[Relay, str]:
    """A started relay to the server at `nats_url` and the URL to give the client instead."""
    host, port = nats_url.removeprefix("nats://").rsplit(":", 1)
    relay = Relay(host, int(port))
    return relay, await relay.start()
