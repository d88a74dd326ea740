"""``scf recalibrate DATA --quarter T``: a model's calibration refitted on a new bank's
first labelled quarter, registered as a new version.

Why only the calibration: a model trained on one bank ranks another bank's firms about as
well as it ranks its own (the cross-world benchmark, bench/bench_acceptance.py), but the
new bank's default rate and the spread of its scores differ, so its PDs are off by a
level and a slope. Platt scaling is a linear map of LightGBM's raw score, so refitting
its two numbers on one quarter's outcomes moves every PD to the new bank's scale while
the ranking, the trees and the SHAP reasons (additive in log-odds) stay exactly as
validated. One quarter of labels is too few to refit trees, enough for two numbers, fitted
on Platt's prior-corrected targets as training fits them (:func:`learners.lgbm.platt_scaling`).

Load (dataset, the models behind ``alias``; raises before any run exists) -> refit
(pure) -> record (calibration tables on disk, one MLflow run per model in the
``scf-recalibrate`` experiment, each model registered as a new ``challenger`` version
with the score scale it was validated with).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scf_engine import access, policies, tracking
from scf_engine.assemble import add_propagation, assemble, truth_frame
from scf_engine.dataset import as_timestamp
from scf_engine.errors import DatasetError, RequestError
from scf_engine.evaluate import calibration_noise, calibration_table
from scf_engine.ingest.load import load_or_report
from scf_engine.ingest.quarantine import QUARANTINE, publish_beside
from scf_engine.learners.lgbm import platt_scaling
from scf_engine.learners.predict import has_flows
from scf_engine.tables import write_csv

KINDS = ("decoupled", "hybrid")  # the calibrated LightGBM models (propagation has no Platt step)


@dataclass
class RecalibrateResult:
    versions: dict  # kind -> new registered version
    calibration: pd.DataFrame  # kind, sample, bin, n, defaults, mean_pd_before, mean_pd_after, observed
    summary: pd.DataFrame  # kind, sample, max_gap_before_pp, max_gap_after_pp, noise_95_pp, platt before/after
    out_dir: Path
    report: object = None  # the dataset's QuarantineReport: rows set aside, counts per file


def quarter_frame(ds, T: pd.Timestamp, propagation) -> pd.DataFrame:
    """The assembled, labelled rows at ``T`` with the propagation model's columns."""
    data = assemble(ds, [T], truth=truth_frame(ds))
    add_propagation(data, propagation)
    return data[T].table


def refit_platt(model, frame: pd.DataFrame):
    """A copy of ``model`` whose Platt map is refitted on ``frame``'s labels (trees and
    features unchanged)."""
    new = type(model).from_state(model.get_state())
    y = frame["label"].to_numpy(dtype=float)
    if len(np.unique(y)) < 2:
        raise DatasetError("the recalibration quarter has no default (or only defaults): its outcomes cannot set a calibration")
    new.platt_a_, new.platt_b_ = platt_scaling(model.raw_score(frame), y)
    return new


def calibration_rows(kind: str, sample: str, frame: pd.DataFrame, before, after, bins: int) -> pd.DataFrame:
    """Deciles of the recalibrated PD: mean PD before and after against the observed rate
    (the same rows in each decile, so before and after compare like with like)."""
    y = frame["label"].to_numpy(dtype=float)
    p_after = after.predict_pd(frame)
    p_before = before.predict_pd(frame)
    t = calibration_table(y, p_after, bins=bins).rename(columns={"mean_pd": "mean_pd_after"})
    order = pd.qcut(pd.Series(p_after).rank(method="first"), bins, labels=False) + 1
    t["mean_pd_before"] = pd.Series(p_before).groupby(order.to_numpy()).mean().reindex(t["bin"]).to_numpy()
    return t.assign(kind=kind, sample=sample)[["kind", "sample", "bin", "n", "defaults", "mean_pd_before", "mean_pd_after",
                                                "observed"]]


def recalibrate_models(models: dict, frames: dict[str, pd.DataFrame], bins: int = 10):
    """Refit each model's calibration on ``frames['quarter']``; calibration by decile
    before and after on every frame given (the quarter, and a later labelled one when
    the data has it), with the largest decile gap a perfectly calibrated PD would show
    on the same rows 95% of the time (``noise_95_pp``,
    :func:`scf_engine.evaluate.calibration_noise`): on one quarter's few hundred rows a
    decile, a gap of a few points can be chance. Pure: returns ``(new models,
    calibration, summary)``."""
    new, cal, summary = {}, [], []
    for kind in KINDS:
        model = models[kind]
        rows = {s: (f[has_flows(f)] if kind == "decoupled" else f) for s, f in frames.items()}
        new[kind] = refit_platt(model, rows["quarter"])
        for sample, f in rows.items():
            t = calibration_rows(kind, sample, f, model, new[kind], bins)
            cal.append(t)
            summary.append({"kind": kind, "sample": sample, "rows": len(f), "defaults": int(f["label"].sum()),
                            "max_gap_before_pp": 100 * float((t["mean_pd_before"] - t["observed"]).abs().max()),
                            "max_gap_after_pp": 100 * float((t["mean_pd_after"] - t["observed"]).abs().max()),
                            "noise_95_pp": calibration_noise(new[kind].predict_pd(f), bins),
                            "platt_a_before": model.platt_a_, "platt_b_before": model.platt_b_,
                            "platt_a_after": new[kind].platt_a_, "platt_b_after": new[kind].platt_b_})
    return new, pd.concat(cal, ignore_index=True), pd.DataFrame(summary)


