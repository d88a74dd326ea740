"""After-lending monitoring: early-warning power and cost (the issue's targets).

1. **Early warning** on the default world (seed 5) and two untuned worlds (seeds 17, 29),
   ``BENCH_MONITOR_FIRMS`` firms each (default 2,000; the issue asks about the default
   world size): train and promote once per world (cached under out/bench/monitor/), score
   every non-core firm at a batch date two years into the data, then ``scf monitor``'s
   pipeline monthly for 12 months after it. Reported: at 6 months after the batch, the
   default rate within the next 6 months of firms at ``red`` against the portfolio's
   (target >= 4x); the share of the portfolio's defaulters that were amber or red at
   least 3 months before their default (target >= 60%) and the median lead time, that
   share again among the defaulters it is possible for (default at least 3 months after
   the first as-of), the share of firms ever red, ever amber or red, and amber or red at
   6 months (a rule that flags everyone meets the lead target: read them together). The
   12-date pass is rerun each time (``BENCH_MONITOR_REUSE=1`` reads the last one). Caveat: the models are trained on all snapshots whose labels
   are observed, some of which overlap the monitoring window (optimistic).
2. **Cost**: the monitoring pass over the portfolio for 1 as-of date and for 12, by this
   code and by the baseline code (``BENCH_MONITOR_BASELINE``, a git revision, default
   f12105c, main before the pass shared its legs: its ``scf_engine`` is taken with ``git
   archive`` and put first on the child process's path), on the same world in the same
   run; ratio = the baseline's seconds over this code's at 12 dates; ``same_outputs``: the
   two passes wrote the same portfolio.csv, alerts.csv and drift.csv, byte for byte. The
   worlds for the cost are ``BENCH_MONITOR_COST_FIRMS`` firms (a comma-separated list,
   default: the quality worlds' size), monitored with the champion models of the seed-5
   quality world (a bigger world is not retrained); 12 dates at every size, 1 date at the
   largest. The issue's 100,000 firms x 12 dates is extrapolated, not measured: every as-of
   snapshots and features the whole world (the industry ranks and the industry medians the
   reasons quote need every firm, see ``scf_engine/pipelines/monitor.py``), so the 12-date
   cost grows with the world; with two sizes or more, along the line through the two
   largest (a fixed part: loading the models, MLflow, the record; a part per firm), else
   in proportion to firms; time and peak memory alike. CPU seconds are the process's
   own (every thread): on a shared machine wall time also counts the waits.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.harness import measure, show

ROOT = Path("out/bench/monitor").resolve()
N_FIRMS = int(os.environ.get("BENCH_MONITOR_FIRMS", 2000))
SEEDS = [int(s) for s in os.environ.get("BENCH_MONITOR_SEEDS", "5,17,29").split(",")]
COST_FIRMS = sorted({int(n) for n in os.environ.get("BENCH_MONITOR_COST_FIRMS", str(N_FIRMS)).split(",")})
BASELINE = os.environ.get("BENCH_MONITOR_BASELINE", "f12105c")
OUTPUTS = ("portfolio.csv", "alerts.csv", "drift.csv")
COST_DATES = [int(n) for n in os.environ.get("BENCH_MONITOR_COST_DATES", "1,12").split(",")]
BATCH_MONTH = 24


def prepare(seed: int):
    """World, champion models, consents and a scored batch of every non-core firm."""
    import pandas as pd

    from scf_engine import pipelines, tracking
    from scf_engine.simulate import WorldConfig, simulate, write_dataset

    home = ROOT / f"world_{N_FIRMS}_{seed}"
    data, uri = home / "data", f"sqlite:///{home / 'mlflow.db'}"
    cfg = WorldConfig(n_firms=N_FIRMS, seed=seed)
    if not (data / "firms.parquet").exists():
        write_dataset(simulate(cfg), data, fmt="parquet")
    store = tracking.Store(uri)
    if store.model_version("hybrid", "champion") is None:
        pipelines.train(data, tracking_uri=uri, out_dir=home / "train", audit_log=home / "audit.jsonl")
        versions = {k: store.model_version(k, "challenger") for k in tracking.MODEL_KINDS}
        pipelines.promote(store, versions, tracking.MODEL_KINDS)
    batch_T = pd.Timestamp(cfg.start) + pd.DateOffset(months=BATCH_MONTH)
    return home, data, uri, score_every_firm(home, data, uri, batch_T), batch_T


def score_every_firm(home: Path, data: Path, uri: str, batch_T):
    """The batch the portfolio comes from: every non-core firm of ``data`` scored at
    ``batch_T`` with everyone consenting (once; kept under ``home``)."""
    import pandas as pd

    from scf_engine import pipelines

    limits = home / "score" / "limits.csv"
    if not limits.exists():
        firms = pd.read_parquet(data / "firms.parquet")
        ids = firms.loc[~firms["is_core"], "firm_id"].sort_values()
        pd.DataFrame({"firm_id": ids, "requested_amount": ""}).to_csv(home / "batch.csv", index=False)
        pd.DataFrame({"firm_id": ids, "granted_on": "2020-01-01", "expires_on": ""}).to_csv(home / "consents.csv", index=False)
        pipelines.score(data, home / "batch.csv", limits, as_of=str(batch_T.date()), tracking_uri=uri,
                        consents=home / "consents.csv", memos=False, audit_log=home / "audit.jsonl")
    return limits


def baseline_code(rev: str) -> Path:
    """The baseline revision's ``scf_engine`` package, extracted once under out/bench."""
    import subprocess

    home = ROOT / f"baseline_{rev}"
    if not (home / "scf_engine" / "__init__.py").exists():
        home.mkdir(parents=True, exist_ok=True)
        repo = Path(__file__).resolve().parents[1]
        archive = subprocess.run(["git", "archive", rev, "scf_engine"], cwd=repo, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(home)], input=archive, check=True)
    return home


