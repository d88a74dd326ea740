"""``scf score`` and ``scf explain``: load -> decide -> record.

* **load**: the dataset, the request, the consents, the policies, the ``champion``
  models by alias (never a file lying around) and the score scale saved with them (a
  policy changed since they were validated is refused), the snapshot at the as-of date;
* **decide**: :func:`scf_engine.credit.decide` (pure);
* **record**: for a batch, ``limits.csv``, a memo per scored firm, one MLflow run and one
  audit entry; for ``explain``, the firm's memo and an access entry in the audit log.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from scf_engine import access, faults, policies, publish, tracking
from scf_engine.assemble import SnapshotData, add_propagation, assemble
from scf_engine.credit.decide import BatchOptions, DecisionContext, Decisions, Precomputed, decide, precompute
from scf_engine.credit.encumbrance import earmarks_in_force
from scf_engine.credit.scale import ScoreScale
from scf_engine.dataset import Dataset, as_timestamp
from scf_engine.errors import AuditError, PolicyError, RequestError
from scf_engine.hashing import file_sha256
from scf_engine.ingest.load import load_or_report
from scf_engine.ingest.quarantine import QUARANTINE, QuarantineReport, publish_beside, staged_files
from scf_engine.ingest.requests import Whitelist, read_batch, read_consents, read_whitelist, request_digest, requests_frame
from scf_engine.memo.context import Provenance, memo_contexts, write_memos
from scf_engine.publish import Publication
from scf_engine.pipelines.compare import load_models
from scf_engine.pipelines.train import SCALE_ARTIFACT
from scf_engine.sqlengine import engine_label, feature_engine
from scf_engine.tables import csv_bytes

DEFAULT_AUDIT_LOG = access.DEFAULT_LOG


@dataclass
class ScoreResult:
    limits: pd.DataFrame
    out_path: Path
    memo_dir: Path | None
    run_id: str
    audit_entry: dict
    summary: dict
    report: object = None  # the QuarantineReport: rows set aside (the dataset's, the whitelist's), counts per file


@dataclass
class Loaded:
    """Everything a decision needs, loaded and checked."""

    dataset: Dataset
    data: SnapshotData
    models: dict
    versions: dict
    pols: dict
    scale: ScoreScale
    consents: pd.DataFrame | None
    store: tracking.Store
    report: QuarantineReport | None = None  # rows set aside: the dataset's, and the whitelist's once checked

    def __post_init__(self):
        if self.report is None:
            self.report = self.dataset.report


# ------------------------------------------------------------------------------------ load


def parse_as_of(value) -> pd.Timestamp | None:
    """``--as-of`` as a date, or a one-line error."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError
        return as_timestamp(pd.Timestamp(text))
    except ValueError:
        raise RequestError(f"--as-of {value!r} is not a date (YYYY-MM-DD)") from None


def check_as_of(T: pd.Timestamp | None, ds: Dataset, say) -> pd.Timestamp:
    """The as-of date, stated on every run: the one asked for, or the default (the day
    after the last accepted record; records dated in the future are quarantined, so one
    outlier cannot move it). A date before the data begins has nothing to score on."""
    if T is None:
        T = ds.default_as_of
        say(f"as-of {T.date()} (default: the day after the last accepted record, {ds.last_date.date()})")
        return T
    if T <= ds.first_date:
        raise RequestError(f"--as-of {T.date()} is not after the data begins ({ds.first_date.date()}): "
                           "nothing is known before it")
    if T > ds.default_as_of:  # as scf monitor refuses it
        raise RequestError(f"--as-of {T.date()} is after the data ends ({ds.last_date.date()}; the latest as-of it "
                           f"supports is {ds.default_as_of.date()}): nothing is known yet of the time between, and "
                           "every firm would look as if it had stopped trading")
    say(f"as-of {T.date()}")
    return T


