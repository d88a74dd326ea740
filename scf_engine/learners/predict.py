"""Each model's PD on an assembled frame, with the rule "who can score whom" in one place.

The de-coupled model and the rule baseline need fund flows (a firm with no flow history
has no row to read); the hybrid reads every row (its chain and registry features carry it
where flows are missing); the propagation model's PD is already a column of the frame,
added by :func:`scf_engine.assemble.add_propagation`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: model kind -> its PD column in every frame the engine builds (a "score" is the 0-100 scale)
PD_COLUMNS = {"propagation": "pd_propagation", "decoupled": "pd_decoupled", "hybrid": "pd_hybrid", "jiangyin": "pd_jiangyin"}


def has_flows(frame: pd.DataFrame) -> pd.Series:
    """Rows of firms with any fund-flow history before the as-of date."""
    return frame["history_months"].notna()


def _on_flows(model, frame: pd.DataFrame, flows: pd.Series) -> np.ndarray:
    out = np.full(len(frame), np.nan)
    if flows.any():
        out[flows.to_numpy()] = model.predict_proba(frame[flows])[:, 1]
    return out


def predict_all(models: dict, frame: pd.DataFrame) -> pd.DataFrame:
    """Each model's PD on ``frame`` (NaN where a model cannot score the row), as columns
    ``pd_propagation`` and ``pd_<kind>`` for every kind in ``models`` among decoupled,
    hybrid and jiangyin."""
    out = pd.DataFrame(index=frame.index)
    flows = has_flows(frame)
    out["pd_propagation"] = frame.get("pd_propagation", pd.Series(np.nan, index=frame.index))
    if "decoupled" in models:
        out["pd_decoupled"] = _on_flows(models["decoupled"], frame, flows)
    if "hybrid" in models:
        out["pd_hybrid"] = models["hybrid"].predict_proba(frame)[:, 1]
    if "jiangyin" in models:
        out["pd_jiangyin"] = _on_flows(models["jiangyin"], frame, flows)
    return out


__all__ = ["PD_COLUMNS", "has_flows", "predict_all"]
