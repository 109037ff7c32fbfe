"""examples/ocr: RapidOCR reads an image dropped into a bucket and its text lands beside it, as a
user would drive it (`tidal deploy`, `tidal bucket put/get`); and the direct call, with bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from conftest import TidalServer, wait_for
from paths import EXAMPLES


def sign(text: str) -> bytes:
    """A PNG of ``text`` in black on white, big enough to read."""
    image = Image.new("RGB", (640, 140), "white")
    ImageDraw.Draw(image).text((24, 36), text, fill="black", font=ImageFont.load_default(size=56))
    encoded = io.BytesIO()
    image.save(encoded, "PNG")
    return encoded.getvalue()


def test_an_image_put_into_the_bucket_gets_its_text_beside_it(
    tidal_server: TidalServer, tmp_path: Path
) -> None:
    deployed = tidal_server.deploy(EXAMPLES / "ocr")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    direct = tidal_server.client.post(
        "/fn/ocr",
        content=sign("HELLO 2026"),
        headers={"content-type": "application/octet-stream"},
        timeout=180,
    )
    assert direct.status_code == 200, direct.text
    assert "HELLO" in direct.json()["text"] and direct.json()["key"] is None

    picture = tmp_path / "sign.png"
    picture.write_bytes(sign("TIDAL 42"))
    put = tidal_server.cli("bucket", "put", "images", "in/sign.png", str(picture))
    assert put.returncode == 0 and "1 trigger(s) fired" in put.stdout, put.stdout + put.stderr

    def written() -> bool:
        return tidal_server.cli("bucket", "get", "images", "text/in/sign.png.json").returncode == 0

    wait_for(written, 180, "the OCR result under text/")
    result = json.loads(tidal_server.cli("bucket", "get", "images", "text/in/sign.png.json").stdout)
    assert result["key"] == "in/sign.png"
    assert "TIDAL" in result["text"], result
    assert all(0 < line["score"] <= 1 and len(line["box"]) == 4 for line in result["lines"])

    # Not an image: a clear 422, not a crash of the instance.
    garbage = tidal_server.client.post(
        "/fn/ocr", content=b"not a picture", headers={"content-type": "application/octet-stream"}, timeout=60
    )
    assert garbage.status_code == 422, garbage.text
    assert "could not read an image" in garbage.json()["error"]["message"]
    missing = tidal_server.client.post("/fn/ocr", json={"picture": 1}, timeout=60)
    assert missing.status_code == 422 and "image_base64" in missing.json()["error"]["message"]
