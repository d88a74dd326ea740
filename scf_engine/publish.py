"""Publish a staged folder under an audit entry: all or nothing, in one atomic step.

What ``scf score`` and ``scf monitor`` write into an output folder ``DIR`` is one
*output*: a few files (and a memos folder) that belong together and one audit entry
recording the sha256 of each. Readers must never see two outputs mixed, nor files
without their entry. Moving files into place one rename at a time cannot promise that (a
kill between two renames leaves a mix), so each output lives in a folder of its own and
one symlink says which is published::

    DIR/.scf-outputs/KIND/<stamp>-<random>/   an output: its files and its audit_entry.json
    DIR/.scf-outputs/KIND/current             -> <stamp>-<random>   (the published one)
    DIR/limits.csv                            -> .scf-outputs/KIND/current/limits.csv
    DIR/memos, DIR/audit_entry.json, ...      the same, one stable link per name

``KIND`` is the command (``score``, ``monitor``), so two commands writing into one folder
keep their own outputs. The contract paths (``DIR/limits.csv``) are relative links that
never change; publishing replaces ``current`` by ``os.replace`` of a fresh link (a
``rename(2)``: atomic), which switches every contract path at once. The steps
(:class:`Publication`):

1. *settle*: folders of this kind left by a killed run (their ``.owner.json`` names a
   process of this host that no longer runs) are removed and reported, for the next
   audit entry to note; a folder written before this layout (real files) is *adopted*:
   moved under ``.scf-outputs`` and linked, each path reading the same bytes throughout;
2. *stage*: the caller writes its files into a new folder marked with its owner; the
   sha256 recorded is that of the bytes written (never a re-read of a file another run
   may have replaced);
3. *append* the audit entry (the caller's; it carries the hashes), write it into the
   folder as ``audit_entry.json``, make sure every name has its link, *flip*
   ``current``. A failure before the flip takes the entry back; a kill before it leaves
   the previous output, and the entry (if appended) is noted as never published by the
   next run;
4. *tidy*: the owner mark goes, links to names the new output lacks are removed, and
   outputs beyond ``keep_published`` (``models/output.yaml``) are deleted.

:func:`verify` checks a folder against the audit log (``scf audit verify --out``).
The named points ``appended``, ``linked`` and ``published`` are :mod:`scf_engine.faults`
checkpoints. Crash safety here means a killed process (``kill -9``); durability
against power loss would also need fsync of every staged file, which this does not do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from scf_engine import audit, owner
from scf_engine.errors import OutputError
from scf_engine.faults import checkpoint
from scf_engine.hashing import file_sha256

OUTPUTS = ".scf-outputs"
CURRENT = "current"
OWNER_FILE = ".owner.json"
ENTRY = "audit_entry.json"
LEGACY_STAGING = ".scf-staging-"  # the staging folders of the previous, rename-by-rename publish
TMP_LINK = ".link-"


class Publication:
    """One output of ``kind`` into ``folder``, used as a context manager: entering settles
    leftovers and opens the staging folder, :meth:`write` / :meth:`add_folder` stage,
    :meth:`publish` appends the entry and flips; leaving without a publish removes the
    staging folder (nothing of it was ever visible).

    ``names``: every name this command may publish in ``folder`` (a real file or folder
    there by one of these names is the output of an older version: adopted, not
    refused); ``entry_link``: the name the audit entry is linked under; ``keep``: outputs
    kept, the published one included."""

    def __init__(self, folder: Path | str, kind: str, *, names, keep: int, entry_link: str = ENTRY, progress=None):
        self.folder, self.kind = Path(folder), kind
        self.state = self.folder / OUTPUTS / kind
        self.names, self.keep, self.entry_link = set(names) | {entry_link}, int(keep), entry_link
        self.say = progress or (lambda *a, **k: None)
        self.hashes: dict = {}
        self.leftovers: list[dict] = []
        self.staging: Path | None = None
        self.published = False

    def __enter__(self) -> "Publication":
        try:
            self.state.mkdir(parents=True, exist_ok=True)
            self.leftovers = settle(self.folder, self.kind, self.say)
            adopt(self.folder, self.kind, self.names, self.entry_link, self.say)
            self.staging = _new_output(self.state, "")
            _write_atomic(self.staging / OWNER_FILE, json.dumps(owner.me()).encode())
        except OSError as exc:
            raise OutputError(f"--out {self.folder}: cannot write there ({exc.strerror or exc})") from None
        return self

    def __exit__(self, *exc) -> bool:
        if self.staging is not None and current_name(self.state) == self.staging.name:
            self.published = True  # interrupted between the flip and the line that says so: it is published
        if not self.published and self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            for empty in (self.state, self.state.parent):  # a first run that failed leaves nothing under --out
                try:
                    empty.rmdir()
                except OSError:
                    break
        return False

    def path(self, name: str) -> Path:
        return self.staging / name

    def write(self, name: str, data: bytes) -> Path:
        """Stage one file; its hash is that of ``data``, the bytes written."""
        path = self.staging / name
        path.write_bytes(data)
        self.hashes[name] = hashlib.sha256(data).hexdigest()
        return path

    def add_folder(self, name: str) -> dict:
        """Record a staged folder the caller wrote (``memos``): ``{file: sha256}``. Only
        this process writes into its staging folder, so reading back is reading its own
        bytes."""
        files = {p.name: file_sha256(p) for p in sorted((self.staging / name).iterdir()) if p.is_file()}
        self.hashes[name] = files
        return files

    def publish(self, audit_log: Path, append, before_flip=None) -> dict:
        """``append(hashes) -> entry`` writes the audit entry (the caller knows what it
        says); ``before_flip(entry, path)`` runs once the entry is in the folder (the
        caller logs it to MLflow). Then one flip publishes everything. A failure before
        the flip takes the entry back."""
        entry = append(self.hashes)
        checkpoint("appended")
        try:
            _write_atomic(self.staging / ENTRY, json.dumps(entry, ensure_ascii=False, indent=2).encode("utf-8"))
            if before_flip is not None:
                before_flip(entry, self.staging / ENTRY)
            self._link_names()
            checkpoint("linked")
            _point(self.state / CURRENT, self.staging.name, self.state)
        except BaseException:
            audit.rollback(audit_log, entry)
            raise
        self.published = True
        checkpoint("published")
        self._tidy()
        return entry

    def link(self, name: str) -> Path:
        """The contract path of a published name (``DIR/limits.csv``)."""
        return self.folder / name

    def _link_names(self) -> None:
        """Every name of the staged output has its stable link in ``folder`` before the
        flip (a new link reads nothing new until ``current`` moves)."""
        for name in sorted(p.name for p in self.staging.iterdir() if not p.name.startswith(".")):
            link = self.folder / (self.entry_link if name == ENTRY else name)
            target = link_target(self.kind, name)
            if link.is_symlink() and os.readlink(link) == target:
                continue
            if link.exists() or link.is_symlink():
                raise OutputError(f"--out {self.folder}: {link.name} is there and is not scf {self.kind}'s link "
                                  f"({target}): move it away, or give scf {self.kind} its own folder")
            _point(link, target, self.state)

    def _tidy(self) -> None:
        """After the flip, best effort (the output is published whatever happens here)."""
        try:
            (self.staging / OWNER_FILE).unlink(missing_ok=True)
            prefix = f"{OUTPUTS}/{self.kind}/{CURRENT}/"
            for link in self.folder.iterdir():
                if link.is_symlink() and os.readlink(link).startswith(prefix) and not link.exists():
                    link.unlink()
                    self.say(f"removed {link.name}: this output has none")
            prune(self.state, self.keep)
        except OSError as exc:
            self.say(f"tidying {self.state} after publishing: {exc.strerror or exc}")


def link_target(kind: str, name: str) -> str:
    return f"{OUTPUTS}/{kind}/{CURRENT}/{name}"


def _is_link(path: Path, kind: str, name: str) -> bool:
    """``path`` is the stable link of ``kind``'s ``name`` (``name``: as in the output folder)."""
    return path.is_symlink() and os.readlink(path) == link_target(kind, name)


