"""``scf train``: snapshots, every model, out-of-time evaluation, one tracked parent run.

Load (dataset, policies; raises before any run exists) -> fit and evaluate (pure) ->
record (tables on disk, one MLflow parent run with a child per model, each model
registered as ``challenger`` with the score scale it was validated with).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from scf_engine import __version__, access, faults, policies, tracking
from scf_engine.assemble import add_propagation, assemble, split_dates, stack, truth_frame
from scf_engine.contract import CONTRACT_VERSION, LABEL_HORIZON_DAYS
from scf_engine.credit.scale import ScoreScale
from scf_engine.dataset import Dataset
from scf_engine.credit.consent import consent_status
from scf_engine.errors import DatasetError, PolicyError, RequestError
from scf_engine.hashing import file_sha256
from scf_engine.ingest.requests import read_consents
from scf_engine.evaluate import evaluate, psi
from scf_engine.ingest.load import load_or_report
from scf_engine.learners import DecoupledModel, HybridModel, JiangyinGrading
from scf_engine.learners.lgbm import too_few_defaults
from scf_engine.learners.predict import PD_COLUMNS, has_flows, predict_all
from scf_engine.propagation import CorePropagation
from scf_engine.tables import write_csv

SCALE_ARTIFACT = "scorecard/score_scale.json"


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


@dataclass
class Fitted:
    """What :func:`fit_and_evaluate` returns: models, the frames they were judged on and
    the evaluation."""

    propagation: CorePropagation
    models: dict  # decoupled, hybrid, jiangyin
    data: dict
    train: pd.DataFrame
    test: pd.DataFrame
    evaluation: dict
    stability: dict
    tuning: dict = field(default_factory=dict)  # kind -> TuneResult, when trained with --tune


def require_defaults(ds: Dataset) -> None:
    if not ds.has_defaults:
        raise DatasetError(f"defaults: missing file (defaults.csv or defaults.parquet) in {ds.source}: required for training")


def snapshot_dates(ds: Dataset, n_test: int) -> tuple[list, list, list]:
    dates = ds.snapshot_dates()
    if len(dates) < n_test + 2:
        raise DatasetError(f"{ds.source}: too little history to train: {len(dates)} snapshot date(s) with a full 12-month outcome, need at least {n_test + 2}")
    train, test = split_dates(dates, n_test=n_test)
    if len(train) < 2:
        raise DatasetError(f"{ds.source}: too little history to train out of time: {len(train)} training snapshot(s) before {test[0].date()}")
    return dates, train, test


def require_something_to_learn(ds: Dataset, train_dates) -> None:
    """Before the snapshots are assembled (minutes on a bank's data), the two cases with
    nothing to learn, with the messages the fit would give after them: no flow booked
    before the last training date (:func:`require_flows`), and no firm defaulting in a
    training snapshot's label window (``T <= default_on < T + 365 days``;
    :func:`~scf_engine.learners.lgbm.too_few_defaults`). A suite's empty defaults file
    failed after 9 s of assembling; a bank's after minutes."""
    last = pd.Timestamp(train_dates[-1])
    if not (ds.flows["booked_on"] < last).any():
        require_flows(0, train_dates)
    default_on = pd.to_datetime(ds.defaults["default_on"])
    window = (default_on >= pd.Timestamp(train_dates[0])) & (default_on < last + pd.Timedelta(days=LABEL_HORIZON_DAYS))
    if not window.any():
        raise too_few_defaults(0)


def require_flows(n_rows: int, train_dates) -> None:
    """The de-coupled model learns from the firms with fund flows: with none in the
    training snapshots (a bank whose flow platform is not connected yet: flows.csv with
    its header only) the run stops with one line; LightGBM's own error was a traceback."""
    if not n_rows:
        span = f"{pd.Timestamp(train_dates[0]).date()} to {pd.Timestamp(train_dates[-1]).date()}"
        raise DatasetError(f"flows: no firm has a fund flow before the training snapshot dates ({span}); "
                           "the de-coupled model learns from flows")


