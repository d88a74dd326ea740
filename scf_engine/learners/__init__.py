"""Learners: every model has ``fit``, ``predict_pd`` (the PD), ``predict_proba`` (n, 2),
``predict`` (the class) and a plain state (``get_state`` / ``from_state``,
:mod:`.state`) that a registered model stores instead of a pickle
(:mod:`.pyfunc_model` serves it).

* :class:`DecoupledModel` - LightGBM on the firm's own fund flows (脱核).
* :class:`HybridModel` - LightGBM on flows + chain + registry + propagation output.
* :class:`JiangyinGrading` - the Jiangyin credit grading guide's indicator method.
* :class:`~scf_engine.propagation.CorePropagation` lives in ``propagation/``.
"""

from scf_engine.learners.jiangyin import JiangyinGrading
from scf_engine.learners.lgbm import DecoupledModel, HybridModel, LightGBMPD

__all__ = ["DecoupledModel", "HybridModel", "JiangyinGrading", "LightGBMPD"]
