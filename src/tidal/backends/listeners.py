"""An instance's listening socket: a Unix socket (local backend) or TCP (instances on Ray nodes).

The socket is bound and listening before the instance exists, so the gateway may connect at once
(the kernel queues the connection until the instance accepts it).
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path


def listen(socket_path: Path, tcp_host: str | None) -> socket.socket:
    """The instance's listening socket: a Unix socket at ``socket_path``, or TCP on ``tcp_host``."""
    if tcp_host is not None:
        listener = socket.socket(socket.AF_INET6 if ":" in tcp_host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((tcp_host, 0))
            listener.listen(8)
        except BaseException:
            listener.close()
            raise
        return listener
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        listener.bind(str(socket_path))
        listener.listen(8)
    except BaseException:
        listener.close()
        raise
    return listener


def address_of(listener: socket.socket, socket_path: Path) -> str:
    if listener.family == socket.AF_UNIX:
        return f"unix:{socket_path}"
    host, port = listener.getsockname()[:2]
    return f"tcp:{host}:{port}"
