"""An API Gateway (HTTP API, payload v2) Lambda handler, run as-is (style = "lambda-http")."""

import base64
import json
from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    body = event.get("body")
    if body is not None and event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8", errors="replace")
    reply = {
        "path": event["rawPath"],
        "method": event["requestContext"]["http"]["method"],
        "query": event.get("queryStringParameters") or {},
        "body": body,
        "request_id": context.aws_request_id,
    }
    return {
        "statusCode": 201,
        "headers": {"content-type": "application/json", "x-hello": "1"},
        "body": json.dumps(reply),
    }
