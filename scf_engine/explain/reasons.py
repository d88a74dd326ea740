"""Per-firm contributions (SHAP on the calibrated log-odds) and reason codes.

Contributions
    :func:`contributions` explains a fitted :class:`~scf_engine.learners.LightGBMPD` in
    the units it decides in: the Platt-calibrated log-odds ``a * raw + b``. Four routes
    give the same numbers (path-dependent TreeSHAP):

    * ``"native"``: LightGBM's ``pred_contrib`` asked once per split pattern of each tree
      (the model's own ``contributions``, :mod:`scf_engine.learners.treeshap`);
    * ``"pred_contrib"``: LightGBM's ``pred_contrib`` on the whole booster in one call
      (equal to ``"native"`` but for the order of the additions, ~1e-15);
    * ``"treeshap"``: ``shap.TreeExplainer`` on the same booster and raw features;
    * ``"shap_internal"``: shap's own C++ TreeSHAP on its parse of the trees.

    Note: for a LightGBM booster in path-dependent mode, ``shap.TreeExplainer`` does not
    run its own algorithm: it calls LightGBM's ``predict(pred_contrib=True)``
    (``shap/explainers/_tree.py``, the "shortcut using the C++ version"), so
    ``"treeshap"`` is ``"native"`` plus shap's overhead. ``"shap_internal"`` forces shap's
    own implementation, an independent check. Its LightGBM parser ignores
    ``missing_type: None`` (features with no missing value in training, where LightGBM
    reads NaN as 0) and sends NaN down the default branch instead: unpatched, ~2% of
    rows of our de-coupled model break additivity by up to 0.5 log-odds. We set NaN to
    0 in exactly those features before calling it, which makes it exact.

    All return the columns ``features + ["expected_value"]`` and satisfy additivity,
    ``expected_value + sum(features) == model.decision_function(X)``, row by row. shap's
    own additivity check is switched off (it fails spuriously for several LightGBM cases,
    see pitfalls.md); :func:`additivity_error` is the check to run instead.

Reason codes
    :func:`reason_codes` groups contributions by catalogue ``family`` (five correlated
    payroll features read as one reason), ranks families by the absolute sum, and names
    each family by its strongest feature, in the catalogue's words (``label_en`` /
    ``label_zh``): the catalogue is the single source of words. :func:`format_reasons`
    writes them as one ';'-separated string for ``limits.csv``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from scf_engine.catalogue import load_catalogue
from scf_engine.learners.treeshap import split_nodes

EXPECTED = "expected_value"
DIRECTION_WORDS = {
    "en": {"up": "raises risk", "down": "lowers risk"},
    "zh": {"up": "推高风险", "down": "降低风险"},
}
MISSING_WORDS = {"en": "missing", "zh": "缺失"}


# --- contributions --------------------------------------------------------------------------
def _trimmed_booster(model):
    """The booster restricted to the iterations the model predicts with."""
    import lightgbm as lgb

    booster = model.booster_
    best = int(getattr(model, "best_iteration_", 0) or 0)
    if best and booster.current_iteration() > best:
        return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return booster


def _zero_missing_features(booster, features) -> list[str]:
    """Features whose splits have LightGBM ``missing_type`` None: LightGBM reads NaN as 0 there."""
    found = {int(n["split_feature"]) for tree in booster.dump_model()["tree_info"]
             for n in split_nodes(tree["tree_structure"]) if n.get("missing_type") == "None"}
    return [features[k] for k in sorted(found)]


def contributions(model, X: pd.DataFrame, method: str = "native") -> pd.DataFrame:
    """Contributions to the calibrated log-odds: columns = ``model.features_`` +
    ``expected_value``, index = ``X.index``; each row sums to ``model.decision_function``.
    ``method``: ``"native"`` (LightGBM ``pred_contrib`` per split pattern), ``"pred_contrib"``
    (the same on the whole booster at once), ``"treeshap"`` (``shap.TreeExplainer(booster)``)
    or ``"shap_internal"`` (shap's own algorithm)."""
    if method == "native":
        return model.contributions(X)
    if method == "pred_contrib":
        raw = model.booster_.predict(X[list(model.features_)].astype(float), num_iteration=model.best_iteration_,
                                     pred_contrib=True)
        return model.calibrated_contributions(raw, X.index)
    if method not in ("treeshap", "shap_internal"):
        raise ValueError(f"method must be 'native', 'pred_contrib', 'treeshap' or 'shap_internal', not {method!r}")
    import shap

    feats = list(model.features_)
    Xf = X[feats].astype(float)
    booster = _trimmed_booster(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shap's notice that the LightGBM output layout changed
        explainer = shap.TreeExplainer(booster)
        if method == "shap_internal":
            if getattr(explainer.model, "model_type", None) != "lightgbm":
                raise RuntimeError("shap_internal expects shap to parse a LightGBM booster")
            explainer.model.model_type = "internal"  # skip the shortcut to LightGBM's pred_contrib
            zero = _zero_missing_features(booster, feats)
            Xf = Xf.copy()
            Xf[zero] = Xf[zero].fillna(0.0)
        sv = explainer.shap_values(Xf, check_additivity=False)
    base = explainer.expected_value
    if isinstance(sv, list):  # older layout: one array per class, the positive class last
        sv = sv[-1]
        base = np.atleast_1d(base)[-1]
    sv = np.asarray(sv, dtype=np.float64)
    if sv.ndim == 3:  # (n, features, classes)
        sv = sv[:, :, -1]
        base = np.atleast_1d(base)[-1]
    base = float(np.atleast_1d(base)[0])
    a, b = float(model.platt_a_), float(model.platt_b_)
    out = pd.DataFrame(sv * a, columns=feats, index=X.index)
    out[EXPECTED] = base * a + b
    return out


def additivity_error(contrib: pd.DataFrame, model, X: pd.DataFrame) -> np.ndarray:
    """Per row: |expected_value + sum of contributions - decision_function(X)|."""
    total = contrib.to_numpy(dtype=np.float64).sum(axis=1)
    return np.abs(total - model.decision_function(X))


# --- reason codes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Reason:
    """One reason: a catalogue family and its strongest feature for this firm."""

    family: str
    feature: str
    label_en: str
    label_zh: str
    direction: str  # "raises risk" / "lowers risk" (sign of the family's summed contribution)
    contribution: float  # the family's summed contribution, calibrated log-odds
    feature_contribution: float  # the named feature's own contribution
    value: float | None  # the firm's value of the named feature (None = missing)
    industry_median: float | None = None  # median of the feature in the firm's industry (peers)
    industry: str | None = None

    @property
    def raises_risk(self) -> bool:
        return self.contribution > 0

    def label(self, lang: str = "en") -> str:
        return self.label_zh if lang == "zh" else self.label_en

    def direction_text(self, lang: str = "en") -> str:
        return DIRECTION_WORDS.get(lang, DIRECTION_WORDS["en"])["up" if self.raises_risk else "down"]

    def text(self, lang: str = "en") -> str:
        """``"Months without social insurance, last 12 = 4 (industry median 0): raises risk"``."""
        value = format_value(self.value, lang)
        s = f"{self.label(lang)} = {value}"
        if self.industry_median is not None:
            med = format_value(self.industry_median, lang)
            s += f"（行业中位数 {med}）" if lang == "zh" else f" (industry median {med})"
        return s + ("：" if lang == "zh" else ": ") + self.direction_text(lang)

    def to_dict(self) -> dict:
        return asdict(self)


def format_value(v, lang: str = "en") -> str:
    """A feature value as a person reads it: integers plain, large amounts with thousands
    separators, shares and rates to three significant figures."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING_WORDS.get(lang, "missing")
    v = float(v)
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def _none_if_nan(v):
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def industry_medians(reference: pd.DataFrame, model_features) -> pd.DataFrame:
    """The median of each model feature per industry over ``reference`` (the peers, with
    an ``industry`` column): what a reason compares a firm's value with. A function of
    its own so a service computes it once per snapshot and passes it as ``medians``."""
    if "industry" not in reference.columns:
        raise KeyError("reference needs an 'industry' column for industry medians")
    feats = [f for f in model_features if f != EXPECTED and f in reference.columns]
    return reference.groupby("industry")[feats].median()


def reason_codes(contrib: pd.DataFrame, X: pd.DataFrame, model_features, *, reference: pd.DataFrame | None = None,
                 top: int = 5, catalogue=None, medians: pd.DataFrame | None = None) -> pd.Series:
    """Top ``top`` reasons per row of ``X``: a Series (index = ``X.index``) of lists of
    :class:`Reason`, most important first.

    ``contrib``: from :func:`contributions` (same index as ``X``); ``X``: the features and,
    when ``reference`` is given, an ``industry`` column; ``reference``: the peers' features
    with an ``industry`` column, from which the industry median of each reason's feature
    is taken (or ``medians``: :func:`industry_medians` of it, computed beforehand). Families
    whose contributions sum to exactly zero give no reason.
    """
    cat = catalogue or load_catalogue()
    feats = [f for f in model_features if f != EXPECTED]
    missing = [f for f in feats if f not in contrib.columns]
    if missing:
        raise KeyError(f"contributions lack features {missing[:5]}")
    C = contrib.loc[X.index, feats].to_numpy(dtype=np.float64)
    V = X.reindex(columns=feats).to_numpy(dtype=np.float64)
    fam_of = [cat[f].family if f in cat else f for f in feats]
    families = list(dict.fromkeys(fam_of))
    fam_idx = np.array([families.index(f) for f in fam_of])
    n, k = C.shape[0], len(families)
    # (n, families) family sums, row by row: a matrix product's blocking depends on how
    # many rows it multiplies, so a firm's sums (in their last bits) would depend on the
    # other firms of its batch; a row-wise sum gives the same bits for a firm alone
    S = np.stack([C[:, fam_idx == j].sum(axis=1) for j in range(k)], axis=1) if k else np.zeros((n, 0))

    industries = None
    if medians is None and reference is not None:
        medians = industry_medians(reference, feats)
    if medians is not None:
        if "industry" not in X.columns:
            raise KeyError("reference and X both need an 'industry' column for industry medians")
        industries = X["industry"].to_numpy()

    order = np.argsort(-np.abs(S), axis=1, kind="stable")[:, :top]
    # the medians by plain lookups: ``medians.at`` per reason was most of this function's
    # time on a portfolio of thousands (scf monitor calls it at every as-of)
    med_rows = {ind: i for i, ind in enumerate(medians.index)} if medians is not None else {}
    med_cols = {f: medians[f].to_numpy() for f in feats if f in medians.columns} if medians is not None else {}
    labels = {f: (cat[f].label_en, cat[f].label_zh) if f in cat else (f, f) for f in feats}
    members = [np.flatnonzero(fam_idx == j) for j in range(k)]
    # per (row, family): the family's feature that contributes most in the family's
    # direction, for every row at once (one small numpy call per reason was most of the
    # loop below; the same first maximum per row)
    picks = np.stack([cols[np.argmax(np.where(np.sign(C[:, cols]) == np.sign(S[:, [j]]), np.abs(C[:, cols]), -1.0),
                                     axis=1)] for j, cols in enumerate(members)], axis=1) if k else np.zeros((n, 0), int)
    out = []
    for i in range(n):
        reasons = []
        for j in order[i]:
            total = S[i, j]
            if total == 0 or not np.isfinite(total):
                continue
            pick = picks[i, j]
            f = feats[pick]
            med, ind = None, None
            if medians is not None:
                ind = industries[i]
                if f in med_cols and ind in med_rows:
                    med = _none_if_nan(med_cols[f][med_rows[ind]])
            reasons.append(Reason(
                family=families[j], feature=f, label_en=labels[f][0], label_zh=labels[f][1],
                direction=DIRECTION_WORDS["en"]["up" if total > 0 else "down"], contribution=float(total),
                feature_contribution=float(C[i, pick]), value=_none_if_nan(V[i, pick]), industry_median=med,
                industry=None if ind is None else str(ind),
            ))
        out.append(reasons)
    return pd.Series(out, index=X.index, dtype=object)


def _as_reason(r) -> Reason:
    if isinstance(r, Reason):
        return r
    fields = Reason.__dataclass_fields__
    return Reason(**{k: v for k, v in dict(r).items() if k in fields})


def format_reasons(reasons, lang: str = "en") -> str:
    """One string, most important first, ';'-separated (the ``reasons`` column of
    ``limits.csv``). Accepts :class:`Reason` objects or their ``to_dict()``."""
    return "; ".join(_as_reason(r).text(lang).replace(";", ",") for r in reasons)


__all__ = ["EXPECTED", "Reason", "additivity_error", "contributions", "format_reasons", "format_value", "industry_medians", "reason_codes"]
