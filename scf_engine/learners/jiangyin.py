"""The Jiangyin enterprise credit grading guide's indicator method (江阴企业金融信用评级指引),
as written: the rule baseline and the ``jiangyin_*`` columns of ``limits.csv``.

The guide (a county's published rulebook, summarised in ``shared/domain-notes.md``)
filters out firms with a serious-dishonesty record (严重失信: not graded), grades each of
its 13 indicators A/B/C and then: 9 or more A and no C -> 高级 premium; 6 or more A and no
C -> 一级 grade_1; otherwise 备选 alternate. Bonus points (加分项) at the policy's bar
raise the grade one step. Counts, bands and the bonus bar are in ``models/jiangyin.yaml``.
**An indicator not graded is not an A**: a firm with only the seven flow-derived
indicators can reach grade_1 but never premium, as the guide intends.

====  ========================================  ==================================================
 no.  indicator                                 source
====  ========================================  ==================================================
  1   tax paid, year on year, ranked in         ``tax_yoy_rank_industry``: top 20% A, 20-50% B, rest C
      industry
  2   water/power/gas spend, year on year       ``utilities_yoy_rank_industry``: same bands
  3   social insurance                          paid every month of the last 12 A, otherwise B
  4   housing fund                              paid every month A; otherwise not graded
  5   years in business                         more than 3 A, otherwise B
  6   premises (经营场所)                        indicators.csv ``premises``
  7   legal representative's credit             indicators.csv ``legal_rep_credit``
  8   environmental rating (环保评级)            indicators.csv ``environment``; not graded where unrated
  9   public credit record (公共信用记录)        indicators.csv ``public_credit``
 10   loan record                               loans serviced every month A; no loans, or 1-2 missed
                                                months without arrears, B; 3 or more missed, or in
                                                arrears now (last service ``arrears_gap_months`` or
                                                more ago), C
 11   industrial policy (产业政策)               indicators.csv ``industrial_policy``
 12   industrial performance ranking            ``trade_in_rank_industry``: top 20% A, 20-50% B, rest C
 13   other / higher-level ratings              indicators.csv ``other_rating``
====  ========================================  ==================================================

PD: the guide has none; for comparison on the same metrics each (grade, count of A,
count of C) cell gets the default rate observed for it on the training snapshots,
shrunk towards its grade's rate (a calibrated reading of the rule, not a new model).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

# The rule is written once, in the served model's standalone file (a registered model
# grades with it without the engine); re-exported here.
from scf_engine import policies
from scf_engine.learners.pyfunc_model import (JIANGYIN_INDICATORS, cell_pd, grade_from_indicators, indicator_grades,
                                              jiangyin_grade)

INDICATORS = JIANGYIN_INDICATORS
REQUIRED_FEATURES = ("tax_yoy_rank_industry", "utilities_yoy_rank_industry", "social_insurance_missed_12m",
                     "housing_fund_months_12m", "housing_fund_open_gap", "firm_age_years", "loan_service_missed_12m",
                     "loan_service_open_gap", "history_months", "trade_in_rank_industry")


def policy_rule(models_dir=None) -> dict:
    """The rule as ``models/jiangyin.yaml`` states it (a plain dict, saved with the model)."""
    d = dict(policies.load("jiangyin", models_dir).data)
    d.pop("version", None)
    return d


class JiangyinGrading(BaseEstimator):
    """Rule baseline with ``fit`` (cell default rates), ``predict_pd`` (the cell's rate),
    ``predict_proba`` (n, 2) and ``predict`` (class: 1 where the PD is above 0.5)."""

    _FITTED = ("rule_", "base_rate_", "grade_rate_", "cell_rate_")

    def __init__(self, shrinkage: float = 20.0, rule: dict | None = None):
        self.shrinkage = shrinkage
        self.rule = rule

    @classmethod
    def from_policy(cls, models_dir=None, **overrides) -> "JiangyinGrading":
        return cls(rule=policy_rule(models_dir), **overrides)

    def grade(self, X: pd.DataFrame) -> pd.DataFrame:
        """``grade`` (premium / grade_1 / alternate; empty for an excluded firm), ``n_a``,
        ``n_c``, ``n_graded``, ``bonus_step``, ``excluded`` per row."""
        rule = getattr(self, "rule_", None) or (self.rule if self.rule is not None else policy_rule())
        return jiangyin_grade(X, rule)

    def fit(self, X: pd.DataFrame, y, as_of=None):
        self.rule_ = dict(self.rule) if self.rule is not None else policy_rule()  # saved with the model
        g = self.grade(X).assign(y=np.asarray(y, dtype=float))
        self.base_rate_ = float(g["y"].mean())
        by_grade = g.groupby("grade")["y"].agg(["sum", "count"])
        self.grade_rate_ = ((by_grade["sum"] + self.shrinkage * self.base_rate_) / (by_grade["count"] + self.shrinkage)).to_dict()
        cells = g.groupby(["grade", "n_a", "n_c"])["y"].agg(["sum", "count"]).reset_index()
        prior = cells["grade"].map(self.grade_rate_)
        cells["rate"] = (cells["sum"] + self.shrinkage * prior) / (cells["count"] + self.shrinkage)
        self.cell_rate_ = {(r.grade, int(r.n_a), int(r.n_c)): float(r.rate) for r in cells.itertuples()}
        return self

    def predict_pd(self, X: pd.DataFrame) -> np.ndarray:
        """PD, one per row: the default rate of the row's (grade, count of A, count of C) cell."""
        check_is_fitted(self, self._FITTED)
        return cell_pd(self.grade(X), self.cell_rate_, self.grade_rate_, self.base_rate_)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """(n, 2): probability of no default, of default."""
        p = self.predict_pd(X)
        return np.column_stack([1 - p, p])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Class label: 1 (default) where the PD is above 0.5, else 0."""
        return (self.predict_pd(X) > 0.5).astype(int)

    # --- plain state (scf_engine.learners.state) ------------------------------------------------
    def get_state(self) -> dict:
        check_is_fitted(self, self._FITTED)
        return {"params": self.get_params(deep=False),
                "fitted": {"rule": self.rule_, "base_rate": float(self.base_rate_),
                           "grade_rate": {str(k): float(v) for k, v in self.grade_rate_.items()},
                           "cell_rate": [[g, int(a), int(c), float(r)] for (g, a, c), r in self.cell_rate_.items()]}}

    @classmethod
    def from_state(cls, state: dict) -> "JiangyinGrading":
        model = cls(**state["params"])
        f = state["fitted"]
        model.rule_ = f["rule"]
        model.base_rate_ = float(f["base_rate"])
        model.grade_rate_ = {k: float(v) for k, v in f["grade_rate"].items()}
        model.cell_rate_ = {(g, int(a), int(c)): float(r) for g, a, c, r in f["cell_rate"]}
        return model


__all__ = ["JiangyinGrading", "INDICATORS", "REQUIRED_FEATURES", "policy_rule", "jiangyin_grade", "indicator_grades",
           "grade_from_indicators"]