def prepare_cost(n_firms: int):
    """A world of ``n_firms`` (seed 5) and its scored batch, with the seed-5 quality world's
    champion models (the quality worlds' size: that world itself)."""
    if n_firms == N_FIRMS:
        return prepare(5)
    from scf_engine.simulate import WorldConfig, simulate, write_dataset

    _, _, uri, _, batch_T = prepare(5)
    home = ROOT / f"cost_{n_firms}"
    data = home / "data"
    if not (data / "firms.parquet").exists():
        write_dataset(simulate(WorldConfig(n_firms=n_firms, seed=5)), data, fmt="parquet")
    return home, data, uri, score_every_firm(home, data, uri, batch_T), batch_T


def run(seed: int, n_dates: int, code: str | None = None, n_firms: int | None = None):
    """The monitoring pipeline over ``n_dates`` monthly as-of dates after the batch, by the
    ``scf_engine`` under ``code`` when given (the baseline), else this checkout's; on the
    quality world of ``seed``, or on the cost world of ``n_firms``."""
    import sys

    if code:
        sys.path.insert(0, code)
    import pandas as pd

    from scf_engine.pipelines.monitor import monitor

    home, data, uri, limits, batch_T = prepare_cost(n_firms) if n_firms else prepare(seed)
    dates = [str((batch_T + pd.DateOffset(months=k)).date()) for k in range(1, n_dates + 1)]
    tag = f"_{Path(code).name}" if code else ""
    cpu = time.process_time()
    r = monitor(data, home / f"mon_{n_dates}{tag}", as_of=dates, portfolio=limits, consents=home / "consents.csv",
                tracking_uri=uri, audit_log=home / "audit.jsonl")
    # CPU seconds of every thread: on a shared machine wall time also counts the waits
    return {"firms": int(r.portfolio["firm_id"].nunique()), "dates": n_dates, "cpu_s": time.process_time() - cpu}


def quality(seed: int) -> dict:
    """The early-warning figures from a 12-date pass."""
    import numpy as np
    import pandas as pd

    home, data, _, _, batch_T = prepare(seed)
    port = pd.read_csv(home / "mon_12" / "portfolio.csv", dtype={"firm_id": str})
    d = pd.read_parquet(data / "defaults.parquet") if (data / "defaults.parquet").exists() else pd.read_csv(data / "defaults.csv")
    d_on = pd.to_datetime(d.set_index(d["firm_id"].astype(str))["default_on"])
    port["as_of"] = pd.to_datetime(port["as_of"])
    port["default_on"] = port["firm_id"].map(d_on)
    t6 = batch_T + pd.DateOffset(months=6)
    at6 = port[(port["as_of"] == t6) & ~(port["default_on"] < t6)]
    bad = at6["default_on"].between(t6, t6 + pd.DateOffset(months=6), inclusive="left")
    red = at6["level"].eq("red")
    rate_all, rate_red = bad.mean(), bad[red].mean() if red.any() else float("nan")
    first = port.drop_duplicates("firm_id").set_index("firm_id")["default_on"]
    defaulters = first[first.between(batch_T + pd.DateOffset(months=1), port["as_of"].max() + pd.DateOffset(months=1))]
    flagged = port[port["level"].isin(["amber", "red"]) & (port["as_of"] <= port["default_on"])]
    first_flag = flagged.groupby("firm_id")["as_of"].min()
    lead = ((defaulters - first_flag.reindex(defaulters.index)).dt.days / 30.4375)
    ahead = (lead >= 3).mean() if len(lead) else float("nan")
    # a default within 3 months of the first as-of cannot be flagged 3 months ahead by any rule
    seeable = defaulters >= port["as_of"].min() + pd.DateOffset(months=3)
    ever_red = port.groupby("firm_id")["level"].agg(lambda s: (s == "red").any()).mean()
    ever_flag = port.groupby("firm_id")["level"].agg(lambda s: s.isin(["amber", "red"]).any()).mean()
    return {"seed": seed, "portfolio": int(port["firm_id"].nunique()), "defaults_6m": int(bad.sum()),
            "red_at_6m": int(red.sum()), "default_rate": rate_all, "red_rate": rate_red,
            "red_lift": rate_red / rate_all if rate_all > 0 else float("nan"), "defaulters": len(defaulters),
            "flagged_3m_ahead": ahead, "median_lead_months": float(np.nanmedian(lead)) if lead.notna().any() else float("nan"),
            "flagged_3m_ahead_seeable": (lead[seeable.to_numpy()] >= 3).mean() if seeable.any() else float("nan"),
            "ever_red": ever_red, "ever_amber_or_red": ever_flag, "flagged_at_6m": float(at6["level"].isin(["amber", "red"]).mean())}


