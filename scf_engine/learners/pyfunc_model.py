"""The served model: an MLflow pyfunc written as code ("models from code"), standalone.

MLflow copies this file into every logged model and runs it to load the model, so it
imports nothing from ``scf_engine``: a registered model's only ties to the engine are
its artifacts, the plain state of :mod:`scf_engine.learners.state` (``state.json``; for
LightGBM also the booster as LightGBM's own text format, ``booster.txt``), which name
no Python class. Moving or renaming an engine class therefore never breaks a registered
version (a pickle would: it stores classes by module path).

The PD is computed here from the state, with the same arithmetic as the engine's
estimators (tests compare the two to the last bit):

* ``decoupled`` / ``hybrid``: LightGBM's raw score at the best iteration, Platt
  ``a * raw + b``, sigmoid;
* ``propagation``: the linear logistic on the design frame
  (:meth:`CorePropagation.design`);
* ``jiangyin``: the grading guide's rule (:func:`indicator_grades`,
  :func:`grade_from_indicators`, which :mod:`scf_engine.learners.jiangyin` imports from
  here so the rule is written once), then the fitted cell default rates.

Imported as part of the package (``scf_engine.learners.pyfunc_model``) it is a plain
module of pure functions; only when MLflow runs it as a model file (a top-level module
with no package) does it import MLflow and call ``mlflow.models.set_model``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

STATE_FORMAT = 1


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


# --- the Jiangyin grading guide's rule (documented in scf_engine.learners.jiangyin) ------------

# the guide's 13 indicators, in its order; ``ind_*`` come from the bank's indicators.csv
JIANGYIN_INDICATORS = ("tax_growth", "utilities_growth", "social_insurance", "housing_fund", "years_in_business",
                       "ind_premises", "ind_legal_rep_credit", "ind_environment", "ind_public_credit", "loan_record",
                       "ind_industrial_policy", "performance_rank", "ind_other_rating")
JIANGYIN_GRADES = ("premium", "grade_1", "alternate")


def _band(rank: pd.Series, bands: dict) -> pd.Series:
    a, b = float(bands["A"]), float(bands["B"])
    return pd.Series(np.select([rank >= a, rank >= b], ["A", "B"], "C"), index=rank.index).where(rank.notna())


def _column(X: pd.DataFrame, name: str, default=np.nan) -> pd.Series:
    return X[name] if name in X else pd.Series(default, index=X.index)


def indicator_grades(X: pd.DataFrame, rule: dict) -> pd.DataFrame:
    """A/B/C (None: not graded) for each of the guide's 13 indicators."""
    g = pd.DataFrame(index=X.index)
    bands = rule["rank_bands"]
    g["tax_growth"] = _band(X["tax_yoy_rank_industry"], bands)
    g["utilities_growth"] = _band(X["utilities_yoy_rank_industry"], bands)
    g["social_insurance"] = np.where(X["social_insurance_missed_12m"] == 0, "A", "B")
    expected = np.minimum(12, X["history_months"].fillna(0))
    hf_all = (X["housing_fund_months_12m"] >= expected) & (expected > 0)
    g["housing_fund"] = pd.Series(np.where(hf_all, "A", None), index=X.index)
    g["years_in_business"] = np.where(X["firm_age_years"] > float(rule["years_in_business_a_above"]), "A", "B")
    loans = rule["loan_record"]
    missed = X["loan_service_missed_12m"]
    arrears = _column(X, "loan_service_open_gap") >= float(loans["arrears_gap_months"])
    g["loan_record"] = np.select([missed.isna(), arrears, missed == 0, missed <= float(loans["b_max_missed"])],
                                 ["B", "C", "A", "B"], "C")
    g["performance_rank"] = _band(X["trade_in_rank_industry"], bands)
    for name in JIANGYIN_INDICATORS:
        if name.startswith("ind_"):
            v = _column(X, name, "").fillna("").astype(str)
            g[name] = v.where(v.isin(["A", "B", "C"]))
    return g[list(JIANGYIN_INDICATORS)].where(g[list(JIANGYIN_INDICATORS)].notna(), None)


