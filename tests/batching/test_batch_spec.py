"""The spec's ``batch``: the forms a user writes it in, and how it combines with ``concurrency``."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import tidal
from tidal import cli
from tidal.cli_deploy import spec_overrides
from tidal.sdk.decorator import DECLARATION_ATTRIBUTE
from tidal.spec import BatchSpec, SpecError, validate_spec


def test_the_forms_of_batch_agree() -> None:
    @tidal.function(batch=tidal.Batch(max_size=16, max_wait_ms=5, target_p99_ms=80))
    def embed(items: list[str]) -> list[str]:
        return items

    declared = getattr(embed, DECLARATION_ATTRIBUTE).spec["batch"]
    assert declared == {"max_size": 16, "max_wait_ms": 5, "target_p99_ms": 80}  # plain: JSON-able
    expected = BatchSpec(max_size=16, max_wait_ms=5, target_p99_ms=80)
    for written in (
        declared,
        "16,max_wait=5ms,target_p99=80ms",
        "max_size=16,max_wait_ms=5,target_p99=0.08s",
    ):
        assert validate_spec({"name": "f", "batch": written}).batch == expected
    assert validate_spec({"name": "f", "batch": "8"}).batch == BatchSpec(max_size=8, max_wait_ms=10)


def test_concurrency_defaults_to_two_batches_and_may_not_be_below_one() -> None:
    assert validate_spec({"name": "f", "batch": {"max_size": 32}}).concurrency == 64
    assert validate_spec({"name": "f", "batch": {"max_size": 500}}).concurrency == 1000  # the cap
    assert validate_spec({"name": "f", "batch": {"max_size": 32}, "concurrency": 40}).concurrency == 40
    assert validate_spec({"name": "f"}).concurrency == 1 and validate_spec({"name": "f"}).batch is None
    with pytest.raises(SpecError, match=r"concurrency \(4\) is below batch.max_size \(32\)"):
        validate_spec({"name": "f", "batch": {"max_size": 32}, "concurrency": 4})


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("32,wait=5ms", "unknown batch setting 'wait'"),
        ({"max_size": 0}, "spec.batch.max_size: Input should be greater than or equal to 1"),
        ({"max_size": 8, "max_wait": 5}, "spec.batch.max_wait: Extra inputs are not permitted"),
        ("8,max_wait=soon", "'soon' is not a duration"),
    ],
)
def test_bad_batch_settings_are_named(written: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        validate_spec({"name": "f", "batch": written})


def test_the_deploy_flag_takes_the_short_text() -> None:
    assert spec_overrides({"batch": "32,max_wait=10ms", "memory": None}) == {"batch": "32,max_wait=10ms"}
    help_text = " ".join(
        CliRunner().invoke(cli.app, ["deploy", "--help"], env={"COLUMNS": "200"}).output.split()
    )
    assert "--batch SIZE[,max_wait=DUR][,target_p99=DUR]" in help_text
