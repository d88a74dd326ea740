"""The one file hasher: SHA-256 of a file's bytes, read in chunks.

Dataset fingerprints, batch ids, audit entries and run records all hash files with it,
so a file's hash is the same string wherever the engine reports it. Nothing in here
imports the rest of the engine.

An input may also be a folder of part files (``flows.parquet/`` as Spark or Hive write a
table): :func:`part_files` says which files make it up, for the reader and the hasher
alike, so the bytes fingerprinted are the bytes read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 24  # 16 MiB

# Names Spark, Hadoop and Hive write beside the data (_SUCCESS, _committed_*, _started_*,
# _temporary/, .part-*.crc, .hive-staging*): the prefixes pyarrow.dataset ignores by default.
IGNORED_PREFIXES = ("_", ".")


def part_files(folder: str | Path) -> list[str]:
    """The data files of a folder-valued input, as POSIX paths relative to ``folder``,
    sorted (code-point order, which for UTF-8 names is byte order, as ``LC_ALL=C sort``):
    every regular file below it except those under a name (file or folder) that starts
    with ``_`` or ``.``. The sort fixes the order the parts are read in, hence row numbers."""
    folder = Path(folder)
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(IGNORED_PREFIXES) for part in rel.parts):
            out.append(rel.as_posix())
    return sorted(out)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the bytes of the file at ``path``.

    For a folder (a partitioned Parquet table), the SHA-256 of its manifest: one line
    ``<sha256 of the part>  <relative path>\\n`` per :func:`part_files` entry, in that
    order. From inside the folder, a shell gives the same hash with
    ``find . -path '*/[_.]*' -prune -o -type f -print | sed 's|^\\./||' | LC_ALL=C sort |
    xargs sha256sum | sha256sum``. It changes when a part's bytes, name or partition folder
    change, or a part comes or goes; never with Spark's marker files or file times."""
    path = Path(path)
    if path.is_dir():
        manifest = "".join(f"{file_sha256(path / rel)}  {rel}\n" for rel in part_files(path))
        return hashlib.sha256(manifest.encode("utf-8")).hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
