"""Drift (稳定性监测): score PSI and per-feature CSI against the training reference.

The reference is saved with the training run (``drift/reference.json`` in the hybrid
model's run, :func:`reference`): for the score and every numeric model feature, the
training rows' quantile bin edges and the share of rows in each bin (missing values in
a bin of their own). A monitoring pass bins the portfolio's values at each as-of and at
the batch on the same edges and compares the two (:func:`drift_rows` says why).

An empty bin is smoothed (``epsilon`` added to every share, then renormalised), never
dropped: dropping it, as a popular toolkit does (pitfalls.md), hides exactly the shift
where a population moves into a range training never saw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

REFERENCE_ARTIFACT = "drift/reference.json"


def _bins(values: pd.Series, edges: np.ndarray) -> np.ndarray:
    """Counts per bin: len(edges) - 1 inner bins (open at both ends) and one for missing."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    ok = ~np.isnan(v)
    idx = np.searchsorted(edges[1:-1], v[ok], side="right")
    counts = np.bincount(idx, minlength=len(edges) - 1).astype(float)
    return np.append(counts, float((~ok).sum()))


def reference(frame: pd.DataFrame, columns, bins: int) -> dict:
    """``{column: {"edges": [...], "shares": [...]}}`` of the training rows."""
    out = {}
    for c in columns:
        v = pd.to_numeric(frame[c], errors="coerce").dropna()
        if v.empty:
            continue
        edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)))
        if len(edges) < 2:
            edges = np.array([v.iloc[0], v.iloc[0]])
        counts = _bins(frame[c], edges)
        out[c] = {"edges": edges.tolist(), "shares": (counts / counts.sum()).tolist()}
    return out


def psi(ref: dict, values: pd.Series, epsilon: float) -> float:
    """Population stability index of ``values`` against one reference entry, every bin
    kept (empty ones smoothed with ``epsilon``)."""
    expected = np.asarray(ref["shares"], dtype=float)
    counts = _bins(values, np.asarray(ref["edges"], dtype=float))
    if counts.sum() == 0:
        return float("nan")
    actual = counts / counts.sum()
    e = (expected + epsilon) / (expected + epsilon).sum()
    a = (actual + epsilon) / (actual + epsilon).sum()
    return float(np.sum((a - e) * np.log(a / e)))


def psi_between(ref: dict, expected: pd.Series, actual: pd.Series, epsilon: float) -> float:
    """PSI of ``actual`` against ``expected``, both binned on the edges of one training
    reference entry (every bin kept, empty ones smoothed with ``epsilon``)."""
    edges = np.asarray(ref["edges"], dtype=float)
    e_counts, a_counts = _bins(expected, edges), _bins(actual, edges)
    if e_counts.sum() == 0 or a_counts.sum() == 0:
        return float("nan")
    return psi({"edges": ref["edges"], "shares": (e_counts / e_counts.sum()).tolist()}, actual, epsilon)


def drift_rows(ref: dict, frame, as_of: pd.Timestamp, policy) -> pd.DataFrame:
    """One row per variable of the reference present in ``frame`` (a frame, or a mapping
    of column name to Series) now and at the batch (``b_<variable>``): ``as_of, variable,
    kind (psi for the score, csi for a feature), value, level, baseline``.

    Like with like: the lent portfolio at the as-of against the SAME firms at the batch,
    binned on the training reference's edges. The lent firms are a selection (approved,
    PD under the policy's cut), so against the whole training population they read red
    on the first day by selection alone, which is not drift; against themselves at the
    batch, what moves is what happened since lending. (Re-scoring the whole population
    at every as-of would be the other like-for-like choice, at the cost of a decision
    core run over every firm of the world each month.)"""
    d = policy["drift"]
    rows = []
    for var, r in ref.items():
        if var not in frame or f"b_{var}" not in frame:
            continue
        v = psi_between(r, frame[f"b_{var}"], frame[var], float(d["epsilon"]))
        level = "red" if v >= d["psi_red"] else "amber" if v >= d["psi_amber"] else "green"
        rows.append({"as_of": str(as_of.date()), "variable": var, "kind": "psi" if var == "score" else "csi",
                     "value": round(v, 6), "level": level, "baseline": "portfolio at the batch"})
    return pd.DataFrame(rows, columns=["as_of", "variable", "kind", "value", "level", "baseline"])


def vintage_rows(lent: pd.DataFrame, default_on: pd.Series, as_of: pd.Timestamp, policy) -> pd.DataFrame:
    """Expected against observed default rate per batch vintage (the batch's as-of), as
    its labels mature: rows of drift.csv with ``kind`` ``expected_default_rate`` and
    ``observed_default_rate``, ``variable`` the vintage.

    Expected by the as-of: the mean over the vintage's firms of the batch PD (a 12-month
    PD) spread evenly over the year, ``1 - (1 - pd) ** (m / 12)`` for the ``m`` months
    elapsed (at most 12: the label's horizon); observed: the share of them in default
    before the as-of. The level reads observed over expected against the policy's
    ``vintage_amber`` / ``vintage_red`` ratios (a model that under-states risk)."""
    d = policy["drift"]
    firms = lent.assign(d_on=default_on.reindex(lent["firm_id"]).to_numpy())
    rows = []
    for v, g in firms.groupby("batch_as_of"):
        m = min(max((as_of - v).days / 30.4375, 0.0), 12.0)
        horizon = v + pd.DateOffset(months=12)
        expected = float((1 - (1 - pd.to_numeric(g["pd"], errors="coerce").clip(0, 1)) ** (m / 12)).mean())
        observed = float(((g["d_on"] >= v) & (g["d_on"] < min(as_of, horizon))).mean())
        ratio = observed / expected if expected > 0 else float("nan")
        level = "red" if ratio >= d["vintage_red"] else "amber" if ratio >= d["vintage_amber"] else "green"
        note = f"{len(g)} firms, {m:.1f} of 12 months observed"
        for kind, value, lv in (("expected_default_rate", expected, "green"), ("observed_default_rate", observed, level)):
            rows.append({"as_of": str(as_of.date()), "variable": str(v.date()), "kind": kind, "value": round(value, 6),
                         "level": lv, "baseline": note})
    return pd.DataFrame(rows, columns=["as_of", "variable", "kind", "value", "level", "baseline"])


__all__ = ["REFERENCE_ARTIFACT", "reference", "psi", "psi_between", "drift_rows", "vintage_rows"]
