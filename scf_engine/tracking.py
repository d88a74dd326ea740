"""Everything MLflow, and the only module that imports it.

Keeping MLflow behind one module keeps every stage testable without a tracking server
and lets the store change without touching models.

* Store: ``--tracking-uri`` / ``MLFLOW_TRACKING_URI``, else the embedded SQLite store
  ``sqlite:///mlflow.db`` in the working directory (MLflow 3's default; the plain file
  store is refused by recent MLflow), with artifacts in ``mlartifacts/`` beside the
  database file. ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` opens it.
* Explicit, not ambient: a :class:`Store` is made for one URI and every run is a
  :class:`Run` handle that logs by its id; nothing depends on MLflow's implicitly active
  run or on the working directory (beyond a relative URI the user chose).
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
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

EXPERIMENTS = {"train": "scf-train", "compare": "scf-compare", "score": "scf-score", "monitor": "scf-monitor",
               "recalibrate": "scf-recalibrate"}
MODEL_KINDS = ("propagation", "decoupled", "hybrid")
DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACT_ROOT = "mlartifacts"


from scf_engine.errors import ModelNotFound, ScfError, TrackingError  # noqa: E402


def registered_name(kind: str) -> str:
    return f"scf-{kind}"


# A tracking server that went away is reported within seconds, not after MLflow's default
# seven retries with doubling back-off (about four minutes); a bank's own setting wins.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
CHECK_TIMEOUT_S = 5.0


def _mlflow():
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_TRACKING_INSECURE_TLS", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    return mlflow


def resolve_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def artifact_root(uri: str) -> str | None:
    """Where a SQLite store keeps artifacts: ``mlartifacts/`` beside the database file
    (a server decides for itself: None)."""
    if not uri.startswith("sqlite:"):
        return None
    db = Path(uri.split("sqlite:///", 1)[1]) if "sqlite:///" in uri else Path("mlflow.db")
    return (db.expanduser().resolve().parent / ARTIFACT_ROOT).as_uri()


class Store:
    """One tracking store (and its model registry), by URI."""

    def __init__(self, tracking_uri: str | None = None):
        self.uri = resolve_uri(tracking_uri)

    def _activate(self):
        """Point MLflow's own module-level functions (model logging and loading) at this
        store; every call that needs them goes through here."""
        mlflow = _mlflow()
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        return mlflow

    def check(self) -> "Store":
        """Reach the store now, with a short timeout, so a server that is down or a URI
        with a typo is one line at the start of a command (naming the URI), not a
        traceback after minutes of work or a model "not registered"."""
        if self.uri.startswith(("http://", "https://")):
            import urllib.request

            try:
                with urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=CHECK_TIMEOUT_S) as r:
                    if r.status == 200:
                        return self
                    problem = f"HTTP {r.status}"
            except Exception as exc:  # URLError, timeout, connection refused, HTTPError
                problem = str(getattr(exc, "reason", None) or exc).splitlines()[0] or type(exc).__name__
            raise TrackingError(f"tracking server {self.uri} cannot be reached ({problem}): start it or pass "
                                "another --tracking-uri")
        try:
            self.client.search_experiments(max_results=1)
        except Exception as exc:
            raise TrackingError(f"tracking store {self.uri} cannot be opened: {str(exc).splitlines()[0][:300]}") from None
        return self

    @property
    def client(self):
        return _mlflow().MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def experiment_id(self, kind: str) -> str:
        name = EXPERIMENTS[kind]
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        root = artifact_root(self.uri)
        return self.client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)

    @contextmanager
    def run(self, kind: str, name: str, *, tags: dict | None = None, parent: "Run | None" = None):
        """A run in the experiment of ``kind`` (train / compare / score / monitor), a child
        of ``parent`` when given; yields its :class:`Run`. A run left by an exception is
        marked FAILED, never left RUNNING."""
        mlflow = self._activate()
        if parent is not None and (mlflow.active_run() is None or mlflow.active_run().info.run_id != parent.id):
            raise RuntimeError("a child run needs its parent open")
        with tracking_errors(self.uri, "start a run"):
            r = mlflow.start_run(experiment_id=self.experiment_id(kind), run_name=name, nested=parent is not None,
                                 tags={**(tags or {}), **owner_tags()})
        try:
            yield Run(self, r.info.run_id)
        except BaseException as exc:
            try:  # mlflow pops its active-run stack before telling the store, so a dead store leaves no run open here
                mlflow.end_run("FAILED")
            except Exception:
                pass  # the store is gone: the run stays RUNNING there; the error that stopped us is what matters
            if isinstance(exc, Exception) and not isinstance(exc, ScfError) and _is_tracking_failure(exc):
                raise TrackingError(f"tracking store {self.uri} failed during the run: {_first_line(exc)}") from None
            raise
        with tracking_errors(self.uri, "finish the run"):
            mlflow.end_run("FINISHED")

    def fail_stale_runs(self) -> list[str]:
        """Mark FAILED this engine's runs left RUNNING by a process on this host that no
        longer exists (a ``kill -9``, a power cut): MLflow cannot know the run ended, so
        the next ``scf score`` / ``scf train`` against the store says so. Runs of live
        processes and of other hosts are left alone. Returns the run ids marked."""
        from scf_engine import owner

        marked = []
        with tracking_errors(self.uri, "look for runs left running"):
            client = self.client
            ids = [e.experiment_id for e in (client.get_experiment_by_name(n) for n in EXPERIMENTS.values()) if e]
            if not ids:
                return marked
            flt = f"attributes.status = 'RUNNING' and tags.{OWNER_TAG}host = '{owner.me()['host']}'"
            for run in client.search_runs(ids, filter_string=flt, max_results=1000):
                who = {k: run.data.tags.get(OWNER_TAG + k, "") for k in ("host", "pid", "started")}
                if owner.is_dead(who):
                    client.set_tag(run.info.run_id, "scf_failed_reason",
                                   f"process {who['pid']} on {who['host']} ended without finishing the run")
                    client.set_terminated(run.info.run_id, "FAILED")
                    marked.append(run.info.run_id)
        return marked

    # -- registry ----------------------------------------------------------------------
    def load_model(self, kind: str, alias: str = "champion"):
        """The registered model of ``kind`` by alias and its version record."""
        self._activate()
        return load_model(kind, alias)

    def load_logged_model(self, model_uri: str):
        self._activate()
        return load_logged_model(model_uri)

    def model_version(self, kind: str, alias: str) -> dict | None:
        """``{name, version, run_id, alias}`` of the version behind ``alias``, or None."""
        try:
            mv = self.client.get_model_version_by_alias(registered_name(kind), alias)
        except Exception:
            return None
        return {"name": mv.name, "version": mv.version, "run_id": mv.run_id, "alias": alias}

    def set_alias(self, kind: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(registered_name(kind), alias, str(version))

    # -- runs --------------------------------------------------------------------------
    def latest_run(self, kind: str, *, parent_only: bool = True):
        """The newest finished run of the experiment (train parents by default)."""
        exp = self.client.get_experiment_by_name(EXPERIMENTS[kind])
        if exp is None:
            return None
        flt = "attributes.status = 'FINISHED'"
        if parent_only:
            flt += " and tags.scf_role = 'parent'"
        runs = self.client.search_runs([exp.experiment_id], filter_string=flt, order_by=["attributes.start_time DESC"],
                                       max_results=1)
        return runs[0] if runs else None

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def count_runs(self, kind: str) -> int:
        exp = self.client.get_experiment_by_name(EXPERIMENTS[kind])
        if exp is None:
            return 0
        return len(self.client.search_runs([exp.experiment_id], max_results=5000))

    def download_artifact(self, run_id: str, path: str, dst: Path | str) -> Path:
        mlflow = self._activate()
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst),
                                                        tracking_uri=self.uri))


OWNER_TAG = "scf_owner_"


def owner_tags() -> dict:
    """The process a run belongs to (host, pid, start time), so a later run can tell a
    run whose process was killed from one still in progress."""
    from scf_engine import owner

    return {OWNER_TAG + k: v for k, v in owner.me().items()}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def _is_tracking_failure(exc: BaseException) -> bool:
    """An exception raised by MLflow's client or the HTTP layer under it (not a bug in the
    engine): these say the store could not do what was asked."""
    mod = type(exc).__module__ or ""
    return mod.startswith(("mlflow", "requests", "urllib3", "sqlalchemy")) or isinstance(exc, (ConnectionError, TimeoutError))


@contextmanager
def tracking_errors(uri: str, what: str):
    """Turn a tracking-store failure inside the block into one TrackingError naming the URI."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, ScfError) or not _is_tracking_failure(exc):
            raise
        raise TrackingError(f"tracking store {uri}: could not {what}: {_first_line(exc)}") from None


