"""Who owns a piece of unfinished work, and whether that owner is still alive.

A ``kill -9`` gives a process no chance to mark its MLflow run FAILED or to remove its
staging folder. So the work records its owner (host, process id, and the process's start
time, which tells a live owner from a later process that happens to reuse the id), and
the next run of the engine on the same host settles what a dead owner left. Work owned by
another host is never touched: from here nobody can tell whether that process lives.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22),
    or None where there is no ``/proc`` (then the process id alone is checked)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, which may hold spaces


def me() -> dict:
    """This process as an owner: ``{"host", "pid", "started"}`` (all strings)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": str(pid), "started": _start_ticks(pid) or ""}


def is_local(owner: dict) -> bool:
    return owner.get("host") == socket.gethostname()


def is_dead(owner: dict) -> bool:
    """True only when ``owner`` was a process on this host that no longer runs (its id
    is free, or now belongs to a process started at another time). Unknown: False."""
    if not is_local(owner) or not str(owner.get("pid", "")).isdigit():
        return False
    pid = int(owner["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's live process
    started = _start_ticks(pid)
    return bool(owner.get("started")) and started is not None and started != owner["started"]


__all__ = ["me", "is_local", "is_dead"]
