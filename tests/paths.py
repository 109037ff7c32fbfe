"""Where the repository and its examples are, for tests that deploy or read them."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
