"""Loading 10 million flow rows with full validation, against a plain read of the same file.

Baselines (same file, same run): ``pandas.read_csv`` for CSV, ``pandas.read_parquet`` for
Parquet. "ratio" is baseline seconds / our seconds, i.e. our throughput as a fraction of
the plain read's; the target is >= 0.5 (validation costs no more than the read itself).
Our load includes every contract rule: dates, amounts and decimals, purposes, firm
membership of payer and payee, payer != payee, txn_id uniqueness, and typed output.

Two more rows say where the time goes:

* "our reader alone": the same files read into the contract's types and handed to pandas
  with no rule checked (``read_file`` + the frame conversion). Its ratio is the most any
  amount of work on the checks could reach; the gap between it and the full load is what
  the checks cost.
* "txn_id not in order" (Parquet): the same rows shuffled, so uniqueness cannot be proven
  by comparing neighbours (the sorted export's fast path) and goes through DuckDB's hash
  aggregate.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bench.harness import measure_rounds, show

ROWS = int(os.environ.get("BENCH_INGEST_ROWS", 10_000_000))
N_FIRMS = 50_000
ROUNDS = int(os.environ.get("BENCH_INGEST_ROUNDS", 5))
DATA = Path("out/bench/ingest")


def make_data(rows: int = ROWS) -> tuple[Path, Path]:
    """A contract dataset with ``rows`` flows (CSV and Parquet copies), made once."""
    from scf_engine.simulate.emit import sequential_ids
    from scf_engine.contract import make_uscc

    csv_dir, pq_dir = DATA / f"csv_{rows}", DATA / f"parquet_{rows}"
    if (csv_dir / "flows.csv").exists() and (pq_dir / "flows.parquet").exists():
        return csv_dir, pq_dir
    rng = np.random.default_rng(0)
    firm_ids = np.array([make_uscc("320281", 10_000_000 + i) for i in range(N_FIRMS)])
    firms = pa.table({
        "firm_id": firm_ids, "name": [f"企业{i}" for i in range(N_FIRMS)], "industry": ["C34"] * N_FIRMS,
        "region": ["320281"] * N_FIRMS, "founded_on": ["2010-01-01"] * N_FIRMS,
        "registered_capital": ["1000000"] * N_FIRMS, "is_core": ["false"] * N_FIRMS,
        "core_rating": [""] * N_FIRMS, "batch_group": [""] * N_FIRMS,
    })
    receivables = pa.table({
        "receivable_id": ["R1"], "supplier_id": [firm_ids[0]], "buyer_id": [firm_ids[1]], "amount": ["100.00"],
        "issued_on": ["2024-01-01"], "due_on": ["2024-02-01"], "confirmed_on": [""], "paid_on": [""], "paid_amount": [""],
    })
    ext = np.array([f"EXT-C-{i:06d}" for i in range(20_000)])
    payer_firm = rng.random(rows) < 0.5
    firm = rng.integers(0, N_FIRMS, rows)
    other = rng.integers(0, len(ext), rows)
    parties = pa.array(np.concatenate([firm_ids, ext]))
    payer_idx = np.where(payer_firm, firm, N_FIRMS + other)
    payee_idx = np.where(payer_firm, N_FIRMS + other, firm)
    days = np.datetime64("2022-01-01") + rng.integers(0, 1460, rows)
    purposes = np.array(["trade", "payroll", "tax", "social_insurance", "utilities", "loan_repayment", "other"])
    flows = pa.table({
        "txn_id": sequential_ids("T", rows, 10),
        "booked_on": pa.array(np.sort(days), pa.date32()),
        "payer_id": parties.take(pa.array(payer_idx)),
        "payee_id": parties.take(pa.array(payee_idx)),
        "amount": pa.array(np.round(np.exp(rng.normal(9, 1.5, rows)), 2)),
        "purpose": pa.array(purposes[rng.integers(0, len(purposes), rows)]),
    })
    for d in (csv_dir, pq_dir):
        d.mkdir(parents=True, exist_ok=True)
        pacsv.write_csv(firms, d / "firms.csv")
        pacsv.write_csv(receivables, d / "receivables.csv")
    pacsv.write_csv(flows, csv_dir / "flows.csv", pacsv.WriteOptions(quoting_style="none"))
    pq.write_table(flows, pq_dir / "flows.parquet", compression="zstd")
    return csv_dir, pq_dir


def shuffled_copy(pq_dir: Path, rows: int = ROWS) -> Path:
    """The Parquet dataset with its flow rows in random order (made once)."""
    out = DATA / f"parquet_shuffled_{rows}"
    if (out / "flows.parquet").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("firms.csv", "receivables.csv"):
        (out / name).write_bytes((pq_dir / name).read_bytes())
    flows = pq.read_table(pq_dir / "flows.parquet")
    order = np.random.default_rng(1).permutation(flows.num_rows)
    pq.write_table(flows.take(pa.array(order)), out / "flows.parquet", compression="zstd")
    return out


def baseline_csv(folder):
    import pandas as pd

    df = pd.read_csv(Path(folder) / "flows.csv")
    return {"rows": len(df)}


def baseline_parquet(folder):
    import pandas as pd

    df = pd.read_parquet(Path(folder) / "flows.parquet")
    return {"rows": len(df)}


def reader_only(folder):
    """Read the flows file into the contract's types and hand it to pandas, checking nothing."""
    from scf_engine.contract import FLOWS, locate
    from scf_engine.ingest.load import _to_frame
    from scf_engine.ingest.reading import read_file

    lf = read_file(locate(Path(folder), FLOWS), FLOWS)
    df = _to_frame(lf.table.drop_columns(["_row"]), FLOWS)
    return {"rows": len(df)}