def saved_scale(store: tracking.Store, versions: dict, current) -> ScoreScale:
    """The score scale the champions were validated with (saved with each at training),
    refused when today's ``score_scale.yaml`` scores differently."""
    scales = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, v in versions.items():
            try:
                path = store.download_artifact(v["run_id"], SCALE_ARTIFACT, Path(tmp) / kind)
            except Exception:
                raise PolicyError(f"{tracking.registered_name(kind)} v{v['version']} has no saved score scale "
                                  f"({SCALE_ARTIFACT}): retrain it") from None
            scales[kind] = ScoreScale.load(path, current=current)
    distinct = {s.params_sha256 for s in scales.values()}
    if len(distinct) > 1:
        raise PolicyError("the champion models were validated with different score scales: promote models of one training")
    return next(iter(scales.values()))


def load_for_decisions(data_dir, *, as_of=None, consents=None, tracking_uri=None, alias="champion", progress=None,
                       report_path: Path | None = None, engine=None) -> Loaded:
    """Everything a decision needs; ``report_path``: where the quarantine report goes when
    the dataset turns out unusable (exit 2 still shows what was read and why); ``engine``:
    where the flow features' SQL runs (default the embedded DuckDB)."""
    say = progress or (lambda *a, **k: None)
    pols = policies.load_all()
    if consents is None and pols["limit_policy"].get("require_consent", False):
        raise RequestError("the limit policy requires the firms' data-use authorisation (require_consent: true): "
                           "pass --consents consents.csv")
    T = parse_as_of(as_of)
    store = tracking.Store(tracking_uri).check()  # a server that is down: one line now, not after the work
    for run_id in store.fail_stale_runs():
        say(f"MLflow run {run_id} was left RUNNING by a process that no longer exists: marked FAILED")
    ds = load_or_report(data_dir, report_path, progress=say)
    consents_frame = read_consents(consents) if consents else None
    T = check_as_of(T, ds, say)
    say(f"loading {alias} models")
    models, versions = load_models(store, alias)  # ModelNotFound names the missing one
    scale = saved_scale(store, versions, pols["score_scale"])
    say(f"snapshot at {T.date()}")
    data = assemble(ds, [T], with_labels=False, engine=engine)[T]
    add_propagation({T: data}, models["propagation"])
    return Loaded(ds, data, models, versions, pols, scale, consents_frame, store)


def decide_loaded(loaded: Loaded, requests: pd.DataFrame, options: BatchOptions = BatchOptions(),
                  context: DecisionContext | None = None, precomputed: Precomputed | None = None,
                  outputs=None, earmarks: pd.DataFrame | None = None) -> Decisions:
    """The decision core on what :func:`load_for_decisions` loaded; ``context`` and
    ``precomputed``: the snapshot's :class:`DecisionContext` and per-firm table when the
    caller keeps them (``scf serve``); ``outputs``: the models' PDs and contributions
    computed on Spark; ``earmarks``: receivables other batches on this snapshot lent against."""
    return decide(loaded.data, loaded.models, loaded.pols, requests, dataset=loaded.dataset, consents=loaded.consents,
                  options=options, scale=loaded.scale, context=context, precomputed=precomputed,
                  outputs=outputs, earmarks=earmarks)


def precompute_loaded(loaded: Loaded, context: DecisionContext, firm_ids=None) -> Precomputed:
    """The request-independent part of the decisions of ``firm_ids`` (default: every firm
    of the dataset) on what :func:`load_for_decisions` loaded (see :func:`precompute`)."""
    ids = loaded.dataset.firms["firm_id"] if firm_ids is None else firm_ids
    return precompute(loaded.data, loaded.models, loaded.pols, ids, dataset=loaded.dataset, consents=loaded.consents,
                      scale=loaded.scale, context=context)


