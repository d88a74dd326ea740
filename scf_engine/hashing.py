"""The one file hasher: SHA-256 of a file's bytes, read in chunks.

Dataset fingerprints, batch ids, audit entries and run records all hash files with it,
so a file's hash is the same string wherever the engine reports it. Nothing in here
imports the rest of the engine.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 24  # 16 MiB


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the bytes of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
