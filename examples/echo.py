"""The smallest function: returns its JSON body unchanged (measures platform overhead)."""

from typing import Any

import tidal


@tidal.function(name="echo", concurrency=100, memory=128, public=False)
def echo(payload: Any) -> Any:
    return payload
