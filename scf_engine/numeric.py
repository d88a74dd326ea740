"""The log-odds transforms every stage shares: :func:`logit` and :func:`sigmoid`.

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
