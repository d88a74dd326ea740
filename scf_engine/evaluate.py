"""Shared evaluation: every model is judged on the same rows with the same metrics.

Metrics: AUC, KS, Gini, Brier, log loss, calibration table, lift by decile, PSI of scores
between train and test; each broken down by segment (role and tier, dependence on cores,
industry, flow history); where the simulator's ``true_pd`` is known, each model's Gini
as a fraction of the Bayes-optimal Gini on the same rows; paired bootstrap confidence
intervals (resampling firms, since a firm appears in several snapshots) for the
differences in AUC and KS between two models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score, roc_curve

PSI_EPS = 1e-4  # smoothing for empty bins (never drop a bin: pitfalls.md)


def _valid(y, p):
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    ok = ~np.isnan(p) & ~np.isnan(y)
    return y[ok], p[ok]


def ks_stat(y, p) -> float:
    fpr, tpr, _ = roc_curve(y, p)
    return float(np.max(tpr - fpr))


def metrics(y, p) -> dict:
    """Headline metrics on the rows where the model gave a PD."""
    y_all = np.asarray(y, dtype=float)
    y, p = _valid(y, p)
    out = {"n": int(len(y)), "defaults": int(y.sum()), "coverage": float(len(y) / max(len(y_all), 1)),
           "default_rate": float(y.mean()) if len(y) else np.nan, "mean_pd": float(p.mean()) if len(p) else np.nan}
    if len(np.unique(y)) < 2:
        return out | {"auc": np.nan, "gini": np.nan, "ks": np.nan, "brier": np.nan, "log_loss": np.nan}
    auc = roc_auc_score(y, p)
    pc = np.clip(p, 1e-9, 1 - 1e-9)
    return out | {"auc": float(auc), "gini": float(2 * auc - 1), "ks": ks_stat(y, p),
                  "brier": float(brier_score_loss(y, pc)), "log_loss": float(log_loss(y, pc, labels=[0, 1]))}


def calibration_table(y, p, bins: int = 10) -> pd.DataFrame:
    """Rows grouped by predicted-PD decile: mean PD against the observed default rate."""
    y, p = _valid(y, p)
    if not len(y):  # a model that scored no row (the propagation model on data without a core)
        return pd.DataFrame(columns=["bin", "n", "defaults", "mean_pd", "observed"])
    q = pd.qcut(pd.Series(p).rank(method="first"), bins, labels=False)
    df = pd.DataFrame({"bin": q + 1, "y": y, "p": p})
    t = df.groupby("bin").agg(n=("y", "size"), defaults=("y", "sum"), mean_pd=("p", "mean"), observed=("y", "mean"))
    return t.reset_index()


def max_decile_gap(y, p, bins: int = 10) -> float:
    """The largest gap, in percentage points, between a PD decile's mean PD and its
    observed default rate."""
    t = calibration_table(y, p, bins=bins)
    return 100 * float((t["mean_pd"] - t["observed"]).abs().max())


def calibration_noise(p, bins: int = 10, draws: int = 400, seed: int = 0, level: float = 0.95) -> float:
    """The :func:`max_decile_gap` a perfectly calibrated PD shows on these rows: its
    ``level`` quantile when each row defaults with exactly its PD (labels drawn ``draws``
    times). Why: a decile of 200 rows at a 4% default rate has a binomial standard error
    of 1.4 points, so "within 1 point per decile" cannot be shown on a few thousand rows;
    a gap inside this band is as good as calibration can be shown to be on the sample,
    one outside it is miscalibration."""
    p = np.asarray(p, dtype=float)
    p = p[~np.isnan(p)]
    rng = np.random.default_rng(seed)
    gaps = [max_decile_gap((rng.random(len(p)) < p).astype(float), p, bins) for _ in range(draws)]
    return float(np.quantile(gaps, level))


def lift_table(y, p, deciles: int = 10) -> pd.DataFrame:
    """Deciles from riskiest to safest: default rate, lift, share of all defaults captured."""
    y, p = _valid(y, p)
    if not len(y):
        return pd.DataFrame(columns=["decile", "n", "defaults", "default_rate", "lift", "cum_capture"])
    order = np.argsort(-p, kind="stable")
    dec = np.arange(len(y)) * deciles // max(len(y), 1) + 1
    df = pd.DataFrame({"decile": dec, "y": y[order]})
    t = df.groupby("decile").agg(n=("y", "size"), defaults=("y", "sum"))
    t["default_rate"] = t["defaults"] / t["n"]
    t["lift"] = t["default_rate"] / max(y.mean(), 1e-12)
    t["cum_capture"] = t["defaults"].cumsum() / max(y.sum(), 1)
    return t.reset_index()


def psi(expected, actual, bins: int = 10) -> float:
    """Population stability index of ``actual`` against ``expected`` (bins from
    ``expected``'s quantiles; empty bins smoothed, never dropped)."""
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    e, a = e[~np.isnan(e)], a[~np.isnan(a)]
    if len(e) == 0 or len(a) == 0:
        return np.nan
    edges = np.unique(np.quantile(e, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    pe = np.histogram(e, edges)[0] / len(e) + PSI_EPS
    pa = np.histogram(a, edges)[0] / len(a) + PSI_EPS
    pe, pa = pe / pe.sum(), pa / pa.sum()
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def bayes_fraction(y, p, true_pd) -> float:
    """Gini of the model over Gini of the true PD, on rows where both exist."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    t = np.asarray(true_pd, dtype=float)
    ok = ~np.isnan(p) & ~np.isnan(t)
    if len(np.unique(y[ok])) < 2:
        return np.nan
    return float((2 * roc_auc_score(y[ok], p[ok]) - 1) / (2 * roc_auc_score(y[ok], t[ok]) - 1))


def weighted_auc_ks(y, p, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC and KS of score ``p`` against labels ``y`` under each row of ``weights``
    (replicates x rows, e.g. how often a bootstrap drew each row), all replicates at once.

    Why: a bootstrap of a few hundred replicates called :func:`roc_auc_score` and
    :func:`roc_curve` four times a replicate, and scikit-learn's input checks, not the
    ranking, took the time (23 of the 28 s of ``scf compare`` on a 400-firm world). The
    answers are scikit-learn's with ``sample_weight`` (an integer weight counts a row as
    that many copies; tied scores share credit half and half): the rows are sorted by
    score once, the weights summed per tied score, and each replicate's AUC is the
    Mann-Whitney sum over the tie groups, its KS the largest gap between the cumulative
    shares of defaults and non-defaults from the top score down (the ROC's corners,
    which ``roc_curve`` keeps). A replicate with no default or no non-default gets NaN."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    order = np.argsort(-p, kind="stable")  # highest score first
    ps = p[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])  # first row of each tied score
    ws = w[:, order]
    pos = np.add.reduceat(ws * y[order], starts, axis=1)  # defaults' weight per tied score
    neg = np.add.reduceat(ws * (1 - y[order]), starts, axis=1)
    cpos, cneg = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    tot_p, tot_n = cpos[:, -1], cneg[:, -1]
    ok = (tot_p > 0) & (tot_n > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # a default beats the non-defaults scored below it, and ties half of those at its score
        below = tot_n[:, None] - cneg  # non-defaults at a lower score than the group
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (tot_p * tot_n)
        ks = np.maximum((cpos / tot_p[:, None] - cneg / tot_n[:, None]).max(axis=1), 0.0)
    return np.where(ok, auc, np.nan), np.where(ok, ks, np.nan)


def bootstrap_difference(frame: pd.DataFrame, a: str, b: str, *, n_boot: int = 400, seed: int = 0,
                         cluster: str = "firm_id", chunk: int = 50) -> dict:
    """Paired cluster bootstrap of AUC(a) - AUC(b) and KS(a) - KS(b) on rows both scored:
    each replicate draws the firms with replacement and counts each of their rows as often
    as its firm was drawn (:func:`weighted_auc_ks`, ``chunk`` replicates at a time);
    replicates drawing no default or no non-default are skipped."""
    df = frame[[cluster, "label", a, b]].dropna()
    if df["label"].nunique() < 2:  # no row both scored (the propagation model on data without a core)
        nan = float("nan")
        return {"a": a, "b": b, "n": int(len(df)), "auc_diff": nan, "auc_lo": nan, "auc_hi": nan,
                "ks_diff": nan, "ks_lo": nan, "ks_hi": nan}
    rng = np.random.default_rng(seed)
    firm_of_row, firms = pd.factorize(df[cluster], sort=True)
    y, pa, pb = df["label"].to_numpy(), df[a].to_numpy(), df[b].to_numpy()
    point_auc = roc_auc_score(y, pa) - roc_auc_score(y, pb)
    point_ks = ks_stat(y, pa) - ks_stat(y, pb)
    picks = rng.integers(0, len(firms), (n_boot, len(firms)))  # replicate r draws firms picks[r]
    d_auc, d_ks = [], []
    for lo in range(0, n_boot, chunk):
        counts = np.stack([np.bincount(row, minlength=len(firms)) for row in picks[lo:lo + chunk]])
        weights = counts[:, firm_of_row]  # each row as often as its firm was drawn
        auc_a, ks_a = weighted_auc_ks(y, pa, weights)
        auc_b, ks_b = weighted_auc_ks(y, pb, weights)
        d_auc.append(auc_a - auc_b)
        d_ks.append(ks_a - ks_b)
    d_auc, d_ks = np.concatenate(d_auc), np.concatenate(d_ks)
    d_auc, d_ks = d_auc[~np.isnan(d_auc)], d_ks[~np.isnan(d_ks)]
    lo, hi = np.percentile(d_auc, [2.5, 97.5])
    klo, khi = np.percentile(d_ks, [2.5, 97.5])
    return {"a": a, "b": b, "n": int(len(df)), "auc_diff": float(point_auc), "auc_lo": float(lo), "auc_hi": float(hi),
            "ks_diff": float(point_ks), "ks_lo": float(klo), "ks_hi": float(khi)}


def segment_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Segments used in every breakdown, from graph facts and flow history (never from
    simulator labels)."""
    seg = pd.DataFrame(index=frame.index)
    role = frame.get("role", pd.Series("unknown", index=frame.index)).fillna("unknown")
    tier = frame.get("upstream_tier")
    seg["role_tier"] = np.where(role == "upstream",
                                np.where(tier == 1, "upstream tier 1", "upstream tier 2+"), role)
    dep = frame.get("core_dependence", pd.Series(np.nan, index=frame.index)).fillna(0)
    supply = frame.get("core_supply_share", pd.Series(0.0, index=frame.index)).fillna(0)
    dep = np.maximum(dep, supply)
    seg["core_dependence"] = pd.cut(dep, [-0.01, 0.0, 0.3, 0.6, 1.0], labels=["none", "low (<=30%)", "mid (30-60%)", "high (>60%)"]).astype(str)
    hist = frame.get("history_months")
    seg["flow_history"] = np.select([hist.isna(), hist < 6, hist < 12], ["none", "<6 months", "6-11 months"], "12+ months")
    seg["industry"] = frame.get("industry", pd.Series("?", index=frame.index)).astype(str).str[0]
    return seg


def evaluate(frame: pd.DataFrame, scores: list[str], *, truth: str | None = "true_pd",
             segments: tuple[str, ...] = ("role_tier", "core_dependence", "flow_history", "industry")) -> dict:
    """Everything the comparison report shows, for the score columns of ``frame``
    (which holds ``label``, ``firm_id`` and segment source columns)."""
    has_truth = truth is not None and truth in frame and frame[truth].notna().any()
    rows = []
    for s in scores:
        m = metrics(frame["label"], frame[s])
        if has_truth:
            m["bayes_fraction"] = bayes_fraction(frame["label"], frame[s], frame[truth])
        rows.append({"model": s} | m)
    if has_truth:
        m = metrics(frame["label"], frame[truth])
        rows.append({"model": truth} | m | {"bayes_fraction": 1.0})
    overall = pd.DataFrame(rows)
    seg = segment_columns(frame)
    seg_rows = []
    for col in segments:
        for value, idx in seg.groupby(col).groups.items():
            part = frame.loc[idx]
            for s in scores + ([truth] if has_truth else []):
                m = metrics(part["label"], part[s])
                seg_rows.append({"segment": col, "value": value, "model": s, "n_rows": len(part), "n": m["n"],
                                 "defaults": m["defaults"], "coverage": m["coverage"], "auc": m["auc"], "gini": m["gini"],
                                 "mean_pd": m["mean_pd"], "default_rate": m["default_rate"]})
    return {
        "overall": overall,
        "segments": pd.DataFrame(seg_rows),
        "calibration": {s: calibration_table(frame["label"], frame[s]) for s in scores},
        "lift": {s: lift_table(frame["label"], frame[s]) for s in scores},
    }
