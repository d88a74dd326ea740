"""The feature catalogue on Spark ``local[*]`` against the embedded DuckDB path, and a
near-limit peer: how far the catalogue is from what a columnar engine can do.

Sizes: ``BENCH_SPARK_ROWS`` flow rows, a comma list (default ``20000000,100000000``, the
issue's sizes); each world has rows / 200 firms, rows / 10 receivables
(:mod:`bench.synthetic`, cached under ``out/bench/synthetic/``). ``BENCH_SPARK_ENGINES``
picks the rows to run (default all four targets below).

Measured, each in a fresh process (``BENCH_SPARK_REPEATS``, default 1): ``seconds`` is the
timed feature call only (loading the firms, starting Spark and staging the flows as
Parquet are not timed; Spark's start is reported as ``startup_s``); ``peak_mb`` the
Python process's peak RSS plus, for Spark, the driver JVM's (``VmHWM`` of both; Spark
``local`` runs its executors inside that JVM), inputs included:

* **embedded, flows from Parquet** (``run_embedded_lake``, the baseline of "ratio"):
  ``flow_features`` on :class:`~scf_engine.sqlengine.DuckDBEngine` reading the flows from
  the same Parquet table Spark reads (DuckDB streams it and spills to disk);
* **embedded, flows in pandas** (``run_embedded``): ``flow_features(snapshot)`` as
  ``scf score`` runs it, the flows a pandas frame in memory; left out above
  ``BENCH_SPARK_PANDAS_MAX`` rows (default 20M: 100M flows of Python strings do not fit
  a 24 GB machine);
* **spark** (``run_spark``): the same call on :class:`~scf_engine.spark.SparkEngine`, the
  flows read by Spark from Parquet (as from a lake), the firms sent through Arrow; driver
  memory ``BENCH_SPARK_DRIVER_MEMORY`` (default 8g);
* **peer** (``run_peer``): one plain DuckDB group-by over the same Parquet computing a
  representative subset (history_months, trade_in_{1,3,12}m, trade_out_12m,
  active_months_12m, payers_12m, payees_12m, drawdowns_12m), checked against the
  catalogue's values.

"ratio" is embedded-from-Parquet seconds / this row's seconds (> 1: faster). The
agreement line compares the features each engine last wrote at that size.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench import synthetic
from bench.harness import measure, peak_mb, rss_mb, show

ROWS = [int(r) for r in os.environ.get("BENCH_SPARK_ROWS", "20000000,100000000").split(",")]
REPEATS = int(os.environ.get("BENCH_SPARK_REPEATS", 1))
DRIVER_MEMORY = os.environ.get("BENCH_SPARK_DRIVER_MEMORY", "8g")
PEER = ["history_months", "trade_in_1m", "trade_in_3m", "trade_in_12m", "trade_out_12m", "active_months_12m",
        "payers_12m", "payees_12m", "drawdowns_12m"]
OUT = Path("out/bench/spark")
# the in-pandas embedded row is left out above this size: 100M flows as a pandas frame of
# Python strings need more memory than the benchmark machine has (the Parquet row runs)
PANDAS_MAX = int(os.environ.get("BENCH_SPARK_PANDAS_MAX", 20_000_000))
ENGINES = os.environ.get("BENCH_SPARK_ENGINES", "run_embedded_lake,run_embedded,run_spark,run_peer").split(",")


def world_for(rows: int) -> dict:
    n_firms = max(rows // 200, 1000)
    folder = synthetic.world(n_firms=n_firms, n_cores=max(n_firms // 250, 4), n_receivables=rows // 10, n_flows=rows)
    return {"path": str(folder), "firms": n_firms}


def staged_flows(folder: str) -> str:
    """The snapshot's flows as Spark reads them from a lake: Parquet with the delivery
    row number ``_i`` and dates as dates (written once beside the world, a row group at a
    time: 100M rows read whole would take about 7 GB)."""
    path = Path(folder) / "flows_spark.parquet"
    if not path.exists():
        src = pq.ParquetFile(Path(folder) / "flows.parquet")
        tmp = path.with_suffix(".partial")
        writer, offset = None, 0
        for batch in src.iter_batches(batch_size=1 << 20, columns=["booked_on", "payer_id", "payee_id", "amount", "purpose"]):
            t = pa.Table.from_batches([batch])
            t = t.set_column(0, "booked_on", t["booked_on"].cast(pa.date32()))
            t = t.append_column("_i", pa.array(np.arange(offset + 1, offset + t.num_rows + 1, dtype=np.int64)))
            offset += t.num_rows
            writer = writer or pq.ParquetWriter(tmp, t.schema)
            writer.write_table(t, row_group_size=1 << 20)
        writer.close()
        tmp.rename(path)
    return str(path)


def _children_hwm_mb() -> float:
    """Peak RSS of this process's descendants (the Spark driver JVM), MB."""
    total, stack = 0.0, [os.getpid()]
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    while stack:
        for c in kids.get(stack.pop(), []):
            stack.append(c)
            try:
                total += next(int(l.split()[1]) for l in open(f"/proc/{c}/status") if l.startswith("VmHWM:")) / 1024
            except (OSError, StopIteration):
                pass
    return total


