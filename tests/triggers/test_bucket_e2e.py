"""Local-folder buckets through a real gateway: put/ls/get by CLI and HTTP, key checks, an object
created -> a job with an S3-style event, the result written back under output_prefix, and files
dropped into the folder by other means found by the scan."""

from __future__ import annotations

import json
import os
from pathlib import Path

from trigger_helpers import activation_of, triggers_of, wait_jobs

from conftest import TidalServer, wait_for

READ = """
import os
import tidal

@tidal.function(name="readobj", triggers=[tidal.bucket("docs", prefix="in/", suffix=".txt", output_prefix="out/", poll=0.2)])
def read(event, context: tidal.Context):
    record = event["Records"][0]
    return {"key": record["s3"]["object"]["key"], "size": record["s3"]["object"]["size"],
            "source": record["eventSource"], "name": record["eventName"], "cwd_has_state": os.path.exists("tidal.db")}
"""


def test_a_put_object_becomes_one_job_and_a_result_beside_it(
    tidal_server: TidalServer, write_module, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(READ)).returncode == 0
    (trigger,) = triggers_of(tidal_server.client, "readobj")
    assert trigger["kind"] == "bucket"
    note = tmp_path / "a.txt"
    note.write_text("hello bucket")

    put = tidal_server.cli("bucket", "put", "docs", "in/a.txt", str(note))
    assert put.returncode == 0 and "1 trigger(s) fired" in put.stdout, put.stdout + put.stderr
    (job,) = wait_jobs(tidal_server.client, "readobj", 1)
    assert job["state"] == "succeeded"
    assert job["result"] == {"key": "in/a.txt", "size": 12, "source": "tidal:bucket", "name": "ObjectCreated:Put",
                             "cwd_has_state": False}  # fmt: skip
    activation = activation_of(tidal_server.client, job)
    assert (activation["trigger"], activation["trigger_id"]) == ("bucket", trigger["id"])

    def written() -> bool:
        return tidal_server.cli("bucket", "get", "docs", "out/in/a.txt.json").returncode == 0

    wait_for(written, 10, "the result under out/")
    result = json.loads(tidal_server.cli("bucket", "get", "docs", "out/in/a.txt.json").stdout)
    assert result["key"] == "in/a.txt"
    copy = tmp_path / "copy.txt"
    assert tidal_server.cli("bucket", "get", "docs", "in/a.txt", "-o", str(copy)).returncode == 0
    assert copy.read_text() == "hello bucket"
    listed = tidal_server.client.get("/v1/buckets/docs/objects", params={"prefix": "in/"}).json()["objects"]
    assert [item["key"] for item in listed] == ["in/a.txt"] and listed[0]["size"] == 12

    # Not matching (suffix), and results themselves, fire nothing; the scan adds no second job.
    assert (
        tidal_server.client.put("/v1/buckets/docs/objects/in/b.png", content=b"x").json()["triggers_fired"]
        == 0
    )
    # A file dropped into the folder by other means is found by the scan.
    folder = tidal_server.state_dir / "buckets" / "docs" / "in"
    (folder / "dropped.txt").write_text("from cp")
    jobs = wait_jobs(tidal_server.client, "readobj", 2)
    assert sorted(job["result"]["key"] for job in jobs) == ["in/a.txt", "in/dropped.txt"]
    assert triggers_of(tidal_server.client, "readobj")[0]["events"] == 2


def test_object_keys_cannot_leave_the_bucket(tidal_server: TidalServer) -> None:
    client = tidal_server.client
    for path, reason in [
        ("/v1/buckets/docs/objects/..%2F..%2Fadmin.key", "'..' segment"),
        ("/v1/buckets/docs/objects//etc/passwd", "absolute"),
        ("/v1/buckets/docs/objects/a%5Cb", "backslash"),
        ("/v1/buckets/Docs/objects/a", "lowercase"),
    ]:
        for method in ("PUT", "GET", "DELETE"):
            answer = client.request(method, path, content=b"x" if method == "PUT" else None)
            assert answer.status_code == 400, (method, path, answer.text)
            assert reason in answer.json()["error"]["message"]
    outside = tidal_server.state_dir / "buckets" / "docs" / "escape"
    os.makedirs(outside.parent, exist_ok=True)
    outside.symlink_to(tidal_server.state_dir)
    leaked = client.get("/v1/buckets/docs/objects/escape/admin.key")
    assert leaked.status_code == 400 and "outside the bucket" in leaked.text
    assert client.get("/v1/buckets/docs/objects/in/none.txt").status_code == 404
    refused = tidal_server.cli("bucket", "put", "docs", "../x", "/dev/null")
    assert refused.returncode == 1 and "'..' segment" in refused.stderr
