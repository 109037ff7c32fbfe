"""Which parameters are typed, what an invalid body raises, and how schemas move into OpenAPI."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict

from tidal.gateway.typed_docs import relocate
from tidal.runtime.typed_input import InvalidInput, input_type, schema_text, target_adapter, validate


class Inner(BaseModel):
    size: int


class Model(BaseModel):
    name: str
    inner: Inner


@dataclass
class Point:
    x: float


class Named(TypedDict):
    name: str


def with_model(payload: Model, context: object) -> None: ...


def with_point(point: Point) -> None: ...


def with_typed_dict(named: Named) -> None: ...


def untyped(payload): ...  # type: ignore[no-untyped-def]


def with_dict(payload: dict) -> None: ...  # type: ignore[type-arg]


def with_list(payloads: list[Model]) -> None: ...


class Callable_:
    def __call__(self, payload: Model) -> None: ...


def test_typed_parameters_are_found_and_others_are_not() -> None:
    assert input_type(with_model) is Model
    assert input_type(with_point) is Point
    assert input_type(with_typed_dict) is Named
    assert input_type(Callable_.__call__, skip_self=True) is Model
    assert target_adapter(Callable_) is not None
    for function in (untyped, with_dict, with_list):
        assert input_type(function) is None
        assert schema_text(function) == ""


def test_validation_gives_the_type_or_pydantic_errors() -> None:
    adapter = target_adapter(with_model)
    assert adapter is not None
    value = validate(adapter, {"name": "a", "inner": {"size": "2"}})
    assert isinstance(value, Model) and value.inner.size == 2
    with pytest.raises(InvalidInput) as raised:
        validate(adapter, {"inner": {"size": "big"}})
    errors = json.loads(raised.value.errors)
    assert [(tuple(e["loc"]), e["type"]) for e in errors] == [
        (("name",), "missing"),
        (("inner", "size"), "int_parsing"),
    ]
    assert "url" not in errors[0]
    assert (
        str(raised.value)
        == "name: Field required; inner.size: Input should be a valid integer, unable to parse string as an integer"
    )
    point_adapter = target_adapter(with_point)
    assert point_adapter is not None and validate(point_adapter, {"x": 1}) == Point(1.0)


def test_nested_models_move_to_components_under_the_function_name() -> None:
    schema = json.loads(schema_text(with_model))
    body, components = relocate(schema, "orders")
    assert body["properties"]["inner"] == {"$ref": "#/components/schemas/orders__Inner"}
    assert "$defs" not in body
    assert components == {"orders__Inner": schema["$defs"]["Inner"]}