def _check_quarter(ds, quarter) -> tuple[pd.Timestamp, pd.Timestamp | None]:
    """The quarter's as-of date (a labelled one) and the next labelled quarter, if any."""
    try:
        T = as_timestamp(quarter)
    except Exception:
        raise RequestError(f"--quarter {quarter!r}: not a date (YYYY-MM-DD)") from None
    if not ds.fully_observed(T):
        raise DatasetError(f"--quarter {T.date()}: its 12-month outcome window is not inside the data "
                           f"(last date {ds.last_date.date()}): recalibration needs a labelled quarter")
    nxt = T + pd.DateOffset(months=3)
    return T, (nxt if ds.fully_observed(nxt) else None)


def recalibrate(data_dir: Path | str, quarter, *, tracking_uri: str | None = None, alias: str = "champion",
                out_dir: Path | str = "out/recalibrate", audit_log=None, actor=None, progress=None) -> RecalibrateResult:
    """Load the models behind ``alias``, refit their calibration on the quarter starting
    ``quarter``, register each as a new challenger version, and report calibration by
    decile before and after."""
    say = progress or (lambda *a, **k: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = tracking.Store(tracking_uri).check()
    ds = load_or_report(data_dir, out_dir / QUARANTINE, progress=say)
    if not ds.has_defaults:
        raise DatasetError(f"defaults: missing file in {ds.source}: recalibration needs the quarter's outcomes")
    T, later = _check_quarter(ds, quarter)
    models = {k: store.load_model(k, alias) for k in ("propagation", *KINDS)}  # ModelNotFound names the missing one
    say("assembling the quarter")
    frames = {"quarter": quarter_frame(ds, T, models["propagation"][0])}
    if later is not None:
        frames["next_quarter"] = quarter_frame(ds, later, models["propagation"][0])
    new, cal, summary = recalibrate_models({k: m for k, (m, _) in models.items()}, frames)
    write_csv(cal, out_dir / "calibration_by_decile.csv")
    write_csv(summary, out_dir / "summary.csv")
    say("registering the recalibrated models")
    versions = _record(store, new, models, frames["quarter"], cal, summary, Path(data_dir), T, out_dir)
    (out_dir / "run.json").write_text(json.dumps({"versions": versions, "quarter": str(T.date())}, indent=2))
    output = publish_beside(ds.report, out_dir)  # the new bank's rows set aside, beside the tables
    access.record(audit_log, actor, "recalibrate", "calibration refit on a new bank's first labelled quarter",
                  frames["quarter"].index, inputs=ds.fingerprints, registered=versions, quarter=str(T.date()),
                  **({"output": output} if output else {}))
    return RecalibrateResult(versions, cal, summary, out_dir, ds.report)


def _record(store, new: dict, loaded: dict, frame: pd.DataFrame, cal, summary, data_dir: Path, T, out_dir: Path) -> dict:
    """One run per recalibrated model (tables, the Platt numbers before and after, the
    version it came from), the model registered as a new challenger version."""
    from scf_engine.pipelines.train import _log_scale

    pols = policies.load_all()
    versions = {}
    for kind, model in new.items():
        mv = loaded[kind][1]
        s = summary[(summary["kind"] == kind) & (summary["sample"] == "quarter")].iloc[0]
        with store.run("recalibrate", f"recalibrate {kind} on {data_dir.name} {T.date()}",
                       tags={"scf_role": "model", "model_kind": kind, "recalibrated_from": f"{mv.name}/{mv.version}"}) as run:
            run.log_params({"dataset_path": str(data_dir.resolve()), "quarter": str(T.date()),
                            "from_version": mv.version, "from_run_id": mv.run_id})
            run.log_metrics({k: float(s[k]) for k in ("platt_a_before", "platt_b_before", "platt_a_after", "platt_b_after",
                                                       "max_gap_before_pp", "max_gap_after_pp", "noise_95_pp")}
                            | {"rows": int(s["rows"])})
            run.log_frame(cal[cal["kind"] == kind], "calibration_by_decile.csv", "evaluation")
            _log_scale(run, pols)
            rows = frame[has_flows(frame)] if kind == "decoupled" else frame
            example = rows[model.features_].head(5)
            versions[kind] = run.log_model(model, kind, input_example=example, output_example=model.predict_pd(example))
    return versions


__all__ = ["recalibrate", "recalibrate_models", "refit_platt", "RecalibrateResult", "KINDS"]
