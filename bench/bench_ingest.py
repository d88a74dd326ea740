"""Loading 10 million flow rows with full validation, against a plain read of the same file.

Baselines (same file, same run): ``pandas.read_csv`` for CSV, ``pandas.read_parquet`` for
Parquet. "ratio" is baseline seconds / our seconds, i.e. our throughput as a fraction of
the plain read's; the target is >= 0.5 (validation costs no more than the read itself).
Our load includes every contract rule: dates, amounts and decimals, purposes, firm
membership of payer and payee, payer != payee, txn_id uniqueness, and typed output.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bench.harness import measure, show

ROWS = int(os.environ.get("BENCH_INGEST_ROWS", 10_000_000))
N_FIRMS = 50_000
DATA = Path("out/bench/ingest")


def make_data(rows: int = ROWS) -> tuple[Path, Path]:
    """A contract dataset with ``rows`` flows (CSV and Parquet copies), made once."""
    from scf_engine.simulate.emit import sequential_ids
    from scf_engine.simulate.world import make_uscc

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


def baseline_csv(folder):
    import pandas as pd

    df = pd.read_csv(Path(folder) / "flows.csv")
    return {"rows": len(df)}


def baseline_parquet(folder):
    import pandas as pd

    df = pd.read_parquet(Path(folder) / "flows.parquet")
    return {"rows": len(df)}


def ours(folder):
    from scf_engine.ingest import load_dataset

    ds = load_dataset(folder)
    s = ds.report.summary().set_index("file")
    flows = [f for f in s.index if f.startswith("flows")][0]
    return {"rows": int(s.loc[flows, "accepted"]), "quarantined": int(s["quarantined"].sum())}


def main():
    csv_dir, pq_dir = make_data()
    rows = []
    for fmt, folder, base in (("csv", csv_dir, "baseline_csv"), ("parquet", pq_dir, "baseline_parquet")):
        b = measure(f"bench.bench_ingest:{base}", str(folder))
        o = measure("bench.bench_ingest:ours", str(folder))
        assert o["rows"] == b["rows"] == ROWS and o["quarantined"] == 0
        label = "pandas.read_csv" if fmt == "csv" else "pandas.read_parquet"
        rows.append({"format": fmt, "what": f"plain {label} (baseline)", "rows": ROWS, "seconds": b["seconds"],
                     "rows_per_s": ROWS / b["seconds"], "peak_mb": b["peak_mb"], "ratio": 1.0})
        rows.append({"format": fmt, "what": "load_dataset, full validation", "rows": ROWS, "seconds": o["seconds"],
                     "rows_per_s": ROWS / o["seconds"], "peak_mb": o["peak_mb"], "ratio": b["seconds"] / o["seconds"]})
    show(f"Ingest: {ROWS:,} flow rows (median of 3 fresh processes; ratio = baseline s / our s, target >= 0.5)", rows, "ingest")


if __name__ == "__main__":
    main()