def same_outputs(n_firms: int, n_dates: int, code: str) -> bool:
    """The baseline's pass and this code's wrote the same files, byte for byte."""
    home = prepare_cost(n_firms)[0]
    a, b = home / f"mon_{n_dates}_{Path(code).name}", home / f"mon_{n_dates}"
    return all((a / f).exists() == (b / f).exists() and (not (b / f).exists() or (a / f).read_bytes() == (b / f).read_bytes())
               for f in OUTPUTS)


def extrapolate(by_size: dict[int, float], target: int = 100_000) -> float:
    """``target`` firms along the line through the two largest sizes measured (a fixed
    part and a part per firm), or in proportion to firms with one size."""
    sizes = sorted(by_size)
    if len(sizes) == 1:
        return by_size[sizes[0]] * target / sizes[0]
    (n1, y1), (n2, y2) = (sizes[-2], by_size[sizes[-2]]), (sizes[-1], by_size[sizes[-1]])
    return y2 + (y2 - y1) / (n2 - n1) * (target - n2)


def cost() -> list[dict]:
    """This code against the baseline on the cost worlds: 12 dates at every size, 1 date
    at the largest."""
    top = COST_FIRMS[-1]
    for n_firms in COST_FIRMS:
        prepare_cost(n_firms)
    old = str(baseline_code(BASELINE))
    rows = {}
    for name, code in (("baseline " + BASELINE, old), ("this code", None)):
        for n_firms in COST_FIRMS:
            for n in sorted(set(COST_DATES) | {12}) if n_firms == top else [12]:
                rows[(name, n_firms, n)] = measure("bench.bench_monitor:run", 5, n, code, n_firms, repeats=1)
    out = []
    for (name, n_firms, n), m in rows.items():
        base, mine = rows[("baseline " + BASELINE, n_firms, 12)], rows[(name, n_firms, 12)]
        at12 = {k: {f: rows[(name, f, 12)][k] for f in COST_FIRMS} for k in ("seconds", "cpu_s", "peak_mb")}
        out.append({"code": name, "firms": m["firms"], "world_firms": n_firms, "dates": n, "seconds": m["seconds"],
                    "cpu_s": m["cpu_s"], "peak_mb": m["peak_mb"], "ratio_vs_baseline_12": base["seconds"] / mine["seconds"],
                    "cpu_ratio_vs_baseline_12": base["cpu_s"] / mine["cpu_s"],
                    "same_outputs": same_outputs(n_firms, n, old) if name == "this code" else "",
                    "100k_x_12_extrapolated_s": extrapolate(at12["seconds"]),
                    "100k_x_12_extrapolated_cpu_s": extrapolate(at12["cpu_s"]),
                    "100k_x_12_extrapolated_gb": extrapolate(at12["peak_mb"]) / 1024})
    return out


def main():
    rows = []
    for seed in [] if os.environ.get("BENCH_MONITOR_SKIP_QUALITY") else SEEDS:
        prepare(seed)
        if not os.environ.get("BENCH_MONITOR_REUSE") or not (ROOT / f"world_{N_FIRMS}_{seed}" / "mon_12" / "portfolio.csv").exists():
            run(seed, 12)
        rows.append(quality(seed))
    if rows:
        show("Early warning, 6 months after the batch (targets: red_lift >= 4, flagged_3m_ahead >= 0.6)", rows,
             "monitor_quality")
    if os.environ.get("BENCH_MONITOR_SKIP_COST"):
        return
    show("Monitoring cost, this code against the baseline on the same world (ratio = baseline s / this code's s at "
         "12 dates; 100k x 12 extrapolated from the largest worlds, see the module docstring; targets 300 s and 8 GB)",
         cost(), "monitor_cost")


if __name__ == "__main__":
    main()
