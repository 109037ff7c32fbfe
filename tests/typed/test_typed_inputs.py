"""Typed inputs end to end: a body that fits the function's pydantic model / dataclass /
TypedDict reaches it as that type; one that does not gets 422 with pydantic's errors, and the
function never runs. The schema is served at /fn/NAME/openapi.json and in the gateway's /docs.
"""

from __future__ import annotations

from conftest import TidalServer

TYPED = """
from dataclasses import dataclass
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from pydantic import BaseModel, Field

import tidal


class Dimensions(BaseModel):
    width: int
    height: int


class Order(BaseModel):
    item: str
    quantity: int = Field(ge=1)
    size: Dimensions | None = None


@dataclass
class Point:
    x: float
    y: float


class Greeting(TypedDict):
    name: str


@tidal.function(name="typed_order")
def typed_order(order: Order) -> dict:
    print("ran with", order.item)
    return {"type": type(order).__name__, "item": order.item, "quantity": order.quantity,
            "area": order.size.width * order.size.height if order.size else None}


@tidal.function(name="typed_point")
def typed_point(point: Point, context) -> dict:
    return {"type": type(point).__name__, "sum": point.x + point.y}


@tidal.function(name="typed_greeting")
def typed_greeting(greeting: Greeting) -> str:
    return f"{type(greeting).__name__} hello {greeting['name']}"


@tidal.function(name="untyped_echo")
def untyped_echo(payload):
    return payload
"""


def deploy(server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    result = server.deploy(write_module(TYPED, "typed.py"))
    assert result.returncode == 0, result.stderr


def test_a_valid_body_reaches_the_function_as_its_type(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy(tidal_server, write_module)
    client = tidal_server.client
    answer = client.post(
        "/fn/typed_order", json={"item": "tea", "quantity": "3", "size": {"width": 2, "height": 5}}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"type": "Order", "item": "tea", "quantity": 3, "area": 10}
    assert client.post("/fn/typed_point", json={"x": 1, "y": 2.5}).json() == {"type": "Point", "sum": 3.5}
    assert client.post("/fn/typed_greeting", json={"name": "Ada"}).json() == "dict hello Ada"
    assert client.post("/fn/untyped_echo", json={"anything": [1]}).json() == {"anything": [1]}


def test_an_invalid_body_is_422_with_pydantic_errors_and_the_function_never_runs(
    tidal_server: TidalServer,
    write_module,  # type: ignore[no-untyped-def]
) -> None:
    deploy(tidal_server, write_module)
    client = tidal_server.client
    answer = client.post("/fn/typed_order", json={"item": "tea", "quantity": 0, "size": {"width": "wide"}})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["type"] == "ValidationError"
    problems = {(tuple(item["loc"]), item["type"]) for item in error["errors"]}
    assert problems == {
        (("quantity",), "greater_than_equal"),
        (("size", "width"), "int_parsing"),
        (("size", "height"), "missing"),
    }
    assert all("url" not in item for item in error["errors"])
    assert "quantity" in error["message"]
    assert client.post("/fn/typed_point", json=[1, 2]).status_code == 422
    empty = client.post("/fn/typed_greeting", json={})
    assert empty.json()["error"]["errors"][0]["type"] == "missing", empty.text
    # The only activations of typed_order that ran are the valid ones; the refused ones ran no code.
    activations = client.get("/v1/functions/typed_order/activations", params={"limit": 100}).json()[
        "activations"
    ]
    refused = [item for item in activations if item["http_status"] == 422]
    assert refused and all(item["status"] == "bad_input" for item in refused)
    logs = client.get("/v1/functions/typed_order/logs", params={"limit": 100}).json()["logs"]
    assert not any(
        "ran with" in entry["logs"] for entry in logs if entry["activation"] in {a["id"] for a in refused}
    )


def test_openapi_documents_show_the_input_schema(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy(tidal_server, write_module)
    client = tidal_server.client
    document = client.get("/fn/typed_order/openapi.json")
    assert document.status_code == 200
    spec = document.json()
    assert spec["openapi"].startswith("3.1")
    operation = spec["paths"]["/fn/typed_order"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["title"] == "Order" and body["required"] == ["item", "quantity"]
    assert body["properties"]["quantity"]["minimum"] == 1
    # The nested model lives in components, under the function's name.
    assert "typed_order__Dimensions" in spec["components"]["schemas"]
    assert "#/components/schemas/typed_order__Dimensions" in document.text
    assert {"200", "422", "429"} <= set(operation["responses"])
    # The same auth as invoking: no key, no document (and no hint the function exists).
    assert client.get("/fn/typed_order/openapi.json", headers={"authorization": ""}).status_code == 401
    # The gateway's own document (what /docs renders) lists every typed function, not untyped ones.
    gateway = client.get("/openapi.json").json()
    assert {"/fn/typed_order", "/fn/typed_point", "/fn/typed_greeting"} <= set(gateway["paths"])
    assert "/fn/untyped_echo" not in gateway["paths"]
    assert (
        gateway["paths"]["/fn/typed_point"]["post"]["requestBody"]["content"]["application/json"]["schema"][
            "title"
        ]
        == "Point"
    )


def test_a_type_pydantic_cannot_validate_fails_the_deploy(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    source = (
        "from dataclasses import dataclass\nimport tidal\n\n"
        "class Opaque:\n    pass\n\n"
        "@dataclass\nclass Holder:\n    thing: Opaque\n\n"
        "@tidal.function(name='typed_bad')\ndef typed_bad(holder: Holder):\n    return 1\n"
    )
    result = tidal_server.deploy(write_module(source, "typed_bad.py"))
    assert result.returncode != 0
    assert "cannot be validated" in result.stderr + result.stdout