class Run:
    """One MLflow run, logged to by its id."""

    def __init__(self, store: Store, run_id: str):
        self.store, self.id = store, run_id

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        clean = [Param(k, (json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else str(v))[:6000])
                 for k, v in params.items()]
        self.store.client.log_batch(self.id, params=clean)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        clean = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None and pd.notna(v)]
        self.store.client.log_batch(self.id, metrics=clean)

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        self.store.client.log_batch(self.id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self.store.client.log_artifact(self.id, str(path), artifact_path=artifact_path)

    def log_artifacts(self, folder: Path | str, artifact_path: str | None = None) -> None:
        self.store.client.log_artifacts(self.id, str(folder), artifact_path=artifact_path)

    def log_frame(self, df: pd.DataFrame, name: str, artifact_path: str | None = None) -> None:
        """A table as a CSV artifact (large tables never go through log_table: pitfalls.md)."""
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            if name.endswith(".parquet"):
                df.to_parquet(p, index=False)
            else:
                from scf_engine.tables import write_csv

                write_csv(df, p)
            self.log_artifact(p, artifact_path)

    def log_small_table(self, df: pd.DataFrame, name: str) -> None:
        """A small summary table through log_table (shown in the UI)."""
        self.store.client.log_table(self.id, df.reset_index(drop=True), artifact_file=name)

    def log_figure(self, fig, name: str) -> None:
        self.store.client.log_figure(self.id, fig, name)

    def log_model(self, model, kind: str, *, input_example: pd.DataFrame, output_example, register: bool = True) -> str | None:
        """Log ``model`` in this run (which must be the innermost open run) and register it
        as a new ``challenger`` version of its kind; returns the version (or the logged
        model's URI when not registered)."""
        active = self.store._activate().active_run()
        if active is None or active.info.run_id != self.id:
            raise RuntimeError("models are logged into the innermost open run")
        return log_model(model, kind, input_example=input_example, output_example=output_example, register=register)


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


