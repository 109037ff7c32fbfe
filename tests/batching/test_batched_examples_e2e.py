"""The batched examples, deployed with the real CLI: one text per request, each its own embedding."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np
import pytest

from conftest import TidalServer
from paths import EXAMPLES

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
         "A cheetah runs behind its prey.", "batching", "one more sentence", "and another", "the last one"]  # fmt: skip


def post_all(server: TidalServer, name: str, payloads: list[Any]) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
        return list(pool.map(lambda payload: server.client.post(f"/fn/{name}", json=payload), payloads))


@pytest.mark.parametrize(
    ("folder", "plain"), [("embed_batched", "embed"), ("embed_torch_batched", "embed_torch")]
)
def test_a_batched_example_answers_each_text_as_its_unbatched_twin(
    tidal_server: TidalServer, folder: str, plain: str
) -> None:
    for name in (folder, plain):
        result = tidal_server.deploy(EXAMPLES / name)
        assert result.returncode == 0, result.stderr
    responses = post_all(tidal_server, folder, [{"text": text} for text in TEXTS] + [{"txt": "typo"}])
    *good, bad = responses
    assert bad.status_code == 422 and "send" in bad.json()["error"]["message"]  # fails alone
    assert all(response.status_code == 200 for response in good), [r.text for r in good]
    assert max(int(response.headers["x-tidal-batch-size"]) for response in good) > 1
    batched = np.array([response.json()["embedding"] for response in good])
    alone = tidal_server.client.post(f"/fn/{plain}", json={"texts": TEXTS})
    assert alone.status_code == 200, alone.text
    cosine = (batched * np.array(alone.json()["embeddings"])).sum(axis=1)
    assert batched.shape == (len(TEXTS), 384) and cosine.min() > 0.99
