"""Code dirs shared through the store: a revision deployed through one gateway runs on all.

Each gateway unpacks code into its own state dir. On deploy, the code dir is zipped into
``code_bundles`` (by its digest) before the revision is stored, so when another gateway hears of
the revision its code is already there; that gateway unpacks it into its own ``code/`` the first
time it serves the revision. The digest covers names and contents only, so zipping the unpacked
dir again gives the same digest.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

import psycopg

from tidal.cluster.pg import connect
from tidal.deploy.bundle import BundleError, bundle_path, unpack

log = logging.getLogger("tidal.cluster")

HAS_SQL = "SELECT 1 FROM code_bundles WHERE code_digest = %s"
PUT_SQL = (
    "INSERT INTO code_bundles (code_digest, bundle, created_at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
)
GET_SQL = "SELECT bundle FROM code_bundles WHERE code_digest = %s"


class CodeShelf:
    def __init__(self, url: str) -> None:
        self.url = url

    async def put(self, code_dir: Path, code_digest: str) -> None:
        """Store ``code_dir`` zipped, unless its digest is stored already."""
        async with await connect(self.url, "code") as session:
            if await (await session.execute(HAS_SQL, (code_digest,))).fetchone():
                return
            bundle = await asyncio.to_thread(bundle_path, code_dir)
            await session.execute(PUT_SQL, (code_digest, bundle, time.time()))
        log.info("shared code %s (%d bytes) with the other gateways", code_digest[:12], len(bundle))

    async def fetch(self, code_digest: str, code_root: Path) -> bool:
        """Unpack the stored code ``code_digest`` into ``code_root/<digest>``; False if it is not
        stored or cannot be had now (logged: the revision is then not served, as any missing code)."""
        try:
            async with await connect(self.url, "code") as session:
                row = await (await session.execute(GET_SQL, (code_digest,))).fetchone()
            if row is None:
                return False
            await asyncio.to_thread(unpack_as, bytes(row[0]), code_root, code_digest)
        except (psycopg.Error, OSError, BundleError) as exc:
            log.error("could not fetch code %s from the store: %s", code_digest[:12], exc)
            return False
        log.info("unpacked code %s, deployed through another gateway", code_digest[:12])
        return True


def unpack_as(bundle: bytes, code_root: Path, code_digest: str) -> Path:
    """Unpack ``bundle`` as ``code_root/code_digest`` (renamed, should a skipped file make the
    digest of the stored zip differ)."""
    target = code_root / code_digest
    unpacked, digest, _ = unpack(bundle, code_root)
    if digest != code_digest and not target.exists():
        unpacked.rename(target)
    elif digest != code_digest:
        shutil.rmtree(unpacked, ignore_errors=True)
    return target
