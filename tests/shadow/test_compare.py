"""Comparators: the spec grammar and what agrees under each (pure, no I/O)."""

from __future__ import annotations

import json
import math

import pytest

from tidal.shadow.compare import Comparator, Method, cosine, parse_comparator


def body(value: object) -> bytes:
    return json.dumps(value).encode()


@pytest.mark.parametrize(
    ("spec", "method", "threshold", "canonical"),
    [
        ("exact", Method.EXACT, 0.0, "exact"),
        ("abs<=0.001", Method.ABS, 0.001, "abs<=0.001"),
        (" rel <= 1e-2 ", Method.REL, 0.01, "rel<=0.01"),
        ("cosine>=0.99", Method.COSINE, 0.99, "cosine>=0.99"),
        ("cosine>=-0.5", Method.COSINE, -0.5, "cosine>=-0.5"),
        ("cosine:0.9", Method.COSINE, 0.9, "cosine>=0.9"),  # the shell-friendly form
        ("abs:2", Method.ABS, 2.0, "abs<=2"),
    ],
)
def test_specs_parse_to_their_canonical_form(
    spec: str, method: Method, threshold: float, canonical: str
) -> None:
    comparator = parse_comparator(spec)
    assert (comparator.method, comparator.threshold, str(comparator)) == (method, threshold, canonical)


@pytest.mark.parametrize(
    "spec", ["", "exactly", "abs>=0.1", "abs<=-1", "rel<=x", "cosine<=0.9", "l2<=1", "abs<="]
)
def test_bad_specs_say_which_forms_are_accepted(spec: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_comparator(spec)
    assert "exact, abs<=0.001, rel<=0.01 or cosine>=0.99" in str(refused.value)


def test_a_cosine_outside_minus_one_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="between -1 and 1"):
        parse_comparator("cosine>=1.5")


EXACT = Comparator(Method.EXACT)


def test_exact_is_json_equality_not_byte_equality() -> None:
    assert EXACT.compare(b'{"a": 1, "b": [1, 2]}', b'{"b":[1,2],"a":1.0}').agree
    differs = EXACT.compare(body({"a": 1, "b": [1, 2]}), body({"a": 1, "b": [1, 3]}))
    assert not differs.agree and differs.detail == "$.b[1]: 2 != 3"


def test_exact_tells_booleans_from_numbers_and_names_missing_keys() -> None:
    assert EXACT.compare(b"true", b"1").detail == "$: true != 1"
    keys = EXACT.compare(body({"a": 1}), body({"b": 1}))
    assert keys.detail == "$: keys differ (only in primary: ['a'], only in candidate: ['b'])"
    assert EXACT.compare(body([1, 2]), body([1])).detail == "$: 2 items vs 1"


def test_exact_compares_answers_that_are_not_json_byte_for_byte() -> None:
    assert EXACT.compare(b"\x00raw", b"\x00raw").agree
    assert not EXACT.compare(b"\x00raw", b"\x00rax").agree


def test_abs_accepts_small_differences_at_the_same_places() -> None:
    tolerant = parse_comparator("abs<=0.001")
    close = tolerant.compare(
        body({"p": [0.5, 0.25], "label": "cat"}), body({"p": [0.5009, 0.25], "label": "cat"})
    )
    assert close.agree and close.score == pytest.approx(0.0009)
    far = tolerant.compare(body({"p": [0.5, 0.25]}), body({"p": [0.5, 0.26]}))
    assert not far.agree and far.detail.startswith("$.p[1]: 0.25 vs 0.26 (abs 0.01 > 0.001)")
    label = tolerant.compare(body({"p": 0.5, "label": "cat"}), body({"p": 0.5, "label": "dog"}))
    assert not label.agree and label.detail == '$.label: "cat" != "dog"', "strings must still be equal"


def test_rel_scales_by_the_larger_magnitude() -> None:
    relative = parse_comparator("rel<=0.01")
    assert relative.compare(b"200", b"201.9").agree  # 1.9 <= 0.01 * 201.9
    assert not relative.compare(b"0.001", b"0.002").agree  # 0.001 > 0.01 * 0.002
    assert relative.compare(b"[0, 0]", b"[0, 0.0]").agree


def test_numeric_tolerance_needs_json() -> None:
    verdict = parse_comparator("abs<=1").compare(b"\x00raw", b"\x00raw")
    assert not verdict.agree and "not JSON" in verdict.detail


UNIT = [1.0, 0.0, 0.0, 0.0]


def test_cosine_passes_a_slightly_perturbed_vector_and_fails_a_different_one() -> None:
    comparator = parse_comparator("cosine>=0.99")
    vector = [0.1 * (i % 7) - 0.3 for i in range(384)]
    perturbed = [x + 0.001 * ((i % 3) - 1) for i, x in enumerate(vector)]
    different = list(reversed(vector))
    near = comparator.compare(body(vector), body(perturbed))
    assert near.agree and near.score is not None and 0.99 <= near.score < 1.0
    far = comparator.compare(body(vector), body(different))
    assert not far.agree and far.detail.startswith("$: cosine ") and far.detail.endswith("< 0.99")


def test_cosine_finds_the_one_vector_field_and_compares_lists_of_vectors_pairwise() -> None:
    comparator = parse_comparator("cosine>=0.99")
    assert comparator.compare(
        body({"embedding": UNIT, "model": "fp32"}), body({"embedding": UNIT, "model": "int8"})
    ).agree, "fields other than the vector are not compared"
    pairwise = comparator.compare(body([UNIT, UNIT]), body([UNIT, [0.0, 1.0, 0.0, 0.0]]))
    assert not pairwise.agree and pairwise.detail == "$[1]: cosine 0.0000 < 0.99" and pairwise.score == 0.0
    field = comparator.compare(body({"embeddings": [UNIT, UNIT]}), body({"embeddings": [UNIT, UNIT]}))
    assert field.agree and field.score == 1.0


def test_cosine_explains_answers_that_are_not_vectors() -> None:
    comparator = parse_comparator("cosine>=0.99")
    assert "not a vector" in comparator.compare(body({"label": "cat"}), body({"label": "cat"})).detail
    two = comparator.compare(body({"a": UNIT, "b": UNIT}), body({"a": UNIT, "b": UNIT}))
    assert not two.agree and "several vector fields (a, b)" in two.detail
    assert comparator.compare(body(UNIT), body(UNIT[:3])).detail == "$: 4 numbers vs 3"


def test_cosine_of_zero_vectors() -> None:
    assert cosine([0.0, 0.0], [0.0, 0.0]) == 1.0
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0
    assert math.isclose(cosine([1.0, 2.0], [2.0, 4.0]), 1.0)
    assert cosine([1.0, 0.0], [-1.0, 0.0]) == -1.0


def test_a_long_diff_is_cut_short() -> None:
    verdict = EXACT.compare(body({"k" * 300: 1}), body({"k" * 300: 2}))
    assert not verdict.agree and len(verdict.detail) == 200 and verdict.detail.endswith("...")
