"""After-lending monitoring: early-warning power and cost (the issue's targets).

1. **Early warning** on the default world (seed 5) and two untuned worlds (seeds 17, 29),
   ``BENCH_MONITOR_FIRMS`` firms each (default 2,000; the issue asks about the default
   world size): train and promote once per world (cached under out/bench/monitor/), score
   every non-core firm at a batch date two years into the data, then ``scf monitor``'s
   pipeline monthly for 12 months after it. Reported: at 6 months after the batch, the
   default rate within the next 6 months of firms at ``red`` against the portfolio's
   (target >= 4x); the share of the portfolio's defaulters that were amber or red at
   least 3 months before their default (target >= 60%) and the median lead time; the
   share of firms ever red. Caveat: the models are trained on all snapshots whose labels
   are observed, some of which overlap the monitoring window (optimistic).
2. **Cost**: the same pipeline over the portfolio for 1 as-of date (baseline) and for 12;
   ratio = per-as-of cost at 12 over the per-as-of cost at 1. The issue's 100,000 firms x
   12 dates is extrapolated, not measured: the 1-date run's fixed cost plus 12 times the
   cost of one more date scaled linearly by world size (each date snapshots the whole
   world, not only the portfolio). Measure it for real before claiming the target.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.harness import measure, show

ROOT = Path("out/bench/monitor").resolve()
N_FIRMS = int(os.environ.get("BENCH_MONITOR_FIRMS", 2000))
SEEDS = [int(s) for s in os.environ.get("BENCH_MONITOR_SEEDS", "5,17,29").split(",")]
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
    limits = home / "score" / "limits.csv"
    if not limits.exists():
        firms = pd.read_parquet(data / "firms.parquet")
        ids = firms.loc[~firms["is_core"], "firm_id"].sort_values()
        pd.DataFrame({"firm_id": ids, "requested_amount": ""}).to_csv(home / "batch.csv", index=False)
        pd.DataFrame({"firm_id": ids, "granted_on": "2020-01-01", "expires_on": ""}).to_csv(home / "consents.csv", index=False)
        pipelines.score(data, home / "batch.csv", limits, as_of=str(batch_T.date()), tracking_uri=uri,
                        consents=home / "consents.csv", memos=False, audit_log=home / "audit.jsonl")
    return home, data, uri, limits, batch_T


def run(seed: int, n_dates: int):
    """The monitoring pipeline over ``n_dates`` monthly as-of dates after the batch."""
    import pandas as pd

    from scf_engine.pipelines.monitor import monitor

    home, data, uri, limits, batch_T = prepare(seed)
    dates = [str((batch_T + pd.DateOffset(months=k)).date()) for k in range(1, n_dates + 1)]
    r = monitor(data, home / f"mon_{n_dates}", as_of=dates, portfolio=limits, consents=home / "consents.csv",
                tracking_uri=uri, audit_log=home / "audit.jsonl")
    return {"firms": int(r.portfolio["firm_id"].nunique()), "dates": n_dates}


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
    ever_red = port.groupby("firm_id")["level"].agg(lambda s: (s == "red").any()).mean()
    return {"seed": seed, "portfolio": int(port["firm_id"].nunique()), "defaults_6m": int(bad.sum()),
            "red_at_6m": int(red.sum()), "default_rate": rate_all, "red_rate": rate_red,
            "red_lift": rate_red / rate_all if rate_all > 0 else float("nan"), "defaulters": len(defaulters),
            "flagged_3m_ahead": ahead, "median_lead_months": float(np.nanmedian(lead)) if lead.notna().any() else float("nan"),
            "ever_red": ever_red}


def main():
    rows, cost = [], []
    for seed in SEEDS:
        prepare(seed)
        one = measure("bench.bench_monitor:run", seed, 1, repeats=1)
        twelve = measure("bench.bench_monitor:run", seed, 12, repeats=1)
        q = quality(seed)
        rows.append(q)
        per_one = one["seconds"] / one["firms"]
        per_twelve = twelve["seconds"] / (twelve["firms"] * 12)
        marginal = (twelve["seconds"] - one["seconds"]) / 11  # one more as-of date: snapshot of the world + core + rules
        cost.append({"seed": seed, "firms": twelve["firms"], "s_1_date": one["seconds"], "s_12_dates": twelve["seconds"],
                     "s_per_extra_date": marginal, "peak_mb_12": twelve["peak_mb"], "ratio": per_twelve / per_one,
                     "100k_x_12_extrapolated_s": one["seconds"] + 12 * marginal * 100_000 / N_FIRMS})
    show("Early warning, 6 months after the batch (targets: red_lift >= 4, flagged_3m_ahead >= 0.6)", rows, "monitor_quality")
    show("Monitoring cost (ratio = per firm-date cost at 12 dates / at 1 date; 100k x 12 extrapolated, target 300 s)",
         cost, "monitor_cost")


if __name__ == "__main__":
    main()
