"""Everything MLflow, and the only module that imports it.

Keeping MLflow behind one module keeps every stage testable without a tracking server
and lets the store change without touching models.

* Store: ``--tracking-uri`` / ``MLFLOW_TRACKING_URI``, else the embedded SQLite store
  ``sqlite:///mlflow.db`` in the working directory (MLflow 3's default; the plain file
  store is refused by recent MLflow), with artifacts under ``./mlartifacts``.
  ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` opens it.
* Experiments: ``scf-train`` (one parent run per ``scf train``, one child per model),
  ``scf-compare``, ``scf-score`` (one run per batch).
* Registry: one registered model per kind (``scf-propagation``, ``scf-decoupled``,
  ``scf-hybrid``); aliases, not stages (deprecated in MLflow 3): every training sets
  ``challenger``; ``scf compare --promote KIND`` moves ``champion``.
* Models are logged as MLflow pyfunc models written as code
  (``scf_engine/learners/pyfunc_model.py``, standalone: it imports nothing from the
  engine) whose artifacts are the model's plain state (:mod:`scf_engine.learners.state`:
  JSON, and LightGBM's booster text), with a signature and an input example. The state
  names no Python class, so moving or renaming an engine class never breaks a registered
  version, as a pickle would. Loaded back here, the state rebuilds the engine's estimator,
  which gives exactly the same PDs.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

EXPERIMENTS = {"train": "scf-train", "compare": "scf-compare", "score": "scf-score"}
MODEL_KINDS = ("propagation", "decoupled", "hybrid")
DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACT_ROOT = "mlartifacts"


class ModelNotFound(LookupError):
    """No registered model (or training run) where a command needs one: the commands
    report it in one line with the unusable-input exit code."""


def registered_name(kind: str) -> str:
    return f"scf-{kind}"


def _mlflow():
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_TRACKING_INSECURE_TLS", "false")
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    return mlflow


def configure(tracking_uri: str | None = None) -> str:
    """Point MLflow at ``tracking_uri`` (or the environment, or ./mlflow.db); returns it."""
    mlflow = _mlflow()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(kind: str) -> str:
    mlflow = _mlflow()
    name = EXPERIMENTS[kind]
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = mlflow.get_tracking_uri()
    location = None
    if uri.startswith("sqlite:"):
        location = (Path.cwd() / ARTIFACT_ROOT / name).resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@contextmanager
def run(kind: str, name: str, *, tags: dict | None = None, nested: bool = False):
    """A run in the experiment of ``kind`` (train / compare / score); yields the run id."""
    mlflow = _mlflow()
    exp = experiment_id(kind)
    with mlflow.start_run(experiment_id=exp, run_name=name, nested=nested, tags=tags or {}) as r:
        yield r.info.run_id


def log_params(params: dict) -> None:
    mlflow = _mlflow()
    clean = {k: (json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else str(v))[:6000] for k, v in params.items()}
    mlflow.log_params(clean)


def log_metrics(metrics: dict, step: int | None = None) -> None:
    mlflow = _mlflow()
    clean = {k: float(v) for k, v in metrics.items() if v is not None and pd.notna(v)}
    mlflow.log_metrics(clean, step=step)


def set_tags(tags: dict) -> None:
    _mlflow().set_tags({k: str(v) for k, v in tags.items()})


def log_artifact(path: Path | str, artifact_path: str | None = None) -> None:
    _mlflow().log_artifact(str(path), artifact_path=artifact_path)


def log_artifacts(folder: Path | str, artifact_path: str | None = None) -> None:
    _mlflow().log_artifacts(str(folder), artifact_path=artifact_path)


def log_frame(df: pd.DataFrame, name: str, artifact_path: str | None = None) -> None:
    """A table as a CSV artifact (large tables never go through log_table: pitfalls.md)."""
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / name
        if name.endswith(".parquet"):
            df.to_parquet(p, index=False)
        else:
            df.to_csv(p, index=False)
        log_artifact(p, artifact_path)


def log_small_table(df: pd.DataFrame, name: str) -> None:
    """A small summary table through mlflow.log_table (shown in the UI)."""
    _mlflow().log_table(df.reset_index(drop=True), artifact_file=name)


def log_figure(fig, name: str) -> None:
    _mlflow().log_figure(fig, name)


def log_model(model, kind: str, *, input_example: pd.DataFrame, output_example, register: bool = True) -> str | None:
    """Log ``model`` in the active run as a pyfunc model from code over its plain state,
    and register it as a new version of its kind with the alias ``challenger``; returns
    the version (or, unregistered, the logged model's URI)."""
    mlflow = _mlflow()
    from mlflow.models import infer_signature

    from scf_engine.learners import pyfunc_model, state

    if state.kind_of(model) != kind:
        raise ValueError(f"a {type(model).__name__} is not a model of kind {kind!r}")
    # Integer columns would make the signature refuse a missing value at inference (a firm
    # with no flows in a window): declare them as doubles, as MLflow itself advises.
    ints = input_example.select_dtypes(include=["integer"]).columns
    input_example = input_example.astype({c: "float64" for c in ints})
    signature = infer_signature(input_example, output_example)
    with tempfile.TemporaryDirectory() as tmp:
        files = state.save_state(model, tmp)
        info = mlflow.pyfunc.log_model(
            name=f"model-{kind}", python_model=str(Path(pyfunc_model.__file__).resolve()),
            artifacts={name: str(path) for name, path in files.items()},
            signature=signature, input_example=input_example, pip_requirements=_requirements(),
            registered_model_name=registered_name(kind) if register else None,
        )
    if not register:
        return info.model_uri
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name='{registered_name(kind)}' and run_id='{info.run_id}'")
    version = max(int(v.version) for v in versions)
    client.set_registered_model_alias(registered_name(kind), "challenger", str(version))
    return str(version)


def _requirements() -> list[str]:
    """What the served model imports (mlflow itself is added by MLflow): not the engine."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("lightgbm", "numpy", "pandas"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return out


def load_model(kind: str, alias: str = "champion"):
    """The registered model of ``kind`` by alias (``models:/scf-KIND@alias``), rebuilt as
    the engine's estimator from its state, and its version."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(registered_name(kind), alias)
    except Exception as exc:  # the registry raises RestException / MlflowException
        raise ModelNotFound(f"no {alias} model registered for {registered_name(kind)}: {str(exc).splitlines()[0]}") from None
    model = _load_estimator(f"models:/{registered_name(kind)}/{mv.version}")  # the version the alias named
    return model, mv


def load_logged_model(model_uri: str):
    """A model logged but not registered (e.g. the rule baseline of a training run)."""
    return _load_estimator(model_uri)


def _load_estimator(model_uri: str):
    """The engine's estimator from a logged model's state artifacts (no engine code runs
    from the store). A version logged before the state format (sklearn flavour, a pickle)
    still loads through MLflow's sklearn flavour."""
    mlflow = _mlflow()
    from mlflow.models import Model

    from scf_engine.learners import state

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        flavors = Model.load(str(local / "MLmodel")).flavors
        artifacts = flavors.get("python_function", {}).get("artifacts") or {}
        if "state" in artifacts:
            booster = artifacts.get("booster")
            return state.load(local / artifacts["state"]["path"], local / booster["path"] if booster else None)
        if "sklearn" in flavors:
            return mlflow.sklearn.load_model(str(local))
    raise ModelNotFound(f"{model_uri}: not an scf-engine model (no state artifact)")


def set_alias(kind: str, alias: str, version: str) -> None:
    _mlflow().MlflowClient().set_registered_model_alias(registered_name(kind), alias, str(version))


def model_version_info(kind: str, alias: str) -> dict | None:
    client = _mlflow().MlflowClient()
    try:
        mv = client.get_model_version_by_alias(registered_name(kind), alias)
    except Exception:
        return None
    return {"name": mv.name, "version": mv.version, "run_id": mv.run_id, "alias": alias}


def latest_run(kind: str, *, parent_only: bool = True):
    """The newest finished run of the experiment (train parents by default)."""
    mlflow = _mlflow()
    exp = mlflow.get_experiment_by_name(EXPERIMENTS[kind])
    if exp is None:
        return None
    flt = "attributes.status = 'FINISHED'"
    if parent_only:
        flt += " and tags.scf_role = 'parent'"
    runs = mlflow.MlflowClient().search_runs([exp.experiment_id], filter_string=flt, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def get_run(run_id: str):
    return _mlflow().MlflowClient().get_run(run_id)


def download_artifact(run_id: str, path: str, dst: Path | str) -> Path:
    mlflow = _mlflow()
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst)))


def active_run_id() -> str | None:
    r = _mlflow().active_run()
    return r.info.run_id if r else None


def count_runs(kind: str) -> int:
    mlflow = _mlflow()
    exp = mlflow.get_experiment_by_name(EXPERIMENTS[kind])
    if exp is None:
        return 0
    return len(mlflow.MlflowClient().search_runs([exp.experiment_id], max_results=5000))
