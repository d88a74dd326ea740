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

def _band(rank: pd.Series) -> pd.Series:
    return pd.Series(np.select([rank >= 0.8, rank >= 0.5], ["A", "B"], "C"), index=rank.index).where(rank.notna())


def indicator_grades(X: pd.DataFrame) -> pd.DataFrame:
    """A/B/C (or empty: not graded) per supported indicator."""
    g = pd.DataFrame(index=X.index)
    g["tax_growth"] = _band(X["tax_yoy_rank_industry"])
    g["utilities_growth"] = _band(X["utilities_yoy_rank_industry"])
    g["social_insurance"] = np.where(X["social_insurance_missed_12m"] == 0, "A", "B")
    expected = np.minimum(12, X["history_months"].fillna(0))
    hf_all = (X["housing_fund_months_12m"] >= expected) & (expected > 0)
    g["housing_fund"] = pd.Series(np.where(hf_all, "A", None), index=X.index)
    g["years_in_business"] = np.where(X["firm_age_years"] > 3, "A", "B")
    missed = X["loan_service_missed_12m"]
    g["loan_record"] = np.select([missed.isna(), missed == 0, missed <= 2], ["B", "A", "B"], "C")
    g["performance_rank"] = _band(X["trade_in_rank_industry"])
    return g.where(g.notna(), None)


def grade_from_indicators(g: pd.DataFrame) -> pd.DataFrame:
    n_a = (g == "A").sum(axis=1)
    n_c = (g == "C").sum(axis=1)
    n = g.notna().sum(axis=1)
    share_a = n_a / n.where(n > 0)
    grade = np.select([(share_a >= 0.75) & (n_c == 0), (share_a >= 0.5) & (n_c == 0)], ["premium", "grade_1"], "alternate")
    return pd.DataFrame({"grade": grade, "n_a": n_a, "n_c": n_c, "n_graded": n}, index=g.index)


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
        return cell_pd(grade_from_indicators(indicator_grades(X)), self.cell_rate, self.grade_rate, self.base_rate)


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
