"""Pipelines: each command as load -> compute (pure) -> record.

* :mod:`.train` - snapshots, every model, out-of-time evaluation, one tracked parent run;
* :mod:`.compare` - the tracked models on the same held-out snapshots, one run;
* :mod:`.promote` - the one place the ``champion`` alias moves;
* :mod:`.score` - batch credit and one firm's explanation through the decision core
  (:func:`scf_engine.credit.decide`), with memos, an MLflow run and the audit log.

Data flows one way: files -> Dataset -> Snapshots -> (flow features, chain) -> models ->
evaluation / PD -> credit. Every pipeline loads and checks its inputs *before* it opens a
run, so an unusable dataset never leaves an empty run behind.
"""

from scf_engine.pipelines.compare import CompareResult, compare, segment_winners
from scf_engine.pipelines.promote import promote, promotion_plan
from scf_engine.pipelines.score import ExplainResult, ScoreResult, explain, score
from scf_engine.pipelines.train import TrainResult, fit_propagation_and_decoupled, train

__all__ = ["train", "compare", "score", "explain", "promote", "promotion_plan", "TrainResult", "CompareResult",
           "ScoreResult", "ExplainResult", "segment_winners", "fit_propagation_and_decoupled"]
