"""A tamper-evident audit log: who touched which data, with what, and what came out.

The data rules banks work under ask that systems "keep logs that fully record every
data access and operation" (domain notes). This log is JSON Lines, one entry a line::

    {"action": "score", "actor": "zhang.wei", "details": {...}, "hash": "...",
     "prev_hash": "...", "seq": 7, "timestamp": "2026-03-01T08:15:02.123456Z"}

``details`` carries what makes a run reproducible: firm ids, input file hashes, model
versions, policy hashes, the output file's hash (:func:`scf_engine.hashing.file_sha256` helps).

Each entry's ``hash`` is the sha256 of the canonical JSON (sorted keys, no whitespace,
UTF-8) of the entry without ``hash``; its ``prev_hash`` is the previous entry's ``hash``
(64 zeros for the first). Editing an entry breaks its own hash; deleting, inserting or
reordering entries breaks the next ``prev_hash`` and the ``seq`` count; a cut-off write
leaves a last line without its newline. :func:`verify` names the first line where the
chain breaks. One thing a chain cannot see alone is the *end* cut off cleanly at a line
boundary: record :func:`head` somewhere else (the MLflow run of the batch does) and pass
it to :func:`verify` as ``anchor``.

:func:`append` reads only the last line (a log of millions of entries costs the same
as an empty one), holds an exclusive lock while it reads and writes so two processes
cannot fork the chain, and fsyncs before returning, so an entry returned is an entry
on disk.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Mapping

try:  # POSIX advisory lock; elsewhere appends are not guarded against concurrency
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

GENESIS = "0" * 64
FIELDS = frozenset({"seq", "timestamp", "actor", "action", "details", "prev_hash", "hash"})
_BLOCK = 8192


from scf_engine.errors import AuditError  # noqa: E402


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8, NaN refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def entry_hash(entry: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``entry`` without its ``hash`` field."""
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def _plain(value: Any) -> Any:
    """Turn numpy/pandas scalars, paths, dates and sets into plain JSON values, so the
    hash is taken over exactly what is written."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (datetime, date)) or hasattr(value, "isoformat"):  # incl. pandas Timestamp
        return value.isoformat()
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalar
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if hasattr(value, "tolist"):  # numpy array, pandas Index/Series
        return value.tolist()
    raise TypeError(f"audit details: cannot record a {type(value).__name__}")


def _actor(actor: str | None) -> str:
    if actor:
        return str(actor)
    try:
        return getpass.getuser()
    except Exception:  # no login name in a container: say so rather than guess
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _last_line(fh) -> bytes | None:
    """The last line of an open binary file (without its newline), reading backwards
    from the end; None for an empty file. Raises AuditError when the file does not end
    in a newline (a cut-off write)."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    if end == 0:
        return None
    fh.seek(end - 1)
    if fh.read(1) != b"\n":
        raise AuditError("the last line of the audit log has no newline (truncated or an interrupted write); "
                         "run verify and repair the log before appending")
    buf = b""
    pos = end - 1  # position of the final newline
    while pos > 0:
        start = max(0, pos - _BLOCK)
        fh.seek(start)
        buf = fh.read(pos - start) + buf
        pos = start
        nl = buf.rfind(b"\n")
        if nl >= 0:
            return buf[nl + 1:]
    return buf


