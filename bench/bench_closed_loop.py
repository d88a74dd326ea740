"""No double financing and the closed loop of funds (issue 15): precision and recall on
planted cases, against a named naive baseline in the same run.

World: ``BENCH_CLOSED_LOOP_FIRMS`` firms (default 10,000, the issue's size), seeds
``BENCH_CLOSED_LOOP_SEEDS`` (default 42), with the simulator's closed-loop scenario on
(``WorldConfig(closed_loop=True)``: financings on 30% of receivables confirmed by cores,
5% of confirmed receivables pledged elsewhere and 2% transferred, 5% of financings each
diverted, sent back to the core, round-tripped, repaid by borrowing). Cached under
out/bench/closed_loop/.

1. **Double pledges** at an as-of 90 days before the data's end (so that some pledges,
   transfers and repayments lie after it): among the candidate receivables confirmed by an
   accepted core, the encumbered ones (truth: a pledge or transfer dated before the as-of,
   or a financing live at it) must all be left out (recall 1.0) and no clean one may be
   (clean excluded = 0). Engine: ``credit.encumbrance.receivable_status`` on the snapshot.
   Baseline **naive registry read**: the registry's latest state and every financing ever
   drawn, dates ignored (what a bank reading today's registry export would do).
2. **Diversion and misuse** at the day after the data's end, per financing: planted
   diversion, money back to the core, round-tripped, borrowing to repay (truth) against
   ``features.closed_loop.financing_checks`` (target recall >= 0.95 at precision >= 0.90).
   Baseline **naive flow rules**: diversion = any payment of the core to the borrower
   after the drawdown outside the collection account (no amount match); misuse = any
   outflow to the core, or to a party that paid the borrower anything, within 30 days of
   the drawdown; borrowing to repay = any loan drawdown to the borrower in the 30 days
   before the repayment.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.harness import show

ROOT = Path("out/bench/closed_loop").resolve()
N_FIRMS = int(os.environ.get("BENCH_CLOSED_LOOP_FIRMS", 10000))
SEEDS = [int(s) for s in os.environ.get("BENCH_CLOSED_LOOP_SEEDS", "42").split(",")]


def world(seed: int) -> Path:
    from scf_engine.simulate import WorldConfig, simulate, write_dataset

    data = ROOT / f"world_{N_FIRMS}_{seed}"
    if not (data / "financings.parquet").exists():
        write_dataset(simulate(WorldConfig(n_firms=N_FIRMS, seed=seed, closed_loop=True)), data, fmt="parquet")
    return data


def pr(name: str, method: str, truth: set, flagged: set, seconds: float, **extra) -> dict:
    tp = len(truth & flagged)
    return {"check": name, "method": method, "positives": len(truth), "flagged": len(flagged), "true_pos": tp,
            "precision": tp / len(flagged) if flagged else float("nan"), "recall": tp / len(truth) if truth else float("nan"),
            "seconds": seconds, **extra}


def double_pledges(ds, truth: pd.DataFrame, seed: int) -> list[dict]:
    from scf_engine import policies
    from scf_engine.credit.encumbrance import receivable_status
    from scf_engine.credit.limits import buyer_eligible

    T = ds.default_as_of - pd.Timedelta(days=90)
    snap = ds.as_of(T)
    pols = policies.load_all()
    ok = buyer_eligible(snap.firms.set_index("firm_id"), pols["limit_policy"], pols["master_scale"])
    t = time.perf_counter()
    status = receivable_status(snap.receivables, snap.financings, ok, T)
    engine_s = time.perf_counter() - t
    cand = status[status["confirmed"]]
    on = pd.to_datetime(truth["on"])
    registry = set(truth.loc[truth["kind"].isin(["double_pledge", "transferred"]) & (on < T), "receivable_id"])
    f = ds.financings
    live = set(f.loc[(f["drawn_on"] < T) & ~(f["repaid_on"] < T) & f["receivable_id"].notna(), "receivable_id"].astype(str))
    encumbered = (registry | live) & set(cand["receivable_id"])
    clean = set(cand["receivable_id"]) - encumbered
    engine = set(cand.loc[cand["reason"] != "", "receivable_id"])
    t = time.perf_counter()
    r = ds.receivables
    naive = set(r.loc[r["pledged_on"].notna() | r["transferred_on"].notna(), "receivable_id"]) \
        | set(f["receivable_id"].dropna().astype(str))
    naive &= set(cand["receivable_id"])
    naive_s = time.perf_counter() - t
    common = {"seed": seed, "as_of": str(T.date()), "candidates": len(cand)}
    return [pr("double pledge / financed", "engine (encumbrance)", encumbered, engine, engine_s,
               clean_excluded=len(engine & clean), **common),
            pr("double pledge / financed", "naive registry read", encumbered, naive, naive_s,
               clean_excluded=len(naive & clean), **common)]


def naive_flags(snap, window_days: int = 30) -> dict[str, set]:
    """The baseline's flags per financing (see the module docstring)."""
    fin, fl, r = snap.financings, snap.flows, snap.receivables
    f = fin.merge(r[["receivable_id", "buyer_id"]], on="receivable_id", how="inner")
    m = f.merge(fl, left_on=["buyer_id", "firm_id"], right_on=["payer_id", "payee_id"], suffixes=("", "_f"))
    diverted = set(m.loc[(m["booked_on"] > m["drawn_on"]) & (m["payee_account"] != m["collection_account"]), "financing_id"])
    w = pd.Timedelta(days=window_days)
    out = fin.merge(fl[["payer_id", "payee_id", "booked_on"]], left_on="firm_id", right_on="payer_id")
    out = out[(out["booked_on"] >= out["drawn_on"]) & (out["booked_on"] <= out["drawn_on"] + w)]
    out = out.merge(r[["receivable_id", "buyer_id"]], on="receivable_id", how="left")
    payers = set(zip(fl["payer_id"], fl["payee_id"]))
    back = np.array([(p, s) in payers for p, s in zip(out["payee_id"], out["firm_id"])], dtype=bool)
    misused = set(out.loc[(out["payee_id"] == out["buyer_id"]) | back, "financing_id"])
    d = fin.merge(fl.loc[fl["purpose"] == "loan_drawdown", ["payee_id", "booked_on"]], left_on="firm_id", right_on="payee_id")
    borrow = set(d.loc[d["repaid_on"].notna() & (d["booked_on"] < d["repaid_on"]) & (d["booked_on"] >= d["repaid_on"] - w)
                       & (d["booked_on"] > d["drawn_on"]), "financing_id"])
    return {"diversion": diverted, "misuse": misused, "borrow_to_repay": borrow}