def fit_lgbm(model, X: pd.DataFrame, y, *, as_of, groups, tuning: dict | None = None, progress=None):
    """``model.fit``, after a budgeted search of its parameters when ``tuning`` (the
    ``tuning`` section of lightgbm.yaml) is given; the search's result is kept as
    ``model.tune_result_`` (None without one)."""
    result = model.tune(X, y, as_of, groups, tuning, progress=progress) if tuning else None
    model.fit(X, y, as_of=as_of, groups=groups)
    model.tune_result_ = result
    return model


def fit_propagation_and_decoupled(data: dict, train_dates: list, test_dates: list, *, progress=None,
                                  tuning: dict | None = None):
    """The two base models on assembled snapshots: propagation fitted on the training
    chains (its PD added to every snapshot, as the hybrid needs), then the de-coupled
    LightGBM on the training rows of firms with flows. Returns ``(propagation, decoupled,
    train rows, test rows)``."""
    say = progress or (lambda *a, **k: None)
    say("fitting propagation")
    prop = CorePropagation.from_policy().fit([data[T].chain for T in train_dates], [data[T].labels for T in train_dates])
    add_propagation(data, prop)
    tr, te = stack(data, train_dates), stack(data, test_dates)
    flows = has_flows(tr)
    require_flows(int(flows.sum()), train_dates)
    say("fitting de-coupled model")
    dec = fit_lgbm(DecoupledModel.from_policy(), tr[flows], tr.loc[flows, "label"], as_of=tr.loc[flows, "as_of"],
                   groups=tr.loc[flows, "firm_id"], tuning=tuning, progress=say)
    return prop, dec, tr, te


def consented_rows(data: dict, consents: pd.DataFrame) -> None:
    """Keep, in every snapshot table, only the firms whose data-use authorisation covered
    that snapshot's date (data_use.yaml ``training: consent_at_snapshot``)."""
    for T, sd in data.items():
        ok = consent_status(sd.table.index, consents, T).eq("ok").to_numpy()
        sd.table = sd.table[ok]


def fit_and_evaluate(ds: Dataset, dates, train_dates, test_dates, *, consents: pd.DataFrame | None = None,
                     progress=None, tuning: dict | None = None) -> Fitted:
    """Every model on the training snapshots, judged on the held-out ones (no I/O).
    ``consents``: when given, only consented firm-dates are learned from and judged.
    ``tuning``: when given, the LightGBM models' parameters are searched first."""
    say = progress or (lambda *a, **k: None)
    say("assembling snapshots")
    data = assemble(ds, dates, truth=truth_frame(ds), progress=lambda i, n: say(f"snapshot {i}/{n}"))
    if consents is not None:
        consented_rows(data, consents)
    prop, dec, tr, te = fit_propagation_and_decoupled(data, train_dates, test_dates, progress=say, tuning=tuning)
    flows_tr = has_flows(tr)
    say("fitting hybrid model")
    hyb = fit_lgbm(HybridModel.from_policy(), tr, tr["label"], as_of=tr["as_of"], groups=tr["firm_id"], tuning=tuning,
                   progress=say)
    jy = JiangyinGrading.from_policy().fit(tr[flows_tr], tr.loc[flows_tr, "label"])
    models = {"decoupled": dec, "hybrid": hyb, "jiangyin": jy}
    te = te.join(predict_all(models, te).drop(columns=["pd_propagation"]))
    tr_pds = predict_all(models, tr)
    pd_cols = list(PD_COLUMNS.values())
    say("evaluating")
    ev = evaluate(te, pd_cols)
    stability = {s: psi(tr_pds[s] if s != "pd_propagation" else tr["pd_propagation"], te[s]) for s in pd_cols}
    tuned = {k: m.tune_result_ for k, m in (("decoupled", dec), ("hybrid", hyb)) if m.tune_result_ is not None}
    return Fitted(prop, models, data, tr, te, ev, stability, tuned)


