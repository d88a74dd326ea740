"""Every request of the service in the hash-chained audit log, written in groups.

One ``audit.append`` per request would cost one lock, one read of the last line and one
fsync per request. Instead one writer thread takes everything queued since its last write
and appends it as one entry (``action: serve``, ``details.requests``: one record per
request), the classic group commit: under load a group grows while the previous fsync
runs, when idle a group is a single request, and nobody waits for a timer.

A response is sent only once the entry holding its request is on disk (the caller waits
on the future :meth:`AuditWriter.submit` returns), so an answer given is an answer
recorded; when the log cannot be appended to, the request is answered 503 instead. The
chain stays one chain under any concurrency because only this thread appends, through
:func:`scf_engine.audit.append` (which also holds the file lock against other processes,
e.g. a ``scf score`` writing to the same log).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from pathlib import Path

from scf_engine import audit

_STOP = object()


class AuditWriter:
    def __init__(self, path: Path | str, actor: str | None, *, max_group: int = 1000):
        self.path = Path(path)
        self.actor = actor
        self.max_group = max_group
        self.requests_recorded = 0
        self.entries_written = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="scf-audit-writer", daemon=True)
        self._thread.start()

    def submit(self, record: dict) -> Future:
        """Queue one request's record; the future resolves to ``(seq, hash)`` of the entry
        that holds it, once it is on disk (or to the append's exception)."""
        fut: Future = Future()
        self._queue.put((record, fut))
        return fut

    def _take(self) -> list | None:
        first = self._queue.get()
        if first is _STOP:
            return None
        group = [first]
        while len(group) < self.max_group:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)  # write this group, then stop
                break
            group.append(item)
        return group

    def _run(self) -> None:
        while (group := self._take()) is not None:
            records = [r for r, _ in group]
            firms = sorted({f for r in records for f in r.get("firms", ())})
            try:
                entry = audit.append(self.path, self.actor, "serve", {"requests": records, "firms": firms})
            except BaseException as exc:  # the log refused: every waiting request is told
                for _, fut in group:
                    fut.set_exception(exc)
                continue
            self.requests_recorded += len(group)
            self.entries_written += 1
            for _, fut in group:
                fut.set_result((entry["seq"], entry["hash"]))

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)


__all__ = ["AuditWriter"]
