"""``scf compare``: the tracked models and the rule baseline on the same held-out snapshots.

Load (the latest training run, its unchanged dataset, the models behind the alias, read
once) -> evaluate (pure) -> record (report and tables on disk, one MLflow run, and the
promotion of exactly the compared versions, tagged on the run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scf_engine import access, tracking
from scf_engine.assemble import add_propagation, assemble, stack, truth_frame
from scf_engine.errors import DatasetError, ModelNotFound
from scf_engine.evaluate import bootstrap_difference, evaluate
from scf_engine.ingest import fingerprint, load_dataset
from scf_engine.ingest.quarantine import publish_beside
from scf_engine.learners.predict import PD_COLUMNS, predict_all
from scf_engine.pipelines.promote import promote as move_alias
from scf_engine.pipelines.promote import promotion_plan
from scf_engine.tables import write_csv

PAIRS = [("pd_hybrid", "pd_decoupled"), ("pd_decoupled", "pd_propagation"), ("pd_hybrid", "pd_propagation"),
         ("pd_decoupled", "pd_jiangyin"), ("pd_hybrid", "pd_jiangyin"), ("pd_propagation", "pd_jiangyin")]


@dataclass
class CompareResult:
    run_id: str
    overall: pd.DataFrame
    bootstrap: pd.DataFrame
    segment_winners: pd.DataFrame
    report_path: Path
    promoted: dict
    notes: list
    report: object = None  # the dataset's QuarantineReport: rows set aside, counts per file


def load_models(store: tracking.Store, alias: str) -> tuple[dict, dict]:
    """The registered model of every kind behind ``alias`` and ``{kind: {version, run_id}}``."""
    models, versions = {}, {}
    for kind in tracking.MODEL_KINDS:
        model, mv = store.load_model(kind, alias)
        models[kind] = model
        versions[kind] = {"version": mv.version, "run_id": mv.run_id}
    return models, versions


def _training_dataset(last, data_dir, progress):
    params = last.data.params
    data_dir = Path(data_dir or params["dataset_path"])
    ds = load_dataset(data_dir, progress=progress)
    trained_on = json.loads(params["dataset_fingerprint"])
    now = fingerprint(data_dir)
    if trained_on != now:
        changed = sorted(set(trained_on.items()) ^ set(now.items()))
        raise DatasetError(f"{data_dir}: the dataset differs from the one the models were trained on ({changed[0][0]})")
    return ds, data_dir


def evaluate_heldout(ds, models: dict, test_dates, *, n_boot: int = 300, progress=None) -> dict:
    """Every model's PD on the held-out snapshots, metrics, bootstrap differences and
    segment winners (no I/O)."""
    say = progress or (lambda *a, **k: None)
    say("assembling held-out snapshots")
    data = assemble(ds, test_dates, truth=truth_frame(ds))
    add_propagation(data, models["propagation"])
    te = stack(data, test_dates)
    te = te.join(predict_all(models, te).drop(columns=["pd_propagation"]))
    ev = evaluate(te, list(PD_COLUMNS.values()))
    say("bootstrapping differences")
    boot = pd.DataFrame([bootstrap_difference(te, a, b, n_boot=n_boot) for a, b in PAIRS])
    return {"test": te, "evaluation": ev, "bootstrap": boot,
            "winners": segment_winners(ev["segments"], "pd_propagation", "pd_decoupled")}


def compare(*, tracking_uri: str | None = None, data_dir: Path | str | None = None, alias: str = "challenger",
            promote=None, out_dir: Path | str = "out/compare", n_boot: int = 300, audit_log: Path | str | None = None,
            actor: str | None = None, progress=None) -> CompareResult:
    """Compare the tracked models (by alias) and the Jiangyin rule baseline on the held-out
    snapshots of the latest training run; with ``promote`` (kinds or ``all``), make exactly
    the compared versions ``champion``."""
    say = progress or (lambda *a, **k: None)
    kinds, notes = promotion_plan(promote)  # a bad --promote stops here, before any work
    store = tracking.Store(tracking_uri).check()
    last = store.latest_run("train")
    if last is None:
        raise ModelNotFound("no training run found: run `scf train DIR` first")
    ds, data_dir = _training_dataset(last, data_dir, say)
    test_dates = [pd.Timestamp(d) for d in json.loads(last.data.params["test_dates"])]
    models, versions = load_models(store, alias)
    models["jiangyin"] = store.load_logged_model(last.data.tags["baseline_model_uri"])
    res = evaluate_heldout(ds, models, test_dates, n_boot=n_boot, progress=say)
    run_id, path = record_comparison(store, res, versions, alias, last.info.run_id, test_dates, Path(data_dir), Path(out_dir))
    output = publish_beside(ds.report, Path(out_dir))  # the rows the held-out snapshots went without
    access.record(audit_log, actor, "compare", "model comparison on held-out snapshots", ds.firms["firm_id"],
                  inputs=ds.fingerprints, mlflow_run_id=run_id, alias=alias, versions={k: v["version"] for k, v in versions.items()},
                  **({"output": output} if output else {}))
    promoted = {}
    if kinds:
        promoted = move_alias(store, versions, kinds)
        tracking.Run(store, run_id).set_tags({"promoted": json.dumps(promoted), "promotion_notes": json.dumps(notes)})
    return CompareResult(run_id, res["evaluation"]["overall"], res["bootstrap"], res["winners"], path, promoted, notes,
                         ds.report)


def record_comparison(store, res: dict, versions: dict, alias: str, train_run_id: str, test_dates, data_dir: Path,
                      out_dir: Path) -> tuple[str, Path]:
    """The HTML report and tables on disk, and one MLflow run holding them."""
    from scf_engine import report

    ev, pd_cols = res["evaluation"], list(PD_COLUMNS.values())
    model_table = pd.DataFrame([{"model": k, "registered": tracking.registered_name(k), "alias": alias, **v} for k, v in versions.items()]
                               + [{"model": "jiangyin", "registered": "(rule, from training run)", "alias": "-", "version": "-",
                                   "run_id": train_run_id}])
    with store.run("compare", f"compare {alias}", tags={"scf_role": "compare", "train_run_id": train_run_id}) as run:
        run.log_params({"alias": alias, "test_dates": [str(d.date()) for d in test_dates], "train_run_id": train_run_id,
                        "versions": {k: v["version"] for k, v in versions.items()}, "dataset_path": str(data_dir)})
        for _, row in ev["overall"].iterrows():
            run.log_metrics({f"{row['model']}_{k}": row.get(k) for k in ("auc", "ks", "gini", "brier", "coverage", "bayes_fraction")})
        path = out_dir / "comparison.html"
        report.comparison_html(ev, res["test"], pd_cols, res["bootstrap"], test_dates=test_dates, dataset=str(data_dir),
                               models=model_table, run_id=run.id, path=path)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, table in (("overall", ev["overall"]), ("segments", ev["segments"]), ("bootstrap", res["bootstrap"]),
                            ("segment_winners", res["winners"])):
            write_csv(table, out_dir / f"{name}.csv")
        run.log_artifacts(out_dir, "comparison")
    return run.id, path


def segment_winners(segments: pd.DataFrame, a: str, b: str, *, min_defaults: int = 10) -> pd.DataFrame:
    """Segments where both models score enough rows, with the AUC of each and the winner."""
    pv = segments[segments["model"].isin([a, b])].pivot_table(index=["segment", "value"], columns="model", values=["auc", "defaults"])
    # a model with no AUC in any segment (the propagation model on data without a core) has no column
    pv = pv.reindex(columns=pd.MultiIndex.from_product([["auc", "defaults"], [a, b]]))
    out = pd.DataFrame({f"auc_{a}": pv[("auc", a)], f"auc_{b}": pv[("auc", b)],
                        "defaults": pv[("defaults", a)].fillna(0).combine(pv[("defaults", b)].fillna(0), min)}).reset_index()
    out = out[(out["defaults"] >= min_defaults) & out[f"auc_{a}"].notna() & out[f"auc_{b}"].notna()]
    out["winner"] = np.where(out[f"auc_{a}"] > out[f"auc_{b}"], a, b)
    out["margin"] = (out[f"auc_{a}"] - out[f"auc_{b}"]).abs()
    return out.sort_values(["segment", "value"]).reset_index(drop=True)


__all__ = ["CompareResult", "compare", "evaluate_heldout", "load_models", "record_comparison", "segment_winners"]
