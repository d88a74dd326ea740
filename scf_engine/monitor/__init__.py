"""After lending (贷后动态风控): early-warning signals, levels, actions and credit repair.

Pure: frames in, frames out. The ``scf monitor`` pipeline (:mod:`scf_engine.pipelines.monitor`)
loads, re-scores through the decision core, calls these and records.
"""

from scf_engine.monitor.judge import PORTFOLIO_COLUMNS, portfolio_rows
from scf_engine.monitor.signals import ALERTS_COLUMNS, fire

__all__ = ["PORTFOLIO_COLUMNS", "ALERTS_COLUMNS", "portfolio_rows", "fire"]