def grade_from_indicators(g: pd.DataFrame, rule: dict, bonus=None, dishonest=None) -> pd.DataFrame:
    """The guide's grade from the counts of A and C over its 13 indicators (an indicator
    not graded is not an A), one step up for bonus points at the policy's bar; a firm
    with a serious-dishonesty record is not graded (grade empty, ``excluded``)."""
    n_a = (g == "A").sum(axis=1)
    n_c = (g == "C").sum(axis=1)
    n = g.notna().sum(axis=1)
    grades = rule["grades"]
    level = np.select([(n_a >= grades["premium"]["min_a"]) & (n_c <= grades["premium"]["max_c"]),
                       (n_a >= grades["grade_1"]["min_a"]) & (n_c <= grades["grade_1"]["max_c"])], [0, 1], 2)
    points = pd.Series(np.nan if bonus is None else bonus, index=g.index, dtype=float)
    stepped = (points >= float(rule["bonus_step_up_points"])).to_numpy()
    level = np.where(stepped, np.maximum(level - 1, 0), level)
    excluded = pd.Series(np.nan if dishonest is None else dishonest, index=g.index, dtype=float).eq(1.0).to_numpy()
    grade = np.where(excluded, "", np.array(JIANGYIN_GRADES, dtype=object)[level])
    return pd.DataFrame({"grade": grade, "n_a": n_a, "n_c": n_c, "n_graded": n, "bonus_step": stepped & ~excluded,
                         "excluded": excluded}, index=g.index)


def jiangyin_grade(X: pd.DataFrame, rule: dict) -> pd.DataFrame:
    """The whole rule on a frame of features and ``ind_*`` columns."""
    return grade_from_indicators(indicator_grades(X, rule), rule, _column(X, "ind_bonus"), _column(X, "ind_dishonest"))


def cell_pd(g: pd.DataFrame, cell_rate: dict, grade_rate: dict, base_rate: float) -> np.ndarray:
    """Each row's (grade, count of A, count of C) cell rate, else its grade's, else the base rate."""
    return np.array([cell_rate.get((gr, int(a), int(c)), grade_rate.get(gr, base_rate))
                     for gr, a, c in zip(g["grade"], g["n_a"], g["n_c"])], dtype=np.float64)


# --- PD from a plain state ---------------------------------------------------------------------------

def load_state(state_path, booster_path=None) -> dict:
    """The state written by ``scf_engine.learners.state.save_state``, with the booster's
    text (if any) put back in ``fitted["booster"]``."""
    with open(state_path, encoding="utf-8") as f:
        state = json.load(f)
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{state_path}: state format {state.get('format')!r}, this code reads {STATE_FORMAT}")
    if booster_path is not None:
        with open(booster_path, encoding="utf-8") as f:
            state["fitted"]["booster"] = f.read()
    return state


class StatePD:
    """The PD of a model kind from its state, for a frame of the model's inputs."""

    def __init__(self, state: dict):
        self.kind = state["kind"]
        fitted = state["fitted"]
        if self.kind in ("decoupled", "hybrid"):
            import lightgbm as lgb

            self.booster = lgb.Booster(model_str=fitted["booster"])
            self.features = list(fitted["features"])
            self.best_iteration = int(fitted["best_iteration"])
            self.platt_a, self.platt_b = float(fitted["platt_a"]), float(fitted["platt_b"])
        elif self.kind == "propagation":
            coef = fitted["coef"]
            self.columns = list(coef["index"])
            self.coef = np.asarray(coef["values"], dtype=np.float64)
            self.intercept = float(fitted["intercept"])
        elif self.kind == "jiangyin":
            self.rule = fitted["rule"]
            self.base_rate = float(fitted["base_rate"])
            self.grade_rate = {k: float(v) for k, v in fitted["grade_rate"].items()}
            self.cell_rate = {(g, int(a), int(c)): float(r) for g, a, c, r in fitted["cell_rate"]}
        else:
            raise ValueError(f"unknown model kind {self.kind!r}")

    def pd(self, X: pd.DataFrame) -> np.ndarray:
        if self.kind in ("decoupled", "hybrid"):
            raw = self.booster.predict(X[self.features].astype(float), num_iteration=self.best_iteration, raw_score=True)
            return sigmoid(self.platt_a * raw + self.platt_b)
        if self.kind == "propagation":
            return sigmoid(self.intercept + X[self.columns].to_numpy() @ self.coef)
        return cell_pd(jiangyin_grade(X, self.rule), self.cell_rate, self.grade_rate, self.base_rate)


def _serve() -> None:
    import mlflow

    class ScfPD(mlflow.pyfunc.PythonModel):
        """Serves the PD (a 1-D array) of the model whose state is in the artifacts."""

        def load_context(self, context):
            self._pd = StatePD(load_state(context.artifacts["state"], context.artifacts.get("booster")))

        def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
            return self._pd.pd(pd.DataFrame(model_input))

    mlflow.models.set_model(ScfPD())


if not __package__:  # run by MLflow as a model file, not imported as part of scf_engine
    _serve()
