"""An unmodified AWS Lambda handler: tidal runs it as-is (style = "lambda" in tidal.toml)."""

from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    return {
        "message": f"hello {name}",
        "request_id": context.aws_request_id,
        "function": context.function_name,
        "memory_mb": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }
