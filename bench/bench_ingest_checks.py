"""What the reliability issue's ingest checks cost, on a large flows file.

The three checks added for the reliability issue (#21), each a full pass over the data:

* **longest field**: the longest text value of every string column, against
  ``ingest.yaml``'s ``max_field_chars`` (a 50 MB field quarantines its row, not the file);
* **NaN spellings**: whether a typed amount column parsed ``NaN`` / ``inf`` (then the
  file goes the text path, so they are quarantined with their spelling);
* **future dates**: the data's robust end (every event date grouped and counted, scanned
  from the latest down) and the "in the future" rule on every date.

Baseline (same file, same run, fresh processes, interleaved rounds): ``load_dataset``
with the three checks switched off (the functions replaced by no-ops in the child
process only). Rows: the load as shipped, and the baseline plus each check alone.
"ratio" is baseline seconds / row seconds, median pair by pair: 1.0 is free, 0.9 is a
10% cost. On a shared machine whole loads vary by more than a cheap check costs, so a
second table times each check's own function in one process (best of 5, the loaded
table already in memory) against the best of 3 full loads in that process. The clean file holds no bad value, so every load accepts every row and
measures the cost a good file pays. ``BENCH_INGEST_CHECKS_ROWS`` (default 2,000,000).
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.bench_ingest import make_data
from bench.harness import measure_rounds, show

ROWS = int(os.environ.get("BENCH_INGEST_CHECKS_ROWS", 2_000_000))
ROUNDS = int(os.environ.get("BENCH_INGEST_CHECKS_ROUNDS", 3))
CHECKS = ("longest_field", "nan_spellings", "future_dates")


def load(folder, keep: list):
    """``load_dataset`` with only the checks named in ``keep``."""
    from scf_engine.ingest import load as load_mod
    from scf_engine.ingest import reading

    if "longest_field" not in keep:
        reading._longest_text = lambda table: 0
    if "nan_spellings" not in keep:
        reading._has_nan = lambda table, spec: False
    if "future_dates" not in keep:
        load_mod.data_end = lambda con, files, today=None: None  # horizon NULL: no date is "in the future"
    ds = load_mod.load_dataset(folder)
    s = ds.report.summary().set_index("file")
    flows = [f for f in s.index if f.startswith("flows")][0]
    return {"rows": int(s.loc[flows, "accepted"]), "quarantined": int(s["quarantined"].sum())}


def direct(folder):
    """Each check's own function on the flows file as read, best of 5, and the full load
    (all checks), best of 3, in this one process."""
    import time

    from scf_engine.contract import FLOWS, locate
    from scf_engine.duck import connect
    from scf_engine.ingest import load as load_mod
    from scf_engine.ingest import reading

    def best(f, n):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times)

    folder = Path(folder)
    files = load_mod.read_files(folder)
    table = files["flows"].table
    con = connect()
    for name, lf in files.items():
        con.register(f"raw_{name}", lf.table)
    out = {"read_flows": best(lambda: reading.read_file(locate(folder, FLOWS), FLOWS), 3),
           "longest_field": best(lambda: reading._longest_text(table), 5),
           "nan_spellings": best(lambda: reading._has_nan(table, FLOWS), 5),
           "future_dates_end": best(lambda: load_mod.data_end(con, files), 5),
           "full_load": best(lambda: load_mod.load_dataset(folder), 3)}
    con.close()
    return out


def main():
    csv_dir, pq_dir = make_data(ROWS)
    rows = []
    for fmt, folder in (("csv", csv_dir), ("parquet", pq_dir)):
        base = "without the three checks (baseline)"
        jobs = {base: ("bench.bench_ingest_checks:load", [str(folder), []]),
                "as shipped: all three checks": ("bench.bench_ingest_checks:load", [str(folder), list(CHECKS)])}
        for check in CHECKS:
            jobs[f"baseline + {check} only"] = ("bench.bench_ingest_checks:load", [str(folder), [check]])
        res = measure_rounds(jobs, baseline=base, rounds=ROUNDS)
        for what, r in res.items():
            assert r["rows"] == ROWS and r["quarantined"] == 0, (what, r)
            rows.append({"format": fmt, "what": what, "seconds": r["seconds"],
                         "min_max": f"{min(r['seconds_all']):.2f}-{max(r['seconds_all']):.2f}",
                         "rows_per_s": ROWS / r["seconds"], "peak_mb": r["peak_mb"], "ratio": r["ratio"]})
    d = measure_rounds({"direct": ("bench.bench_ingest_checks:direct", [str(csv_dir)])}, baseline="direct", rounds=1)["direct"]
    show(f"The same checks' own functions, CSV, {ROWS:,} rows, one process (best of 5; the full load best of 3); "
         "share: check seconds / full-load seconds", [
             {"what": k, "seconds": d[k], "share_of_full_load": d[k] / d["full_load"]}
             for k in ("read_flows", "longest_field", "nan_spellings", "future_dates_end", "full_load")],
         "ingest_checks_direct")
    show(f"Ingest checks of issue 21: {ROWS:,} flow rows ({ROUNDS} interleaved rounds, fresh processes; seconds: "
         "median; ratio: median of baseline s / row s, 1.0 = free)", rows, "ingest_checks")


if __name__ == "__main__":
    main()
