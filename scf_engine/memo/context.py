"""The context of each firm's credit memo, built from a batch's decisions.

Everything the batch shares is computed once (the propagation frame and weights, the PDs
that colour the chain pictures, one chain layout per core); per firm only dict lookups
and templating are left, and pictures are SVG. :func:`memo_contexts` is pure (it builds
dicts); :func:`write_memos` renders them to files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from scf_engine.explain import path_context, path_rows
from scf_engine.catalogue import load_catalogue
from scf_engine.features.alerts import raise_alerts
from scf_engine.features.authenticity import RingEvidence
from scf_engine.memo.render import chain_position, firm_record, render_memo
from scf_engine.memo.svg import ChainPictures, waterfall_svg

MODEL_KINDS = ("propagation", "decoupled", "hybrid")


@dataclass(frozen=True)
class Provenance:
    """Where a memo's numbers come from: each model's registered version and run, and the
    MLflow run of the batch (None when the memo is not part of one, e.g. ``scf explain``)."""

    versions: dict  # kind -> {"version", "run_id"}
    run_id: str | None = None
    experiment: str | None = None
    tracking_uri: str | None = None


class _BatchShared:
    """What every memo of a batch reads: computed once per batch."""

    def __init__(self, decisions, data, models):
        table, chain = data.table, data.chain
        self.labels = {s.name: s.label_en for s in load_catalogue().specs}
        risk = pd.Series(models["hybrid"].predict_proba(table)[:, 1], index=table.index)
        self.pictures = ChainPictures(chain, risk)
        self.paths = path_context(models["propagation"], chain)
        scored = decisions.limits.loc[decisions.scored, "firm_id"]
        batch_table = table.loc[table.index.intersection(scored)]
        self.contrib_rows = {k: dict(zip(c.index, c.to_dict("records"))) for k, c in decisions.contributions.items()}
        self.value_rows = {k: dict(zip(batch_table.index, batch_table[list(models[k].features_)].to_dict("records")))
                           for k in decisions.contributions}
        # authenticity: the family's values, the policy's alerts, the rings behind them
        cat = load_catalogue()
        self.auth_specs = [s for s in cat.specs if s.family == "authenticity" and s.name in table.columns]
        self.auth_values = batch_table[[s.name for s in self.auth_specs]]
        alerts = raise_alerts(self.auth_values)
        self.alerts = {f: g.drop(columns="firm_id").to_dict("records") for f, g in alerts.groupby("firm_id")}
        self.rings = RingEvidence(data.snapshot.flows, data.snapshot.as_of)

    def authenticity(self, fid) -> dict:
        values = self.auth_values.loc[fid] if fid in self.auth_values.index else None
        return {
            "features": [{"label_zh": s.label_zh, "label_en": s.label_en, "value": None if values is None else values[s.name]}
                         for s in self.auth_specs],
            "alerts": self.alerts.get(fid, []),
            "rings": self.rings.of(fid),
        }


def _models_view(row, provenance: Provenance) -> list[dict]:
    return [{"name": k, "pd": None if pd.isna(row[f"pd_{k}"]) else float(row[f"pd_{k}"]),
             "version": provenance.versions[k]["version"], "run_id": provenance.versions[k]["run_id"]}
            for k in MODEL_KINDS]


def jiangyin_record(decisions, i) -> dict | None:
    """The Jiangyin guide's indicator table of request row ``i`` (None without flows)."""
    jy = getattr(decisions, "jiangyin", None)
    if jy is None or i not in jy.index:
        return None
    row = jy.loc[i]
    from scf_engine.learners.jiangyin import INDICATORS

    return {"grade": row["grade"], "n_a": int(row["n_a"]), "n_c": int(row["n_c"]), "n_graded": int(row["n_graded"]),
            "bonus_step": bool(row["bonus_step"]), "excluded": bool(row["excluded"]),
            "indicators": [{"name": k, "grade": row[k]} for k in INDICATORS]}


def left_out_record(decisions, fid) -> list[dict]:
    """The firm's receivables left out of its limit, and why (credit.encumbrance)."""
    lo = getattr(decisions, "left_out", None)
    if lo is None or lo.empty:
        return []
    return lo.loc[lo["firm_id"] == fid, ["receivable_id", "buyer_id", "amount", "reason"]].to_dict("records")


def memo_context(i, decisions, data, models, shared: _BatchShared, provenance: Provenance, quarantine=None) -> dict:
    """The memo context (see :mod:`scf_engine.memo.render`) of request row ``i``."""
    row, chain = decisions.limits.loc[i], data.chain
    fid, src = row["firm_id"], row["pd_source"]
    waterfall = None
    if src in shared.contrib_rows and i in shared.contrib_rows[src]:
        waterfall = waterfall_svg(shared.contrib_rows[src][i], shared.value_rows[src][fid], shared.labels)
    paths = None
    if chain.nodes.at[fid, "role"] in ("upstream", "downstream") and shared.paths.frame.at[fid, "covered"]:
        paths = path_rows(models["propagation"], chain, fid, max_len=3, context=shared.paths)
    dq = (quarantine.rows_touching(fid, before=decisions.as_of) if quarantine is not None and len(quarantine.rows)
          else pd.DataFrame())  # as the decision counts them: known before the as-of
    detail = decisions.limit_detail.loc[i]
    return {
        "firm": firm_record(chain, fid),
        "as_of": decisions.as_of,
        "chain_position": chain_position(chain, fid),
        "neighbourhood_svg": shared.pictures.svg(fid),
        "models": _models_view(row, provenance),
        "final": {"pd": float(row["pd"]), "score": float(row["score"]), "grade": row["grade"],
                  "limit_cny": float(row["limit_cny"]), "decision": row["decision"],
                  "limit_basis": list(detail["limit_basis"]) + [f"Decision: {r}" for r in detail["decision_reasons"]]},
        "reasons": list(decisions.reasons[i]),
        "waterfall_svg": waterfall,
        "propagation_paths": paths,
        "data_quality": dq[["file", "line", "column", "reason"]].to_dict("records") if len(dq) else [],
        "authenticity": shared.authenticity(fid),
        "jiangyin": jiangyin_record(decisions, i),
        "left_out": left_out_record(decisions, fid),
        "mlflow": {"run_id": provenance.run_id, "experiment": provenance.experiment, "tracking_uri": provenance.tracking_uri},
        "generated_at": datetime.now(timezone.utc),
    }


def memo_contexts(decisions, data, models, provenance: Provenance, quarantine=None):
    """One context per scored request row, in request order."""
    if not decisions.scored.any():
        return
    shared = _BatchShared(decisions, data, models)
    for i in decisions.limits.index[decisions.scored]:
        yield memo_context(i, decisions, data, models, shared, provenance, quarantine)


def write_memos(memo_dir: Path, formats, contexts) -> list[dict]:
    """Render each context to ``memo_dir``; returns ``{format: path}`` per memo."""
    return [render_memo(ctx, Path(memo_dir), formats) for ctx in contexts]


__all__ = ["Provenance", "memo_context", "memo_contexts", "write_memos"]