def check_still_free(audit_log: Path, as_of: pd.Timestamp, pols: dict, batch_id: str, earmarked: list) -> None:
    """Called under the audit log's lock just before the batch's entry is appended: none of
    the receivables behind this batch's limits (``earmarked``, ``[receivable_id, firm_id]``)
    may have been earmarked meanwhile by another batch decided at the same time (each read
    the log before either wrote). Optimistic, not a lock held through a whole scoring run:
    the loser is refused with one line and publishes nothing, and is simply scored again."""
    if not earmarked:
        return
    taken = read_earmarks(audit_log, as_of, pols, batch_id)
    mine = {(str(r), str(f)) for r, f in earmarked}
    hit = taken.loc[np.array([(r, f) in mine for r, f in zip(taken["receivable_id"], taken["firm_id"])], dtype=bool)]
    clash = sorted(set(hit["receivable_id"]))
    if clash:
        by = sorted(set(hit["batch_id"]))
        raise RequestError(f"{len(clash)} receivable(s) behind this batch's limits (first {clash[0]}) were earmarked by "
                           f"batch {', '.join(by)} while this batch was decided: nothing published; score this batch again")


def read_earmarks(audit_log: Path, as_of: pd.Timestamp, pols: dict, batch_id: str | None) -> pd.DataFrame:
    """The receivables behind the limits of other batches still binding at ``as_of``,
    from the audit log's ``scf score`` entries (see :mod:`scf_engine.credit.encumbrance`
    for why the log is the state). No log yet: none."""
    try:
        entries = access.entries(audit_log)
    except AuditError:
        if Path(audit_log).exists():
            raise
        entries = []
    window = int(pols["limit_policy"].get("earmark_window_days", 0) or 0)
    return earmarks_in_force(entries, as_of, window, batch_id)


def decision_context(loaded: Loaded, earmarks: pd.DataFrame | None = None) -> DecisionContext:
    """What every decision on ``loaded`` shares, computed once (see :class:`DecisionContext`);
    ``earmarks``: receivables behind batches' limits at this snapshot (:func:`read_earmarks`)."""
    return DecisionContext.build(loaded.data, loaded.models, loaded.pols, loaded.dataset, loaded.consents, earmarks)


def read_programme(whitelist: Path | str | None, list_name: str | None) -> Whitelist | None:
    """The whitelist file and the programme picked from it (``--list``), read before any
    work so a wrong file or list name costs one line, not a load; None without a file."""
    if whitelist is None:
        if list_name is not None:
            raise RequestError(f"--list {list_name!r} picks a programme of a whitelist: pass --whitelist whitelist.csv too")
        return None
    return read_whitelist(whitelist, list_name)


def check_programme(loaded: Loaded, whitelist: Whitelist | None, options: BatchOptions = BatchOptions()) -> BatchOptions:
    """``options`` with the programme's firms (名单制), the whitelist checked against the
    loaded dataset: its rows set aside (empty id, repeat, unknown firm) join
    ``loaded.report``, so they are counted, printed and published beside the output as
    the dataset's are, and never count as a firm's data-quality issue."""
    if whitelist is None:
        return options
    wl = whitelist.checked(loaded.dataset.firms["firm_id"])
    bad = wl.violations()
    loaded.report = loaded.report.with_file(wl.file, len(wl.rows), len(wl.rows) - len(bad), bad)
    return replace(options, whitelist=wl.firms, whitelist_list=wl.list_name)


def programme_record(whitelist: Whitelist | None) -> dict:
    """What an audit entry says of the whitelist that answered: the file's sha256 (with
    the other inputs) and the programme picked (None: every row of the file counted)."""
    if whitelist is None:
        return {}
    return {"sha256": whitelist.sha256, "list": whitelist.list_name}


# ----------------------------------------------------------------------------------- score


