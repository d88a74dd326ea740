"""Drift (稳定性监测): score PSI and per-feature CSI against the training reference.

The reference is saved with the training run (``drift/reference.json`` in the hybrid
model's run, :func:`reference`): for the score and every numeric model feature, the
training rows' quantile bin edges and the share of rows in each bin (missing values in
a bin of their own). A monitoring pass bins each as-of's values on the same edges.

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


def drift_rows(ref: dict, frame: pd.DataFrame, as_of: pd.Timestamp, policy) -> pd.DataFrame:
    """One row per variable of the reference present in ``frame``: ``as_of, variable,
    kind (psi for the score, csi for a feature), value, level``."""
    d = policy["drift"]
    rows = []
    for var, r in ref.items():
        if var not in frame:
            continue
        v = psi(r, frame[var], float(d["epsilon"]))
        level = "red" if v >= d["psi_red"] else "amber" if v >= d["psi_amber"] else "green"
        rows.append({"as_of": str(as_of.date()), "variable": var, "kind": "psi" if var == "score" else "csi",
                     "value": round(v, 6), "level": level})
    return pd.DataFrame(rows, columns=["as_of", "variable", "kind", "value", "level"])


__all__ = ["REFERENCE_ARTIFACT", "reference", "psi", "drift_rows"]
