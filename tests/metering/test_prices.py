"""The price sheet: published defaults, a TOML file over them, and precise errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidal.metering.prices import PriceSheet, PriceSheetError, load_price_sheet


def test_the_defaults_are_aws_lambda_x86_and_a_published_gpu_price() -> None:
    sheet = load_price_sheet(None)
    assert sheet == PriceSheet(gb_s=0.0000166667, request=0.20, gpu_s=0.001097, currency="USD")
    # 1M calls of 128 MiB billed 100 ms: 0.20 + 12,500 GB-s x 0.0000166667 = 0.408333...
    assert sheet.cost(1_000_000, 12_500.0, 0.0) == pytest.approx(0.40833375)
    assert sheet.describe()["request_per"] == 1_000_000


def test_a_file_overrides_some_prices_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('currency = "EUR"\ngb_s = 0.00002\ngpu_s = 1\n')
    assert load_price_sheet(path) == PriceSheet(gb_s=0.00002, request=0.20, gpu_s=1.0, currency="EUR")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("gb_s = -1\n", "gb_s must be a finite price of 0 or more, not -1"),
        ('gb_s = "cheap"\n', "gb_s must be a number, not 'cheap'"),
        ("request = true\n", "request must be a number, not True"),
        ("gb_s = nan\n", "gb_s must be a finite price"),
        ("per_gb = 1\n", "unknown key(s) per_gb; expected currency, gb_s, gpu_s, request"),
        ('currency = ""\n', "currency must be a non-empty string"),
        ("gb_s = \n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_key(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(PriceSheetError) as caught:
        load_price_sheet(path)
    assert str(caught.value).startswith(f"price sheet {path}: ") or str(path) in str(caught.value)
    assert reason in str(caught.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PriceSheetError, match="cannot read it"):
        load_price_sheet(tmp_path / "nope.toml")
