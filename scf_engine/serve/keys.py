"""API keys for ``scf serve``: ``keys.csv`` (``name, role, key_sha256``; contract v1.1).

The file holds the sha256 of each key, never the key itself, so a copy of it (a backup,
a ticket attachment) lets nobody call the service. A key is presented in the
``X-API-Key`` header; the service hashes it and looks the hash up. The file is checked
like every other input: the first problem stops the service with one line naming the
file, the line and the problem.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from scf_engine.errors import DatasetError
from scf_engine.ingest.reading import read_small_csv

KEY_COLUMNS = ("name", "role", "key_sha256")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ApiKey:
    name: str  # who holds the key (recorded in the audit log)
    role: str


def key_sha256(key: str) -> str:
    """What keys.csv stores for ``key``: its sha256, lowercase hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_keys(path: Path | str, roles) -> dict[str, ApiKey]:
    """``{key_sha256: ApiKey}`` from ``keys.csv``; ``roles`` are the roles the serve
    policy knows (an unknown role is refused: a typo must not grant nothing silently,
    nor anything by accident)."""
    path = Path(path)
    header, rows, lines = read_small_csv(path)
    missing = [c for c in KEY_COLUMNS if c not in header]
    if missing:
        raise DatasetError(f"{path.name}: missing column(s) {', '.join(missing)} (expected {', '.join(KEY_COLUMNS)})")
    at = {c: header.index(c) for c in KEY_COLUMNS}
    keys: dict[str, ApiKey] = {}
    names: dict[str, int] = {}
    for row, line in zip(rows, lines):
        name, role, digest = (row[at[c]].strip() for c in KEY_COLUMNS)
        where = f"{path.name}: line {line}"
        if not name:
            raise DatasetError(f"{where}: name is empty")
        if role not in roles:
            raise DatasetError(f"{where}: role {role!r} is not one of {', '.join(sorted(roles))}")
        if not _HEX64.match(digest.lower()):
            raise DatasetError(f"{where}: key_sha256 is not 64 hex digits (store the key's sha256, never the key)")
        if name in names:
            raise DatasetError(f"{where}: name {name!r} repeated (first on line {names[name]})")
        if digest.lower() in keys:
            raise DatasetError(f"{where}: key_sha256 repeated: two holders share one key")
        names[name] = line
        keys[digest.lower()] = ApiKey(name, role)
    if not keys:
        raise DatasetError(f"{path.name}: no keys: nobody could call the service")
    return keys


__all__ = ["ApiKey", "KEY_COLUMNS", "key_sha256", "read_keys"]
