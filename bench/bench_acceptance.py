"""Model quality across simulated worlds (issues 4 and 18's acceptance).

Default run (issue 18): one world per simulator story (``default``, ``cyclical``,
``shock``: :mod:`scf_engine.simulate.stories`), ``BENCH_CROSS_FIRMS`` firms each (2,500
unless set), seed ``BENCH_CROSS_SEED`` (2026). Every model is fitted once per world with
the settings ``scf train`` uses (nothing tuned per world) and scored on every other
world's firms at its latest labelled as-of date (table 1: every ordered pair), and on its
own held-out snapshots (table 2: out of time). Beside table 1, each cell against the test
world's own models on the same rows: how much of what a bank with that world's history
would reach the moved model keeps (a cell short of its target with nothing lost in the move
is short because that world's flows carry less). The plain peer (12-month sums, counts and
active months by purpose and direction, + registry sums for the receivables variant, on
default LightGBM) runs on the same rows. Table 3: calibration transfer, every ordered pair:
``scf recalibrate``'s refit of the training world's models on the test world's first
labelled quarter (the earlier held-out snapshot), the largest decile gap before and after
on that quarter and the next, beside the gap a perfectly calibrated PD shows on the same
rows (the target's 1 point is below the binomial noise of a few thousand rows). Table 4:
each de-coupled feature's univariate effect per story and whether its direction
transfers. Details: :mod:`bench.crossworld`.

The earlier per-seed table (the full ``scf train`` pipeline with MLflow, issue 4) runs
when ``BENCH_WORLDS`` is set.

For each world: simulate, run ``scf train``'s pipeline into a throwaway MLflow store, and
read the held-out evaluation: every model's Gini as a fraction of the Bayes-optimal Gini
(the simulator's true PD on the same rows), coverage, and the segments where core
propagation and the de-coupled model each win.

Worlds: the default world (``scf simulate`` defaults: 10,000 firms, seed 42) and worlds of
other seeds and sizes that the simulator and models were never tuned on. Set
``BENCH_WORLDS="10000:42,8000:2026,15000:99"`` to choose.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from bench.harness import measure, show

WORLDS = [tuple(int(x) for x in w.split(":")) for w in os.environ.get("BENCH_WORLDS", "").split(",") if w]
ROOT = Path("out/bench/acceptance").resolve()
CROSS_FIRMS = int(os.environ.get("BENCH_CROSS_FIRMS", "2500"))
CROSS_SEED = int(os.environ.get("BENCH_CROSS_SEED", "2026"))
STORIES = os.environ.get("BENCH_STORIES", "default,cyclical,shock").split(",")


def run_world(n_firms: int, seed: int):
    from scf_engine import pipelines
    from scf_engine.simulate import WorldConfig, simulate, write_dataset

    home = ROOT / f"{n_firms}_{seed}"
    data = home / "data"
    if not (data / "flows.parquet").exists():
        write_dataset(simulate(WorldConfig(n_firms=n_firms, seed=seed)), data, fmt="parquet")
    if (home / "mlflow.db").exists():
        (home / "mlflow.db").unlink()
        shutil.rmtree(home / "mlartifacts", ignore_errors=True)
    cwd = os.getcwd()
    os.chdir(home)
    try:
        r = pipelines.train(data, tracking_uri=f"sqlite:///{home / 'mlflow.db'}", out_dir=home / "train")
    finally:
        os.chdir(cwd)
    ov = r.evaluation["overall"].set_index("model")
    seg = r.evaluation["segments"]
    wins = pipelines.segment_winners(seg, "pd_propagation", "pd_decoupled")
    wins.to_csv(home / "segment_winners.csv", index=False)
    ov.to_csv(home / "overall.csv")
    return {"bayes_gini": float(ov.loc["true_pd", "gini"]), "defaults": int(ov.loc["true_pd", "defaults"]),
            **{f"{m}_bayes_fraction": float(ov.loc[f"pd_{m}", "bayes_fraction"]) for m in ("decoupled", "hybrid", "propagation", "jiangyin")},
            **{f"{m}_coverage": float(ov.loc[f"pd_{m}", "coverage"]) for m in ("decoupled", "hybrid", "propagation")},
            "propagation_wins": "; ".join(f"{r.segment}={r.value} ({r.auc_pd_propagation:.3f} vs {r.auc_pd_decoupled:.3f})"
                                          for r in wins[wins["winner"] == "pd_propagation"].itertuples()),
            "decoupled_wins": "; ".join(f"{r.segment}={r.value} ({r.auc_pd_decoupled:.3f} vs {r.auc_pd_propagation:.3f})"
                                        for r in wins[wins["winner"] == "pd_decoupled"].itertuples() if r.segment == "role_tier")}


def prepare_story(story: str, n_firms: int, seed: int) -> dict:
    """Simulate (once, cached on disk), load and assemble every snapshot of one story's
    world, with the peer's columns; the split ``scf train`` uses."""
    from bench.crossworld import add_peer_features
    from scf_engine.assemble import assemble, split_dates, truth_frame
    from scf_engine.ingest import load_dataset
    from scf_engine.simulate import WorldConfig, simulate, write_dataset

    data_dir = ROOT / "cross" / f"{story}_{n_firms}_{seed}"
    if not (data_dir / "flows.parquet").exists():
        write_dataset(simulate(WorldConfig(n_firms=n_firms, seed=seed, story=story)), data_dir, fmt="parquet")
    ds = load_dataset(data_dir)
    dates = ds.snapshot_dates()
    data = assemble(ds, dates, truth=truth_frame(ds))
    add_peer_features(data)
    train, test = split_dates(dates, n_test=2)
    return {"data": data, "train": train, "test": test}


