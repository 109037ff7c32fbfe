"""Model multiplexing inside one instance: an LRU of loaded models, at most ``max_models``.

A multiplexed function (spec ``max_models`` > 0) is a class with ``load_model(self, model_id)``;
each request names its model (header ``x-tidal-model``) and the call gets it as
``context.model``. A model not in the cache is loaded (once, even when several requests for it
arrive together: they wait for the same load); loading one more than ``max_models`` drops the least
recently used, and the class's optional ``unload_model(model_id, model)`` is told. The instance
reports which models it holds with every answer, so the router can send a model's requests to an
instance that already holds it (tidal.router.multiplex).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

MODEL_HEADER = "x-tidal-model"
MODEL_ID = re.compile(r"^[\x21-\x7e]{1,200}$")  # visible ASCII: a name, a path, a tenant id


class ModelCache:
    """``get(model_id)``: the loaded model, loading it first if needed. Thread-safe: calls run in
    threads, and two requests for one model must not load it twice."""

    def __init__(
        self,
        max_models: int,
        load: Callable[[str], Any],
        unload: Callable[[str, Any], None] | None = None,
    ) -> None:
        if max_models < 1:
            raise ValueError("max_models must be at least 1")
        self.max_models = max_models
        self._load, self._unload = load, unload
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}  # model id -> held while it loads

    def get(self, model_id: str) -> Any:
        with self._lock:
            if model_id in self._models:
                self._models.move_to_end(model_id)
                return self._models[model_id]
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:  # the first request loads; the others wait here, then find it cached
            with self._lock:
                if model_id in self._models:
                    self._models.move_to_end(model_id)
                    return self._models[model_id]
            try:
                model = self._load(model_id)  # outside the cache lock: other models stay served
            finally:
                with self._lock:
                    self._loading.pop(model_id, None)
            evicted = self._store(model_id, model)
        for old_id, old_model in evicted:
            if self._unload is not None:
                self._unload(old_id, old_model)
        return model

    def _store(self, model_id: str, model: Any) -> list[tuple[str, Any]]:
        with self._lock:
            self._models[model_id] = model
            self._models.move_to_end(model_id)
            evicted = []
            while len(self._models) > self.max_models:
                evicted.append(self._models.popitem(last=False))
            return evicted

    @property
    def loaded(self) -> tuple[str, ...]:
        """The models held, least recently used first."""
        with self._lock:
            return tuple(self._models)


def check_model_id(value: str | None) -> str:
    """The request's model id, or ValueError saying what a multiplexed function needs."""
    if value is None or value == "":
        raise ValueError(f"this function serves many models: name one with the {MODEL_HEADER} header")
    if not MODEL_ID.match(value):
        raise ValueError(f"{MODEL_HEADER} must be 1 to 200 visible ASCII characters")
    return value