def run_embedded(folder: str):
    from scf_engine.features import flow_features

    snap = synthetic.load_snapshot(folder)
    rss_in = rss_mb()
    t = time.perf_counter()
    feats = flow_features(snap)
    dt = time.perf_counter() - t
    OUT.mkdir(parents=True, exist_ok=True)
    feats.to_parquet(OUT / f"embedded_{len(snap.flows)}.parquet")
    return {"t": dt, "hwm_mb": peak_mb(), "input_mb": rss_in, "rows": len(snap.flows), "firms": len(snap.firms)}


def run_embedded_lake(folder: str):
    """The embedded path reading the flows from the same Parquet table Spark reads
    (DuckDB streams it and spills): no pandas copy of the flows, so it reaches sizes the
    in-memory snapshot does not."""
    from scf_engine.features import flow_features
    from scf_engine.sqlengine import DuckDBEngine

    snap = synthetic.load_snapshot(folder, flows=False)
    rss_in = rss_mb()
    t = time.perf_counter()
    flows = staged_flows(folder)
    engine = DuckDBEngine(tables={"flows": flows})
    feats = flow_features(snap, engine=engine)
    engine.close()
    dt = time.perf_counter() - t
    OUT.mkdir(parents=True, exist_ok=True)
    feats.to_parquet(OUT / f"lake_{pq.ParquetFile(flows).metadata.num_rows}.parquet")
    return {"t": dt, "hwm_mb": peak_mb(), "input_mb": rss_in, "firms": len(snap.firms)}


def run_spark(folder: str):
    from scf_engine.features import flow_features
    from scf_engine.spark import SparkEngine, session

    snap = synthetic.load_snapshot(folder, flows=False)  # Spark reads the Parquet; no frame is sent
    flows = staged_flows(folder)
    rows = pq.ParquetFile(flows).metadata.num_rows
    rss_in = rss_mb()
    t0 = time.perf_counter()
    spark = session("local[*]", conf={"spark.driver.memory": DRIVER_MEMORY, "spark.sql.shuffle.partitions": "16",
                                      "spark.default.parallelism": "4"})
    startup = time.perf_counter() - t0
    t = time.perf_counter()
    feats = flow_features(snap, engine=SparkEngine(spark, tables={"flows": flows}))
    dt = time.perf_counter() - t
    jvm = _children_hwm_mb()
    OUT.mkdir(parents=True, exist_ok=True)
    feats.to_parquet(OUT / f"spark_{rows}.parquet")
    spark.stop()
    return {"t": dt, "hwm_mb": peak_mb() + jvm, "jvm_mb": jvm, "input_mb": rss_in, "startup_s": startup, "rows": rows,
            "firms": len(snap.firms)}