def fit_story(world: dict) -> dict:
    """Every model on one world's training snapshots (the settings ``scf train`` uses)."""
    from bench.crossworld import fit_peer
    from scf_engine.learners import JiangyinGrading
    from scf_engine.learners.lgbm import HybridModel
    from scf_engine.learners.predict import has_flows
    from scf_engine.pipelines import fit_propagation_and_decoupled

    prop, dec, tr, _ = fit_propagation_and_decoupled(world["data"], world["train"], world["test"])
    hyb = HybridModel.from_policy().fit(tr, tr["label"], as_of=tr["as_of"], groups=tr["firm_id"])
    flows = has_flows(tr)
    jy = JiangyinGrading.from_policy().fit(tr[flows], tr.loc[flows, "label"])
    peer_cols = [c for c in tr if c.startswith("peer_") and not c.startswith("peer_recv_")]
    recv_cols = peer_cols + [c for c in tr if c.startswith("peer_recv_")]
    return {"propagation": prop, "models": {"decoupled": dec, "hybrid": hyb, "jiangyin": jy},
            "peer": (fit_peer(tr[flows], peer_cols), peer_cols), "peer_recv": (fit_peer(tr, recv_cols), recv_cols),
            "train_rows": tr}


def score_with(fitted: dict, world: dict, dates) -> pd.DataFrame:
    """The fitted models' PDs on ``world``'s rows at ``dates`` (its chains re-scored by the
    training world's propagation model, as a bank would run it)."""
    from scf_engine.assemble import add_propagation, stack
    from scf_engine.learners.predict import has_flows, predict_all

    add_propagation(world["data"], fitted["propagation"])
    te = stack(world["data"], dates)
    te = te.join(predict_all(fitted["models"], te).drop(columns=["pd_propagation"]))
    flows = has_flows(te).to_numpy()
    for name in ("peer", "peer_recv"):
        model, cols = fitted[name]
        te[f"pd_{name}"] = model.predict_proba(te[cols].astype(float))[:, 1]
    te.loc[~flows, "pd_peer"] = np.nan
    return te


def run_cross(n_firms: int, seed: int, stories: list[str]):
    """Both tables and the feature-stability table, as CSVs under ROOT/cross."""
    from bench.crossworld import cell, feature_effects, recalibration_rows, transfer_columns, write
    from scf_engine.catalogue import load_catalogue

    worlds = {s: prepare_story(s, n_firms, seed) for s in stories}
    fitted = {s: fit_story(w) for s, w in worlds.items()}
    own = {b: cell(score_with(fitted[b], worlds[b], worlds[b]["test"][-1:])) for b in stories}
    cross, within, recal = [], [], []
    for a in stories:
        for b in stories:
            if a == b:
                te = score_with(fitted[a], worlds[a], worlds[a]["test"])
                within.append({"world": a, "as_of": ", ".join(str(d.date()) for d in worlds[a]["test"]), **cell(te)})
            else:
                te = score_with(fitted[a], worlds[b], worlds[b]["test"][-1:])
                cross.append({"train": a, "test": b, "as_of": str(worlds[b]["test"][-1].date()), **cell(te),
                              **transfer_columns(cell(te), own[b])})
                q, nxt = worlds[b]["test"][-2:]
                frames = {"quarter": score_with(fitted[a], worlds[b], [q]), "next_quarter": te}
                recal += recalibration_rows({k: fitted[a]["models"][k] for k in ("decoupled", "hybrid")}, frames,
                                            {"train": a, "test": b, "quarter": str(q.date()), "next": str(nxt.date())})
    feats = load_catalogue().model_features("decoupled")
    eff = feature_effects({s: f["train_rows"] for s, f in fitted.items()}, feats)
    write(pd.DataFrame(cross), ROOT / "cross" / "cross_world.csv")
    write(pd.DataFrame(within), ROOT / "cross" / "within_world.csv")
    write(pd.DataFrame(recal), ROOT / "cross" / "recalibration.csv")
    write(eff.reset_index(), ROOT / "cross" / "feature_stability.csv")
    return {"cells": len(cross)}


