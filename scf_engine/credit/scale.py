"""PD -> score -> grade, and which model's PD is the final one.

Two policies from ``models/`` meet here:

* ``score_scale.yaml``: the points-to-double-odds scaling every scorecard user knows,
  ``score = base_score + pdo / ln 2 * ln(odds / base_odds)`` with ``odds = (1 - pd) / pd``,
  clipped to ``[min_score, max_score]``. The grade is the contract's tier of the *rounded*
  score, so the score printed in a memo and the grade beside it always agree.
* ``final_pd.yaml``: ``champion`` (the first model of an ordered fallback list that
  scored the firm) or ``blend`` (a weighted log-odds average over the models that did).

The scale travels with a trained model: :meth:`ScoreScale.save` writes its parameters and
the sha256 of the policy file they came from, :meth:`ScoreScale.load` reads them back and
refuses a current policy whose parameters differ. A reloaded scorecard that scores
differently is the top complaint of scorecard users (``pitfalls.md``); here it is an error.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from scf_engine.contract import grade_for_score
from scf_engine.numeric import logit, sigmoid
from scf_engine.policies import Policy, PolicyError, as_data, validate

# smallest / largest PD the log-odds are taken of; keeps pd = 0 or 1 finite
PD_EPS = 1e-12

MODELS = ("hybrid", "decoupled", "propagation")  # column pd_<name> of the scoring frame




# --------------------------------------------------------------------------- score scale


@dataclass(frozen=True)
class ScoreScale:
    """The scaling of one scorecard: parameters plus the policy hash they came from.

    ``policy_sha256`` ties a saved scale to the exact ``score_scale.yaml`` text it was
    read from; it is ``None`` for a scale built from a plain mapping (tests).
    """

    base_score: float
    base_odds: float
    points_to_double_odds: float
    min_score: float = 0.0
    max_score: float = 100.0
    decimals: int | None = 2
    policy_sha256: str | None = None

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_policy(cls, policy: Policy | Mapping[str, Any]) -> "ScoreScale":
        """The scale of a loaded ``score_scale`` policy (or a mapping with its keys)."""
        d = {"min_score": 0.0, "max_score": 100.0, **as_data(policy)}
        validate("score_scale", d)  # the one check of these rules (policies.py)
        decimals = d.get("decimals", 2)
        return cls(
            base_score=float(d["base_score"]), base_odds=float(d["base_odds"]),
            points_to_double_odds=float(d["points_to_double_odds"]),
            min_score=float(d.get("min_score", 0.0)), max_score=float(d.get("max_score", 100.0)),
            decimals=None if decimals is None else int(decimals),
            policy_sha256=policy.sha256 if isinstance(policy, Policy) else None,
        )

    @property
    def factor(self) -> float:
        """Points per unit of log-odds (``pdo / ln 2``)."""
        return self.points_to_double_odds / math.log(2.0)

    @property
    def params(self) -> dict[str, Any]:
        """The parameters that decide every score (not the provenance hash)."""
        d = asdict(self)
        d.pop("policy_sha256")
        return d

    @property
    def params_sha256(self) -> str:
        """Hash of the parameters alone: equal hashes score identically."""
        text = json.dumps(self.params, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    # -- persistence --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {**self.params, "policy_sha256": self.policy_sha256, "params_sha256": self.params_sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScoreScale":
        """Inverse of :meth:`to_dict`; checks the saved parameter hash."""
        keys = ("base_score", "base_odds", "points_to_double_odds", "min_score", "max_score", "decimals")
        missing = [k for k in keys if k not in d]
        if missing:
            raise PolicyError(f"saved score scale lacks {', '.join(missing)}")
        scale = cls(**{k: d[k] for k in keys}, policy_sha256=d.get("policy_sha256"))
        saved = d.get("params_sha256")
        if saved is not None and saved != scale.params_sha256:
            raise PolicyError("saved score scale was altered: its parameters do not match its params_sha256")
        return scale

    def save(self, path: str | Path) -> Path:
        """Write the scale as JSON beside a model artifact."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, current: Policy | Mapping[str, Any] | None = None) -> "ScoreScale":
        """Read a saved scale. With ``current`` (today's ``score_scale`` policy), refuse it
        when its parameters differ from the saved ones: the model would score differently
        from the day it was validated. A policy whose text changed (comments, version)
        but whose parameters did not is accepted."""
        scale = cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        if current is not None:
            now = cls.from_policy(current)
            if now.params != scale.params:
                changed = sorted(k for k in scale.params if scale.params[k] != now.params[k])
                raise PolicyError(
                    f"score_scale.yaml changed since the model was saved ({', '.join(changed)}; saved policy "
                    f"sha256 {str(scale.policy_sha256)[:12]}, now {str(now.policy_sha256)[:12]}): "
                    "retrain or restore the saved scale")
        return scale

    # -- scoring --------------------------------------------------------------------
    def score(self, pd_: Any) -> np.ndarray:
        """Scores (float array) for PDs; NaN where the PD is NaN."""
        p = np.asarray(pd_, dtype=float)
        if np.any((p < 0) | (p > 1)):
            raise ValueError("PDs must lie in [0, 1]")
        s = self.base_score + self.factor * (logit(1 - p, PD_EPS, log1p=True) - math.log(self.base_odds))
        s = np.clip(s, self.min_score, self.max_score)
        return np.round(s, self.decimals) if self.decimals is not None else s

    def pd_for_score(self, score: Any) -> np.ndarray:
        """The PD a score stands for (inverse of :meth:`score` inside the open range;
        a clipped score returns the PD at the clip point)."""
        s = np.clip(np.asarray(score, dtype=float), self.min_score, self.max_score)
        log_odds = math.log(self.base_odds) + (s - self.base_score) / self.factor
        return sigmoid(-log_odds)

    def grade(self, pd_: Any) -> np.ndarray:
        """The contract grade of each PD (object array; None where the PD is NaN)."""
        return grades_for_scores(self.score(pd_))


