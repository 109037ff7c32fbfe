"""A TCP instance (as on a Ray node) serves only a connection that shows its connect token.

Any process of the node can reach the port, another tenant's function included: it must neither
take over a fresh instance by connecting first nor call a running one (several gateways' mode).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from backend_helpers import call, connect, make_launch, write

from tidal.backends.base import CONNECT_TOKEN
from tidal.backends.local import LocalBackend
from tidal.runtime.gateway_auth import TOKEN_TIMEOUT_S
from tidal.runtime.protocol import Invoke, encode

ECHO = """
def echo(payload):
    return payload
"""


def intruder(address: str, first_bytes: bytes) -> bytes:
    """Connect as a stranger, send ``first_bytes`` and a call; what the instance answered."""
    host, _, port = address.removeprefix("tcp:").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=TOKEN_TIMEOUT_S + 5) as stranger:
        stranger.sendall(first_bytes + encode(Invoke(1, "x", 0.0, b'{"stolen": true}')))
        received = b""
        try:
            while chunk := stranger.recv(65536):
                received += chunk
        except ConnectionResetError:  # closed with the stranger's call unread: a reset, not a FIN
            pass
        return received


async def test_strangers_are_closed_and_the_gateway_is_served(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "state", listen_host="127.0.0.1")
    backend.several_gateways = True  # the port stays open for further gateways: the worst case
    try:
        launch = make_launch("echo", "echo", write(tmp_path, "echo", ECHO))
        (handle,) = await backend.start(launch)
        token = handle.extra[CONNECT_TOKEN]
        assert handle.address.startswith("tcp:127.0.0.1:") and len(token) == 32

        # Before the gateway connects: a stranger with no token, then one with a wrong one.
        assert await asyncio.to_thread(intruder, handle.address, b"") == b""
        assert await asyncio.to_thread(intruder, handle.address, b"0" * len(token)) == b""

        client, _ready = await connect(handle)
        assert await call(client, {"a": 1}) == {"a": 1}

        # While the gateway is connected: still nothing for a stranger, and the gateway is served on.
        assert await asyncio.to_thread(intruder, handle.address, token[:-1].encode() + b"x") == b""
        assert await call(client, {"a": 2}) == {"a": 2}
        client.close()
    finally:
        await backend.close()
