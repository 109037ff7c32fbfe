"""How closely an optimized model agrees with its original, and whether that is close enough.

Pure: arrays and numbers in, values out. The threshold (``--min-agreement``) applies to the mean;
the minimum is reported so that a user sees the worst sample too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # numpy is imported where it is used: every `tidal` command imports this module
    import numpy as np

AgreementKind = Literal["cosine", "label"]


@dataclass(frozen=True)
class Agreement:
    """Agreement over ``samples`` inputs: mean and worst per-sample score (cosine, or 1/0 per label)."""

    kind: AgreementKind
    mean: float
    worst: float
    samples: int


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str


def cosine_agreement(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Row-wise cosine similarity of two (samples, dim) embedding matrices.

    Rows [1, 0] and [1, 1] have cosine 0.7071; identical rows 1.0.
    """
    import numpy as np

    if reference.shape != candidate.shape or reference.ndim != 2 or reference.shape[0] == 0:
        raise ValueError(f"cannot compare embeddings of shapes {reference.shape} and {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosines = (ref * cand).sum(axis=1) / np.clip(norms, 1e-12, None)
    return Agreement("cosine", float(cosines.mean()), float(cosines.min()), int(ref.shape[0]))


def label_agreement(reference: Sequence[object], candidate: Sequence[object]) -> Agreement:
    """The fraction of inputs on which both models give the same label (3 of 4 agree: 0.75)."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"cannot compare {len(reference)} labels with {len(candidate)}")
    same = [1.0 if a == b else 0.0 for a, b in zip(reference, candidate, strict=True)]
    return Agreement("label", sum(same) / len(same), min(same), len(same))


def judge(agreement: Agreement, min_agreement: float) -> Verdict:
    """Accept when the mean agreement reaches ``min_agreement``; the reason names both numbers."""
    measure = "mean cosine similarity" if agreement.kind == "cosine" else "label agreement"
    shown = f"{measure} {agreement.mean:.4f} over {agreement.samples} samples"
    if agreement.mean >= min_agreement:
        return Verdict(True, f"{shown} meets --min-agreement {min_agreement:g}")
    return Verdict(False, f"{shown} is below --min-agreement {min_agreement:g}")