def append(path: str | Path, actor: str | None, action: str, details: Mapping[str, Any] | None = None) -> dict:
    """Append one entry and return it (as written, ``hash`` included).

    ``actor``: who did it; None records the OS user. ``action``: a short verb
    (``score``, ``train``, ``export``...). ``details``: any JSON-able mapping.
    Creates the file (and its folder) on first use.
    """
    if not action or not isinstance(action, str):
        raise ValueError("audit action must be a non-empty string")
    if details is not None and not isinstance(details, Mapping):
        raise TypeError("audit details must be a mapping")
    # normalise to plain JSON values first, so the hash covers exactly what is written
    details = json.loads(json.dumps(dict(details or {}), default=_plain, allow_nan=False))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not path.exists()
    with open(path, "a+b") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            last = _last_line(fh)
            if last is None:
                seq, prev = 1, GENESIS
            else:
                try:
                    prev_entry = json.loads(last.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    raise AuditError("the last line of the audit log is not valid JSON; run verify") from None
                if not isinstance(prev_entry, dict) or prev_entry.get("hash") != entry_hash(prev_entry):
                    raise AuditError("the last entry of the audit log does not match its hash; run verify")
                seq, prev = int(prev_entry["seq"]) + 1, prev_entry["hash"]
            entry = {
                "seq": seq,
                "timestamp": datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "actor": _actor(actor),
                "action": action,
                "details": details,
                "prev_hash": prev,
            }
            entry["hash"] = entry_hash(entry)
            fh.seek(0, os.SEEK_END)
            fh.write(canonical(entry) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    if new_file and hasattr(os, "O_DIRECTORY"):  # make the new file's name durable too
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return entry


def head(path: str | Path) -> dict | None:
    """``{"seq", "hash"}`` of the last entry (None for an empty log): keep it elsewhere
    and pass it to :func:`verify` to detect entries cut off the end."""
    with open(path, "rb") as fh:
        last = _last_line(fh)
    if last is None:
        return None
    e = json.loads(last.decode("utf-8"))
    return {"seq": e["seq"], "hash": e["hash"]}


def verify(path: str | Path, anchor: Mapping[str, Any] | None = None) -> tuple[bool, list[str]]:
    """Check the whole chain. Returns ``(ok, problems)``; the first problem names the
    first broken line (lines count from 1). Later problems are reported too, but one
    tampering usually shows up on one or two lines.

    ``anchor``: a ``{"seq", "hash"}`` recorded earlier by :func:`head`; the log must
    still contain that entry.
    """
    path = Path(path)
    if not path.is_file():
        return False, [f"{path}: no such audit log"]
    data = path.read_bytes()
    problems: list[str] = []
    if not data:
        if anchor is not None:
            problems.append(f"the log is empty but entry seq {anchor['seq']} was recorded earlier "
                            "(the log was emptied or replaced)")
        return not problems, problems
    lines = data.split(b"\n")
    complete = data.endswith(b"\n")
    if complete:
        lines = lines[:-1]
    prev_hash, prev_seq = GENESIS, 0
    anchor_found = anchor is None
    for no, raw in enumerate(lines, start=1):
        last_unterminated = (no == len(lines)) and not complete
        try:
            e = json.loads(raw.decode("utf-8"))
            if not isinstance(e, dict):
                raise ValueError
        except (UnicodeDecodeError, ValueError):
            what = "truncated (the file ends inside this entry)" if last_unterminated else \
                "not a valid JSON entry (edited or corrupted)"
            problems.append(f"line {no}: {what}")
            prev_hash, prev_seq = None, prev_seq + 1
            continue
        keys = set(e)
        if keys != FIELDS:
            missing, extra = sorted(FIELDS - keys), sorted(keys - FIELDS)
            problems.append(f"line {no}: fields differ from an audit entry"
                            + (f" (missing {', '.join(missing)})" if missing else "")
                            + (f" (unexpected {', '.join(extra)})" if extra else "") + " (entry edited)")
        elif e["hash"] != entry_hash(e):
            problems.append(f"line {no}: hash does not match the entry's content (entry edited)")
        if "prev_hash" in e and prev_hash is not None and e["prev_hash"] != prev_hash:
            if no == 1:
                problems.append("line 1: prev_hash is not the 64-zero start of a chain "
                                "(entries before it were deleted)")
            else:
                problems.append(f"line {no}: prev_hash does not match the hash of line {no - 1} "
                                "(an entry was deleted, inserted or reordered, or the previous line was re-hashed)")
        seq = e.get("seq")
        if seq != prev_seq + 1:
            problems.append(f"line {no}: seq {seq} where {prev_seq + 1} was expected "
                            "(an entry was deleted, inserted or reordered)")
        if last_unterminated:
            problems.append(f"line {no}: no newline at the end of the file (truncated or an interrupted write)")
        if anchor is not None and seq == anchor.get("seq") and e.get("hash") == anchor.get("hash"):
            anchor_found = True
        prev_hash = e.get("hash")
        prev_seq = seq if isinstance(seq, int) else prev_seq + 1
    if not anchor_found:
        problems.append(f"the log no longer holds entry seq {anchor['seq']} with the recorded hash "
                        "(entries at the end were deleted or the log was replaced)")
    return not problems, problems