def score(data_dir: Path | str, batch: Path | str, out: Path | str, *, as_of=None, tracking_uri: str | None = None,
          consents: Path | str | None = None, group_limit: float | None = None, group_by: str = "batch",
          chain_core: str | None = None, memos: bool = True, memo_formats=("html", "pdf", "md"),
          audit_log: Path | str | None = None, actor: str | None = None, alias: str = "champion",
          whitelist: Path | str | None = None, whitelist_list: str | None = None, engine: str = "duckdb",
          spark_master: str | None = None, progress=None) -> ScoreResult:
    """Batch credit (批量授信) with the champion models: limits, memos, MLflow run, audit entry.
    ``whitelist``: the programme's list (名单制); firms off it are declined or reviewed as
    the limit policy says; ``whitelist_list``: the programme whose rows count, in a file of
    several (default: every row). ``engine="spark"``: flow features, the models and their
    SHAP reasons on Spark (``spark_master``), the decisions and records as always."""

    say = progress or (lambda *a, **k: None)
    options = BatchOptions(group_limit=group_limit, group_by=group_by, chain_core=chain_core)
    programme = read_programme(whitelist, whitelist_list)
    out, audit_log = Path(out), access.log_path(audit_log)
    check_writable(out, audit_log)
    requests = read_batch(Path(batch))
    eng = feature_engine(engine, spark_master)
    loaded = load_for_decisions(data_dir, as_of=as_of, consents=consents, tracking_uri=tracking_uri, alias=alias,
                                progress=say, report_path=out.parent / QUARANTINE, engine=eng)
    options = check_programme(loaded, programme, options)
    inputs = {**loaded.dataset.fingerprints, "batch": file_sha256(Path(batch)),
              **({"consents": file_sha256(Path(consents))} if consents else {}),
              **({"whitelist": programme.sha256} if programme else {})}
    batch_id = f"{loaded.data.as_of.strftime('%Y%m%d')}-{request_digest(requests)[:10]}"
    outputs = None
    if eng is not None:
        from scf_engine.pipelines.score_spark import spark_model_outputs
        say("models and SHAP contributions on Spark")
        outputs = spark_model_outputs(eng.spark, loaded.models, loaded.data.table, requests["firm_id"])
    say("decisions")
    earmarks = read_earmarks(audit_log, loaded.data.as_of, loaded.pols, batch_id)
    if len(earmarks):
        say(f"{len(earmarks)} receivable(s) behind other batches' limits on this snapshot are left out")
    decisions = decide_loaded(loaded, requests, options, outputs=outputs, earmarks=earmarks)
    return record_batch(loaded, decisions, out, batch_id=batch_id, inputs=inputs, options=options,
                        paths={"dataset": Path(data_dir), "batch": Path(batch)}, memos=memos, memo_formats=memo_formats,
                        audit_log=audit_log, actor=actor, progress=say, engine=engine_label(eng),
                        whitelist=programme_record(programme))


CHECKPOINT_ENV = faults.KILL_ENV
STAGES = ("staged_limits", "staged_memos", "logged", "appended", "linked", "published")
checkpoint = faults.checkpoint  # the record step's named points (see scf_engine.faults, scf_engine.publish)
KIND = "score"  # outputs live under DIR/.scf-outputs/score/ (scf_engine.publish)


def check_writable(out: Path, audit_log: Path) -> None:
    """Before any work: the output folder and the audit log can be written (a run that
    decides, then cannot record, is the worst outcome). Creates the folders."""
    for what, folder in (("--out", out.parent), ("--audit-log", audit_log.parent)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".scf-write-check-"):
                pass
        except OSError as exc:
            raise RequestError(f"{what} {folder if what == '--out' else audit_log}: cannot write there "
                               f"({exc.strerror or exc})") from None
    if audit_log.exists() and not os.access(audit_log, os.W_OK):
        raise RequestError(f"--audit-log {audit_log}: the audit log is not writable")
    if out.is_dir():
        raise RequestError(f"--out {out}: is a folder; name the limits.csv to write")