def grades_for_scores(scores: Any) -> np.ndarray:
    """``contract.grade_for_score`` over an array; None for a NaN score (not scorable)."""
    s = np.asarray(scores, dtype=float)
    return np.array([None if np.isnan(v) else grade_for_score(v) for v in s.ravel()], dtype=object).reshape(s.shape)


def score_frame(pd_: pd.Series, scale: ScoreScale) -> pd.DataFrame:
    """``score`` and ``grade`` columns for a Series of final PDs (same index)."""
    s = scale.score(pd_.to_numpy(dtype=float))
    return pd.DataFrame({"score": s, "grade": grades_for_scores(s)}, index=pd_.index)


# ------------------------------------------------------------------------------ final PD


def _model_pds(frame: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """``pd_<model>`` columns as floats; a missing column means the model was not run
    (all NaN), and ``pd_source`` will show the fallback was used."""
    out = pd.DataFrame(index=frame.index)
    for m in models:
        col = f"pd_{m}"
        out[m] = pd.to_numeric(frame[col], errors="raise").astype(float) if col in frame else np.nan
        bad = out[m].notna() & ~out[m].between(0.0, 1.0)
        if bad.any():
            raise ValueError(f"{col}: PDs must lie in [0, 1] ({int(bad.sum())} rows do not)")
    return out


def final_pd(frame: pd.DataFrame, policy: Policy | Mapping[str, Any]) -> pd.DataFrame:
    """The final PD per row of ``frame`` under ``final_pd.yaml``.

    ``frame`` has ``pd_hybrid``, ``pd_decoupled``, ``pd_propagation`` (NaN: the model
    could not score the firm). Returns, on the same index, ``pd`` (NaN when no model
    scored the firm) and ``pd_source``: the champion model used, or the blended models
    joined by ``+`` in policy order; empty where no model scored the firm. The PD is
    floored at the policy's ``floor`` (the regulatory minimum of a corporate PD): a model
    may say 1e-9, but no limit, expected loss or score should rest on it.
    """
    d = as_data(policy)
    validate("final_pd", dict(d))
    out = _final_pd(frame, d)
    out["pd"] = out["pd"].clip(lower=float(d.get("floor", 0.0)))  # NaN (no model scored) stays NaN
    return out


def _final_pd(frame: pd.DataFrame, d) -> pd.DataFrame:
    if d["method"] == "champion":
        order = list(d["fallback"])
        pds = _model_pds(frame, order)
        pd_out = pd.Series(np.nan, index=frame.index)
        source = pd.Series("", index=frame.index, dtype=object)
        for m in order:  # first model that scored wins
            take = pd_out.isna() & pds[m].notna()
            pd_out[take] = pds.loc[take, m]
            source[take] = m
        return pd.DataFrame({"pd": pd_out, "pd_source": source})

    weights = {m: float(w) for m, w in d["weights"].items() if float(w) > 0}
    order = [m for m in MODELS if m in weights]
    pds = _model_pds(frame, order)
    w = np.array([weights[m] for m in order])
    avail = pds.notna().to_numpy()
    wa = avail * w  # weights of the models that scored each firm
    total = wa.sum(axis=1)
    z = np.where(avail, logit(pds.fillna(0.5).to_numpy(), PD_EPS, log1p=True), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        blended = sigmoid((wa * z).sum(axis=1) / total)
    blended = np.where(total > 0, blended, np.nan)
    # a single available model gives its own PD exactly (no logit round-off)
    single = avail.sum(axis=1) == 1
    if single.any():
        blended[single] = np.nansum(np.where(avail, pds.to_numpy(), np.nan), axis=1)[single]
    source = ["+".join(m for m, a in zip(order, row) if a) for row in avail]
    return pd.DataFrame({"pd": blended, "pd_source": source}, index=frame.index)
