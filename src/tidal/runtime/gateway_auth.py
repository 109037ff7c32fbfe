"""Who may talk to an instance: on TCP, only a gateway that knows the instance's connect token.

A Unix socket lives in a directory only the gateway can reach, so whoever connects is the gateway.
A TCP port on a Ray node is reachable by every process there, other functions' instances
included: without a check, one of them could connect first and take the instance over, or
(several gateways on one Ray cluster) call another tenant's function with no key at all. So each
TCP instance gets a random token from its backend (``InstanceConfig.connect_token``, handed to
the gateway in ``InstanceHandle.extra[CONNECT_TOKEN]``), and a connection counts only once its
first bytes are that token. Connections are checked concurrently: one that sends nothing cannot
hold the real gateway up.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
from collections.abc import AsyncGenerator

TOKEN_TIMEOUT_S = 5.0  # a connection must show its token this soon, or it is closed


async def gateway_connections(listener: socket.socket, token: str) -> AsyncGenerator[socket.socket, None]:
    """The accepted connections of ``listener`` that come from a gateway, as they are proven.

    Without a token (a Unix socket) every connection counts. The caller stops accepting by
    closing the generator (``aclose``); connections still being checked are closed with it.
    """
    loop = asyncio.get_running_loop()
    if not token:
        while True:
            connection, _ = await loop.sock_accept(listener)
            yield connection
    expected = token.encode()
    proven: asyncio.Queue[socket.socket] = asyncio.Queue()
    checking: dict[asyncio.Task[None], socket.socket] = {}

    async def check(connection: socket.socket) -> None:
        try:
            shown = await asyncio.wait_for(_read_exactly(loop, connection, len(expected)), TOKEN_TIMEOUT_S)
        except (TimeoutError, OSError):
            shown = b""
        if hmac.compare_digest(shown, expected):
            proven.put_nowait(connection)
        else:
            connection.close()

    async def accept() -> None:
        while True:
            connection, _ = await loop.sock_accept(listener)
            connection.setblocking(False)
            task = loop.create_task(check(connection))
            checking[task] = connection
            task.add_done_callback(lambda done: checking.pop(done, None))

    acceptor = loop.create_task(accept())
    try:
        while True:
            yield await proven.get()
    finally:
        acceptor.cancel()
        for task, connection in list(checking.items()):
            task.cancel()
            connection.close()


async def _read_exactly(loop: asyncio.AbstractEventLoop, connection: socket.socket, size: int) -> bytes:
    """``size`` bytes, never more: what follows the token belongs to the framed protocol."""
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(connection, size - len(data))
        if not chunk:
            break
        data += chunk
    return data