def record_batch(loaded: Loaded, decisions: Decisions, out: Path, *, batch_id, inputs, options, paths, memos, memo_formats,
                 audit_log: Path, actor, progress, engine: str = "duckdb", whitelist: dict | None = None) -> ScoreResult:
    """``limits.csv``, memos, the batch's MLflow run and its audit entry, all or nothing.

    The batch is staged in a folder of its own and published by one atomic flip
    (:class:`scf_engine.publish.Publication`): the audit entry records the sha256 of the
    bytes written; ``DIR/limits.csv``, ``DIR/memos`` and ``DIR/audit_entry.json`` are
    links that switch from the previous batch to this one at once. A failure before the
    flip leaves the previous output and the log as they were (and the MLflow run
    FAILED); a kill leaves the previous audited output or the new one with its entry;
    what a killed run left is removed by the next and noted on its entry. ``engine``: what
    computed the features (:func:`scf_engine.sqlengine.engine_label`), on the run and the entry;
    ``whitelist``: the programme's list that answered (:func:`programme_record`), on the entry."""
    result = decisions.limits
    pub = Publication(out.parent, KIND, names=(out.name, "memos", QUARANTINE), keep=loaded.pols["output"]["keep_published"],
                      progress=progress)
    with pub, publish.write_errors(out.parent), loaded.store.run(
            "score", f"batch {batch_id}", tags={"scf_role": "score", "batch_id": batch_id}) as run:
        staged = _stage(loaded, decisions, pub, out.name, run, memos, memo_formats, progress)
        _log_batch(run, loaded, decisions, staged, batch_id, options, paths, engine)
        checkpoint("logged")

        def append(hashes: dict) -> dict:
            return access.record(
                audit_log, actor, "score", "batch credit decision (批量授信)", result["firm_id"].tolist(), inputs=inputs,
                precondition=lambda: check_still_free(audit_log, decisions.as_of, loaded.pols, batch_id, decisions.earmarked),
                name_firms=True, batch_id=batch_id, mlflow_run_id=run.id, as_of=str(decisions.as_of.date()), engine=engine,
                model_versions={k: v["version"] for k, v in loaded.versions.items()},
                policy_hashes=policies.fingerprint(loaded.pols), output=hashes,
                **({"earmarked_receivables": decisions.earmarked} if decisions.earmarked else {}),
                **({"whitelist": whitelist} if whitelist else {}),
                **({"leftover_outputs": pub.leftovers} if pub.leftovers else {}))

        def log_entry(entry: dict, path: Path) -> None:
            run.log_artifact(path, "audit")
            run.set_tags({"audit_head": f"{entry['seq']}:{entry['hash']}"})  # for `scf audit verify --anchor`

        entry = pub.publish(audit_log, append, log_entry)
    memo_dir = pub.link("memos") if staged["memo_dir"] is not None else None
    return ScoreResult(result, out, memo_dir, run.id, entry, decisions.summary, loaded.report)


AUDIT_ENTRY = publish.ENTRY


def verify_output(folder: Path | str, log: Path | str) -> list[str]:
    """What is wrong with an output folder against the audit log (see :func:`scf_engine.publish.verify`)."""
    return publish.verify(folder, log)


def _stage(loaded: Loaded, decisions: Decisions, pub: Publication, name: str, run, memos, memo_formats, progress) -> dict:
    """limits.csv and the memos in the staging folder (their hashes kept by ``pub``)."""
    path = pub.write(name, csv_bytes(decisions.limits))
    for quarantine, data in staged_files(loaded.report).items():  # the contract: rows set aside go beside the output
        pub.write(quarantine, data)
    checkpoint("staged_limits")
    memo_dir = None
    if memos and decisions.scored.any():
        memo_dir = pub.path("memos")
        progress("memos")
        prov = Provenance(loaded.versions, run.id, tracking.EXPERIMENTS["score"], loaded.store.uri)
        write_memos(memo_dir, memo_formats, memo_contexts(decisions, loaded.data, loaded.models, prov, loaded.dataset.report))
        pub.add_folder("memos")
    checkpoint("staged_memos")
    return {"path": path, "memo_dir": memo_dir}


