"""Reasons for the model that set a firm's final PD.

A LightGBM model (de-coupled or hybrid) is explained by its SHAP contributions grouped by
catalogue family (:func:`shap_reasons`); a firm only the propagation model scores is
explained by the terms of its linear design (transmitted core credit, the core's registry
record, its own registry evidence), in the catalogue's words (:func:`propagation_reasons`).
"""

from __future__ import annotations

import pandas as pd

from scf_engine.explain.reasons import Reason, contributions, reason_codes
from scf_engine.catalogue import load_catalogue


def shap_reasons(model, X: pd.DataFrame, reference: pd.DataFrame | None = None, *,
                 medians: pd.DataFrame | None = None) -> tuple[list, pd.DataFrame]:
    """Reasons per row of ``X`` (``reference``: the rows that give industry medians, or
    ``medians``: those already computed) and the contributions they were read from."""
    contrib = contributions(model, X)
    return reason_codes(contrib, X, model.features_, reference=reference, medians=medians), contrib


def _design_reason(cat, col: str, c: float, value: float) -> Reason:
    feat = {"transmitted": "propagated_log_odds"}.get(col, col.removeprefix("own_").removeprefix("core_"))
    label_en, label_zh = (cat[feat].label_en, cat[feat].label_zh) if feat in cat else (col, col)
    if col.startswith("core_"):
        label_en, label_zh = f"Core's registry record: {label_en}", f"核心企业登记记录：{label_zh}"
    return Reason(family=cat[feat].family if feat in cat else "propagation", feature=feat, label_en=label_en,
                  label_zh=label_zh, direction="raises risk" if c > 0 else "lowers risk", contribution=c,
                  feature_contribution=c, value=value, industry_median=None, industry=None)


def propagation_reasons(model, chain, firm_ids, *, top: int = 5, design: pd.DataFrame | None = None) -> list[list[Reason]]:
    """For each firm, the ``top`` largest terms of the propagation model's log-odds
    (relative to the training mean), largest first. ``design``: ``model.design(chain)[0]``
    when already computed (it covers the whole chain, whatever the firms asked)."""
    cat = load_catalogue()
    X = model.design(chain)[0] if design is None else design
    out = []
    for fid in firm_ids:
        x = X.loc[fid]
        terms = (x - model.x_mean_) * model.coef_
        out.append([_design_reason(cat, col, float(terms[col]), float(x[col]))
                    for col in terms.abs().sort_values(ascending=False).index[:top] if float(terms[col]) != 0])
    return out


__all__ = ["shap_reasons", "propagation_reasons"]
