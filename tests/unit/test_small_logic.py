import base64

import pytest

from tidal.auth.keys import allows, check_scopes
from tidal.metering.billing import billed_ms
from tidal.router.pool import START_BACKOFF_MAX_S, start_backoff_s
from tidal.runtime.codec import encode_chunk, encode_result, is_raw, lambda_http_event, lambda_http_response
from tidal.runtime.protocol import Invoke


@pytest.mark.parametrize(("duration", "billed"), [(0.0, 1), (0.2, 1), (1.0, 1), (1.0001, 2), (37.4, 38)])
def test_billing_rounds_up_to_the_millisecond(duration: float, billed: int) -> None:
    assert billed_ms(duration) == billed


def test_scopes() -> None:
    assert allows(["admin"], "invoke:x") and allows(["admin"], "admin")
    assert allows(["invoke:*"], "invoke:x") and not allows(["invoke:*"], "admin")
    assert allows(["invoke:x"], "invoke:x") and not allows(["invoke:x"], "invoke:y")
    with pytest.raises(ValueError, match="invalid scope"):
        check_scopes(["invoke:Bad Name"])


def test_content_types() -> None:
    assert is_raw("application/octet-stream") and is_raw("image/png")
    assert not is_raw("application/json") and not is_raw("application/x-www-form-urlencoded")


def test_results_and_chunks_encode() -> None:
    import numpy  # the examples extra, which make setup installs

    assert encode_result({"v": numpy.arange(3), "s": numpy.float32(0.5)}) == (
        b'{"v":[0,1,2],"s":0.5}',
        "application/json",
    )
    assert encode_result(b"\x00") == (b"\x00", "application/octet-stream")
    assert encode_chunk("text") == b"text" and encode_chunk({"a": 1}) == b'{"a":1}\n'
    with pytest.raises(TypeError, match="cannot encode object"):
        encode_result(object())


def test_lambda_http_event_and_response() -> None:
    invoke = Invoke(
        1, "act1", 0.0, b"\x89PNG", "image/png", {"user-agent": "curl"}, "PUT", "/items/7", "a=1&a=2&b="
    )
    event = lambda_http_event(invoke, "shop")
    assert event["rawPath"] == "/items/7" and event["requestContext"]["http"]["method"] == "PUT"
    assert event["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert event["isBase64Encoded"] and base64.b64decode(event["body"]) == b"\x89PNG"
    assert event["requestContext"]["requestId"] == "act1"
    status, headers, body, content_type = lambda_http_response(
        {"statusCode": 201, "headers": {"Content-Type": "text/plain", "X-A": "1"}, "body": "made"}
    )
    assert (status, headers, body, content_type) == (201, {"x-a": "1"}, b"made", "text/plain")
    assert lambda_http_response({"plain": True})[0] == 200
    with pytest.raises(ValueError, match="statusCode 99"):
        lambda_http_response({"statusCode": 99})


def test_start_backoff_doubles_and_is_capped() -> None:
    assert [start_backoff_s(n) for n in range(5)] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert start_backoff_s(50) == START_BACKOFF_MAX_S