def ours(folder):
    from scf_engine.ingest import load_dataset

    ds = load_dataset(folder)
    s = ds.report.summary().set_index("file")
    flows = [f for f in s.index if f.startswith("flows")][0]
    return {"rows": int(s.loc[flows, "accepted"]), "quarantined": int(s["quarantined"].sum())}


SYSTEM_POOL = {"ARROW_DEFAULT_MEMORY_POOL": "system"}


def main():
    csv_dir, pq_dir = make_data()
    shuffled = shuffled_copy(pq_dir)
    rows = []
    for fmt, folder, base in (("csv", csv_dir, "baseline_csv"), ("parquet", pq_dir, "baseline_parquet")):
        label = "pandas.read_csv" if fmt == "csv" else "pandas.read_parquet"
        jobs = {
            f"plain {label} (baseline)": (f"bench.bench_ingest:{base}", [str(folder)]),
            f"plain {label}, Arrow on the system allocator (as ours)": (f"bench.bench_ingest:{base}", [str(folder)], SYSTEM_POOL),
            "our reader alone: contract types, to pandas, no checks": ("bench.bench_ingest:reader_only", [str(folder)]),
            "load_dataset, full validation": ("bench.bench_ingest:ours", [str(folder)]),
        }
        if fmt == "parquet":
            jobs["load_dataset, full validation, txn_id not in order"] = ("bench.bench_ingest:ours", [str(shuffled)])
        res = measure_rounds(jobs, baseline=f"plain {label} (baseline)", rounds=ROUNDS)
        fair = res[f"plain {label}, Arrow on the system allocator (as ours)"]["seconds_all"]
        for what, r in res.items():
            assert r["rows"] == ROWS and r.get("quarantined", 0) == 0, (what, r)
            rows.append({"format": fmt, "what": what, "seconds": r["seconds"], "min_max": f"{min(r['seconds_all']):.2f}-{max(r['seconds_all']):.2f}",
                         "rows_per_s": ROWS / r["seconds"], "peak_mb": r["peak_mb"], "ratio": r["ratio"],
                         "ratio_vs_system_allocator": statistics.median(f / s for f, s in zip(fair, r["seconds_all"]))})
    show(f"Ingest: {ROWS:,} flow rows (each job once per round in turn, {ROUNDS} rounds, fresh processes; seconds: median; "
         "ratio: median of baseline s / our s pair by pair, target >= 0.5)", rows, "ingest")


if __name__ == "__main__":
    main()
