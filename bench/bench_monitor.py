"""After-lending monitoring: early-warning power and cost (the issue's targets).

1. **Early warning** on the default world (``WorldConfig()``: 10,000 firms, seed 42) and
   two untuned worlds (seeds 17, 29), ``BENCH_MONITOR_FIRMS`` firms each (default 10,000,
   the default world's size; at 2,000 firms a 6-month window holds ~25 defaults and one
   firm moves a share by 0.04): train and promote once per world (cached under
   out/bench/monitor/), score
   every non-core firm at a batch date two years into the data, then ``scf monitor``'s
   pipeline monthly for 12 months after it. Reported (:func:`quality_figures`): at 6
   months after the batch, the default rate within the next 6 months of firms at ``red``
   against the portfolio's, over the same firms (target >= 4x), and the same lift pooled
   over every as-of (steadier: the 6-month figure rests on a handful of defaults); the
   share of defaulters amber or red at least 3 calendar months before their default
   (target >= 60%: the issue's "6 months after the batch ... the firms that default",
   i.e. the defaulters of the window the lift is measured on) and the median lead time,
   over every defaulter of the pass, over those
   a 3-month lead was possible for (default at least 3 months after the first as-of) and
   over those of the window the lift is measured on (default in the 6 months from 6
   months after the batch); the share of firms ever red, ever amber or red, amber or red
   at 6 months and on an average month (a rule that flags everyone meets the lead
   target: read them together). The 12-date pass is rerun each time
   (``BENCH_MONITOR_REUSE=1`` reads the last one). Caveat: the models are trained on all
   snapshots whose labels are observed, some of which overlap the monitoring window
   (optimistic).
2. **Cost**: the monitoring pass over the portfolio for 1 as-of date and for 12, by this
   code and by the baseline code (``BENCH_MONITOR_BASELINE``, a git revision, default
   f12105c, main before the pass shared its legs: its ``scf_engine`` is taken with ``git
   archive`` and put first on the child process's path), on the same world in the same
   run; ratio = the baseline's seconds over this code's at 12 dates (the median of the
   rounds' ratios, see below); ``same_outputs``: the
   two passes wrote the same portfolio.csv, alerts.csv and drift.csv, byte for byte (but
   for the reasons of the green-keep rows left without SHAP drivers under
   ``explain: {scope: changed}``, see :func:`same_outputs`). The
   worlds for the cost are ``BENCH_MONITOR_COST_FIRMS`` firms (a comma-separated list,
   default: the quality worlds' size, where the cost world is the default world itself;
   other sizes are seed 5), monitored with the champion models of the first quality world
   (``SEEDS[0]``, the default world: a bigger world is not retrained); 12 dates at every size, 1 date at the
   largest. The issue's 100,000 firms x 12 dates is extrapolated, not measured: every as-of
   snapshots and features the whole world (the industry ranks and the industry medians the
   reasons quote need every firm, see ``scf_engine/pipelines/monitor.py``), so the 12-date
   cost grows with the world; with two sizes or more, along the line through the two
   largest (a fixed part: loading the models, MLflow, the record; a part per firm), else
   in proportion to firms; time and peak memory alike. CPU seconds are the process's
   own (every thread): on a shared machine wall time also counts the waits.
   ``BENCH_MONITOR_COST_ROUNDS`` (default 1): that many rounds of each pair, back to back,
   the order swapped every other round; seconds are medians, ratios the median of the
   pairs' ratios (:func:`rounds_of`).
3. **Memory, stage by stage** (``BENCH_MONITOR_TIMELINE=1``, after the cost): one more pass
   of this code over 12 dates on the largest cost world, watched by :mod:`bench.timeline`:
   per as-of, the resident peak and the stage that set it, and what glibc's heap, Arrow's
   pool and DuckDB held after the as-of (:func:`timeline`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.harness import measure, show

ROOT = Path("out/bench/monitor").resolve()
N_FIRMS = int(os.environ.get("BENCH_MONITOR_FIRMS", 10000))
SEEDS = [int(s) for s in os.environ.get("BENCH_MONITOR_SEEDS", "42,17,29").split(",")]
COST_FIRMS = sorted({int(n) for n in os.environ.get("BENCH_MONITOR_COST_FIRMS", str(N_FIRMS)).split(",")})
BASELINE = os.environ.get("BENCH_MONITOR_BASELINE", "f12105c")
OUTPUTS = ("portfolio.csv", "alerts.csv", "drift.csv")
COST_DATES = [int(n) for n in os.environ.get("BENCH_MONITOR_COST_DATES", "1,12").split(",")]
COST_ROUNDS = int(os.environ.get("BENCH_MONITOR_COST_ROUNDS", 1))  # baseline / this code pairs, order swapped each round
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
    """A world of ``n_firms`` (seed 5) and its scored batch, with the first quality world's
    champion models (the quality worlds' size: that world itself)."""
    if n_firms == N_FIRMS:
        return prepare(SEEDS[0])
    from scf_engine.simulate import WorldConfig, simulate, write_dataset

    _, _, uri, _, batch_T = prepare(SEEDS[0])
    # the batch cached here is scored by that world's models: a cache per model world, so
    # another BENCH_MONITOR_FIRMS / _SEEDS never monitors a batch other models scored
    home = ROOT / f"cost_{n_firms}_models_{N_FIRMS}_{SEEDS[0]}"
    data = home / "data"
    if not (data / "firms.parquet").exists():
        write_dataset(simulate(WorldConfig(n_firms=n_firms, seed=5)), data, fmt="parquet")
    return home, data, uri, score_every_firm(home, data, uri, batch_T), batch_T


def run(seed: int, n_dates: int, code: str | None = None, n_firms: int | None = None, timeline: bool = False):
    """The monitoring pipeline over ``n_dates`` monthly as-of dates after the batch, by the
    ``scf_engine`` under ``code`` when given (the baseline), else this checkout's; on the
    quality world of ``seed``, or on the cost world of ``n_firms``. ``timeline``: the pass
    watched stage by stage (:mod:`bench.timeline`), its rows returned under ``timeline``."""
    import sys

    if code:
        sys.path.insert(0, code)
    import pandas as pd

    from contextlib import nullcontext

    from bench.timeline import Timeline, watch
    from scf_engine.pipelines.monitor import monitor

    home, data, uri, limits, batch_T = prepare_cost(n_firms) if n_firms else prepare(seed)
    dates = [str((batch_T + pd.DateOffset(months=k)).date()) for k in range(1, n_dates + 1)]
    tag = f"_{Path(code).name}" if code else ""
    cpu = time.process_time()
    with watch(Timeline()) if timeline else nullcontext() as line:
        r = monitor(data, home / f"mon_{n_dates}{tag}{'_timeline' if timeline else ''}", as_of=dates, portfolio=limits,
                    consents=home / "consents.csv", tracking_uri=uri, audit_log=home / "audit.jsonl")
    # CPU seconds of every thread: on a shared machine wall time also counts the waits
    out = {"firms": int(r.portfolio["firm_id"].nunique()), "dates": n_dates, "cpu_s": time.process_time() - cpu}
    return {**out, "timeline": line.rows()} if timeline else out


def quality(seed: int) -> dict:
    """The early-warning figures from a 12-date pass (:func:`quality_figures`)."""
    import pandas as pd

    home, data, _, _, batch_T = prepare(seed)
    port = pd.read_csv(home / "mon_12" / "portfolio.csv", dtype={"firm_id": str})
    d = pd.read_parquet(data / "defaults.parquet") if (data / "defaults.parquet").exists() else pd.read_csv(data / "defaults.csv")
    d_on = pd.to_datetime(d.set_index(d["firm_id"].astype(str))["default_on"])
    return {"seed": seed, **quality_figures(port, d_on, batch_T)}


def lead_figures(port, default_on, who) -> dict:
    """For the defaulters ``who`` (firm_id -> default date): the share amber or red at an
    as-of at least 3 calendar months before the default (a flag on 1 Feb counts for a
    default on 1 May: 89 days read as 2.9 months and missed it before) and the median
    months from the first flag to the default (flags on or after the default day are
    not warnings)."""
    import numpy as np
    import pandas as pd

    p = port[port["firm_id"].isin(who.index) & port["level"].isin(["amber", "red"])]
    p = p[p["as_of"] <= p["firm_id"].map(default_on)]
    ahead = p[p["as_of"] <= p["firm_id"].map(default_on - pd.DateOffset(months=3))]["firm_id"].unique()
    lead = (who - p.groupby("firm_id")["as_of"].min().reindex(who.index)).dt.days / 30.4375
    return {"n": len(who), "ahead": float(who.index.isin(ahead).mean()) if len(who) else float("nan"),
            "median_lead": float(np.nanmedian(lead)) if lead.notna().any() else float("nan")}


def quality_figures(port, default_on, batch_T) -> dict:
    """The issue's figures from a pass's ``portfolio.csv`` (``default_on``: firm_id ->
    default date). At 6 months after the batch (t6): the default rate in [t6, t6 + 6
    months) of the firms at red against the portfolio's, both over the SAME firms (lent,
    not defaulted before t6). Lead: over every defaulter of the pass (defaults from one
    month after the batch to one month after the last as-of; those in the first three
    months cannot be flagged 3 months ahead by any rule), over those it was possible for,
    and over the defaulters of the window [t6, t6 + 6 months) the red lift is measured on
    (the issue's "6 months after the batch ... the firms that default"). With ~25
    defaults a window and ~25 red firms the t6 lift rests on a handful of defaults, so the
    lift pooled over every as-of (red at T, default in [T, T + 6 months)) is shown beside
    it. Shares: ever red, ever amber or red, amber or red at t6 and on an average month
    (a rule that flags everyone meets the lead target: read them together)."""
    import pandas as pd

    port = port.assign(as_of=pd.to_datetime(port["as_of"]), default_on=port["firm_id"].map(default_on))
    t6, six = batch_T + pd.DateOffset(months=6), pd.DateOffset(months=6)
    alive = port[~(port["default_on"] < port["as_of"])]
    bad_all = (alive["default_on"] >= alive["as_of"]) & (alive["default_on"] < alive["as_of"] + six)
    red_all = alive["level"].eq("red")
    at6, bad = alive[alive["as_of"] == t6], bad_all[alive["as_of"] == t6]
    red = at6["level"].eq("red")
    rate_all, rate_red = bad.mean(), bad[red].mean() if red.any() else float("nan")
    first = port.drop_duplicates("firm_id").set_index("firm_id")["default_on"]
    defaulters = first[first.between(batch_T + pd.DateOffset(months=1), port["as_of"].max() + pd.DateOffset(months=1))]
    seeable = defaulters[defaulters >= port["as_of"].min() + pd.DateOffset(months=3)]
    window = first[(first >= t6) & (first < t6 + six)]
    every, can, win = (lead_figures(port, default_on, w) for w in (defaulters, seeable, window))
    flag = port["level"].isin(["amber", "red"])
    return {"portfolio": int(port["firm_id"].nunique()), "defaults_6m": int(bad.sum()), "red_at_6m": int(red.sum()),
            "default_rate": rate_all, "red_rate": rate_red,
            "red_lift": rate_red / rate_all if rate_all > 0 else float("nan"),
            "red_lift_pooled": bad_all[red_all].mean() / bad_all.mean() if red_all.any() else float("nan"),
            "defaulters": every["n"], "flagged_3m_ahead": every["ahead"], "median_lead_months": every["median_lead"],
            "flagged_3m_ahead_seeable": can["ahead"], "defaulters_t6_window": win["n"],
            "flagged_3m_ahead_t6_window": win["ahead"], "median_lead_t6_window": win["median_lead"],
            "ever_red": float(port.groupby("firm_id")["level"].agg(lambda s: (s == "red").any()).mean()),
            "ever_amber_or_red": float(flag.groupby(port["firm_id"]).any().mean()),
            "flagged_at_6m": float(at6["level"].isin(["amber", "red"]).mean()),
            "flagged_monthly_mean": float(flag.groupby(port["as_of"]).mean().mean())}


def same_outputs(n_firms: int, n_dates: int, code: str) -> bool:
    """The baseline's pass and this code's wrote the same files, byte for byte; except,
    once monitoring.yaml's ``explain.scope`` is ``changed``, the reasons of the rows this
    code left without SHAP drivers (green, kept, grade unmoved: they carry
    :data:`scf_engine.monitor.judge.UNEXPLAINED`), where the baseline wrote the drivers:
    then portfolio.csv must match in every other column and every other row's reasons."""
    import pandas as pd

    from scf_engine.monitor.judge import UNEXPLAINED

    home = prepare_cost(n_firms)[0]
    a, b = home / f"mon_{n_dates}_{Path(code).name}", home / f"mon_{n_dates}"
    for f in OUTPUTS:
        if (a / f).exists() != (b / f).exists() or not (b / f).exists() or (a / f).read_bytes() == (b / f).read_bytes():
            if (a / f).exists() != (b / f).exists():
                return False
            continue
        if f != "portfolio.csv":
            return False
        old, new = (pd.read_csv(p / f, dtype=str, keep_default_na=False) for p in (a, b))
        lean = new["reasons"].str.contains(UNEXPLAINED, regex=False)
        if not (old.drop(columns="reasons").equals(new.drop(columns="reasons"))
                and old.loc[~lean, "reasons"].equals(new.loc[~lean, "reasons"])):
            return False
    return True


def rounds_of(runs: dict[tuple, list[dict]], baseline: str) -> tuple[dict, dict]:
    """Per (code, firms, dates): the median seconds and CPU seconds over its rounds, every
    round's seconds, the largest peak; and per (code, firms) at 12 dates the median over
    rounds of the baseline's seconds (CPU seconds) over this code's in the same round.

    Why rounds, each pair run back to back and the order swapped every other round: this
    machine's speed drifts: the same baseline code took 729 and 552 s at 100k x 12 within
    the hour (f48eabe, 2026-11-30), and on 2026-12-01 one baseline run and one run of
    this code, 10 minutes apart, showed changes that remove work as 6% slower. A ratio
    taken pair by pair sees the same machine on both sides."""
    import statistics

    rows = {}
    for key, rs in runs.items():
        rows[key] = {**rs[-1], "seconds": statistics.median(r["seconds"] for r in rs),
                     "seconds_all": [round(r["seconds"], 1) for r in rs],
                     "cpu_s": statistics.median(r["cpu_s"] for r in rs), "peak_mb": max(r["peak_mb"] for r in rs)}
    paired = {}
    for (name, n_firms, n), rs in runs.items():
        if n == 12:
            base = runs[(baseline, n_firms, 12)]
            paired[(name, n_firms)] = {k: statistics.median(b[k] / r[k] for b, r in zip(base, rs)) for k in ("seconds", "cpu_s")}
    return rows, paired


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
    at the largest; ``COST_ROUNDS`` rounds (see :func:`rounds_of`)."""
    top = COST_FIRMS[-1]
    for n_firms in COST_FIRMS:
        prepare_cost(n_firms)
    old = str(baseline_code(BASELINE))
    codes = (("baseline " + BASELINE, old), ("this code", None))
    runs: dict[tuple, list[dict]] = {}
    for k in range(COST_ROUNDS):
        for n_firms in COST_FIRMS:
            for n in sorted(set(COST_DATES) | {12}) if n_firms == top else [12]:
                for name, code in codes if k % 2 == 0 else codes[::-1]:
                    runs.setdefault((name, n_firms, n), []).append(
                        measure("bench.bench_monitor:run", 5, n, code, n_firms, repeats=1))
    rows, paired = rounds_of(runs, "baseline " + BASELINE)
    out = []
    for (name, n_firms, n), m in rows.items():
        at12 = {k: {f: rows[(name, f, 12)][k] for f in COST_FIRMS} for k in ("seconds", "cpu_s", "peak_mb")}
        out.append({"code": name, "firms": m["firms"], "world_firms": n_firms, "dates": n, "seconds": m["seconds"],
                    "seconds_all": m["seconds_all"], "cpu_s": m["cpu_s"], "peak_mb": m["peak_mb"],
                    "ratio_vs_baseline_12": paired[(name, n_firms)]["seconds"],
                    "cpu_ratio_vs_baseline_12": paired[(name, n_firms)]["cpu_s"],
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
        show("Early warning, 6 months after the batch (targets: red_lift >= 4, flagged_3m_ahead_t6_window >= 0.6; "
             "flagged_3m_ahead: every defaulter of the pass, _seeable: those a 3-month lead was possible for)", rows,
             "monitor_quality")
    if os.environ.get("BENCH_MONITOR_SKIP_COST"):
        return
    show("Monitoring cost, this code against the baseline on the same world (ratio = baseline s / this code's s at "
         "12 dates, the median over rounds of each pair's; 100k x 12 extrapolated from the largest worlds, see the module docstring; targets 300 s and 8 GB)",
         cost(), "monitor_cost")
    if os.environ.get("BENCH_MONITOR_TIMELINE"):
        timeline()


def timeline() -> None:
    """``BENCH_MONITOR_TIMELINE=1``: one more pass of this code over 12 dates on the largest
    cost world, watched stage by stage (:mod:`bench.timeline`; not timed against the
    baseline: the sampling thread costs a little). Per as-of: the resident peak and the
    stage that set it, the panel's and the code features' own peaks, and after the as-of
    gave memory back, the resident set and what glibc's heap, Arrow's pool and DuckDB
    held. What it showed on 2026-12-02 (100k x 12, quiet machine), before the pass cut
    its flows to the chain's (d8792eb): the load's peak (7.1 GiB) and each as-of's panel
    (6.9-7.3 GiB, rising ~30 MiB a date) stood highest; between dates ~3.5 GiB of heap,
    ~2.1 GiB of Arrow (1.46 GiB of it the flows' party ids as text), 0.6 GiB of DuckDB
    (the pass's compressed legs). After the cut each as-of's peak was 5.6-6.3 GiB, under
    the load's; with the judge beside the next snapshot (e1c6dc3), 5.8-7.4 GiB."""
    top = COST_FIRMS[-1]
    r = measure("bench.bench_monitor:run", 5, 12, None, top, True, repeats=1)
    show(f"Monitoring memory, stage by stage: this code, {top:,} firms x 12 dates (peak VmHWM {r['peak_mb']:,.0f} MiB, "
         f"{r['seconds']:.0f} s with the sampler; date '-' is the load, the first date the batch's own snapshot)",
         r["timeline"], "monitor_timeline")


if __name__ == "__main__":
    main()