PEER_SQL = """
WITH f AS (SELECT payer_id, payee_id, amount::DECIMAL(18,2) AS amount, purpose,
                  (year(DATE '{T}') * 12 + month(DATE '{T}')) - (year(booked_on) * 12 + month(booked_on))
                  - CASE WHEN day(booked_on) >= day(DATE '{T}') THEN 1 ELSE 0 END AS k
           FROM read_parquet('{flows}')),
legs AS (SELECT payee_id AS firm_id, payer_id AS cpty, true AS inflow, amount, purpose, k FROM f
         WHERE k BETWEEN 0 AND 23 AND payee_id IN (SELECT firm_id FROM read_parquet('{firms}'))
         UNION ALL
         SELECT payer_id, payee_id, false, amount, purpose, k FROM f
         WHERE k BETWEEN 0 AND 23 AND payer_id IN (SELECT firm_id FROM read_parquet('{firms}'))),
-- the catalogue's month panel holds reported months only: those with a flow to or from an
-- external (EXT-) party, which only the firm's own account shows (scf_engine.features.flows)
rep AS (SELECT DISTINCT firm_id, k FROM legs WHERE cpty LIKE 'EXT-%'),
l AS (SELECT legs.*, rep.k IS NOT NULL AS rep FROM legs LEFT JOIN rep USING (firm_id, k))
SELECT firm_id, max(k) FILTER (WHERE rep) + 1 AS history_months,
    CASE WHEN bool_or(rep) THEN coalesce(sum(amount) FILTER (WHERE rep AND inflow AND purpose = 'trade' AND k < 1), 0) END AS trade_in_1m,
    CASE WHEN bool_or(rep) THEN coalesce(sum(amount) FILTER (WHERE rep AND inflow AND purpose = 'trade' AND k < 3), 0) END AS trade_in_3m,
    CASE WHEN bool_or(rep) THEN coalesce(sum(amount) FILTER (WHERE rep AND inflow AND purpose = 'trade' AND k < 12), 0) END AS trade_in_12m,
    CASE WHEN bool_or(rep) THEN coalesce(sum(amount) FILTER (WHERE rep AND NOT inflow AND purpose = 'trade' AND k < 12), 0) END AS trade_out_12m,
    CASE WHEN bool_or(rep) THEN count(DISTINCT k) FILTER (WHERE rep AND inflow AND purpose = 'trade' AND k < 12) END AS active_months_12m,
    count(DISTINCT cpty) FILTER (WHERE inflow AND purpose = 'trade' AND k < 12) AS payers_12m,
    count(DISTINCT cpty) FILTER (WHERE NOT inflow AND purpose = 'trade' AND k < 12) AS payees_12m,
    CASE WHEN bool_or(rep) THEN count(*) FILTER (WHERE rep AND inflow AND purpose = 'loan_drawdown' AND k < 12) END AS drawdowns_12m
FROM l GROUP BY firm_id
"""


def run_peer(folder: str):
    """One group-by, straight from Parquet (reading is part of its time: it streams)."""
    import duckdb

    con = duckdb.connect()
    t = time.perf_counter()
    out = con.sql(PEER_SQL.format(T=synthetic.AS_OF.strftime("%Y-%m-%d"), flows=Path(folder) / "flows.parquet",
                                  firms=Path(folder) / "firms.parquet")).df()
    dt = time.perf_counter() - t
    OUT.mkdir(parents=True, exist_ok=True)
    out.to_parquet(OUT / f"peer_{Path(folder).name}.parquet")
    return {"t": dt, "hwm_mb": peak_mb(), "input_mb": 0.0, "firms": len(out)}


