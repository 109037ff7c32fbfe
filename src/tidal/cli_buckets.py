"""``tidal bucket put/ls/get``: the local-folder buckets from the shell."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from tidal.cli import app, call, client, fail, out
from tidal.client import TidalError

bucket_app = typer.Typer(help="Local-folder buckets: put, list and get objects.", no_args_is_help=True)
app.add_typer(bucket_app, name="bucket")


def object_path(bucket: str, key: str) -> str:
    # Quoted whole ('/' too): a client would resolve '../' itself; the gateway checks the key and says why.
    return f"/v1/buckets/{quote(bucket, safe='')}/objects/{quote(key, safe='')}"


@bucket_app.command("put")
def put(
    bucket: str,
    key: str,
    file: Annotated[Path, typer.Argument(help="the file to store ('-' reads stdin)")],
) -> None:
    """Store FILE as the object KEY; the bucket's triggers fire at once."""
    if str(file) == "-":
        data = sys.stdin.buffer.read()
    elif not file.exists() or file.is_dir():
        fail(
            f"{file}: no such file" if not file.exists() else f"{file} is a folder: put its files one by one"
        )
        raise AssertionError  # fail() exits
    else:
        data = file.read_bytes()
    stored = call("PUT", object_path(bucket, key), content=data,
                  headers={"content-type": "application/octet-stream"})  # fmt: skip
    fired = stored["triggers_fired"]
    out.print(f"{bucket}/{escape(stored['key'])}: {stored['size']} bytes, etag {stored['etag']}"
              f"{f', {fired} trigger(s) fired' if fired else ''}", highlight=False)  # fmt: skip


@bucket_app.command("ls")
def list_objects(
    bucket: str,
    prefix: Annotated[str, typer.Option(help="only keys under this prefix")] = "",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The bucket's objects under a prefix."""
    listing = call("GET", f"/v1/buckets/{quote(bucket, safe='')}/objects", params={"prefix": prefix})
    if as_json:
        sys.stdout.write(json.dumps(listing["objects"], indent=2) + "\n")
        return
    table = Table("key", "size", "etag")
    for item in listing["objects"]:
        table.add_row(escape(item["key"]), str(item["size"]), item["etag"])
    out.print(table)


@bucket_app.command("get")
def get(
    bucket: str,
    key: str,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write here (default stdout)")] = None,
) -> None:
    """Read the object KEY."""
    try:
        with client() as api:
            data = api.request("GET", object_path(bucket, key)).content
    except TidalError as exc:
        fail(str(exc))
        raise AssertionError from None
    if output is None:
        sys.stdout.buffer.write(data)
    else:
        output.write_bytes(data)