def _legacy(path: Path) -> bool:
    """A real file or folder, or a link of someone else's, where a stable link belongs
    (a link into ``.scf-outputs`` is some command's: never adopted)."""
    if path.is_symlink():
        return not os.readlink(path).startswith(OUTPUTS + "/")
    return path.exists()


@contextmanager
def write_errors(folder: Path):
    """A file of the output that cannot be written (a full disk, a quota) is one line
    naming the folder; the staging folder goes, nothing is published."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"--out {folder}: the output's files could not be written ({exc.strerror or exc}); "
                          "nothing was published") from None


def _stamp() -> str:
    """Output folders sort by when they were made (prune keeps the newest)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")


def _new_output(state: Path, label: str) -> Path:
    """A fresh output folder, readable as the umask says (``mkdtemp`` makes it private:
    readers of ``DIR/limits.csv`` go through it, so it must be as readable as the files
    the previous layout wrote in place)."""
    state.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{_stamp()}-{label}", dir=state))
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(path, 0o777 & ~mask)
    return path


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _point(link: Path, target: str, scratch: Path) -> None:
    """Make ``link`` a symlink to ``target`` in one step: a fresh link made in
    ``scratch`` (same file system), then ``os.replace`` over whatever was there."""
    tmp = scratch / f"{TMP_LINK}{os.getpid()}-{os.urandom(4).hex()}"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def current_name(state: Path) -> str | None:
    try:
        return os.readlink(state / CURRENT)
    except OSError:
        return None


