"""S3-compatible bucket triggers through boto3 against a real S3 server (moto's server mode, started
here): polling with a StartAfter cursor, the event-notification webhook with its token, results put
back under output_prefix, and one job per object version whichever path saw it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from trigger_helpers import jobs_of, triggers_of, wait_jobs

from conftest import TidalServer, free_port, wait_for

MOTO = str(Path(sys.executable).parent / "moto_server")
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
SOURCE = """
import tidal

@tidal.function(name="s3read", triggers=[tidal.bucket("photos", prefix="in/", suffix=".jpg", output_prefix="out/",
                poll=0.3, s3_endpoint="{endpoint}")])
def read(event):
    record = event["Records"][0]
    return {{"key": record["s3"]["object"]["key"], "etag": record["s3"]["object"]["eTag"], "source": record["eventSource"]}}
"""


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """A moto S3 server on a free port (the gateway gets its test credentials from the environment)."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    server = subprocess.Popen([MOTO, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(endpoint, timeout=1).status_code < 500
        except httpx.TransportError:
            return False

    try:
        wait_for(up, 30, "moto_server")
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="photos")
        yield client, endpoint
    finally:
        server.terminate()
        server.wait(10)


def test_s3_objects_fire_by_polling_and_by_webhook_once_each(  # type: ignore[no-untyped-def]
    fresh_server: TidalServer, write_module, s3: tuple[Any, str]
) -> None:
    client, endpoint = s3
    client.put_object(Bucket="photos", Key="in/0-before.jpg", Body=b"old")  # there before: never fires
    server = fresh_server.start()
    deployed = server.deploy(write_module(SOURCE.format(endpoint=endpoint)))
    assert deployed.returncode == 0, deployed.stderr
    (trigger,) = triggers_of(server.client, "s3read")
    token = trigger["state"]["webhook_token"]
    wait_for(lambda: triggers_of(server.client, "s3read")[0]["state"].get("start_after") == "in/0-before.jpg", 20,
             "the first listing's cursor")  # fmt: skip

    client.put_object(Bucket="photos", Key="in/1-cat.jpg", Body=b"meow")
    client.put_object(Bucket="photos", Key="in/1-cat.txt", Body=b"not a jpg")
    (job,) = wait_jobs(server.client, "s3read", 1)
    etag = client.head_object(Bucket="photos", Key="in/1-cat.jpg")["ETag"].strip('"')
    assert job["result"] == {"key": "in/1-cat.jpg", "etag": etag, "source": "aws:s3"}

    def result_put() -> bool:
        listed = client.list_objects_v2(Bucket="photos", Prefix="out/").get("Contents", [])
        return [item["Key"] for item in listed] == ["out/in/1-cat.jpg.json"]

    wait_for(result_put, 10, "the result put back under out/")
    body = client.get_object(Bucket="photos", Key="out/in/1-cat.jpg.json")["Body"].read()
    assert json.loads(body)["key"] == "in/1-cat.jpg"

    # The webhook: a key that sorts before the cursor (polling cannot see it), then the same
    # notification again and a record the poll also saw: still one job per object version.
    client.put_object(Bucket="photos", Key="in/0-dog.jpg", Body=b"woof")
    dog = client.head_object(Bucket="photos", Key="in/0-dog.jpg")["ETag"]
    notification = {"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "2026-01-01T00:00:00.000Z",
                                 "s3": {"bucket": {"name": "photos"},
                                        "object": {"key": "in/0-dog.jpg", "size": 4, "eTag": dog}}}]}  # fmt: skip
    hook = f"/v1/buckets/events/{trigger['id']}"
    anonymous = httpx.Client(base_url=server.url)
    assert anonymous.post(hook, params={"token": "wrong"}, json=notification).status_code == 403
    assert anonymous.post(hook, params={"token": token}, json={"Records": [{"s3": 1}]}).status_code == 400
    for _ in range(2):
        answer = anonymous.post(hook, params={"token": token}, json=notification)
        assert answer.status_code == 200 and answer.json()["fired"] == 1, answer.text
    wait_jobs(server.client, "s3read", 2)
    wait_for(lambda: len(jobs_of(server.client, "s3read")) == 2, 5, "two jobs")
    keys = sorted(job["result"]["key"] for job in wait_jobs(server.client, "s3read", 2))
    assert keys == ["in/0-dog.jpg", "in/1-cat.jpg"]
    evil = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "photos"},
                                                                  "object": {"key": "in/..%2F..%2Fx.jpg"}}}]}  # fmt: skip
    assert anonymous.post(hook, params={"token": token}, json=evil).status_code == 400