def _log_batch(run, loaded: Loaded, decisions: Decisions, staged: dict, batch_id, options, paths, engine) -> None:
    result, versions = decisions.limits, loaded.versions
    run.log_params({
        "batch_id": batch_id, "as_of": str(decisions.as_of.date()), "dataset_path": str(paths["dataset"].resolve()),
        "batch_file": str(paths["batch"].resolve()), "n_requested": len(result),
        "model_versions": {k: v["version"] for k, v in versions.items()},
        "policy_hashes": policies.fingerprint(loaded.pols), "group_limit": options.group_limit,
        "group_by": options.group_by, "chain_core": decisions.chain_core or "", "feature_engine": engine,
    })
    run.log_metrics(decisions.summary)
    run.log_artifact(staged["path"], "limits")
    run.log_small_table(result.groupby(["decision", "grade"], dropna=False).agg(
        firms=("firm_id", "size"), limit_cny=("limit_cny", "sum")).reset_index().astype({"grade": str}),
        "limits_summary.json")
    if staged["memo_dir"] is not None:
        run.log_artifacts(staged["memo_dir"], "memos")


# --------------------------------------------------------------------------------- explain


@dataclass
class ExplainResult:
    row: pd.Series
    reasons: list
    memo_paths: dict
    audit_entry: dict
    report: object = None  # the dataset's QuarantineReport: rows set aside, counts per file


def explain(data_dir: Path | str, firm_id: str, out: Path | str, *, as_of=None, consents: Path | str | None = None,
            tracking_uri: str | None = None, alias: str = "champion", memo_formats=("html", "pdf", "md"),
            audit_log: Path | str | None = None, actor: str | None = None, progress=None,
            whitelist: Path | str | None = None, whitelist_list: str | None = None) -> ExplainResult:
    """One firm's decision as a batch of one would give it (its real consent, the same
    policy, the programme's whitelist when given, ``whitelist_list`` picking its
    programme; caps shared across a batch cannot bind), its memo, and an access entry in
    the audit log (who read the firm's data, when and why)."""
    programme = read_programme(whitelist, whitelist_list)
    audit_log = access.log_path(audit_log)
    check_writable(Path(out) / "memos" / "memo", audit_log)
    loaded = load_for_decisions(data_dir, as_of=as_of, consents=consents, tracking_uri=tracking_uri, alias=alias,
                                progress=progress, report_path=Path(out) / QUARANTINE)
    # as a batch of one would be decided: receivables behind batches' limits do not back it
    earmarks = read_earmarks(audit_log, loaded.data.as_of, loaded.pols, None)
    options = check_programme(loaded, programme)
    decisions = decide_loaded(loaded, requests_frame(pd.DataFrame({"firm_id": [str(firm_id)]})), options, earmarks=earmarks)
    memo_paths = {}
    if decisions.scored.iloc[0]:
        prov = Provenance(loaded.versions, None, None, loaded.store.uri)
        memo_paths = write_memos(Path(out) / "memos", memo_formats,
                                 memo_contexts(decisions, loaded.data, loaded.models, prov, loaded.dataset.report))[0]
    output = publish_beside(loaded.report, Path(out))  # the rows set aside, beside the memo
    entry = access.record(
        audit_log, actor, "explain", "explain one firm's decision", [str(firm_id)], name_firms=True,
        inputs={**loaded.dataset.fingerprints, **({"consents": file_sha256(Path(consents))} if consents else {}),
                **({"whitelist": programme.sha256} if programme else {})},
        as_of=str(decisions.as_of.date()), model_versions={k: v["version"] for k, v in loaded.versions.items()},
        policy_hashes=policies.fingerprint(loaded.pols), **({"output": output} if output else {}),
        **({"whitelist": programme_record(programme)} if programme else {}))
    return ExplainResult(decisions.limits.iloc[0], list(decisions.reasons.iloc[0]), memo_paths, entry, loaded.report)


__all__ = ["ScoreResult", "ExplainResult", "Loaded", "score", "explain", "load_for_decisions", "decide_loaded", "precompute_loaded",
           "record_batch", "verify_output", "read_programme", "check_programme", "programme_record", "saved_scale", "parse_as_of", "check_as_of", "check_writable", "checkpoint", "STAGES",
           "DEFAULT_AUDIT_LOG"]
