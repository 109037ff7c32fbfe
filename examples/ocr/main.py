"""Text in images with RapidOCR (ONNX models shipped in the ``rapidocr-onnxruntime`` package).

Drop an image into the bucket ``images`` under ``in/`` and its text lands beside it as JSON under
``text/`` (``in/receipt.png`` -> ``text/in/receipt.png.json``):

    tidal bucket put images in/receipt.png receipt.png
    tidal bucket get images text/in/receipt.png.json

Or call it directly: ``POST /fn/ocr`` with the image as ``application/octet-stream``, or JSON
``{"image_base64": "..."}``. The answer, either way:

    {"key": "in/receipt.png" | null, "text": "all lines, top to bottom", "lines": [{"text", "score", "box"}]}

The bucket event carries the image's bytes (objects up to 4 MiB travel inside their event:
``Records[0]["tidal"]["body_base64"]``), since function code cannot open the bucket's folder.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
from rapidocr_onnxruntime import RapidOCR

import tidal

MAX_IMAGE_BYTES = 4 * 1024 * 1024


def image_of(payload: Any) -> tuple[bytes, str | None]:
    """(the image's bytes, its bucket key or None) from any of the three request shapes."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload), None
    if not isinstance(payload, dict):
        raise tidal.InputError('send an image (application/octet-stream) or {"image_base64": "..."}')
    records = payload.get("Records")
    if isinstance(records, list) and records:
        record = records[0]
        key = record.get("s3", {}).get("object", {}).get("key")
        inline = record.get("tidal", {}).get("body_base64")
        if not isinstance(inline, str):
            raise tidal.InputError(f"the object {key!r} is over 4 MiB: its bytes are not in the event")
        return _decode(inline), key
    encoded = payload.get("image_base64")
    if not isinstance(encoded, str):
        raise tidal.InputError('missing "image_base64" (a base64 string of a PNG or JPEG)')
    return _decode(encoded), None


def _decode(text: str) -> bytes:
    try:
        image = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise tidal.InputError("image_base64 is not valid base64") from None
    if len(image) > MAX_IMAGE_BYTES:
        raise tidal.InputError(f"the image has {len(image)} bytes; at most {MAX_IMAGE_BYTES}")
    return image


def reading_order(found: list[Any]) -> list[dict[str, Any]]:
    """RapidOCR's boxes as lines, top to bottom then left to right."""
    lines = [
        {"text": text, "score": round(float(score), 4), "box": np.asarray(box).round(1).tolist()}
        for box, text, score in found
    ]
    return sorted(lines, key=lambda line: (round(line["box"][0][1] / 10), line["box"][0][0]))


@tidal.function(
    name="ocr",
    memory=1024,
    concurrency=1,
    timeout=120,
    triggers=[tidal.bucket("images", prefix="in/", output_prefix="text/", poll=1.0)],
)
class Ocr:
    def setup_instance(self) -> None:
        # Built in each instance, after the fork: onnxruntime's thread pools do not survive one.
        self.engine = RapidOCR()

    def __call__(self, payload: Any) -> dict[str, Any]:
        image, key = image_of(payload)
        try:
            found, _ = self.engine(image)
        except Exception as exc:  # not an image OpenCV can decode
            raise tidal.InputError(f"could not read an image from {len(image)} bytes: {exc}") from None
        lines = reading_order(found or [])
        return {"key": key, "text": "\n".join(line["text"] for line in lines), "lines": lines}