def _outputs(state: Path) -> list[Path]:
    return sorted(p for p in state.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


def _owner(folder: Path) -> dict | None:
    """The owner mark of a folder being staged; None when it has none (published)."""
    path = folder / OWNER_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def settle(folder: Path, kind: str, say) -> list[dict]:
    """What runs killed before their flip left in ``folder`` for ``kind``: each such
    output is removed and reported (``{"folder", "pid", "files": {name: sha256}}``,
    the staged files' hashes, which name the audit entry appended but never published
    if there is one). A folder whose owner still runs, or ran on another host, is left
    alone. The published output's owner mark, left by a kill just after its flip, is
    removed (it is published)."""
    notes, state = [], folder / OUTPUTS / kind
    published = current_name(state) if state.is_dir() else None
    candidates = (_outputs(state) if state.is_dir() else []) + sorted(
        p for p in folder.glob(LEGACY_STAGING + "*") if p.is_dir())
    for out in candidates:
        who = _owner(out)
        if who is None and out.name.startswith(LEGACY_STAGING):
            who = {}
        if who is None:
            continue
        if not owner.is_dead(who):
            say(f"left alone: {out.name} (its run may still be going, or ran on another host)")
            continue
        if out.name == published:
            (out / OWNER_FILE).unlink(missing_ok=True)
            continue
        files = {p.name: file_sha256(p) for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".")}
        notes.append({"folder": str(out.relative_to(folder)), "pid": who.get("pid"), "files": files})
        shutil.rmtree(out, ignore_errors=True)
        say(f"removed {out.relative_to(folder)}, left by process {who.get('pid')} killed before publishing")
    for tmp in state.glob(TMP_LINK + "*") if state.is_dir() else []:
        pid = tmp.name[len(TMP_LINK):].split("-")[0]
        if owner.is_dead({"host": socket.gethostname(), "pid": pid}):
            tmp.unlink(missing_ok=True)
    return notes


def prune(state: Path, keep: int) -> list[str]:
    """Remove published outputs beyond the newest ``keep`` (the current one always
    stays; folders still marked with an owner are being staged: not touched)."""
    published = current_name(state)
    done = [p for p in _outputs(state) if p.name != published and _owner(p) is None]
    removed = []
    for old in sorted(done, key=lambda p: p.name, reverse=True)[max(keep - 1, 0):]:
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old.name)
    return removed


def adopt(folder: Path, kind: str, names, entry_link: str, say) -> str | None:
    """An output written before this layout, or a copy of one made with ``cp -r`` or
    ``shutil.copytree`` (which turn links into files): its files among ``names`` are
    moved under ``.scf-outputs/KIND`` as one output and linked. Every path reads the same
    bytes throughout (files are hard-linked into place, then replaced by their link in
    one rename each), except a real folder (``memos``): it is moved, then linked, and a
    kill between the two leaves that name missing until the next run, which links it
    again. Returns the adopted output's name, None when there was nothing to adopt."""
    state = folder / OUTPUTS / kind
    cur = state / CURRENT
    if cur.exists() and not cur.is_symlink():  # a copied layout: `current` became a real folder
        os.rename(cur, state / f"{_stamp()}-copied")
    legacy = [n for n in sorted(names) if _legacy(folder / n)]
    if not legacy:
        return None
    inside = {n: ENTRY if n == entry_link else n for n in legacy}
    new = _new_output(state, "adopted-")
    published = current_name(state)
    if published and (state / published).is_dir():  # what the links show today keeps showing after the flip
        for p in (state / published).iterdir():
            if not p.name.startswith(".") and p.name not in inside.values():
                (shutil.copytree(p, new / p.name, copy_function=_link_or_copy) if p.is_dir() else _link_or_copy(p, new / p.name))
    for n, m in inside.items():
        src = folder / n
        if src.is_dir() and not src.is_symlink():
            continue  # moved after the flip
        if src.is_dir():
            shutil.copytree(src, new / m, copy_function=_link_or_copy)
        elif src.exists():
            _link_or_copy(src, new / m)
    _point(cur, new.name, state)
    for n, m in inside.items():
        src = folder / n
        if src.is_dir() and not src.is_symlink():
            os.rename(src, new / m)
        if (new / m).exists():
            _point(src, link_target(kind, m), state)
        else:
            src.unlink(missing_ok=True)  # a link to nothing: there was nothing to read
    say(f"moved {', '.join(legacy)} under {OUTPUTS}/{kind}/{new.name} (the linked layout; same bytes)")
    return new.name


