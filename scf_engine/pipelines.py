"""Pipelines: ``train``, ``compare`` and ``score`` wire the stages, one MLflow run each.

Data flows one way: files -> Dataset -> Snapshots -> (flow features, chain) -> models ->
evaluation / PD -> credit. Every pipeline loads and checks its data *before* it opens a
run, so an unusable dataset never leaves an empty run behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from scf_engine import __version__, policies, tracking
from scf_engine.assemble import add_propagation, assemble, split_dates, stack, truth_frame
from scf_engine.contract import CONTRACT_VERSION
from scf_engine.dataset import Dataset
from scf_engine.evaluate import bootstrap_difference, evaluate, psi
from scf_engine.ingest import fingerprint, load_dataset
from scf_engine.ingest.reading import DatasetError
from scf_engine.learners import DecoupledModel, HybridModel, JiangyinGrading
from scf_engine.propagation import CorePropagation

SCORES = {"propagation": "pd_propagation", "decoupled": "pd_decoupled", "hybrid": "pd_hybrid", "jiangyin": "pd_jiangyin"}


@dataclass
class TrainResult:
    run_id: str
    versions: dict[str, str]
    evaluation: dict
    test_dates: list
    train_dates: list
    out_dir: Path
    quarantined: int
    extra: dict = field(default_factory=dict)


def _has_flows(frame: pd.DataFrame) -> pd.Series:
    return frame["history_months"].notna()


def predict_all(models: dict, frame: pd.DataFrame) -> pd.DataFrame:
    """Each model's PD on ``frame`` (empty where a model cannot score the row): de-coupled
    and the rule baseline need fund flows; propagation's PD is already a column."""
    out = pd.DataFrame(index=frame.index)
    flows = _has_flows(frame)
    out["pd_propagation"] = frame.get("pd_propagation", pd.Series(np.nan, index=frame.index))
    if "decoupled" in models:
        out["pd_decoupled"] = np.nan
        if flows.any():
            out.loc[flows, "pd_decoupled"] = models["decoupled"].predict_proba(frame[flows])[:, 1]
    if "hybrid" in models:
        out["pd_hybrid"] = models["hybrid"].predict_proba(frame)[:, 1]
    if "jiangyin" in models:
        out["pd_jiangyin"] = np.nan
        if flows.any():
            out.loc[flows, "pd_jiangyin"] = models["jiangyin"].predict_proba(frame[flows])[:, 1]
    return out


def _require_defaults(ds: Dataset) -> None:
    if not ds.has_defaults:
        raise DatasetError(f"defaults: missing file (defaults.csv or defaults.parquet) in {ds.source}: required for training")


def _snapshot_dates(ds: Dataset, n_test: int) -> tuple[list, list, list]:
    dates = ds.snapshot_dates()
    if len(dates) < n_test + 2:
        raise DatasetError(f"{ds.source}: too little history to train: {len(dates)} snapshot date(s) with a full 12-month outcome, need at least {n_test + 2}")
    train, test = split_dates(dates, n_test=n_test)
    if len(train) < 2:
        raise DatasetError(f"{ds.source}: too little history to train out of time: {len(train)} training snapshot(s) before {test[0].date()}")
    return dates, train, test


def fit_propagation_and_decoupled(data: dict, train_dates: list, test_dates: list, *, progress=None):
    """The two base models on assembled snapshots: propagation fitted on the training
    chains (its PD added to every snapshot, as the hybrid needs), then the de-coupled
    LightGBM on the training rows of firms with flows. Returns ``(propagation, decoupled,
    train rows, test rows)``."""
    say = progress or (lambda *a, **k: None)
    say("fitting propagation")
    prop = CorePropagation.from_policy().fit([data[T].chain for T in train_dates], [data[T].labels for T in train_dates])
    add_propagation(data, prop)
    tr, te = stack(data, train_dates), stack(data, test_dates)
    flows = _has_flows(tr)
    say("fitting de-coupled model")
    dec = DecoupledModel.from_policy().fit(tr[flows], tr.loc[flows, "label"], as_of=tr.loc[flows, "as_of"],
                                           groups=tr.loc[flows, "firm_id"])
    return prop, dec, tr, te


