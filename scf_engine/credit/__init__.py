"""Credit: PD -> score -> grade -> limit and decision, from the policy files in ``models/``.

* :mod:`.scale`: the score scale (``score_scale.yaml``) and the final PD (``final_pd.yaml``);
* :mod:`.limits`: "fund flows set the amount": limits, caps and decisions (``limit_policy.yaml``);
* :mod:`.envelope`: one envelope shared by a park, association or village;
* :mod:`.consent`: is the firm's data-use authorisation valid on the scoring date;
* :mod:`.decide`: the decision core that puts them together for a set of requests (pure:
  no files, no MLflow, no audit).

Every function takes its policy as an argument (a loaded :class:`~scf_engine.policies.Policy`
or a plain mapping with the same keys), so tests and what-if runs need no files.
"""

from scf_engine.credit.consent import consent_ok, consent_status
from scf_engine.credit.decide import BatchOptions, Decisions, decide
from scf_engine.credit.envelope import allocate_envelope
from scf_engine.credit.limits import apply_limits, core_lines, eligible_receivables
from scf_engine.credit.scale import ScoreScale, final_pd, grades_for_scores, score_frame

__all__ = [
    "BatchOptions", "Decisions", "decide", "ScoreScale", "allocate_envelope", "apply_limits", "consent_ok", "consent_status", "core_lines",
    "eligible_receivables", "final_pd", "grades_for_scores", "score_frame",
]
