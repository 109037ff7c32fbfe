"""The price sheet: what a GB-second, a request and a GPU-second cost.

Defaults are published on-demand serverless prices, so that "what tidal billed" reads as what the
same traffic would cost on a public platform:

- GB-s and requests: AWS Lambda, x86, first pricing tier (us-east-1): $0.0000166667 per GB-second
  and $0.20 per million requests.
- GPU-s: Modal's published on-demand price of an H100, $0.001097 per GPU-second ($3.95 an hour).
  AWS Lambda has no GPUs; Modal bills GPU time per second of use, as tidal meters it.

An operator with other prices writes a TOML file and starts ``tidal up --price-sheet FILE``::

    currency = "EUR"
    gb_s = 0.0000150      # per GB-second of configured memory
    request = 0.18        # per million requests
    gpu_s = 0.0008        # per GPU-second

Every key is optional (a missing one keeps its default); unknown keys and negative or non-numeric
prices are refused with the file and key named.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

LAMBDA_GB_S = 0.0000166667  # USD per GB-second, AWS Lambda x86
LAMBDA_PER_MILLION_REQUESTS = 0.20  # USD, AWS Lambda
MODAL_H100_GPU_S = 0.001097  # USD per GPU-second, Modal H100 on demand
PER_MILLION = 1_000_000


class PriceSheetError(ValueError):
    """A price sheet file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class PriceSheet:
    """Prices in ``currency``: ``gb_s`` per GB-second, ``request`` per MILLION requests (as AWS
    publishes it), ``gpu_s`` per GPU-second."""

    gb_s: float = LAMBDA_GB_S
    request: float = LAMBDA_PER_MILLION_REQUESTS
    gpu_s: float = MODAL_H100_GPU_S
    currency: str = "USD"

    def cost(self, requests: int, gb_s: float, gpu_s: float) -> float:
        """1M requests of 1 GB for 100 ms each: 0.20 + 100,000 GB-s x 0.0000166667 = 1.866...

        >>> round(PriceSheet().cost(1_000_000, 100_000.0, 0.0), 5)
        1.86667
        """
        return requests * self.request / PER_MILLION + gb_s * self.gb_s + gpu_s * self.gpu_s

    def describe(self) -> dict[str, object]:
        """As the usage API shows it: the unit of each price spelled out."""
        return {**asdict(self), "request_per": PER_MILLION}


def load_price_sheet(path: Path | None) -> PriceSheet:
    """The sheet in the TOML file ``path`` over the defaults; the defaults when ``path`` is None."""
    if path is None:
        return PriceSheet()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise PriceSheetError(f"price sheet {path}: cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PriceSheetError(f"price sheet {path}: not valid TOML: {exc}") from None
    return price_sheet_from(data, str(path))


def price_sheet_from(data: dict[str, object], source: str = "price sheet") -> PriceSheet:
    """Check and apply the keys of ``data`` over the defaults (``source`` names it in errors)."""
    known = {field.name for field in fields(PriceSheet)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PriceSheetError(
            f"{source}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}"
        )
    values: dict[str, object] = {}
    for name, value in data.items():
        if name == "currency":
            if not isinstance(value, str) or not value.strip():
                raise PriceSheetError(f"{source}: currency must be a non-empty string, not {value!r}")
            values[name] = value.strip()
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PriceSheetError(f"{source}: {name} must be a number, not {value!r}")
        if not math.isfinite(value) or value < 0:
            raise PriceSheetError(f"{source}: {name} must be a finite price of 0 or more, not {value!r}")
        values[name] = float(value)
    return PriceSheet(**values)  # type: ignore[arg-type]