def _compare(ref: pd.DataFrame, other: pd.DataFrame) -> str:
    diff = (other.reindex(ref.index) - ref).abs()
    # relative where the value is not rounding noise around an exact 0 (a slope of -1e-18
    # on one engine and 0 on the other is the same slope)
    rel = (diff / ref.abs()).where(ref.abs() > 1e-12).max().max()
    tiny = int(((diff > 0) & (ref.abs() <= 1e-12)).sum().sum())
    nan_ok = bool((other.reindex(ref.index).isna() == ref.isna()).all().all())
    return (f"max rel diff {rel:.1e} (and {tiny} values within 1e-12 of 0 differ by "
            f"{diff.where(ref.abs() <= 1e-12).max().max():.1e}), NaN where NaN: {nan_ok}")


def _agree(folder: str, rows: int) -> str:
    """The largest relative difference between the engines (all features; the reference is
    the embedded path from Parquet, which runs at every size) and between the peer and the
    catalogue (its subset), on the firms both have."""
    if not (OUT / f"lake_{rows}.parquet").exists():
        return "no embedded-from-Parquet row in this run: engines not compared"
    ref = pd.read_parquet(OUT / f"lake_{rows}.parquet")
    notes = []
    for label, name in (("embedded from pandas", "embedded"), ("spark", "spark")):
        path = OUT / f"{name}_{rows}.parquet"
        if path.exists():
            notes.append(f"{label} vs embedded from Parquet: {_compare(ref, pd.read_parquet(path))}")
    peer = pd.read_parquet(OUT / f"peer_{Path(folder).name}.parquet").set_index("firm_id")
    common = ref.index.intersection(peer.index)
    e, p = ref.loc[common, PEER].astype(float), peer.loc[common, PEER].astype(float)
    bad = int((~np.isclose(e.fillna(-1), p.fillna(-1), rtol=1e-9)).sum())
    notes.append(f"peer vs catalogue: {bad} differing values of {e.size}")
    return "; ".join(notes)


RUNS = (("embedded (DuckDB), flows from Parquet", "run_embedded_lake"),
        ("embedded (DuckDB), flows in pandas", "run_embedded"),
        ("spark local[*], flows from Parquet", "run_spark"),
        ("peer: one DuckDB group-by, 9 features", "run_peer"))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rows_out = []
    for n in ROWS:
        w = measure("bench.bench_spark:world_for", n, repeats=1)
        folder = w["path"]
        staged_flows(folder)
        for name in ("lake", "embedded", "spark"):  # no comparison with an earlier run's output
            (OUT / f"{name}_{n}.parquet").unlink(missing_ok=True)
        res = {}
        labels = {target: label for label, target in RUNS}
        for target in ENGINES:  # in the order asked for (a long Spark run first, say)
            label = labels[target]
            if target == "run_embedded" and n > PANDAS_MAX:
                continue
            rs = [measure(f"bench.bench_spark:{target}", folder, repeats=1) for _ in range(REPEATS)]
            r = dict(rs[-1])
            r["t"] = float(np.median([x["t"] for x in rs]))
            r["hwm_mb"] = max(x["hwm_mb"] for x in rs)
            res[label] = r
            print(label, {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
        # the baseline is the Parquet-fed embedded row; a run without it is shown against
        # the first row it has (the ratio column then says so in its header's terms)
        base = res.get(RUNS[0][0], next(iter(res.values())))["t"]
        for label, r in res.items():
            rows_out.append({"flow rows": n, "firms": w["firms"], "engine": label, "seconds": round(r["t"], 2),
                             "peak_mb": round(r["hwm_mb"]), "jvm_mb": round(r.get("jvm_mb", 0)),
                             "startup_s": round(r.get("startup_s", 0.0), 1), "ratio": round(base / r["t"], 3)})
            print(rows_out[-1], flush=True)  # a size at a time: the larger sizes take long
        print(f"{n:,} rows: {_agree(folder, n)}", flush=True)
    show("Flow features: embedded DuckDB (flows from Parquet, and in pandas), Spark local[*] and one plain group-by "
         "(ratio = embedded-from-Parquet s / row s)", rows_out, "spark")


if __name__ == "__main__":
    main()
