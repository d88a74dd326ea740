"""The Jiangyin enterprise credit grading guide's indicator method, as a rule baseline.

The guide (a county's published rulebook, summarised in ``shared/domain-notes.md``)
grades each indicator A/B/C and then: 9 or more A and no C -> 高级 premium; 6 or more A
and no C -> 一级 grade_1; otherwise 备选 alternate.

Indicators the data supports (computed from flow features; the guide itself leaves
unrated indicators out):

====  ========================================  ==================================================
 no.  indicator                                 from the data
====  ========================================  ==================================================
  1   tax paid, year on year, ranked in         ``tax_yoy_rank_industry``: top 20% A, 20-50% B, rest C
      industry
  2   water/power/gas spend, year on year       ``utilities_yoy_rank_industry``: same bands
  3   social insurance                          paid every month of the last 12 A, otherwise B
  4   housing fund                              paid every month A; otherwise not graded
  5   years in business                         more than 3 A, otherwise B
 10   loan record                               loans serviced every month A; no loans or 1-2 missed
                                                months B; 3 or more missed, or in arrears now, C
 12   industrial performance ranking            ``trade_in_rank_industry``: top 20% A, 20-50% B, rest C
====  ========================================  ==================================================

Not used (no data): 6 premises, 7 legal representative's personal credit, 8
environmental rating, 9 public credit record, 11 industrial policy, 13 other ratings
(reference only in the guide), and the dishonesty pre-filter.

With at most 7 graded indicators the guide's counts (9 of 12, 6 of 12) are applied as
shares of the indicators graded for the firm: premium when at least 75% are A and none
is C, grade_1 when at least 50% are A and none is C.

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
from scf_engine.learners.pyfunc_model import cell_pd, grade_from_indicators, indicator_grades

INDICATORS = ("tax_growth", "utilities_growth", "social_insurance", "housing_fund", "years_in_business",
              "loan_record", "performance_rank")
REQUIRED_FEATURES = ("tax_yoy_rank_industry", "utilities_yoy_rank_industry", "social_insurance_missed_12m",
                     "housing_fund_months_12m", "housing_fund_open_gap", "firm_age_years", "loan_service_missed_12m",
                     "history_months", "trade_in_rank_industry")


class JiangyinGrading(BaseEstimator):
    """Rule baseline with ``fit`` (cell default rates), ``predict_pd`` (the cell's rate),
    ``predict_proba`` (n, 2) and ``predict`` (class: 1 where the PD is above 0.5)."""

    _FITTED = ("base_rate_", "grade_rate_", "cell_rate_")

    def __init__(self, shrinkage: float = 20.0):
        self.shrinkage = shrinkage

    def grade(self, X: pd.DataFrame) -> pd.DataFrame:
        return grade_from_indicators(indicator_grades(X))

    def fit(self, X: pd.DataFrame, y, as_of=None):
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
                "fitted": {"base_rate": float(self.base_rate_),
                           "grade_rate": {str(k): float(v) for k, v in self.grade_rate_.items()},
                           "cell_rate": [[g, int(a), int(c), float(r)] for (g, a, c), r in self.cell_rate_.items()]}}

    @classmethod
    def from_state(cls, state: dict) -> "JiangyinGrading":
        model = cls(**state["params"])
        f = state["fitted"]
        model.base_rate_ = float(f["base_rate"])
        model.grade_rate_ = {k: float(v) for k, v in f["grade_rate"].items()}
        model.cell_rate_ = {(g, int(a), int(c)): float(r) for g, a, c, r in f["cell_rate"]}
        return model
