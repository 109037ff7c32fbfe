"""What a function answers is checked: a size limit with a clear error, and lambda-http answers
that HTTP cannot carry are a 502 naming the function, never a dropped connection or a body
leaking into the next response.
"""

from __future__ import annotations

import io
import socket
import zipfile

import httpx

from conftest import TidalServer
from tidal.runtime.codec import MAX_RESPONSE_BYTES

BIG = """
import tidal

@tidal.function(name="big_answer")
def big_answer(size):
    return b"x" * size
"""
HTTP_HANDLER = """
ANSWERS = {
    "no_content": {"statusCode": 204, "body": "this must not leak", "headers": {"x-kind": "empty"}},
    "not_modified": {"statusCode": 304, "body": "nor this"},
    "framing": {"statusCode": 200, "body": "four", "headers": {"Content-Length": "999",
                "Transfer-Encoding": "chunked", "Connection": "close", "X-Kept": "yes"}},
    "split_header": {"statusCode": 200, "body": "x", "headers": {"x-evil": "a\\r\\nx-injected: 1"}},
    "unicode_header": {"statusCode": 200, "body": "x", "headers": {"x-name": "日本"}},
    "bad_name": {"statusCode": 200, "body": "x", "headers": {"bad name": "v"}},
    "bad_status": {"statusCode": 99, "body": "x"},
    "bad_base64": {"statusCode": 200, "body": "%%%", "isBase64Encoded": True},
    "fine": {"statusCode": 201, "body": "fine", "headers": {"x-name": "café"}},
}

def handler(event, context):
    return ANSWERS[event["rawPath"].strip("/")]
"""


def deploy(server: TidalServer, files: dict[str, str], **params: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, source in files.items():
            archive.writestr(name, source)
    answer = server.client.post("/v1/functions", content=buffer.getvalue(), params=params)
    assert answer.status_code == 201, answer.text


def test_a_response_over_the_limit_is_a_clear_502_and_the_instance_lives(tidal_server: TidalServer) -> None:
    deploy(tidal_server, {"main.py": BIG})
    answer = tidal_server.client.post("/fn/big_answer", json=MAX_RESPONSE_BYTES + 1)
    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert error["type"] == "ResponseTooLarge"
    assert error["message"].startswith(
        f"the function's response is {MAX_RESPONSE_BYTES + 1} bytes, more than the limit of {MAX_RESPONSE_BYTES}"
    )
    small = tidal_server.client.post("/fn/big_answer", json=10)
    assert small.status_code == 200 and small.content == b"x" * 10
    instances = tidal_server.client.get("/v1/functions/big_answer").json()["instances"]
    assert instances["lost"] == 0 and instances["starts"] == 1, instances


def test_lambda_http_answers_are_validated(tidal_server: TidalServer) -> None:
    deploy(tidal_server, {"lambda_function.py": HTTP_HANDLER}, name="http_checked", style="lambda-http",
           handler="handler")  # fmt: skip
    key = {"authorization": f"Bearer {tidal_server.admin_key}"}
    # One keep-alive connection: a body leaking after a 204 would garble the next answer.
    with httpx.Client(base_url=tidal_server.url, headers=key, timeout=60) as client:
        empty = client.post("/fn/http_checked/no_content")
        assert empty.status_code == 204 and empty.content == b"" and empty.headers["x-kind"] == "empty"
        assert "content-length" not in empty.headers
        unchanged = client.post("/fn/http_checked/not_modified")
        assert unchanged.status_code == 304 and unchanged.content == b""
        framed = client.post("/fn/http_checked/framing")
        assert framed.status_code == 200 and framed.content == b"four"
        assert framed.headers["content-length"] == "4" and "transfer-encoding" not in framed.headers
        assert framed.headers["x-kept"] == "yes"
        for path, problem in {
            "split_header": "header 'x-evil' has a value HTTP cannot carry",
            "unicode_header": "header 'x-name' has a value HTTP cannot carry",
            "bad_name": "'bad name' is not a valid header name",
            "bad_status": "statusCode 99 is not an HTTP status",
            "bad_base64": "body is not base64",
        }.items():
            answer = client.post(f"/fn/http_checked/{path}")
            assert answer.status_code == 502, (path, answer.text)
            assert answer.json()["error"]["type"] == "BadResponse"
            message = answer.json()["error"]["message"]
            assert message.startswith("the function's HTTP response is invalid: ") and problem in message
            assert "x-injected" not in answer.headers
        fine = client.post("/fn/http_checked/fine")  # the same connection still answers in step
        assert fine.status_code == 201 and fine.content == b"fine"
        assert fine.headers["x-name"].encode("latin-1") == "café".encode("latin-1")


def test_nothing_follows_a_204_on_the_wire(tidal_server: TidalServer) -> None:
    deploy(tidal_server, {"lambda_function.py": HTTP_HANDLER}, name="http_wire", style="lambda-http",
           handler="handler")  # fmt: skip
    request = (f"POST /fn/http_wire/no_content HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
               f"{tidal_server.admin_key}\r\nContent-Length: 0\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection(("127.0.0.1", tidal_server.port), timeout=30) as raw:
        raw.sendall(request + request.replace(b"no_content", b"fine"))
        seen = b""
        while seen.count(b"HTTP/1.1 ") < 2 or not seen.endswith(b"fine"):
            chunk = raw.recv(65536)
            assert chunk, seen
            seen += chunk
    first, second = seen.split(b"HTTP/1.1 201", 1)
    assert first.startswith(b"HTTP/1.1 204") and b"leak" not in seen
    assert first.endswith(b"\r\n\r\n")  # headers only: the next response starts right after
    assert second.endswith(b"\r\n\r\nfine")
