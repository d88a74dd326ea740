"""Simulating and writing a 100,000-firm world (targets: under 5 minutes, under 8 GB).

Baseline in the same run: a 10,000-firm world; "per-firm ratio" is our per-firm cost at
100k over the per-firm cost at 10k (1.0 = linear scaling).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.harness import measure, show

SIZES = [int(x) for x in os.environ.get("BENCH_SIM_FIRMS", "10000,100000").split(",")]


def run(n_firms: int, fmt: str):
    import time

    from scf_engine.simulate import WorldConfig, simulate, write_dataset

    out = Path(f"out/bench/simulate/{n_firms}_{fmt}")
    stages = {}
    t = time.perf_counter()

    def say(msg):
        stages[msg] = round(time.perf_counter() - t, 1)

    world = simulate(WorldConfig(n_firms=n_firms, seed=1), progress=say)
    write_dataset(world, out, fmt=fmt)
    stages["written"] = round(time.perf_counter() - t, 1)
    rows = len(world.records["flows_arrays"]["amount"])
    shutil.rmtree(out)
    return {"flows": rows, "stages": stages}


def main():
    rows = []
    base = None
    for n in SIZES:
        for fmt in ("parquet", "csv"):
            r = measure("bench.bench_simulate:run", n, fmt, repeats=1)
            per_firm = r["seconds"] / n
            if base is None or (n == SIZES[0] and fmt == "parquet"):
                base = per_firm if fmt == "parquet" else base
            rows.append({"firms": n, "format": fmt, "flows": r["flows"], "seconds": r["seconds"], "peak_mb": r["peak_mb"],
                         "per_firm_ratio": per_firm / base, "stages (s, cumulative)": str(r["stages"])})
    show("Simulator: whole world written (one fresh process each)", rows, "simulate")


if __name__ == "__main__":
    main()
