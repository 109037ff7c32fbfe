"""Turning request bytes into what user code receives, and its return values into bytes."""

from __future__ import annotations

import base64
import re
import time
from typing import Any
from urllib.parse import parse_qsl

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


# Deeper JSON is refused before decoding: a decoder recursing near Python's limit (about 1,000)
# fails with RecursionError, and so would encoding the value back.
MAX_JSON_DEPTH = 256
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``body`` nests arrays/objects deeper than ``limit``. Counting brackets (C speed) is
    enough for nearly every body: fewer than ``limit`` openings cannot nest deeper. Only above that
    are strings blanked out and the depth walked.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            return True
    return False


def check_json(body: bytes) -> None:
    """Raise BadRequest unless ``body`` is JSON the platform can hand over: valid UTF-8, not
    nested deeper than MAX_JSON_DEPTH, well-formed.
    """
    if json_depth_exceeds(body):
        raise BadRequest(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON body: {_decode_problem(exc)}") from None


def _decode_problem(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"invalid UTF-8 at byte {exc.start}"
    return str(exc)


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
        if json_depth_exceeds(invoke.body):
            raise BadRequest(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
        try:
            return msgspec.json.decode(invoke.body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise BadRequest(f"malformed JSON body: {_decode_problem(exc)}") from None
    return invoke.body


class BadResponse(ValueError):
    """The function's answer cannot be sent over HTTP as it is: its fault, a 502 for the client."""


class ResponseTooLarge(ValueError):
    """The function's answer (or one streamed chunk) is over MAX_RESPONSE_BYTES: a 502."""


# Checked in the instance, so that an oversized answer never crosses to the gateway (whose memory
# would hold it a few times over) and the instance lives on.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024


def check_response_size(body: bytes) -> bytes:
    if len(body) > MAX_RESPONSE_BYTES:
        raise ResponseTooLarge(
            f"the function's response is {len(body)} bytes, more than the limit of {MAX_RESPONSE_BYTES}"
            " (stream it in chunks, or store it in a bucket and return its key)"
        )
    return body


def encode_result(value: Any) -> tuple[bytes, str]:
    if isinstance(value, bytes | bytearray | memoryview):
        return check_response_size(bytes(value)), OCTET
    return check_response_size(encode_json(value)), JSON


def encode_chunk(value: Any) -> bytes:
    """A streamed item: bytes as they are, text as UTF-8, anything else as one JSON line."""
    if isinstance(value, bytes | bytearray | memoryview):
        return check_response_size(bytes(value))
    if isinstance(value, str):
        return check_response_size(value.encode())
    return check_response_size(encode_json(value) + b"\n")


def lambda_http_event(invoke: Invoke, function: str) -> dict[str, Any]:
    """An API Gateway v2 (Lambda function URL) event for this request."""
    text = invoke.content_type.startswith(("application/json", "text/", "application/x-www-form-urlencoded"))
    if text:  # a "text" body that is not UTF-8 goes base64, as API Gateway sends binary
        try:
            invoke.body.decode()
        except UnicodeDecodeError:
            text = False
    query: dict[str, str] = {}
    for pair in filter(None, invoke.query.split("&")):
        key, _, value = pair.partition("=")
        query[key] = value if key not in query else f"{query[key]},{value}"
    now = time.time()
    route_key = invoke.route_key or "$default"  # `GET /items/{id}` when an HTTP route matched
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
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
            "routeKey": route_key,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": invoke.body.decode() if text else base64.b64encode(invoke.body).decode(),
        "isBase64Encoded": not text,
    }
    if invoke.path_params:  # as API Gateway: present only for a route with parameters
        event["pathParameters"] = invoke.path_params
    return event


def query_parameters(query: str) -> dict[str, str]:
    """A query string as a dict, decoded (``a=1&b=x%20y&a=2`` -> ``{"a": "1,2", "b": "x y"}``):
    a repeated key joins its values with ',' as API Gateway's ``queryStringParameters`` does.
    """
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        params[key] = value if key not in params else f"{params[key]},{value}"
    return params


# Framing and hop-by-hop headers are the server's to write: a handler's would contradict the body
# actually sent (a wrong content-length desynchronises the connection).
FRAMING_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
     "proxy-connection"}
)  # fmt: skip
NO_BODY_STATUSES = frozenset({204, 304})
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-z]+$")
_BAD_VALUE_CHARACTER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def lambda_http_response(value: Any) -> tuple[int, dict[str, str], bytes, str]:
    """Turn a handler's ``{statusCode, headers, body, isBase64Encoded}`` into an HTTP answer.

    Like Lambda function URLs, a return value without ``statusCode`` is a 200 JSON body. What HTTP
    cannot carry is the handler's fault (BadResponse, a 502): a status outside 200-599, a header
    name that is not a token, a value with a control character or outside Latin-1. Framing headers
    are dropped, and a 204 or 304 carries no body.
    """
    if not (isinstance(value, dict) and "statusCode" in value):
        body, content_type = encode_result(value)
        return 200, {}, body, content_type
    try:
        return _checked_http_response(value)
    except BadResponse as exc:
        raise BadResponse(f"the function's HTTP response is invalid: {exc}") from None


def _checked_http_response(value: dict[str, Any]) -> tuple[int, dict[str, str], bytes, str]:
    given = value["statusCode"]
    status = int(given) if isinstance(given, str) and given.isdigit() else given  # "200" as Lambda takes it
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise BadResponse(f"statusCode {given!r} is not an HTTP status from 200 to 599")
    headers = _response_headers(value.get("headers"))
    body = b"" if status in NO_BODY_STATUSES else _response_body(value)
    content_type = headers.pop("content-type", JSON)
    return status, headers, check_response_size(body), content_type


def _response_headers(given: Any) -> dict[str, str]:
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise BadResponse(f"headers must be an object of names to values, not {type(given).__name__}")
    headers = {}
    for key, item in given.items():
        name, text = str(key).lower(), str(item)
        if not _HEADER_NAME.match(name):
            raise BadResponse(f"{name[:100]!r} is not a valid header name")
        if _BAD_VALUE_CHARACTER.search(text) or not _latin1(text):
            raise BadResponse(
                f"header {name!r} has a value HTTP cannot carry (a control character or non-Latin-1)"
            )
        if name not in FRAMING_HEADERS:
            headers[name] = text
    return headers


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _response_body(value: dict[str, Any]) -> bytes:
    raw = value.get("body", "")
    if value.get("isBase64Encoded"):
        try:
            return base64.b64decode(raw, validate=True)
        except (ValueError, TypeError):
            raise BadResponse("isBase64Encoded is true but body is not base64") from None
    if isinstance(raw, str):
        return raw.encode()
    return encode_json(raw)
