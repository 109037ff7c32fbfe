"""A small HTTP client of the gateway, used by the CLI (and handy in scripts and tests)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tidal.deploy.bundle import bundle_path

DEFAULT_URL = "http://127.0.0.1:8080"


class TidalError(Exception):
    """The gateway refused a request, or could not be reached; the message is for the user."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def resolve_key(key: str | None, state_dir: Path) -> str | None:
    """An explicit key wins; otherwise the admin key `tidal up` wrote into the state dir."""
    if key:
        return key
    path = state_dir / "admin.key"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class Client:
    def __init__(self, url: str = DEFAULT_URL, key: str | None = None, timeout: float = 300.0) -> None:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise TidalError(f"cannot reach tidal at {self.url}: is `tidal up` running?") from None
        except httpx.TimeoutException:
            raise TidalError(f"tidal at {self.url} did not answer in time") from None
        if response.status_code >= 400:
            raise TidalError(_error_message(response), response.status_code)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def deploy(
        self,
        path: Path,
        options: dict[str, Any],
        overrides: dict[str, Any],
        progress: Callable[[str], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Deploy ``path``; with ``progress``, hear the gateway's progress lines (installing
        requirements) as they come.
        """
        params = {key: value for key, value in options.items() if value is not None}
        params["source"] = path.resolve().name
        if overrides:
            params["overrides"] = json.dumps(overrides)
        try:
            bundle = bundle_path(path)
        except ValueError as exc:
            raise TidalError(str(exc)) from None
        headers = {"content-type": "application/zip"}
        if progress is None:
            answer = self.json("POST", "/v1/functions", params=params, content=bundle, headers=headers)
            deployed: list[dict[str, Any]] = answer["deployed"]
            return deployed
        headers["accept"] = "application/x-ndjson"
        try:
            with self._http.stream(
                "POST", "/v1/functions", params=params, content=bundle, headers=headers
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise TidalError(_error_message(response), response.status_code)
                return _deploy_outcome(response.iter_lines(), progress)
        except httpx.ConnectError:
            raise TidalError(f"cannot reach tidal at {self.url}: is `tidal up` running?") from None
        except httpx.TimeoutException:
            raise TidalError(f"tidal at {self.url} did not answer in time") from None


def _deploy_outcome(lines: Iterator[str], progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Read a streamed deploy: progress lines to ``progress``, then its result or its error."""
    for line in lines:
        if not line.strip():
            continue
        event = json.loads(line)
        if event["event"] == "progress":
            progress(event["line"])
        elif event["event"] == "error":
            error = event["error"]
            raise TidalError(f"{error['type']}: {error['message']}", event["status"])
        else:
            deployed: list[dict[str, Any]] = event["deployed"]
            return deployed
    raise TidalError("the gateway closed the deploy's stream before it finished")


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        message = f"{error['type']}: {error['message']}"
        if error.get("activation"):
            message += f" (activation {error['activation']})"
        return message
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"