def write_tables(fitted: Fitted, ds: Dataset, out_dir: Path) -> Path:
    """Evaluation tables, held-out predictions and the quarantine report on disk."""
    ev, te, pd_cols = fitted.evaluation, fitted.test, list(PD_COLUMNS.values())
    tables = out_dir / "evaluation"
    tables.mkdir(parents=True, exist_ok=True)
    write_csv(ev["overall"].assign(psi=ev["overall"]["model"].map(fitted.stability)), tables / "overall.csv")
    write_csv(ev["segments"], tables / "segments.csv")
    predictions = te[["firm_id", "as_of", "label"] + pd_cols + (["true_pd"] if "true_pd" in te else [])]
    predictions.to_parquet(tables / "heldout_predictions.parquet", index=False)
    ds.report.write(out_dir / "quarantine.csv")
    return tables


def training_consents(pols, consents) -> tuple[str, pd.DataFrame | None]:
    """The rule data_use.yaml states for training and the consents it needs."""
    rule = policies.as_data(pols["data_use"])["training"]
    if rule == "consent_at_snapshot":
        if consents is None:
            raise RequestError("data_use.yaml says training uses only consented history (training: consent_at_snapshot): "
                               "pass --consents consents.csv")
        return rule, read_consents(consents)
    return rule, None


