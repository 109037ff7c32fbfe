"""Whether a candidate's answer agrees with the primary's: pure functions of the two answers.

A comparison is written as a short spec (``tidal shadow --compare``):

- ``exact`` (the default): both answers are equal JSON values (``1`` equals ``1.0``, ``true`` does
  not equal ``1``, key order does not matter). Answers that are not JSON must be equal bytes.
- ``abs<=T``: the two JSON answers have the same shape (same keys, same list lengths, equal
  strings, booleans and nulls), and every number differs from the number at the same place by at
  most T: ``abs<=0.001`` accepts 0.5 vs 0.5009.
- ``rel<=T``: the same, relative to the larger magnitude of the two: ``|a - b| <= T * max(|a|, |b|)``;
  ``rel<=0.01`` accepts 200 vs 201.9 (1.9 <= 2.019) and refuses 0.001 vs 0.002.
- ``cosine>=T``: the answers are vectors and point the same way: cosine similarity of at least T.
  A vector is a list of numbers; an answer may be one vector, a list of vectors (compared pairwise,
  the smallest similarity decides), or a JSON object with exactly one field holding a vector or a
  list of vectors (e.g. ``{"embedding": [...], "model": "int8"}``: its other fields are ignored).

Every comparison gives a ``Verdict``: agree or not, a short diff saying where they differ, and a
score (the largest difference for abs/rel, the smallest cosine for cosine). ``abs:0.001``,
``rel:0.01`` and ``cosine:0.99`` are the same specs without characters a shell would take.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec

DETAIL_CHARS = 200  # a diff is an example for a human, not a dump of the answer
VALUE_CHARS = 40
SPEC_FORMS = "exact, abs<=0.001, rel<=0.01 or cosine>=0.99"
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
# ``abs:0.001`` is accepted for ``abs<=0.001`` (and so on): a shell reads an unquoted < or > as a redirection.
_SPEC = re.compile(
    rf"^\s*(?:(exact)|(abs|rel)\s*(?:<=|:)\s*{_NUMBER}|(cosine)\s*(?:>=|:)\s*(-?{_NUMBER[1:-1]}))\s*$"
)


class Method(StrEnum):
    EXACT = "exact"
    ABS = "abs"
    REL = "rel"
    COSINE = "cosine"


@dataclass(frozen=True, slots=True)
class Verdict:
    agree: bool
    detail: str = ""  # where and how the answers differ; "" when they agree
    score: float | None = None  # abs/rel: the largest difference; cosine: the smallest similarity


@dataclass(frozen=True, slots=True)
class Comparator:
    method: Method
    threshold: float = 0.0

    def __str__(self) -> str:
        if self.method is Method.EXACT:
            return "exact"
        operator = ">=" if self.method is Method.COSINE else "<="
        return f"{self.method.value}{operator}{self.threshold:g}"

    def compare(self, primary: bytes, candidate: bytes) -> Verdict:
        """The verdict on two answer bodies (JSON, or raw bytes for ``exact``)."""
        try:
            left, right = msgspec.json.decode(primary), msgspec.json.decode(candidate)
        except msgspec.DecodeError:
            if self.method is Method.EXACT:
                same = primary == candidate
                return Verdict(
                    same, "" if same else f"the bytes differ ({len(primary)} vs {len(candidate)} bytes)"
                )
            return Verdict(False, f"an answer is not JSON: {self} compares JSON answers")
        if self.method is Method.COSINE:
            return compare_vectors(left, right, self.threshold)
        return compare_json(left, right, self.method, self.threshold)


def parse_comparator(text: str) -> Comparator:
    """``"cosine>=0.99"`` -> Comparator(COSINE, 0.99); ValueError with the accepted forms otherwise.

    >>> str(parse_comparator(" rel <= 1e-2 "))
    'rel<=0.01'
    """
    match = _SPEC.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a comparison: use {SPEC_FORMS}")
    if match.group(1):
        return Comparator(Method.EXACT)
    if match.group(2):
        return Comparator(Method(match.group(2)), float(match.group(3)))
    threshold = float(match.group(5))
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"{text!r}: a cosine similarity lies between -1 and 1")
    return Comparator(Method.COSINE, threshold)


def compare_json(primary: Any, candidate: Any, method: Method, threshold: float = 0.0) -> Verdict:
    """Exact or tolerant equality of two decoded JSON values (see the module's docstring)."""
    numbers: list[tuple[str, Any, Any]] = []
    shape = _first_shape_difference(primary, candidate, "$", numbers)
    if shape is not None:
        return Verdict(False, _cap(shape))
    worst: tuple[float, str, Any, Any] | None = None  # (difference, path, a, b)
    for path, a, b in numbers:
        if method is Method.EXACT:
            if a != b:
                return Verdict(False, _cap(f"{path}: {_short(a)} != {_short(b)}"))
            continue
        difference = abs(a - b)
        if method is Method.REL:
            scale = max(abs(a), abs(b))
            difference = difference / scale if scale else 0.0
        if worst is None or difference > worst[0]:
            worst = (difference, path, a, b)
    if method is Method.EXACT or worst is None:
        return Verdict(True, score=0.0 if method is not Method.EXACT else None)
    difference, path, a, b = worst
    if difference <= threshold:
        return Verdict(True, score=difference)
    detail = f"{path}: {_short(a)} vs {_short(b)} ({method.value} {difference:.3g} > {threshold:g})"
    return Verdict(False, _cap(detail), difference)


def compare_vectors(primary: Any, candidate: Any, threshold: float) -> Verdict:
    """Cosine similarity of two answers holding vectors (see the module's docstring)."""
    left, right = vectors_in(primary), vectors_in(candidate)
    if isinstance(left, str) or isinstance(right, str):
        return Verdict(False, _cap(left if isinstance(left, str) else str(right)))
    (left_path, left_vectors), (right_path, right_vectors) = left, right
    if left_path != right_path:
        return Verdict(False, f"the vectors are at {left_path} vs {right_path}")
    if len(left_vectors) != len(right_vectors):
        return Verdict(False, f"{left_path}: {len(left_vectors)} vectors vs {len(right_vectors)}")
    worst, worst_at = math.inf, ""
    for index, (a, b) in enumerate(zip(left_vectors, right_vectors, strict=True)):
        where = left_path if len(left_vectors) == 1 else f"{left_path}[{index}]"
        if len(a) != len(b):
            return Verdict(False, f"{where}: {len(a)} numbers vs {len(b)}")
        similarity = cosine(a, b)
        if similarity < worst:
            worst, worst_at = similarity, where
    if worst >= threshold:
        return Verdict(True, score=worst)
    return Verdict(False, f"{worst_at}: cosine {worst:.4f} < {threshold:g}", worst)


def cosine(a: list[float], b: list[float]) -> float:
    """cos(a, b) = a.b / (|a| |b|); two zero vectors are alike (1.0), a zero and another not (0.0).

    >>> cosine([1.0, 0.0], [1.0, 1.0])  # 45 degrees
    0.7071067811865475
    """
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    if norms == 0.0:
        return 1.0 if not any(a) and not any(b) else 0.0
    return max(-1.0, min(1.0, dot / norms))


def vectors_in(answer: Any) -> tuple[str, list[list[float]]] | str:
    """Where an answer holds its vectors and the vectors, or why it holds none (a message)."""
    found = _vectors(answer)
    if found is not None:
        return "$", found
    if isinstance(answer, dict):
        fields = [(key, vectors) for key, value in answer.items() if (vectors := _vectors(value)) is not None]
        if len(fields) == 1:
            return f"$.{fields[0][0]}", fields[0][1]
        if len(fields) > 1:
            names = ", ".join(key for key, _ in fields)
            return f"the answer has several vector fields ({names}): cosine compares one"
    return (
        f"not a vector: {_short(answer)} (cosine compares a list of numbers, a list of such lists, "
        "or an object with one such field)"
    )


def _vectors(value: Any) -> list[list[float]] | None:
    if isinstance(value, list) and value:
        if all(_is_number(item) for item in value):
            return [value]
        if all(isinstance(item, list) and item and all(_is_number(x) for x in item) for item in value):
            return value
    return None


def _first_shape_difference(a: Any, b: Any, path: str, numbers: list[tuple[str, Any, Any]]) -> str | None:
    """Where ``a`` and ``b`` first differ other than in numbers (a message), or None; the number
    pairs found at equal places are appended to ``numbers``."""
    if _is_number(a) and _is_number(b):
        numbers.append((path, a, b))
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
            return f"{path}: keys differ (only in primary: {only_a}, only in candidate: {only_b})"
        for key in a:
            found = _first_shape_difference(a[key], b[key], f"{path}.{key}", numbers)
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items vs {len(b)}"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_shape_difference(x, y, f"{path}[{index}]", numbers)
            if found is not None:
                return found
        return None
    if type(a) is not type(b) or a != b:  # a string, boolean or null changed, or the type did
        return f"{path}: {_short(a)} != {_short(b)}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 3] + "..."


def _cap(detail: str) -> str:
    return detail if len(detail) <= DETAIL_CHARS else detail[: DETAIL_CHARS - 3] + "..."
