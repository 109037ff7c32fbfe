"""Routing for multiplexed functions: send a model's requests to an instance that holds it.

The pool's ``InstanceChooser`` for a revision with ``max_models`` > 0. Among the ready instances
with room: one that holds the request's model (the least busy of them); else one that holds the
fewest models (it loads the model there, evicting least); ties go to the least busy. The choice is
remembered on the instance at once (``expect``), so the requests for a model that arrive while its
first one is still loading follow it instead of loading it elsewhere too. A request naming no model
goes to the least busy instance, as without multiplexing.

Instances report what they hold with each answer (``CallStats.models``); that report replaces the
expectation, so the router's view never drifts from an instance's LRU for long.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from tidal.invoke.request import RequestContext
from tidal.runtime.models import MODEL_HEADER


class HoldsModels(Protocol):
    assigned: int
    models: tuple[str, ...]  # held, least recently used first (as the instance last said)


Client = TypeVar("Client", bound=HoldsModels)


def model_of(context: RequestContext) -> str | None:
    return context.model_id or context.headers.get(MODEL_HEADER) or None


def choose_for_model(ready: Sequence[Client], concurrency: int, context: RequestContext) -> Client | None:
    """The instance for the request (see the module's docstring), or None when none has room."""
    room = [client for client in ready if client.assigned < concurrency]
    if not room:
        return None
    model = model_of(context)
    if model is None:
        return min(room, key=lambda client: client.assigned)
    holding = [client for client in room if model in client.models]
    if holding:
        return min(holding, key=lambda client: client.assigned)
    chosen = min(room, key=lambda client: (len(client.models), client.assigned))
    expect(chosen, model)
    return chosen


def expect(client: HoldsModels, model: str) -> None:
    """Note that ``client`` is about to load ``model`` (most recently used: the end)."""
    client.models = (*(held for held in client.models if held != model), model)