def train(data_dir: Path | str, *, tracking_uri: str | None = None, out_dir: Path | str = "out/train",
          n_test: int = 2, audit_log: Path | str | None = None, actor: str | None = None,
          consents: Path | str | None = None, progress=None, tune: bool = False) -> TrainResult:
    """Build snapshots, train propagation, de-coupled, hybrid and the rule baseline, evaluate
    them out of time, log everything to one parent run with a child per model. ``tune``:
    search the LightGBM models' parameters first (lightgbm.yaml ``tuning``), each trial a
    child run."""
    say = progress or (lambda *a, **k: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = tracking.Store(tracking_uri).check()  # a server that is down: one line now, not after training
    for run_id in store.fail_stale_runs():
        say(f"MLflow run {run_id} was left RUNNING by a process that no longer exists: marked FAILED")
    ds = load_or_report(data_dir, out_dir / "quarantine.csv", progress=say)  # raises before any run exists
    require_defaults(ds)
    dates, train_dates, test_dates = snapshot_dates(ds, n_test)
    require_something_to_learn(ds, train_dates)
    pols = policies.load_all()
    rule, consent_frame = training_consents(pols, consents)
    tuning = _tuning_policy(pols) if tune else None
    fitted = fit_and_evaluate(ds, dates, train_dates, test_dates, consents=consent_frame, progress=say, tuning=tuning)
    tables = write_tables(fitted, ds, out_dir)
    say("logging to MLflow")
    run_id, versions = record_training(store, fitted, ds, pols, Path(data_dir), out_dir, tables,
                                       (dates, train_dates, test_dates))
    (out_dir / "run.json").write_text(json.dumps({"run_id": run_id, "tracking_uri": store.uri, "versions": versions}, indent=2))
    inputs = {**ds.fingerprints, **({"consents": file_sha256(Path(consents))} if consents else {})}
    access.record(audit_log, actor, "train", "model training on the firms' history", ds.firms["firm_id"],
                  inputs=inputs, mlflow_run_id=run_id, registered=versions, training_data_rule=rule,
                  training_rows=len(fitted.train))
    q = ds.report.summary()
    return TrainResult(run_id, {k: v for k, v in versions.items() if v}, fitted.evaluation, test_dates, train_dates, out_dir,
                       int(q["quarantined"].sum()),
                       {"propagation": fitted.propagation, "models": fitted.models, "data": fitted.data, "test": fitted.test})


def _tuning_policy(pols) -> dict:
    tuning = policies.as_data(pols["lightgbm"]).get("tuning")
    if not tuning:
        raise PolicyError("--tune: lightgbm.yaml has no 'tuning' section (search space and budget)")
    return dict(tuning)


def record_training(store: tracking.Store, fitted: Fitted, ds: Dataset, pols, data_dir: Path, out_dir: Path, tables: Path,
                    date_sets) -> tuple[str, dict]:
    """One parent run (data, policies, evaluation) with a child per model."""
    dates, train_dates, test_dates = date_sets
    q = ds.report.summary()
    tr, te, ev = fitted.train, fitted.test, fitted.evaluation
    with store.run("train", f"train {data_dir.name}", tags={"scf_role": "parent"}) as run:
        faults.checkpoint("train_run_started")
        run.log_params({
            "dataset_path": str(data_dir.resolve()), "dataset_fingerprint": ds.fingerprints,
            "snapshot_dates": [str(d.date()) for d in dates], "train_dates": [str(d.date()) for d in train_dates],
            "validation_date": str(train_dates[-1].date()), "test_dates": [str(d.date()) for d in test_dates],
            "seed": pols["lightgbm"]["params"].get("seed"), "policy_hashes": policies.fingerprint(pols),
            "contract_version": CONTRACT_VERSION, "engine_version": __version__,
        })
        run.log_metrics({
            "rows_read": int(q["read"].sum()), "rows_accepted": int(q["accepted"].sum()),
            "rows_quarantined": int(q["quarantined"].sum()), "n_train_rows": len(tr), "n_test_rows": len(te),
            "train_default_rate": float(tr["label"].mean()), "test_default_rate": float(te["label"].mean()),
        })
        run.log_artifacts(policies.policy_dir(), "policies")
        run.log_artifact(out_dir / "quarantine.csv", "data_quality")
        run.log_frame(q, "rows_summary.csv", "data_quality")
        run.log_artifacts(tables, "evaluation")
        run.log_small_table(ev["overall"].round(5), "overall.json")
        for kind, result in fitted.tuning.items():
            _record_trials(store, run, kind, result)
        versions = {kind: _record_model(store, run, kind, model, example, fitted, pols)
                    for kind, (model, example) in _examples(fitted).items()}
        run.set_tags({"registered_versions": json.dumps({k: v for k, v in versions.items() if k != "jiangyin"}),
                      "baseline_model_uri": versions.pop("jiangyin")})
    return run.id, versions


def _record_trials(store, parent, kind: str, result) -> None:
    """Each tuning trial as a child run of the training run: the point tried, the fold
    AUCs and their mean, the best iterations and the time it took; the chosen point on the
    parent."""
    best = max(result.trials, key=lambda t: t["value"])
    for t in result.trials:
        with store.run("train", f"tune {kind} trial {t['number']}", parent=parent,
                       tags={"scf_role": "tuning_trial", "model_kind": kind, "best": str(t is best).lower()}) as run:
            run.log_params({**t["params"], "best_iterations": t["best_iterations"]})
            run.log_metrics({"mean_fold_auc": t["value"], "seconds": t["seconds"],
                             **{f"fold{i}_auc": a for i, a in enumerate(t["fold_auc"])}})
    parent.log_params({f"tuned_{kind}_{k}": v for k, v in best["params"].items()} | {f"tuned_{kind}_trials": len(result.trials)})


def _examples(fitted: Fitted) -> dict:
    te, m = fitted.test, fitted.models
    X, covered = fitted.propagation.design(fitted.data[max(fitted.data)].chain)
    return {
        "propagation": (fitted.propagation, X[covered].head(5)),
        "decoupled": (m["decoupled"], te.loc[has_flows(te), m["decoupled"].features_].head(5)),
        "hybrid": (m["hybrid"], te[m["hybrid"].features_].head(5)),
        "jiangyin": (m["jiangyin"], te.loc[has_flows(te)].head(5)),
    }


def _record_model(store, parent, kind: str, model, example, fitted: Fitted, pols) -> str | None:
    """A child run per model: metrics, parameters, tables, the model itself and, for the
    registered ones, the score scale its PDs are turned into scores with."""
    col = PD_COLUMNS[kind]
    ev = fitted.evaluation
    with store.run("train", kind, parent=parent, tags={"scf_role": "model", "model_kind": kind}) as run:
        m = ev["overall"].set_index("model").loc[col].to_dict()
        run.log_metrics({k: m.get(k) for k in ("auc", "gini", "ks", "brier", "log_loss", "coverage", "bayes_fraction", "mean_pd")}
                        | {"psi_train_test": fitted.stability[col], "n_scored": m.get("n"), "defaults": m.get("defaults")})
        run.log_params(model_params(kind, model))
        run.log_artifact(policies.policy_dir() / "features.yaml", "catalogue")
        _log_model_tables(run, ev, col, fitted.test)
        if kind in ("decoupled", "hybrid"):
            imp = model.feature_importance_.rename("gain").reset_index().rename(columns={"index": "feature"})
            run.log_frame(imp, "feature_importance.csv", "explain")
        register = kind != "jiangyin"
        if register:
            _log_scale(run, pols)
        if kind == "hybrid" and "monitoring" in pols:
            _log_drift_reference(run, model, fitted.train, pols)
        return run.log_model(model, kind, input_example=example, output_example=model.predict_pd(example), register=register)


def _log_scale(run, pols) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = ScoreScale.from_policy(pols["score_scale"]).save(Path(tmp) / Path(SCALE_ARTIFACT).name)
        run.log_artifact(path, str(Path(SCALE_ARTIFACT).parent))


def _log_drift_reference(run, model, tr: pd.DataFrame, pols) -> None:
    """The training rows' score and model-feature distributions, the reference ``scf
    monitor`` measures PSI and CSI against (saved with the model, so a later policy or
    data change cannot move the baseline)."""
    import tempfile

    from scf_engine.credit.scale import score_frame
    from scf_engine.monitor.drift import REFERENCE_ARTIFACT, reference

    frame = tr.assign(score=score_frame(pd.Series(model.predict_proba(tr)[:, 1], index=tr.index),
                                        ScoreScale.from_policy(pols["score_scale"]))["score"])
    numeric = [c for c in model.features_ if c in frame and pd.api.types.is_numeric_dtype(frame[c])]
    ref = reference(frame, ["score", *numeric], int(pols["monitoring"]["drift"]["bins"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
        path.write_text(json.dumps(ref))
        run.log_artifact(path, str(Path(REFERENCE_ARTIFACT).parent))


def model_params(kind: str, model) -> dict:
    if kind == "propagation":
        return {"decay": model.decay_, "transmission": round(model.transmission_, 6), "intercept": round(model.intercept_, 6),
                "mu0": round(model.mu0_, 6), "core_evidence_weights": model.core_evidence_weights_.round(6).to_dict(),
                "standalone_weights": model.standalone_weights_.round(6).to_dict(), "profile_loglik": model.profile_,
                "n_train": model.n_train_}
    if kind == "jiangyin":
        return {"grade_default_rates": {k: round(v, 6) for k, v in model.grade_rate_.items()}, "shrinkage": model.shrinkage}
    return {"best_iteration": model.best_iteration_, "n_features": len(model.features_), "monotone": model.monotone,
            "platt_a": round(model.platt_a_, 6), "platt_b": round(model.platt_b_, 6), "n_train": model.n_train_,
            "n_valid": model.n_valid_, "calibration_folds": model.calibration_folds,
            "fold_iterations": getattr(model, "fold_iterations_", None),
            **{f"lgbm_{k}": v for k, v in (model.params or {}).items()}}


def _log_model_tables(run, ev: dict, col: str, te: pd.DataFrame) -> None:
    from scf_engine import report

    run.log_frame(ev["calibration"][col], "calibration.csv", "evaluation")
    run.log_frame(ev["lift"][col], "lift.csv", "evaluation")
    run.log_frame(ev["segments"][ev["segments"]["model"] == col], "segments.csv", "evaluation")
    for name, fig in report.figures(te, [col]).items():
        run.log_figure(fig, f"plots/{name}.png")
        report.plt.close(fig)


__all__ = ["TrainResult", "Fitted", "train", "fit_and_evaluate", "fit_propagation_and_decoupled", "record_training",
           "model_params", "SCALE_ARTIFACT"]