def verify(folder: Path | str, log: Path | str) -> list[str]:
    """What is wrong with an output folder against the audit log (empty: nothing). For
    each command's published output: its ``audit_entry.json`` must be an entry of the
    log, byte for byte in content; every file that entry recorded must be there, through
    its link, with the recorded sha256; no file may be there that it did not record; and
    no output left by an interrupted run may lie beside it. A folder of the layout before
    links (real files and an ``audit_entry.json``) is checked the same way. Outputs never
    published are not problems (see :func:`unpublished`)."""
    folder = Path(folder)
    try:
        logged = {ln for ln in Path(log).read_bytes().splitlines() if ln.strip()}
    except OSError as exc:
        return [f"{log}: cannot be read ({exc.strerror or exc})"]
    root = folder / OUTPUTS
    states = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    problems = [] if states else _verify_one(folder, folder, None, logged, log)
    for state in states:
        published, linked = current_name(state), True
        if published is None and (state / CURRENT).is_dir():  # a copy that followed the links (shutil.copytree)
            published, linked = CURRENT, False
        if published is None or not (state / published).is_dir():
            problems.append(f"{state}: no published output ({CURRENT} is missing)")
            continue
        problems += _verify_one(folder, state / published, state.name, logged, log, linked)
    return problems


def unpublished(folder: Path | str) -> list[Path]:
    """Outputs being staged, or left by a killed run, in ``folder``: no reader sees them
    (nothing links to them) and the next run of their command removes them, so they are
    worth a note, not a verification failure (an entry appended for one was never
    published: the next run's entry names its hashes)."""
    folder, root = Path(folder), Path(folder) / OUTPUTS
    found = [p for state in (sorted(root.iterdir()) if root.is_dir() else []) if state.is_dir()
             for p in _outputs(state) if p.name != current_name(state) and _owner(p) is not None]
    return found + sorted(folder.glob(LEGACY_STAGING + "*"))


def _verify_one(folder: Path, published: Path, kind: str | None, logged: set, log, linked: bool = False) -> list[str]:
    try:
        entry = json.loads((published / ENTRY).read_text())
    except (OSError, ValueError):
        return [f"{folder}: no readable {ENTRY}" + (f" for scf {kind}" if kind else "") + ": the files there are not audited"]
    seq, problems = entry.get("seq"), []
    if audit.canonical(entry) not in logged:
        problems.append(f"{published / ENTRY}: entry #{seq} is not in the audit log {log}")
    output = (entry.get("details") or {}).get("output") or {}
    for name, digest in sorted(output.items()):
        path = folder / name
        if linked and not _is_link(path, kind, name):
            problems.append(f"{path}: not the link to the published output ({link_target(kind, name)})")
        recorded = digest if isinstance(digest, dict) else {"": digest}
        for sub, sha in sorted(recorded.items()):
            p = path / sub if sub else path
            if not p.is_file():
                problems.append(f"{p}: recorded by entry #{seq} but missing")
            elif file_sha256(p) != sha:
                problems.append(f"{p}: its bytes are not those entry #{seq} recorded")
        if isinstance(digest, dict) and path.is_dir():
            extra = sorted(p.name for p in path.iterdir() if p.is_file() and p.name not in digest)
            if extra:
                problems.append(f"{path}: {len(extra)} file(s) entry #{seq} did not record, e.g. {extra[0]}")
    if kind is not None:
        extra = sorted(p.name for p in published.iterdir() if not p.name.startswith(".") and p.name != ENTRY
                       and p.name not in output)
        if extra:
            problems.append(f"{published}: {', '.join(extra)} not recorded by entry #{seq}")
    return problems


__all__ = ["Publication", "settle", "adopt", "prune", "verify", "unpublished", "OUTPUTS", "CURRENT", "ENTRY", "OWNER_FILE"]
