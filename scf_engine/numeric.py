"""The log-odds transforms every stage shares: :func:`logit` and :func:`sigmoid`, and the
classifier surface built on them (:class:`LogOddsClassifierMixin`).

Bit-for-bit stability matters here (the demo batch's ``limits.csv`` is a golden file), so
each caller keeps the exact floating-point formula its results were produced with:

* the propagation model clips PDs at 1e-9 and computes ``log(p / (1 - p))``;
* the credit scale clips at ``PD_EPS`` = 1e-12 and computes ``log(p) - log1p(-p)``
  (``log1p=True``), which keeps PDs near 0 and 1 apart.

Nothing in here imports the rest of the engine.
"""

from __future__ import annotations

import numpy as np


def logit(p, eps: float = 1e-9, *, log1p: bool = False):
    """Log-odds of ``p`` (float64), with ``p`` clipped to ``[eps, 1 - eps]``."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    if log1p:
        return np.log(p) - np.log1p(-p)
    return np.log(p / (1 - p))


def sigmoid(x):
    """``1 / (1 + exp(-x))``, elementwise. Computed in float64, except that float32 input
    stays float32 (the simulator's Monte Carlo paths run in float32)."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float64, copy=False)
    return 1.0 / (1.0 + np.exp(-x))


class LogOddsClassifierMixin:
    """``predict_pd``, ``predict_proba`` and ``predict`` for a model whose
    ``decision_function`` returns calibrated log-odds of default: both PD models (the
    de-coupled / hybrid LightGBM and the core-propagation logistic model) serve PDs
    through the same three calls, so they are written once."""

    def predict_pd(self, X) -> np.ndarray:
        """PD, one per row (what the registered model serves)."""
        return sigmoid(self.decision_function(X))

    def predict_proba(self, X) -> np.ndarray:
        """(n, 2): probability of no default, of default."""
        p = self.predict_pd(X)
        return np.column_stack([1 - p, p])

    def predict(self, X) -> np.ndarray:
        """Class label: 1 (default) where the PD is above 0.5, else 0."""
        return (self.predict_pd(X) > 0.5).astype(int)
