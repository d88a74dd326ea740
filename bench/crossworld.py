"""Cross-world evaluation: train on one world story, score another's firms.

A bank trains on its own history and then meets data made by another story (another
region, platform or year). Each story of :mod:`scf_engine.simulate.stories` gives one
world; every model is fitted once per world on that world's training snapshots (the same
split ``scf train`` uses, nothing tuned per world) and scored

* on every *other* world's firms at one as-of date (its latest labelled snapshot), and
* on its own world's held-out snapshots (out of time), the second table.

Beside the engine's models runs the plain peer a bank would build first: 12-month sums,
counts and active months of flows by purpose and direction (and, for the receivables
variant, 12-month registry sums by role) fed to LightGBM with its default settings.
Gini is reported as a share of the Bayes-optimal Gini (the story's true PD on the same
rows) and as a ratio to the peer's Gini on the same rows.
"""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from scf_engine.duck import connect

PURPOSE_DIR = "purpose_dir"


def peer_flow_features(snap, firm_ids: pd.Index) -> pd.DataFrame:
    """Per firm, by purpose and direction over the 12 months before the as-of date: the
    sum, the number of flows and the number of months with any (the plain peer)."""
    T = snap.as_of.strftime("%Y-%m-%d")
    con = connect()
    con.register("flows", snap.flows[["booked_on", "payer_id", "payee_id", "amount", "purpose"]])
    long = con.sql(f"""
        WITH legs AS (
            SELECT payee_id AS firm_id, 'in' AS dir, purpose, amount, booked_on FROM flows
            WHERE booked_on >= DATE '{T}' - INTERVAL 12 MONTH
            UNION ALL
            SELECT payer_id, 'out', purpose, amount, booked_on FROM flows
            WHERE booked_on >= DATE '{T}' - INTERVAL 12 MONTH)
        SELECT firm_id, purpose || '_' || dir AS {PURPOSE_DIR}, sum(amount) AS sum, count(*) AS n,
               count(DISTINCT date_trunc('month', booked_on)) AS months
        FROM legs GROUP BY ALL""").df()
    con.close()
    wide = long.pivot(index="firm_id", columns=PURPOSE_DIR, values=["sum", "n", "months"])
    wide.columns = [f"peer_{k}_{s}" for s, k in wide.columns]
    return wide.reindex(firm_ids)


def peer_registry_features(snap, firm_ids: pd.Index) -> pd.DataFrame:
    """Per firm, as supplier and as buyer, receivables issued in the last 12 months: the
    amount, the count, the amount confirmed and the amount paid (as known at the as-of)."""
    r = snap.receivables
    r = r[r["issued_on"] >= snap.as_of - pd.DateOffset(months=12)]
    out = []
    for role, col in (("supplier", "supplier_id"), ("buyer", "buyer_id")):
        g = r.assign(confirmed=r["amount"].where(r["confirmed_on"].notna(), 0.0),
                     paid=r["paid_amount"].fillna(0.0)).groupby(col)
        out.append(pd.DataFrame({f"peer_recv_{role}_sum": g["amount"].sum(), f"peer_recv_{role}_n": g.size(),
                                 f"peer_recv_{role}_confirmed": g["confirmed"].sum(), f"peer_recv_{role}_paid": g["paid"].sum()}))
    return pd.concat(out, axis=1).reindex(firm_ids)


def add_peer_features(data: dict) -> None:
    """The peer's columns on every snapshot table (missing flows or receivables: NaN)."""
    for sd in data.values():
        idx = sd.table.index
        sd.table = sd.table.join(peer_flow_features(sd.snapshot, idx)).join(peer_registry_features(sd.snapshot, idx))


def fit_peer(tr: pd.DataFrame, columns: list[str]) -> lgb.LGBMClassifier:
    """LightGBM with its default settings (two threads, a fixed seed)."""
    return lgb.LGBMClassifier(n_jobs=2, random_state=0, verbose=-1).fit(tr[columns].astype(float), tr["label"])


def gini(y, p) -> float:
    y, p = np.asarray(y, float), np.asarray(p, float)
    ok = ~np.isnan(p) & ~np.isnan(y)
    if len(np.unique(y[ok])) < 2:
        return np.nan
    return 2 * roc_auc_score(y[ok], p[ok]) - 1


