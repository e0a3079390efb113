"""Socket checks shared by the network tests."""
from __future__ import annotations

import socket


def refused(ip: str, port: int) -> bool:
    """Nothing listens on ip:port any more (a connection that is accepted is closed at once)."""
    try:
        socket.create_connection((ip, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # accepted into the backlog of a listener closing just then: ask again
        return False
    return False
