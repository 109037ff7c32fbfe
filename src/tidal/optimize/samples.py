"""Sample inputs: the texts agreement and latency are measured on, and static calibration data.

A samples file is JSON lines, each a string or an object with a ``"text"`` field. Without
``--samples``, tidal uses the built-in sentences below: varied in length and topic, short
phrases included, because short inputs are where int8 drifts most.
"""

from __future__ import annotations

import json
from pathlib import Path

MAX_SAMPLES = 2_000

DEFAULT_SAMPLES = (
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A cheetah runs behind its prey.",
    "hello world",
    "How do I reset my password?",
    "The invoice for March was paid twice; please refund the second payment.",
    "Serverless platforms scale instances to zero when traffic stops.",
    "Paris is the capital and most populous city of France.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "I loved this movie, the acting was wonderful and the ending surprised me.",
    "Terrible service, the food was cold and we waited an hour.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Add two eggs, whisk them with sugar, then fold in the flour.",
    "The train to Berlin leaves from platform 4 at 9:15.",
    "quantum computing",
    "What is the weather like tomorrow in Tokyo?",
    "The patient reported chest pain and shortness of breath.",
    "Our quarterly revenue grew 12% year over year, driven by cloud services.",
    "A dog is playing fetch with a ball in the park.",
    "Python lists are mutable, tuples are not.",
    "The museum opens at ten and closes at six on weekdays.",
    "He scored the winning goal in the final minute of the match.",
    "Please send the signed contract back by Friday.",
    "Large language models predict the next token from the previous ones.",
    "The river flooded the village after three days of heavy rain.",
    "Can you recommend a good book about the history of mathematics?",
    "The new phone has a larger battery and a brighter screen.",
    "She planted tomatoes, basil and peppers in her garden this spring.",
    "An error occurred while connecting to the database server.",
    "The orchestra played Beethoven's ninth symphony to a full hall.",
    "Electric cars need fewer repairs than cars with combustion engines.",
)


class SampleError(ValueError):
    """A samples file tidal cannot use; the message names the file and the line."""


def parse_sample_lines(lines: list[str], origin: str) -> list[str]:
    """The texts of JSON lines (blank lines skipped); a bad line is a SampleError naming it."""
    texts: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SampleError(f"{origin}, line {number}: not JSON ({exc.msg})") from None
        if isinstance(value, dict):
            value = value.get("text")
        if not isinstance(value, str) or not value:
            raise SampleError(f'{origin}, line {number}: want a string or {{"text": "..."}}')
        texts.append(value)
    if not texts:
        raise SampleError(f"{origin} holds no samples")
    if len(texts) > MAX_SAMPLES:
        raise SampleError(f"{origin} holds {len(texts)} samples; at most {MAX_SAMPLES}")
    return texts


def read_samples(path: Path | None, flag: str) -> list[str]:
    """The texts of ``path``, or the built-in samples when it is None."""
    if path is None:
        return list(DEFAULT_SAMPLES)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SampleError(f"{flag} {path}: cannot read it ({reason})") from None
    return parse_sample_lines(lines, f"{flag} {path}")