def cell(frame: pd.DataFrame) -> dict:
    """One table cell: Gini shares of the Bayes-optimal Gini and ratios to the peer, each
    on the rows that model and its peer both score (de-coupled and peer on firms with
    flows; hybrid and the receivables peer on every row)."""
    flows = frame["history_months"].notna().to_numpy()
    f, a = frame[flows], frame
    out = {"rows": int(len(a)), "defaults": int(a["label"].sum()), "rows_with_flows": int(flows.sum()),
           "bayes_gini_flows": gini(f["label"], f["true_pd"]), "bayes_gini_all": gini(a["label"], a["true_pd"])}
    for name, part, bayes in (("decoupled", f, "bayes_gini_flows"), ("peer", f, "bayes_gini_flows"),
                              ("jiangyin", f, "bayes_gini_flows"), ("hybrid", a, "bayes_gini_all"),
                              ("peer_recv", a, "bayes_gini_all")):
        out[f"{name}_gini"] = gini(part["label"], part[f"pd_{name}"])
        out[f"{name}_share"] = out[f"{name}_gini"] / out[bayes]
    out["decoupled_vs_peer"] = out["decoupled_gini"] / out["peer_gini"]
    out["hybrid_vs_peer_recv"] = out["hybrid_gini"] / out["peer_recv_gini"]
    return out


def transfer_columns(moved: dict, own: dict) -> dict:
    """A cross-world cell against the test world's own models on the same rows (trained
    on that world's earlier snapshots: a bank with its own history). ``*_own_share`` is
    what the cell would read with no change of world; ``*_transfer`` the share of it the
    moved model keeps. A cell short of the target with ``*_transfer`` near 1 is short
    because the test world's flows carry less, not because the model did not travel."""
    out = {}
    for name in ("decoupled", "hybrid"):
        out[f"{name}_own_share"] = own[f"{name}_share"]
        out[f"{name}_transfer"] = moved[f"{name}_share"] / own[f"{name}_share"]
    return out


def feature_effects(tables: dict[str, pd.DataFrame], features: list[str]) -> pd.DataFrame:
    """Each feature's univariate effect in each world (AUC of the feature against the
    12-month label on the training rows, minus 0.5: positive = riskier as it grows) and
    whether it transfers: the same direction in every world where it shows at all."""
    rows = []
    for feat in features:
        row = {"feature": feat}
        for story, t in tables.items():
            ok = t[feat].notna() & t["label"].notna()
            y, x = t.loc[ok, "label"], t.loc[ok, feat]
            row[story] = roc_auc_score(y, x) - 0.5 if ok.sum() > 50 and y.nunique() == 2 and x.nunique() > 1 else np.nan
        rows.append(row)
    eff = pd.DataFrame(rows).set_index("feature")
    shown = eff.where(eff.abs() >= 0.02)
    eff["min_abs"] = eff[list(tables)].abs().min(axis=1)
    eff["sign_flips"] = (shown.gt(0).any(axis=1) & shown.lt(0).any(axis=1))
    eff["spread"] = eff[list(tables)].max(axis=1) - eff[list(tables)].min(axis=1)
    return eff.sort_values("spread", ascending=False)


def recalibration_rows(models: dict, frames: dict[str, pd.DataFrame], pair: dict) -> list[dict]:
    """``scf recalibrate``'s refit (:func:`scf_engine.pipelines.recalibrate.recalibrate_models`)
    of another world's models on this world's first labelled quarter (``frames['quarter']``),
    judged on it and on the next quarter: the largest decile gap before and after, and the
    band a perfectly calibrated PD would stay within on the same rows."""
    from scf_engine.pipelines.recalibrate import recalibrate_models

    _, _, summary = recalibrate_models(models, frames)
    rows = []
    for r in summary.to_dict("records"):
        noise = r["noise_95_pp"]
        rows.append({**pair, "model": r["kind"], "sample": r["sample"], "rows": r["rows"], "defaults": r["defaults"],
                     "gap_before_pp": r["max_gap_before_pp"], "gap_after_pp": r["max_gap_after_pp"], "noise_95_pp": noise,
                     "within_1pp": r["max_gap_after_pp"] <= 1.0, "within_noise": r["max_gap_after_pp"] <= noise})
    return rows


def write(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
