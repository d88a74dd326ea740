"""Explanations: why a firm got its PD, in the catalogue's words.

* :mod:`.reasons` - SHAP contributions on the calibrated log-odds (LightGBM's
  ``pred_contrib`` or ``shap.TreeExplainer``, both additive) and reason codes grouped
  by catalogue family;
* :mod:`.paths` - the propagation model's chain part, by core and by supply path;
* :mod:`.plots` - SHAP summary, dependence and waterfall pictures (PNG).

Plots import matplotlib and shap on first use: ``from scf_engine.explain.plots import ...``.
"""

from scf_engine.explain.paths import (PathContext, PathList, core_decomposition, path_context, path_decomposition,
                                     path_rows)
from scf_engine.explain.reasons import Reason, additivity_error, contributions, format_reasons, reason_codes

__all__ = ["PathContext", "PathList", "Reason", "additivity_error", "contributions", "core_decomposition",
           "format_reasons", "path_context", "path_decomposition", "path_rows", "reason_codes"]
