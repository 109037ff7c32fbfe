"""What the keep-alive end-to-end tests share: a function with a policy, and how to look at it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import TidalServer

PERIODIC = """
import os

import tidal

@tidal.function(name="{name}", keep_alive="{policy}")
def tick(payload):
    return {{"pid": os.getpid()}}
"""


def deploy(server: TidalServer, write_module: Callable[..., Any], name: str, policy: str) -> None:
    result = server.deploy(write_module(PERIODIC.format(name=name, policy=policy), f"{name}.py"))
    assert result.returncode == 0, result.stderr


def function(server: TidalServer, name: str) -> dict[str, Any]:
    info: dict[str, Any] = server.client.get(f"/v1/functions/{name}").json()
    return info


def unloaded(server: TidalServer, name: str) -> bool:
    """No instance and no template of the function (as GET /v1/functions/NAME and /v1/templates show)."""
    info = function(server, name)
    templates = server.client.get("/v1/templates").json()["templates"]
    held = [t for t in templates if any(revision.startswith(f"{name}-") for revision in t["revisions"])]
    return info["instances"]["ready"] == 0 and info["template"] is None and not held