def train(data_dir: Path | str, *, tracking_uri: str | None = None, out_dir: Path | str = "out/train",
          n_test: int = 2, progress=None) -> TrainResult:
    """Build snapshots, train propagation, de-coupled, hybrid and the rule baseline, evaluate
    them out of time, log everything to one parent run with a child per model."""
    say = progress or (lambda *a, **k: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(data_dir, progress=say)  # raises before any run exists
    _require_defaults(ds)
    dates, train_dates, test_dates = _snapshot_dates(ds, n_test)
    pols = policies.load_all()
    truth = truth_frame(ds)

    say("assembling snapshots")
    data = assemble(ds, dates, truth=truth, progress=lambda i, n: say(f"snapshot {i}/{n}"))
    prop, dec, tr, te = fit_propagation_and_decoupled(data, train_dates, test_dates, progress=say)
    flows_tr = _has_flows(tr)
    say("fitting hybrid model")
    hyb = HybridModel.from_policy().fit(tr, tr["label"], as_of=tr["as_of"], groups=tr["firm_id"])
    jy = JiangyinGrading().fit(tr[flows_tr], tr.loc[flows_tr, "label"])
    models = {"decoupled": dec, "hybrid": hyb, "jiangyin": jy}

    te = te.join(predict_all(models, te).drop(columns=["pd_propagation"]))
    tr_scores = predict_all(models, tr)
    scores = list(SCORES.values())
    say("evaluating")
    ev = evaluate(te, scores)
    stability = {s: psi(tr_scores[s] if s != "pd_propagation" else tr["pd_propagation"], te[s]) for s in scores}

    tables = out_dir / "evaluation"
    tables.mkdir(exist_ok=True)
    ev["overall"].assign(psi=ev["overall"]["model"].map(stability)).to_csv(tables / "overall.csv", index=False)
    ev["segments"].to_csv(tables / "segments.csv", index=False)
    predictions = te[["firm_id", "as_of", "label"] + scores + (["true_pd"] if "true_pd" in te else [])]
    predictions.to_parquet(tables / "heldout_predictions.parquet", index=False)
    ds.report.write(out_dir / "quarantine.csv")

    q = ds.report.summary()
    say("logging to MLflow")
    uri = tracking.configure(tracking_uri)
    versions: dict[str, str] = {}
    with tracking.run("train", f"train {Path(data_dir).name}", tags={"scf_role": "parent"}) as parent:
        tracking.log_params({
            "dataset_path": str(Path(data_dir).resolve()),
            "dataset_fingerprint": ds.fingerprints,
            "snapshot_dates": [str(d.date()) for d in dates],
            "train_dates": [str(d.date()) for d in train_dates],
            "validation_date": str(train_dates[-1].date()),
            "test_dates": [str(d.date()) for d in test_dates],
            "seed": pols["lightgbm"]["params"].get("seed"),
            "policy_hashes": policies.fingerprint(pols),
            "contract_version": CONTRACT_VERSION,
            "engine_version": __version__,
        })
        tracking.log_metrics({
            "rows_read": int(q["read"].sum()), "rows_accepted": int(q["accepted"].sum()),
            "rows_quarantined": int(q["quarantined"].sum()), "n_train_rows": len(tr), "n_test_rows": len(te),
            "train_default_rate": float(tr["label"].mean()), "test_default_rate": float(te["label"].mean()),
        })
        tracking.log_artifacts(policies.MODELS_DIR, "policies")
        tracking.log_artifact(out_dir / "quarantine.csv", "data_quality")
        tracking.log_frame(q, "rows_summary.csv", "data_quality")
        tracking.log_artifacts(tables, "evaluation")
        tracking.log_small_table(ev["overall"].round(5), "overall.json")

        specs = {
            "propagation": (prop, *_propagation_example(prop, data[test_dates[-1]])),
            "decoupled": (dec, te.loc[_has_flows(te), dec.features_].head(5), None),
            "hybrid": (hyb, te[hyb.features_].head(5), None),
            "jiangyin": (jy, te.loc[_has_flows(te)].head(5), None),
        }
        for kind, (model, example, _) in specs.items():
            score = SCORES[kind]
            with tracking.run("train", kind, nested=True, tags={"scf_role": "model", "model_kind": kind}):
                m = ev["overall"].set_index("model").loc[score].to_dict()
                tracking.log_metrics({k: m.get(k) for k in ("auc", "gini", "ks", "brier", "log_loss", "coverage", "bayes_fraction", "mean_pd")}
                                     | {"psi_train_test": stability[score], "n_scored": m.get("n"), "defaults": m.get("defaults")})
                tracking.log_params(_model_params(kind, model))
                tracking.log_artifact(policies.MODELS_DIR / "features.yaml", "catalogue")
                _log_model_tables(ev, score, te)
                if kind in ("decoupled", "hybrid"):
                    _log_importance(model)
                out = model.predict_pd(example)
                versions[kind] = tracking.log_model(model, kind, input_example=example, output_example=out,
                                                    register=kind != "jiangyin")
        tracking.set_tags({"registered_versions": json.dumps({k: v for k, v in versions.items() if k != "jiangyin"}),
                           "baseline_model_uri": versions.pop("jiangyin")})
        run_id = parent
    (out_dir / "run.json").write_text(json.dumps({"run_id": run_id, "tracking_uri": uri, "versions": versions}, indent=2))
    return TrainResult(run_id, {k: v for k, v in versions.items() if v}, ev, test_dates, train_dates, out_dir,
                       int(q["quarantined"].sum()), {"propagation": prop, "models": models, "data": data, "test": te})


def _propagation_example(model, sd):
    X, covered = model.design(sd.chain)
    return X[covered].head(5), None


def _model_params(kind: str, model) -> dict:
    if kind == "propagation":
        return {"decay": model.decay_, "transmission": round(model.transmission_, 6), "intercept": round(model.intercept_, 6),
                "mu0": round(model.mu0_, 6), "core_evidence_weights": model.core_evidence_weights_.round(6).to_dict(),
                "standalone_weights": model.standalone_weights_.round(6).to_dict(), "profile_loglik": model.profile_,
                "n_train": model.n_train_}
    if kind == "jiangyin":
        return {"grade_default_rates": {k: round(v, 6) for k, v in model.grade_rate_.items()}, "shrinkage": model.shrinkage}
    return {"best_iteration": model.best_iteration_, "n_features": len(model.features_), "monotone": model.monotone,
            "platt_a": round(model.platt_a_, 6), "platt_b": round(model.platt_b_, 6), "n_train": model.n_train_,
            "n_valid": model.n_valid_, **{f"lgbm_{k}": v for k, v in (model.params or {}).items()}}


def _log_model_tables(ev: dict, score: str, te: pd.DataFrame) -> None:
    from scf_engine import report

    tracking.log_frame(ev["calibration"][score], "calibration.csv", "evaluation")
    tracking.log_frame(ev["lift"][score], "lift.csv", "evaluation")
    tracking.log_frame(ev["segments"][ev["segments"]["model"] == score], "segments.csv", "evaluation")
    for name, fig in report.figures(te, [score]).items():
        tracking.log_figure(fig, f"plots/{name}.png")
        report.plt.close(fig)


def _log_importance(model) -> None:
    imp = model.feature_importance_.rename("gain").reset_index().rename(columns={"index": "feature"})
    tracking.log_frame(imp, "feature_importance.csv", "explain")


# --- compare ------------------------------------------------------------------------------

@dataclass
class CompareResult:
    run_id: str
    overall: pd.DataFrame
    bootstrap: pd.DataFrame
    segment_winners: pd.DataFrame
    report_path: Path
    promoted: dict


def load_tracked_models(alias: str) -> tuple[dict, dict]:
    models, versions = {}, {}
    for kind in tracking.MODEL_KINDS:
        model, mv = tracking.load_model(kind, alias)
        models[kind] = model
        versions[kind] = {"version": mv.version, "run_id": mv.run_id}
    return models, versions


def compare(*, tracking_uri: str | None = None, data_dir: Path | str | None = None, alias: str = "challenger",
            promote: str | None = None, out_dir: Path | str = "out/compare", n_boot: int = 300, progress=None) -> CompareResult:
    """Compare the tracked models (by alias) and the Jiangyin rule baseline on the held-out
    snapshots of the latest training run."""
    say = progress or (lambda *a, **k: None)
    out_dir = Path(out_dir)
    tracking.configure(tracking_uri)
    last = tracking.latest_run("train")
    if last is None:
        raise tracking.ModelNotFound("no training run found: run `scf train DIR` first")
    params = last.data.params
    data_dir = Path(data_dir or params["dataset_path"])
    ds = load_dataset(data_dir, progress=say)
    trained_on = json.loads(params["dataset_fingerprint"])
    now = fingerprint(data_dir)
    if trained_on != now:
        changed = sorted(set(trained_on.items()) ^ set(now.items()))
        raise DatasetError(f"{data_dir}: the dataset differs from the one the models were trained on ({changed[0][0]})")
    test_dates = [pd.Timestamp(d) for d in json.loads(params["test_dates"])]
    models, versions = load_tracked_models(alias)
    jy = tracking.load_logged_model(last.data.tags["baseline_model_uri"])
    models["jiangyin"] = jy
    say("assembling held-out snapshots")
    data = assemble(ds, test_dates, truth=truth_frame(ds))
    add_propagation(data, models["propagation"])
    te = stack(data, test_dates)
    te = te.join(predict_all(models, te).drop(columns=["pd_propagation"]))
    scores = list(SCORES.values())
    ev = evaluate(te, scores)
    pairs = [("pd_hybrid", "pd_decoupled"), ("pd_decoupled", "pd_propagation"), ("pd_hybrid", "pd_propagation"),
             ("pd_decoupled", "pd_jiangyin"), ("pd_hybrid", "pd_jiangyin"), ("pd_propagation", "pd_jiangyin")]
    say("bootstrapping differences")
    boot = pd.DataFrame([bootstrap_difference(te, a, b, n_boot=n_boot) for a, b in pairs])
    winners = segment_winners(ev["segments"], "pd_propagation", "pd_decoupled")
    model_table = pd.DataFrame([{"model": k, "registered": tracking.registered_name(k), "alias": alias, **v} for k, v in versions.items()]
                               + [{"model": "jiangyin", "registered": "(rule, from training run)", "alias": "-", "version": "-", "run_id": last.info.run_id}])
    tracking_uri = tracking.configure(tracking_uri)
    promoted = {}
    with tracking.run("compare", f"compare {alias}", tags={"scf_role": "compare", "train_run_id": last.info.run_id}) as rid:
        tracking.log_params({"alias": alias, "test_dates": [str(d.date()) for d in test_dates], "train_run_id": last.info.run_id,
                             "versions": {k: v["version"] for k, v in versions.items()}, "dataset_path": str(data_dir)})
        for _, row in ev["overall"].iterrows():
            tracking.log_metrics({f"{row['model']}_{k}": row.get(k) for k in ("auc", "ks", "gini", "brier", "coverage", "bayes_fraction")})
        path = out_dir / "comparison.html"
        from scf_engine import report

        report.comparison_html(ev, te, scores, boot, test_dates=test_dates, dataset=str(data_dir), models=model_table,
                               run_id=rid, path=path)
        out_dir.mkdir(parents=True, exist_ok=True)
        ev["overall"].to_csv(out_dir / "overall.csv", index=False)
        ev["segments"].to_csv(out_dir / "segments.csv", index=False)
        boot.to_csv(out_dir / "bootstrap.csv", index=False)
        winners.to_csv(out_dir / "segment_winners.csv", index=False)
        tracking.log_artifacts(out_dir, "comparison")
        if promote:
            if promote not in tracking.MODEL_KINDS:
                raise ValueError(f"--promote takes one of {', '.join(tracking.MODEL_KINDS)}")
            tracking.set_alias(promote, "champion", versions[promote]["version"])
            promoted[promote] = versions[promote]["version"]
            tracking.set_tags({"promoted": json.dumps(promoted)})
    return CompareResult(rid, ev["overall"], boot, winners, path, promoted)


def segment_winners(segments: pd.DataFrame, a: str, b: str, *, min_defaults: int = 10) -> pd.DataFrame:
    """Segments where both models score enough rows, with the AUC of each and the winner."""
    pv = segments[segments["model"].isin([a, b])].pivot_table(index=["segment", "value"], columns="model", values=["auc", "defaults"])
    out = pd.DataFrame({f"auc_{a}": pv[("auc", a)], f"auc_{b}": pv[("auc", b)],
                        "defaults": pv[("defaults", a)].fillna(0).combine(pv[("defaults", b)].fillna(0), min)}).reset_index()
    out = out[(out["defaults"] >= min_defaults) & out[f"auc_{a}"].notna() & out[f"auc_{b}"].notna()]
    out["winner"] = np.where(out[f"auc_{a}"] > out[f"auc_{b}"], a, b)
    out["margin"] = (out[f"auc_{a}"] - out[f"auc_{b}"]).abs()
    return out.sort_values(["segment", "value"]).reset_index(drop=True)


__all__ = ["train", "compare", "TrainResult", "CompareResult", "predict_all", "segment_winners"]
