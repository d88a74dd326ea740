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
on disk. A write that fails half-way (disk full, a quota) is cut back to where the log
ended, so a failed append leaves no half entry for every later run to trip over; and
:func:`rollback` takes back the entry a caller just appended when what it recorded could
not be published (the batch's files could not be moved into place).

**Keyed chain.** With ``SCF_AUDIT_KEY`` set in the environment, each new entry carries
``key_id`` (the first 16 hex digits of the key's sha256: which key, not the key) and its
``hash`` is an HMAC-SHA256 under the key instead of a plain sha256. Anyone can still
recompute a plain chain, so a writer with file access could rewrite the tail and re-hash
it; without the key no one can forge a keyed entry. :func:`verify` checks keyed entries
with the key (from the environment, or ``key=``), reports a keyed log it cannot check
without it, and reports an unkeyed entry after a keyed one (a downgrade). Anchors work
as before: they name an entry by ``seq`` and ``hash``.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

try:  # POSIX advisory lock; elsewhere appends are not guarded against concurrency
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

GENESIS = "0" * 64
FIELDS = frozenset({"seq", "timestamp", "actor", "action", "details", "prev_hash", "hash"})
KEYED_FIELDS = FIELDS | {"key_id"}
KEY_ENV = "SCF_AUDIT_KEY"
_BLOCK = 8192


from scf_engine.errors import AuditError  # noqa: E402


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8, NaN refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def audit_key(key: str | bytes | None = None) -> bytes | None:
    """The chain key: ``key`` when given, else ``$SCF_AUDIT_KEY``; None for a plain chain."""
    key = key if key is not None else os.environ.get(KEY_ENV) or None
    if key is None:
        return None
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def key_id(key: bytes) -> str:
    """Which key signed an entry, without revealing it."""
    return hashlib.sha256(key).hexdigest()[:16]


def entry_hash(entry: Mapping[str, Any], key: bytes | None = None) -> str:
    """sha256 of the canonical JSON of ``entry`` without its ``hash`` field; for a keyed
    entry (one with ``key_id``), HMAC-SHA256 of the same bytes under ``key``."""
    body = canonical({k: v for k, v in entry.items() if k != "hash"})
    if "key_id" in entry:
        if key is None:
            raise AuditError(f"the audit log is keyed (key {entry['key_id']}): set {KEY_ENV} to check or extend it")
        if key_id(key) != entry["key_id"]:
            raise AuditError(f"the audit log is keyed with key {entry['key_id']}, not the one in {KEY_ENV}")
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


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
    return str(actor) if actor else os_user()


def os_user() -> str:
    """The OS login name of this process."""
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


def append(path: str | Path, actor: str | None, action: str, details: Mapping[str, Any] | None = None,
           precondition: Callable[[], None] | None = None) -> dict:
    """Append one entry and return it (as written, ``hash`` included).

    ``actor``: who did it; None records the OS user. ``action``: a short verb
    (``score``, ``train``, ``export``...). ``details``: any JSON-able mapping.
    Creates the file (and its folder) on first use. With ``$SCF_AUDIT_KEY`` set the entry
    is keyed (see the module notes). A write that fails is cut back; the log is as before.
    ``precondition``: called while the lock is held, before anything is written; what it
    raises aborts the append (a check against entries other writers appended meanwhile,
    e.g. two batches earmarking one receivable: see ``pipelines.score``).
    """
    if not action or not isinstance(action, str):
        raise ValueError("audit action must be a non-empty string")
    if details is not None and not isinstance(details, Mapping):
        raise TypeError("audit details must be a mapping")
    # normalise to plain JSON values first, so the hash covers exactly what is written
    details = json.loads(json.dumps(dict(details or {}), default=_plain, allow_nan=False))
    key = audit_key()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not path.exists()
        fh = open(path, "a+b")
    except OSError as exc:
        raise AuditError(f"audit log {path} cannot be written: {exc.strerror or exc}") from None
    with fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            if precondition is not None:
                precondition()
            seq, prev = _chain_end(fh, key)
            entry = {
                "seq": seq,
                "timestamp": datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "actor": _actor(actor),
                "action": action,
                "details": details,
                "prev_hash": prev,
                **({"key_id": key_id(key)} if key is not None else {}),
            }
            entry["hash"] = entry_hash(entry, key)
            _write_or_cut_back(fh, path, canonical(entry) + b"\n")
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    if new_file:
        _fsync_dir(path.parent)
    return entry


def _chain_end(fh, key: bytes | None) -> tuple[int, str]:
    """``(seq, prev_hash)`` for the next entry, after checking the last one."""
    last = _last_line(fh)
    if last is None:
        return 1, GENESIS
    try:
        prev_entry = json.loads(last.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AuditError("the last line of the audit log is not valid JSON; run verify") from None
    if not isinstance(prev_entry, dict):
        raise AuditError("the last line of the audit log is not an entry; run verify")
    if "key_id" in prev_entry and key is None:
        raise AuditError(f"the audit log is keyed (key {prev_entry['key_id']}): set {KEY_ENV} to append to it")
    if prev_entry.get("hash") != entry_hash(prev_entry, key if "key_id" in prev_entry else None):
        raise AuditError("the last entry of the audit log does not match its hash; run verify")
    return int(prev_entry["seq"]) + 1, prev_entry["hash"]


def _write_or_cut_back(fh, path: Path, data: bytes) -> None:
    """Write ``data`` at the end and fsync; on any failure cut the file back to where it
    ended, so no half entry stays behind."""
    fh.flush()
    fd = fh.fileno()
    size = os.lseek(fd, 0, os.SEEK_END)
    try:  # unbuffered, so nothing is left in a buffer to be flushed (and fail again) at close
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError:
            pass
        raise AuditError(f"audit log {path}: the entry could not be written ({exc.strerror or exc}); "
                         "nothing was appended") from None


def _fsync_dir(folder: Path) -> None:
    """Make a new file's name durable too."""
    if hasattr(os, "O_DIRECTORY"):
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def rollback(path: str | Path, entry: Mapping[str, Any]) -> bool:
    """Take back ``entry`` when it is still the last line of the log (what it recorded
    could not be published); True when it was removed. An entry that others have
    appended after stays: it is part of their chain, and a record that the work was
    decided."""
    path = Path(path)
    line = canonical(dict(entry)) + b"\n"
    with open(path, "r+b") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            end = fh.seek(0, os.SEEK_END)
            if end < len(line):
                return False
            fh.seek(end - len(line))
            if fh.read(len(line)) != line:
                return False
            fh.truncate(end - len(line))
            fh.flush()
            os.fsync(fh.fileno())
            return True
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def head(path: str | Path) -> dict | None:
    """``{"seq", "hash"}`` of the last entry (None for an empty log): keep it elsewhere
    and pass it to :func:`verify` to detect entries cut off the end."""
    with open(path, "rb") as fh:
        last = _last_line(fh)
    if last is None:
        return None
    e = json.loads(last.decode("utf-8"))
    return {"seq": e["seq"], "hash": e["hash"]}


def _entry_problems(no: int, e: dict, key: bytes | None, keyed_seen: bool) -> list[str]:
    """What is wrong with one entry on its own: its fields and its hash (keyed or not)."""
    keys = set(e)
    expected = KEYED_FIELDS if "key_id" in e else FIELDS
    if keys != expected:
        missing, extra = sorted(expected - keys), sorted(keys - expected)
        return [f"line {no}: fields differ from an audit entry"
                + (f" (missing {', '.join(missing)})" if missing else "")
                + (f" (unexpected {', '.join(extra)})" if extra else "") + " (entry edited)"]
    if "key_id" not in e and keyed_seen:
        return [f"line {no}: an unkeyed entry after keyed ones (written or rewritten without the key)"]
    try:
        ok = hmac.compare_digest(str(e["hash"]), entry_hash(e, key))
    except AuditError as exc:
        return [f"line {no}: {exc}"]
    return [] if ok else [f"line {no}: hash does not match the entry's content (entry edited)"]


def verify(path: str | Path, anchor: Mapping[str, Any] | None = None, *,
           key: str | bytes | None = None) -> tuple[bool, list[str]]:
    """Check the whole chain. Returns ``(ok, problems)``; the first problem names the
    first broken line (lines count from 1). Later problems are reported too, but one
    tampering usually shows up on one or two lines.

    ``anchor``: a ``{"seq", "hash"}`` recorded earlier by :func:`head`; the log must
    still contain that entry. ``key``: the chain key for keyed entries (default
    ``$SCF_AUDIT_KEY``).
    """
    key = audit_key(key)
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
    prev_hash, prev_seq, keyed_seen = GENESIS, 0, False
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
        problems += _entry_problems(no, e, key, keyed_seen)
        keyed_seen = keyed_seen or "key_id" in e
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