CROSS_COLUMNS = {"rows": "rows", "defaults": "defaults", "bayes_gini_flows": "bayes Gini (flows rows)",
                 "decoupled_share": "de-coupled", "hybrid_share": "hybrid", "peer_share": "peer (flows)",
                 "peer_recv_share": "peer (+recv)", "jiangyin_share": "jiangyin",
                 "decoupled_vs_peer": "de-coupled / peer", "hybrid_vs_peer_recv": "hybrid / peer(+recv)"}
TRANSFER_COLUMNS = {"decoupled_own_share": "de-coupled, test world's own model", "decoupled_transfer": "de-coupled kept",
                    "hybrid_own_share": "hybrid, own model", "hybrid_transfer": "hybrid kept"}


def main_cross():
    r = measure("bench.bench_acceptance:run_cross", CROSS_FIRMS, CROSS_SEED, STORIES, repeats=1)
    cross = pd.read_csv(ROOT / "cross" / "cross_world.csv")
    within = pd.read_csv(ROOT / "cross" / "within_world.csv")
    eff = pd.read_csv(ROOT / "cross" / "feature_stability.csv")
    size = f"{CROSS_FIRMS:,} firms per world, seed {CROSS_SEED}, {r['seconds'] / 60:.1f} min"
    show(f"Cross-world: share of the Bayes-optimal Gini and ratio to the plain peer, every ordered pair ({size}; "
         "targets: de-coupled >= 0.90, hybrid >= 0.92, each >= 1.25x the peer)",
         cross[["train", "test", "as_of", *CROSS_COLUMNS]].rename(columns=CROSS_COLUMNS).to_dict("records"), "acceptance_cross")
    show("Transfer against the test world's own models (trained on its own earlier snapshots, scored on the same rows): "
         "what the cell would read with no change of world, and the share of it the transferred model keeps",
         cross[["train", "test", "decoupled_share", "hybrid_share", *TRANSFER_COLUMNS]]
         .rename(columns={**CROSS_COLUMNS, **TRANSFER_COLUMNS}).round(3).to_dict("records"), "acceptance_transfer")
    show("Within a world, out of time (held-out snapshots of the training world)",
         within[["world", "as_of", *CROSS_COLUMNS]].rename(columns=CROSS_COLUMNS).to_dict("records"), "acceptance_within")
    recal = pd.read_csv(ROOT / "cross" / "recalibration.csv")
    show("Calibration transfer (scf recalibrate on the test world's first labelled quarter): largest gap between a PD "
         "decile's mean PD and its default rate, points, before and after; noise_95 = what a perfectly calibrated PD "
         "shows on the same rows (95%); target: within 1 point", recal.round(2).to_dict("records"), "acceptance_recalibration")
    cols = ["feature", *STORIES, "sign_flips", "spread"]
    show("De-coupled features: univariate effect per story (AUC - 0.5 on training rows; + = riskier as it grows), "
         "least stable first", eff[cols].head(25).to_dict("records"), "acceptance_feature_stability")


def main():
    main_cross()
    if not WORLDS:
        return
    rows = []
    for n, seed in WORLDS:
        r = measure("bench.bench_acceptance:run_world", n, seed, repeats=1)
        rows.append({"world": f"{n} firms, seed {seed}" + (" (default)" if (n, seed) == (10000, 42) else ""),
                     "defaults_heldout": r["defaults"], "bayes_gini": r["bayes_gini"],
                     "decoupled": r["decoupled_bayes_fraction"], "hybrid": r["hybrid_bayes_fraction"],
                     "propagation": r["propagation_bayes_fraction"], "jiangyin": r["jiangyin_bayes_fraction"],
                     "propagation_coverage": r["propagation_coverage"], "decoupled_coverage": r["decoupled_coverage"],
                     "minutes": r["seconds"] / 60, "propagation wins": r["propagation_wins"],
                     "decoupled wins (role/tier)": r["decoupled_wins"]})
    show("Out-of-time Gini as a fraction of the Bayes-optimal Gini (targets: de-coupled >= 0.85; hybrid >= de-coupled)",
         rows, "acceptance")
    pd.DataFrame(rows).to_csv(ROOT / "acceptance.csv", index=False)


if __name__ == "__main__":
    main()
