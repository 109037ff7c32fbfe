"""Train the digits classifier at build time: ``.venv/bin/python examples/digits/train.py``.

Writes ``model.joblib`` next to this file (atomically, so a deploy never copies half a file).
Deterministic and about a second: safe to rerun.
"""

import os
import sys
import time
from pathlib import Path

import joblib
from sklearn.svm import SVC

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from heldout import split  # noqa: E402

MODEL_PATH = HERE / "model.joblib"


def main() -> int:
    started = time.perf_counter()
    X_train, X_test, y_train, y_test = split()
    model = SVC(gamma=0.001, C=10.0).fit(X_train, y_train)
    accuracy = float(model.score(X_test, y_test))
    tmp = MODEL_PATH.with_suffix(f".tmp{os.getpid()}")
    joblib.dump(model, tmp)
    os.replace(tmp, MODEL_PATH)
    elapsed = time.perf_counter() - started
    print(
        f"digits: SVC trained on {len(X_train)}, held-out accuracy {accuracy:.4f} "
        f"on {len(X_test)} -> {MODEL_PATH} ({elapsed:.2f} s)"
    )
    return 0 if accuracy >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