def diversion_misuse(ds, truth: pd.DataFrame, seed: int) -> list[dict]:
    from scf_engine.features.closed_loop import financing_checks

    snap = ds.as_of(ds.default_as_of)
    t = time.perf_counter()
    c = financing_checks(snap)
    engine_s = time.perf_counter() - t
    t = time.perf_counter()
    naive = naive_flags(snap)
    naive_s = time.perf_counter() - t
    engine = {"diversion": set(c.loc[c["diverted"] == 1, "financing_id"]),
              "misuse": set(c.loc[c["misused"], "financing_id"]),
              "borrow_to_repay": set(c.loc[c["borrow_to_repay"] == 1, "financing_id"])}
    kinds = {"diversion": ["diversion"], "misuse": ["misuse_core", "misuse_circle"], "borrow_to_repay": ["borrow_to_repay"]}
    rows = []
    common = {"seed": seed, "as_of": str(snap.as_of.date()), "candidates": len(c)}
    for name, ks in kinds.items():
        pos = set(truth.loc[truth["kind"].isin(ks), "financing_id"])
        rows.append(pr(name, "engine (closed_loop)", pos, engine[name], engine_s, **common))
        rows.append(pr(name, "naive flow rules", pos, naive[name], naive_s, **common))
    pos = set(truth.loc[truth["kind"].isin(sum(kinds.values(), [])), "financing_id"])
    rows.append(pr("any diversion / misuse", "engine (closed_loop)", pos, set().union(*engine.values()), engine_s, **common))
    rows.append(pr("any diversion / misuse", "naive flow rules", pos, set().union(*naive.values()), naive_s, **common))
    return rows


def main() -> None:
    from scf_engine.ingest import load_dataset

    rows = []
    for seed in SEEDS:
        t = time.perf_counter()
        data = world(seed)
        ds = load_dataset(data)
        print(f"world {N_FIRMS} firms seed {seed}: ready and loaded in {time.perf_counter() - t:.0f} s "
              f"({len(ds.financings):,} financings, {len(ds.receivables):,} receivables, {len(ds.flows):,} flows)")
        truth = pd.read_csv(data / "closed_loop_truth.csv", dtype=str, keep_default_na=False)
        rows += double_pledges(ds, truth, seed) + diversion_misuse(ds, truth, seed)
    show(f"closed loop and double financing, {N_FIRMS:,} firms (baseline: naive rules in the same run)", rows,
         "closed_loop")


if __name__ == "__main__":
    main()
