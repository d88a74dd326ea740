"""Run a function in a fresh process and report wall time and peak memory.

A fresh process per measurement keeps one run's memory out of the next one's peak
(``ru_maxrss`` only ever grows within a process) and keeps warm caches honest. Peak
memory is the process's own VmHWM: on Linux ``ru_maxrss`` of an exec'd child starts at
its parent's size at fork, which would charge the driver's memory to every measurement.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

RUNNER = """
import json, resource, sys, time, importlib
mod, fn = sys.argv[1].rsplit(":", 1)
args = json.loads(sys.argv[2])
f = getattr(importlib.import_module(mod), fn)
t = time.perf_counter()
info = f(*args) or {}
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        peak = int(line.split()[1]) / 1024
print("@@RESULT@@" + json.dumps({"seconds": wall, "peak_mb": peak, **info}))
"""


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    """This process's resident memory now (MB)."""
    return _status_mb("VmRSS")


def peak_mb() -> float:
    """This process's own peak resident memory (VmHWM, MB); ``ru_maxrss`` of an exec'd
    child would include its parent's size at fork."""
    return _status_mb("VmHWM")


def measure(target: str, *args, repeats: int = 3, env: dict | None = None) -> dict:
    """Median wall seconds and peak RSS (MB) of ``target(*args)`` over fresh processes;
    ``env`` adds environment variables to the child's."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", RUNNER, target, json.dumps(args)], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[1], env={**os.environ, **(env or {})})
        if out.returncode != 0:
            raise RuntimeError(f"{target} failed:\n{out.stderr[-3000:]}")
        line = [l for l in out.stdout.splitlines() if l.startswith("@@RESULT@@")][-1]
        runs.append(json.loads(line[len("@@RESULT@@"):]))
    res = {k: v for k, v in runs[-1].items()}
    res["seconds"] = statistics.median(r["seconds"] for r in runs)
    res["seconds_min"] = min(r["seconds"] for r in runs)
    res["seconds_max"] = max(r["seconds"] for r in runs)
    res["peak_mb"] = max(r["peak_mb"] for r in runs)
    return res


def measure_inner(target: str, *args, repeats: int, median_of: tuple[str, ...] = ()) -> dict:
    """``repeats`` fresh processes of ``target(*args)``, which reports its own timed call as
    ``t`` (inputs loaded untimed), its peak as ``hwm_mb`` and its RSS once loaded as
    ``input_mb``: ``seconds`` is the median ``t``, ``peak_mb`` / ``input_mb`` the maxima,
    and each key of ``median_of`` the target reports is a median too."""
    rs = [measure(target, *args, repeats=1) for _ in range(repeats)]
    out = dict(rs[-1])
    out["seconds"] = statistics.median(r["t"] for r in rs)
    out["seconds_all"] = [round(r["t"], 2) for r in rs]
    out["peak_mb"] = max(r["hwm_mb"] for r in rs)
    out["input_mb"] = max(r["input_mb"] for r in rs)
    for k in median_of:
        if k in out:
            out[k] = statistics.median(r[k] for r in rs)
    return out


def measure_rounds(jobs: dict[str, tuple], baseline: str, rounds: int = 5) -> dict[str, dict]:
    """Each job of ``jobs`` (label -> (target, args) or (target, args, env)) once per
    round, in turn, in fresh processes: on a shared, drifting machine a job measured
    right after its baseline sees the same machine. ``seconds`` is each job's median,
    ``ratio`` the median over rounds of baseline seconds / job seconds (pair by pair),
    ``peak_mb`` the largest peak."""
    runs: dict[str, list[dict]] = {label: [] for label in jobs}
    for _ in range(rounds):
        for label, (target, args, *env) in jobs.items():
            runs[label].append(measure(target, *args, repeats=1, env=env[0] if env else None))
    out = {}
    for label, rs in runs.items():
        res = dict(rs[-1])
        res["seconds"] = statistics.median(r["seconds"] for r in rs)
        res["seconds_all"] = [round(r["seconds"], 2) for r in rs]
        res["peak_mb"] = max(r["peak_mb"] for r in rs)
        res["ratio"] = statistics.median(b["seconds"] / r["seconds"] for b, r in zip(runs[baseline], rs))
        out[label] = res
    return out


def show(title: str, rows: list[dict], name: str) -> None:
    import pandas as pd

    df = pd.DataFrame(rows)
    out = Path("out/bench")
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{name}.csv", index=False)
    t = Table(title=title)
    for c in df.columns:
        t.add_column(c, justify="right" if df[c].dtype.kind in "iuf" else "left")
    for r in df.itertuples(index=False):
        t.add_row(*[f"{v:,.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v) for v in r])
    Console(width=200).print(t)  # logs and CI are not terminals: do not fold the table to 80 columns
