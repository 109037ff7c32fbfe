"""Turning request bytes into what user code receives, and its return values into bytes."""

from __future__ import annotations

import base64
import time
from typing import Any

import msgspec

from tidal.runtime.protocol import Invoke

JSON = "application/json"
OCTET = "application/octet-stream"


RAW_PREFIXES = (OCTET, "image/", "audio/", "video/", "application/pdf", "application/zip")


def is_raw(content_type: str) -> bool:
    """Binary bodies reach the function as bytes; everything else is JSON, whatever the client
    labelled it (``curl -d`` says application/x-www-form-urlencoded for a JSON body).
    """
    return content_type.startswith(RAW_PREFIXES)


class BadRequest(ValueError):
    """The request cannot be handed to the function (e.g. malformed JSON)."""


def _encode_extra(value: Any) -> Any:
    """msgspec's hook for what it cannot encode: numpy arrays/scalars and anything with tolist()."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON; return JSON types, numpy or bytes")


_json_encoder = msgspec.json.Encoder(enc_hook=_encode_extra)


def encode_json(value: Any) -> bytes:
    return _json_encoder.encode(value)


def decode_body(invoke: Invoke) -> Any:
    """JSON bodies are decoded (an empty body is None); binary ones are handed over as bytes."""
    if not is_raw(invoke.content_type):
        if not invoke.body:
            return None
        try:
            return msgspec.json.decode(invoke.body)
        except msgspec.DecodeError as exc:
            raise BadRequest(f"malformed JSON body: {exc}") from None
    return invoke.body


def encode_result(value: Any) -> tuple[bytes, str]:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), OCTET
    return encode_json(value), JSON


def encode_chunk(value: Any) -> bytes:
    """A streamed item: bytes as they are, text as UTF-8, anything else as one JSON line."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return encode_json(value) + b"\n"


def lambda_http_event(invoke: Invoke, function: str) -> dict[str, Any]:
    """An API Gateway v2 (Lambda function URL) event for this request."""
    text = invoke.content_type.startswith(("application/json", "text/", "application/x-www-form-urlencoded"))
    query: dict[str, str] = {}
    for pair in filter(None, invoke.query.split("&")):
        key, _, value = pair.partition("=")
        query[key] = value if key not in query else f"{query[key]},{value}"
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": invoke.path,
        "rawQueryString": invoke.query,
        "headers": invoke.headers,
        "queryStringParameters": query or None,
        "requestContext": {
            "accountId": "local",
            "apiId": function,
            "domainName": invoke.headers.get("host", "localhost"),
            "http": {
                "method": invoke.method,
                "path": invoke.path,
                "protocol": "HTTP/1.1",
                "sourceIp": invoke.headers.get("x-forwarded-for", "127.0.0.1"),
                "userAgent": invoke.headers.get("user-agent", ""),
            },
            "requestId": invoke.activation,
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": invoke.body.decode() if text else base64.b64encode(invoke.body).decode(),
        "isBase64Encoded": not text,
    }


def lambda_http_response(value: Any) -> tuple[int, dict[str, str], bytes, str]:
    """Turn a handler's ``{statusCode, headers, body, isBase64Encoded}`` into an HTTP answer.

    Like Lambda function URLs, a return value without ``statusCode`` is a 200 JSON body.
    """
    if not (isinstance(value, dict) and "statusCode" in value):
        body, content_type = encode_result(value)
        return 200, {}, body, content_type
    headers = {str(key).lower(): str(item) for key, item in (value.get("headers") or {}).items()}
    raw = value.get("body", "")
    if value.get("isBase64Encoded"):
        body = base64.b64decode(raw)
    elif isinstance(raw, str):
        body = raw.encode()
    else:
        body = encode_json(raw)
    content_type = headers.pop("content-type", JSON)
    status = int(value["statusCode"])
    if not 100 <= status <= 599:
        raise ValueError(f"statusCode {status} is not an HTTP status")
    return status, headers, body, content_type
