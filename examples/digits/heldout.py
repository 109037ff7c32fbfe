"""The fixed train/held-out split of scikit-learn's bundled digits, shared by train.py and the tests."""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

TEST_SIZE = 0.25
RANDOM_STATE = 0


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(X_train, X_test, y_train, y_test)``; X rows are 64 pixels in 0..16."""
    X, y = load_digits(return_X_y=True)
    parts = train_test_split(X, y, test_size=TEST_SIZE, random_state=RANDOM_STATE, stratify=y)
    return parts[0], parts[1], parts[2], parts[3]


def heldout_samples() -> tuple[np.ndarray, np.ndarray]:
    """The held-out images (n, 64) and their labels (n,), never seen in training."""
    _, X_test, _, y_test = split()
    return X_test, y_test
