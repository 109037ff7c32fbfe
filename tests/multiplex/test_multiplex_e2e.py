"""Model multiplexing through a real gateway: examples/digits_models (four real scikit-learn
classifiers, at most two loaded per instance, two instances). Each model's requests stay on the
instance that loaded it; the LRU keeps two; a request without a model, or naming an unknown one,
gets a 422."""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any

from conftest import TidalServer, wait_for
from paths import EXAMPLES

sys.path.insert(0, str(EXAMPLES / "digits"))
from heldout import heldout_samples

X_TEST, Y_TEST = heldout_samples()


def classify(server: TidalServer, model: str, index: int) -> tuple[dict[str, Any], str]:
    """The answer for held-out image ``index`` from ``model``, and the instance that served it."""
    answer = server.client.post(
        "/fn/digits_models", json={"pixels": X_TEST[index].tolist()}, headers={"x-tidal-model": model}
    )
    assert answer.status_code == 200, answer.text
    record = server.client.get(f"/v1/activations/{answer.headers['x-tidal-activation']}").json()
    assert record["model"] == model  # the activation names the model it served
    return answer.json(), record["instance"]


def test_each_model_stays_where_it_was_loaded_and_the_lru_keeps_two(tidal_server: TidalServer) -> None:
    deployed = tidal_server.deploy(EXAMPLES / "digits_models")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    def two_ready() -> bool:
        return tidal_server.client.get("/v1/functions/digits_models").json()["instances"]["ready"] == 2

    wait_for(two_ready, 60, "min_instances=2 ready")
    served_by: dict[str, set[str]] = defaultdict(set)
    right = 0
    for round_ in range(3):
        for model in ("svc", "logreg"):
            for index in range(round_ * 4, round_ * 4 + 4):
                answer, instance = classify(tidal_server, model, index)
                assert answer["model"] == model
                right += answer["digit"] == Y_TEST[index]
                served_by[model].add(instance)
    assert right >= 22, f"{right} of 24 right: the real models answered"
    # Sequential calls: each model was loaded once, on one instance, and stayed there.
    assert all(len(instances) == 1 for instances in served_by.values()), served_by

    for model in ("tree", "knn", "svc"):  # three more loads: the LRU of two drops the oldest
        classify(tidal_server, model, 0)
    info = tidal_server.client.get("/v1/functions/digits_models").json()
    held = [item["models"] for item in info["instances"]["list"]]
    assert all(len(models) <= 2 for models in held), held
    assert sum(len(models) for models in held) >= 3, held
    status = tidal_server.cli("status", "digits_models")
    assert "models loaded (least recently used first):" in status.stdout, status.stdout

    missing = tidal_server.client.post("/fn/digits_models", json={"pixels": X_TEST[0].tolist()})
    assert missing.status_code == 422
    assert "name one with the x-tidal-model header" in missing.json()["error"]["message"]
    unknown = tidal_server.client.post(
        "/fn/digits_models", json={"pixels": X_TEST[0].tolist()}, headers={"x-tidal-model": "gpt"}
    )
    assert unknown.status_code == 422 and "unknown model 'gpt'" in unknown.json()["error"]["message"]


def test_max_models_needs_a_class_that_loads_models(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    source = """
import tidal

@tidal.function(name="mx_plain", max_models=2)
def plain(payload, context):
    return 1
"""
    assert tidal_server.deploy(write_module(source)).returncode == 0
    answer = tidal_server.client.post("/fn/mx_plain", json={}, headers={"x-tidal-model": "a"})
    assert answer.status_code >= 500 and "load_model" in answer.json()["error"]["message"], answer.text
