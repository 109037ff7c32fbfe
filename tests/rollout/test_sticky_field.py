"""The sticky key read from a JSON field of the body (spec `sticky_key`)."""

from __future__ import annotations

import pytest

from tidal.gateway.invoke import json_sticky_key


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"user_id": "u-7", "text": "hi"}', "u-7"),
        (b'{"user_id": 42}', "42"),
        (b'{"user_id": 4.5}', "4.5"),
        (b'{"text": "no key"}', None),
        (b'{"user_id": null}', None),
        (b'{"user_id": true}', None),
        (b'{"user_id": ["a"]}', None),
        (b'{"user_id": {"id": 1}}', None),
        (b'["user_id"]', None),
        (b"not json", None),
        (b"", None),
    ],
)
def test_the_key_is_the_fields_value_or_none(body: bytes, key: str | None) -> None:
    assert json_sticky_key(body, "user_id") == key
