"""Where a long pass's memory goes, stage by stage: the resident set (VmRSS) sampled every
few milliseconds on a thread, its peak kept per (as-of, stage), and at each stage's end
what the three allocators hold that the process's memory is made of: glibc's heap in use
(``mallinfo2``: numpy and pandas arrays, Python's large objects), Arrow's pool (the
dataset's text columns) and DuckDB's buffer manager (the pass's tables).

Why it is a bench tool: the 8 GB target of ``scf monitor`` (issue 14) is a peak, and the
peak is set inside one stage of one as-of; a total VmHWM says how high, not where. Stop
after stop an ad-hoc script answered that question; this is that script, kept. Stages
are the functions named in :func:`watch`, wrapped for the pass's length and put back
after (the outputs are the same: the wrappers only time and sample). Linux only
(``/proc/self/status``); ``mallinfo2`` needs glibc 2.33+, elsewhere the heap columns are
empty.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time
from contextlib import contextmanager


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).mallinfo2 if name else None
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


def rss_mib() -> float:
    """The process's resident set now, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Timeline:
    """Peaks of the resident set per (as-of, stage) and the allocators at each stage's end.

    ``date`` is set by whoever knows the as-of (:func:`watch` sets it from the
    snapshot's date, so the as-of being built); a stage is the watched function entered
    last. ``scf monitor`` judges an as-of on a thread while the next one's snapshot is
    built: there the stage named may be the judge's (``precompute``, ``finalize``...)
    while the memory is the snapshot's too, and ``date`` is the snapshot's."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.date, self.stack = interval, "-", ["load"]
        self.peaks: dict[tuple[str, str], float] = {}
        self.ends: list[dict] = []
        self.connections: list = []
        self._info = _mallinfo2()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="bench-timeline")

    def _sample(self) -> None:
        while not self._stop.is_set():
            r, key = rss_mib(), (self.date, self.stack[-1])
            if r > self.peaks.get(key, 0.0):
                self.peaks[key] = r
            time.sleep(self.interval)

    def _duckdb_mib(self) -> float:
        total = 0.0
        for con in self.connections:
            try:
                total += con.execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchall()[0][0]
            except Exception:  # a closed connection holds nothing
                pass
        return total / 2**20

    def end(self, stage: str) -> None:
        import pyarrow as pa

        m = self._info() if self._info is not None else None
        self.ends.append({"date": self.date, "stage": stage, "rss_mib": rss_mib(),
                          "heap_in_use_mib": (m.uordblks + m.hblkhd) / 2**20 if m else None,
                          "arrow_mib": pa.total_allocated_bytes() / 2**20, "duckdb_mib": self._duckdb_mib()})

    def wrap(self, module, name: str):
        """``module.name`` replaced by a wrapper that marks the stage; returns the original."""
        original = getattr(module, name)

        @functools.wraps(original)
        def staged(*args, **kwargs):
            self.stack.append(name)
            try:
                return original(*args, **kwargs)
            finally:
                self.end(name)
                self.stack.pop()

        setattr(module, name, staged)
        return original

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def rows(self) -> list[dict]:
        """Per as-of: the peak and the stage that held it, the resident set after the
        as-of gave memory back, and what the allocators held then."""
        dates = list(dict.fromkeys(d for d, _ in self.peaks))
        out = []
        for d in dates:
            stages = {s: v for (dd, s), v in self.peaks.items() if dd == d}
            top = max(stages, key=stages.get)
            after = [e for e in self.ends if e["date"] == d and e["stage"] == "give_back"]
            last = after[-1] if after else {}
            out.append({"as_of": d, "peak_mib": round(stages[top]), "peak_stage": top,
                        **{f"{s}_peak_mib": round(v) for s, v in stages.items() if s in ("_panel_features", "_code_features")},
                        "after_give_back_mib": round(last["rss_mib"]) if last else None,
                        "heap_in_use_mib": round(last["heap_in_use_mib"]) if last.get("heap_in_use_mib") is not None else None,
                        "arrow_mib": round(last["arrow_mib"]) if last else None,
                        "duckdb_mib": round(last["duckdb_mib"]) if last else None})
        return out


# the monitor pass's stages: (module, function)
MONITOR_STAGES = (
    ("scf_engine.pipelines.monitor", ("precompute", "finalize", "monitor_frame", "apply_repair", "fire",
                                      "new_authenticity", "portfolio_rows", "explain_changed", "give_back")),
    ("scf_engine.features.flows", ("_panel_features", "_code_features", "_derived", "_ranks")),
    ("scf_engine.assemble", ("snapshot_table",)),
)


@contextmanager
def watch(timeline: Timeline):
    """The monitor pass's stages wrapped for the block (and put back after it): each
    as-of's date taken from its snapshot, the pass's DuckDB connection recorded."""
    import importlib

    import scf_engine.pipelines.monitor as monitor

    originals = []
    for mod_name, names in MONITOR_STAGES:
        mod = importlib.import_module(mod_name)
        originals += [(mod, n, timeline.wrap(mod, n)) for n in names]
    snapshot_at, connect = monitor.snapshot_at, monitor.connect

    def dated(ds, T, *args, **kwargs):
        # unwatched work is the snapshot's until it returns, then the as-of's judging
        timeline.date, timeline.stack[:] = str(T.date()), ["snapshot"]
        try:
            return snapshot_at(ds, T, *args, **kwargs)
        finally:
            timeline.stack[:] = ["judge"]

    def recorded():
        con = connect()
        timeline.connections.append(con)
        return con

    monitor.snapshot_at, monitor.connect = dated, recorded
    timeline.start()
    try:
        yield timeline
    finally:
        timeline.stop()
        monitor.snapshot_at, monitor.connect = snapshot_at, connect
        for mod, n, original in originals:
            setattr(mod, n, original)
