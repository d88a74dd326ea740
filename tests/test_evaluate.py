"""The comparison's bootstrap: scikit-learn's AUC and KS, computed for every replicate at once."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score, roc_curve

from scf_engine.evaluate import bootstrap_difference, ks_stat, weighted_auc_ks


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6), st.integers(0, 3)), min_size=1, max_size=40),
       st.integers(0, 2**31))
def test_weighted_auc_and_ks_are_scikit_learns_on_the_repeated_rows(rows, seed):
    """Scores drawn from a few values (ties), weights 0-3 (a row left out, or drawn up
    to three times): each replicate's AUC and KS equal scikit-learn's on the rows repeated
    that many times; a replicate with one class only is NaN."""
    y = np.array([r[0] for r in rows], dtype=float)
    p = np.array([r[1] for r in rows], dtype=float) / 6
    w = np.array([r[2] for r in rows])
    other = np.random.default_rng(seed).integers(0, 4, len(rows))  # a second replicate
    auc, ks = weighted_auc_ks(y, p, np.stack([w, other]))
    for r, weights in enumerate((w, other)):
        yy, pp = np.repeat(y, weights), np.repeat(p, weights)
        if len(np.unique(yy)) < 2:
            assert np.isnan(auc[r]) and np.isnan(ks[r])
            continue
        fpr, tpr, _ = roc_curve(yy, pp)
        assert abs(auc[r] - roc_auc_score(yy, pp)) < 1e-12
        assert abs(ks[r] - np.max(tpr - fpr)) < 1e-12


def test_the_bootstrap_is_the_replicate_by_replicate_loop():
    """The same firms drawn (one generator, replicate after replicate), the same
    percentiles as resampling the rows and calling scikit-learn for each replicate."""
    rng = np.random.default_rng(3)
    n = 900
    frame = pd.DataFrame({"firm_id": [f"F{i % 350:04d}" for i in range(n)], "label": (rng.random(n) < 0.08).astype(float)})
    frame["a"] = frame["label"] * 0.4 + rng.random(n)
    frame["b"] = np.round(frame["label"] * 0.2 + rng.random(n), 1)  # ties
    got = bootstrap_difference(frame, "a", "b", n_boot=120, seed=5, chunk=7)

    draw = np.random.default_rng(5)
    groups = frame.groupby("firm_id").indices
    keys = sorted(groups)
    y, pa, pb = frame["label"].to_numpy(), frame["a"].to_numpy(), frame["b"].to_numpy()
    d_auc, d_ks = [], []
    for _ in range(120):
        pick = draw.integers(0, len(keys), len(keys))
        rows = np.concatenate([groups[keys[i]] for i in pick])
        if y[rows].min() == y[rows].max():
            continue
        d_auc.append(roc_auc_score(y[rows], pa[rows]) - roc_auc_score(y[rows], pb[rows]))
        d_ks.append(ks_stat(y[rows], pa[rows]) - ks_stat(y[rows], pb[rows]))
    np.testing.assert_allclose([got["auc_lo"], got["auc_hi"]], np.percentile(d_auc, [2.5, 97.5]), rtol=0, atol=1e-12)
    np.testing.assert_allclose([got["ks_lo"], got["ks_hi"]], np.percentile(d_ks, [2.5, 97.5]), rtol=0, atol=1e-12)
    assert got["auc_diff"] == roc_auc_score(y, pa) - roc_auc_score(y, pb) and got["auc_lo"] < got["auc_hi"]
