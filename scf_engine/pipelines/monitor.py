"""``scf monitor``: after lending (贷后), load -> re-score and judge -> record.

* **load**: the dataset, the champion models and their saved score scale (as
  ``scf score``), the lent portfolio (firms with a limit > 0 in a batch's ``limits.csv``,
  given as a file or taken from the batch's MLflow run), the consents, the policies;
* **compute**: at each as-of, the SAME decision core as the batch re-scores every firm;
  the signals of ``models/monitoring.yaml`` fire with their evidence; levels, actions and
  credit repair follow (:mod:`scf_engine.monitor`);
* **record**: ``portfolio.csv`` and ``alerts.csv`` staged, one MLflow run in
  ``scf-monitor`` (metrics, both CSVs as artifacts), one audit entry, then published:
  all or nothing, as a batch.
"""

from __future__ import annotations

import contextvars
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from scf_engine import access, policies, publish, tracking
from scf_engine.faults import checkpoint
from scf_engine.assemble import add_propagation, assemble
from scf_engine.credit.consent import consent_status
from scf_engine.credit.decide import DecisionContext, finalize, precompute, reason_text
from scf_engine.duck import connect
from scf_engine.errors import RequestError, TrackingError
from scf_engine.features.closed_loop import firm_evidence
from scf_engine.features.flows import FlowPass
from scf_engine.hashing import file_sha256
from scf_engine.learners.treeshap import remembering
from scf_engine.membership import arrow_text, isin
from scf_engine.ingest.load import load_or_report
from scf_engine.ingest.quarantine import QUARANTINE, staged_files  # the dataset's rows set aside (published with the pass)
from scf_engine.ingest.requests import read_consents, requests_frame
from scf_engine.monitor.drift import REFERENCE_ARTIFACT, drift_rows, vintage_rows
from scf_engine.monitor.judge import (PORTFOLIO_COLUMNS, apply_repair, join_reasons, needs_drivers, portfolio_rows,
                                     unexplained_reason)
from scf_engine.monitor.report import render_report
from scf_engine.monitor.signals import (ALERTS_COLUMNS, authenticity_seen, core_distress, fire, new_authenticity,
                                       policy_columns)
from scf_engine.pipelines.compare import load_models
from scf_engine.pipelines.score import check_writable, parse_as_of, saved_scale
from scf_engine.publish import Publication
from scf_engine.release import frozen, give_back, release_arrow
from scf_engine.tables import csv_bytes

PORTFOLIO_NEEDS = ("firm_id", "as_of", "pd", "grade", "limit_cny")


@dataclass
class MonitorResult:
    portfolio: pd.DataFrame
    alerts: pd.DataFrame
    quarantined: pd.DataFrame
    out: Path
    run_id: str
    audit_entry: dict
    summary: dict
    drift: pd.DataFrame | None = None
    report: object = None  # the dataset's QuarantineReport: rows set aside, counts per file


# ------------------------------------------------------------------------------ portfolio


def read_portfolio(path: Path) -> pd.DataFrame:
    """The lent firms of a batch's ``limits.csv`` (limit > 0), or a one-line error."""
    try:
        df = pd.read_csv(path, dtype={"firm_id": str, "as_of": str, "grade": str}, keep_default_na=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise RequestError(f"--portfolio {path}: cannot be read ({str(exc).splitlines()[0][:200]})") from None
    missing = [c for c in PORTFOLIO_NEEDS if c not in df.columns]
    if missing:
        raise RequestError(f"--portfolio {path}: missing column {missing[0]!r} (a batch's limits.csv has "
                           f"{', '.join(PORTFOLIO_NEEDS)})")
    df["_line"] = np.arange(2, len(df) + 2)
    df["limit_cny"] = pd.to_numeric(df["limit_cny"], errors="coerce")
    lent = df[df["limit_cny"] > 0].drop_duplicates("firm_id").copy()
    if lent.empty:
        raise RequestError(f"--portfolio {path}: no firm has a limit > 0: nothing to monitor")
    lent["batch_as_of"] = pd.to_datetime(lent["as_of"], errors="coerce")
    if lent["batch_as_of"].isna().any():
        raise RequestError(f"--portfolio {path}: as_of on line {int(lent.loc[lent['batch_as_of'].isna(), '_line'].iloc[0])} "
                           "is not a date")
    return lent


def portfolio_from_run(store: tracking.Store, run_id: str, tmp: Path) -> Path:
    """The limits.csv logged by a batch's MLflow run (``--batch-run``)."""
    try:
        run = store.get_run(run_id)
    except Exception:
        raise TrackingError(f"--batch-run {run_id}: no such run in {store.uri}") from None
    if run.data.tags.get("scf_role") != "score":
        raise RequestError(f"--batch-run {run_id}: not a batch (scf score) run")
    folder = store.download_artifact(run_id, "limits", tmp)
    found = sorted(Path(folder).glob("*.csv"))
    if not found:
        raise TrackingError(f"--batch-run {run_id}: the run logged no limits.csv")
    return found[0]


def split_known(lent: pd.DataFrame, ds) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Firms of the portfolio the dataset knows, and a quarantine row per one it does
    not (a portfolio from another dataset must not pass silently)."""
    known = isin(lent["firm_id"], ds.firms["firm_id"])
    q = pd.DataFrame({"file": "portfolio", "line": lent.loc[~known, "_line"].to_numpy(), "column": "firm_id",
                      "firm_id": lent.loc[~known, "firm_id"].to_numpy(), "reason": "unknown firm: not in firms"})
    return lent[known], q


# ------------------------------------------------------------------------------- monitor


def monitor(data_dir, out, *, as_of: list, portfolio: Path | str | None = None, batch_run: str | None = None,
            consents: Path | str | None = None, tracking_uri: str | None = None, alias: str = "champion",
            audit_log: Path | str | None = None, actor: str | None = None, progress=None) -> MonitorResult:
    """Re-score the lent portfolio at each as-of and write portfolio.csv and alerts.csv."""
    say = progress or (lambda *a, **k: None)
    if (portfolio is None) == (batch_run is None):
        raise RequestError("give the portfolio as --portfolio limits.csv or --batch-run RUN_ID (one of them)")
    dates = sorted({parse_as_of(t) for t in as_of or []})
    if not dates:
        raise RequestError("--as-of: give at least one monitoring date")
    out, audit_log = Path(out), access.log_path(audit_log)
    check_writable(out / "portfolio.csv", audit_log)
    pols = policies.load_all()
    store = tracking.Store(tracking_uri).check()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(portfolio) if portfolio else portfolio_from_run(store, batch_run, Path(tmp))
        lent, port_sha = read_portfolio(path), file_sha256(path)
    batch_T = lent["batch_as_of"].max()
    early = [t for t in dates if t <= batch_T]
    if early:
        raise RequestError(f"--as-of {early[0].date()} is not after the batch's as-of {batch_T.date()}: "
                           "monitoring looks at what happened after lending")
    if consents is None and pols["limit_policy"].get("require_consent", False):
        raise RequestError("the limit policy requires the firms' data-use authorisation (require_consent: true): "
                           "pass --consents consents.csv")
    ds = load_or_report(data_dir, out / QUARANTINE, progress=say)
    late = [t for t in dates if t > ds.default_as_of]
    if late:
        raise RequestError(f"--as-of {late[0].date()} is after the data ends ({ds.last_date.date()}): nothing is known yet")
    give_back()  # what loading freed (the files as read, their checks) before the pass builds on it
    lean_flows(ds, dates[-1])
    give_back()
    lent, quarantined = split_known(lent, ds)
    if lent.empty:
        raise RequestError(f"--portfolio {path}: none of its {len(quarantined)} lent firms is in this dataset's firms")
    cons = read_consents(consents) if consents else None
    say("loading champion models")
    models, versions = load_models(store, alias)
    scale = saved_scale(store, versions, pols["score_scale"])
    ref = drift_reference(store, versions)
    frames = compute(ds, lent, dates, batch_T, models, pols, cons, scale, say, ref, own_flows=True)
    inputs = {**ds.fingerprints, "portfolio": port_sha, **({"consents": file_sha256(Path(consents))} if consents else {})}
    memo_dir = Path(portfolio).parent / "memos" if portfolio else None
    return record(store, frames, quarantined, out, dates=dates, batch_T=batch_T, versions=versions, pols=pols,
                  inputs=inputs, batch_run=batch_run, audit_log=audit_log, actor=actor, memo_dir=memo_dir,
                  progress=say, report=ds.report)


def lean_flows(ds, until: pd.Timestamp | None = None) -> None:
    """``ds.flows`` made the flows the pass can read, in a compact copy: the pass holds
    them for its whole length (each as-of's snapshot slices them), so what it does not
    read is memory held for nothing.

    * no ``txn_id``: nothing the pass computes reads the transaction id (the features,
      the chain, the closed-loop checks and the signals key flows by position and
      party), yet as text it was a fifth of the frame (~0.85 GB at the issue's 100,000
      firms);
    * only the flows booked before ``until`` (the pass's last as-of): every as-of sees
      only flows booked before its own date (:meth:`scf_engine.dataset.Dataset.as_of`),
      so later ones are never read (12.4 of 43.6 million flows on the bench's 100,000-firm
      world, whose data runs a year past its last date); the checks on the dates
      (``default_as_of``) are made on the whole dataset first;
    * ``purpose`` as a category (one of the contract's few purposes: a byte a row
      instead of ~15 as text, 0.66 GB at 100,000 firms); every reader compares it with
      a purpose name, which a category answers the same.

    The dataset's fingerprints are of the files, so the record is unchanged. The copy is
    compact (a slice would keep the whole frame's buffers alive) and made column by
    column, each old column let go as its copy is made, so the old frame and the new are
    never both whole in memory."""
    flows, ds.flows = ds.flows.drop(columns=["txn_id"], errors="ignore"), None
    keep = slice(None)
    if until is not None:
        booked = flows["booked_on"]
        if booked.is_monotonic_increasing:
            keep = slice(0, int(np.searchsorted(booked.to_numpy(), np.datetime64(until, "s"), "left")))
        else:
            keep = (booked < until).to_numpy()
        del booked
    ds.flows = _rebuilt(flows, keep, flows.index[keep].copy(),
                        lambda c, col: col.astype("category") if c == "purpose" else _compact(col))


def chain_flows(ds) -> None:
    """``ds.flows`` cut, once the pass's legs are built (:class:`FlowPass`: every as-of's
    flow features read those), to the flows the rest of the pass still reads: each
    as-of's chain (:func:`scf_engine.graph.build.build_edges`) reads trade flows with a
    firm of the dataset on one side or both, and nothing else in the pass reads flows
    unless the dataset has financings (the closed-loop checks read trade, other payments
    and loan drawdowns with their accounts: then the flows are left whole). The chain's
    rows are the same, in the same order (a snapshot's flows are a slice of these), so
    its answers are too. Why: the party ids of every flow are the largest thing the pass
    held (1.46 GiB of text at the bench's 100,000 firms, 31 million flows), under every
    as-of's peak, for the chain's sake alone; the chain reads a part of them."""
    if getattr(ds, "has_financings", False):
        return
    flows, ds.flows = ds.flows, None
    firm = pd.Index(ds.firms["firm_id"].astype(str))
    keep = (flows["purpose"] == "trade").to_numpy() & (isin(flows["payer_id"], firm) | isin(flows["payee_id"], firm))
    index = pd.RangeIndex(int(keep.sum()))  # nothing reads the flows' labels: a snapshot renumbers them
    # a mask's rows are copied into buffers of their own: no _compact needed
    ds.flows = _rebuilt(flows, keep, index, lambda c, col: col.set_axis(index))


def _rebuilt(flows: pd.DataFrame, keep, index: pd.Index, copy) -> pd.DataFrame:
    """``flows``' rows ``keep`` (a slice or a boolean mask) as a new frame on ``index``,
    column by column: each column is popped from ``flows`` and let go as its copy
    (``copy(name, rows)``) is made, so the old frame and the new are never both whole in
    memory (:func:`lean_flows`, :func:`chain_flows`)."""
    out = {}
    for c in list(flows.columns):
        out[c] = copy(c, flows.pop(c).iloc[keep])
        release_arrow()  # the old column's buffers, before the next copy
    return pd.DataFrame(out, index=index)


def _compact(col: pd.Series) -> pd.Series:
    """A copy of ``col`` that holds only its own rows: text held by Arrow (pandas'
    ``str``) is copied into new buffers (``Series.copy`` shares the immutable Arrow
    buffers, so a copied slice kept the whole column alive). Its chunks are concatenated,
    which copies only the rows each slice holds: ``take`` combined the chunks into one
    array first (as ``pa.array`` of the column does) and then copied that again, ~1.6 GB
    above the frame for a column of 21 million party ids."""
    arr = arrow_text(col)  # its chunks as they are (pa.array would combine them: a copy)
    if arr is not None:
        chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
        one = pa.concat_arrays(chunks) if chunks else pa.array([], arr.type)
        return pd.Series(pa.chunked_array([one], type=arr.type), dtype=col.dtype, index=col.index)
    return col.copy(deep=True)


def drift_reference(store, versions) -> dict | None:
    """The training reference saved with the champion hybrid's run (None for a model
    trained before references were saved: drift is then not measured, and said so)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = store.download_artifact(versions["hybrid"]["run_id"], REFERENCE_ARTIFACT, tmp)
        except Exception:
            return None
        return json.loads(Path(path).read_text())


def compute(ds, lent, dates, batch_T, models, pols, cons, scale, say, ref=None, *, shared: bool = True,
            narrow: bool = True, own_flows: bool = False) -> tuple:
    """portfolio.csv, alerts.csv and drift rows over every as-of (pure apart from the
    progress).

    Each as-of snapshots the WHOLE world, not only the lent firms: a lent firm's answer
    reads the others' at the same date (its industry rank features are percentiles among
    every scorable firm of its industry, the reasons quote industry medians over every
    scorable firm, its chain features and propagated core credit come from the whole
    chain, its ring features from its counterparties' money), so features for the
    portfolio alone would give other answers. What is done once per pass, not per as-of:
    the batch snapshot, the batch's authenticity alerts; per as-of the signals are one
    query (:func:`scf_engine.monitor.signals.holds_all`), and only the batch's snapshot and
    the current one are held (:func:`snapshot_at`).

    ``shared`` (the default): the flows' legs are built once for the batch date and every
    as-of (:class:`scf_engine.features.flows.FlowPass`) on one DuckDB connection, and each
    date's features read theirs from them; ``shared=False`` builds each date on its own as
    ``scf score`` does (the same answers: ``tests/test_monitor.py`` compares the two).
    ``narrow`` (the default): each as-of's monitor frame holds only the feature columns
    the policy's rules, its evidence templates and the drift read (:func:`frame_needs`);
    ``narrow=False``: every feature now and at the batch (the same answers, compared too).
    ``own_flows`` (``scf monitor``'s: the dataset is the pass's own): once the shared legs
    are built, ``ds.flows`` is cut to what the rest of the pass reads (:func:`chain_flows`);
    by default the caller's dataset is left as it was.

    The dataset, the models and the libraries are out of the garbage collector's walks
    for the pass (:func:`scf_engine.release.frozen`): each date gives memory back with a
    full collection, which walked all of them every time. Shared, each date's chain is
    built on a thread beside its flow features (:func:`scf_engine.assemble.chain_and_table`:
    the same answers; the features' SQL lets the GIL go, the chain's pandas and networkx
    hold it, so the second core works while the chain is built)."""
    con = connect() if shared else None
    try:
        # remembering: the dates' SHAP asks LightGBM only for split patterns no earlier date had (same bits)
        with frozen(), remembering(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="scf-chain") as side:
            flow_pass = FlowPass(con, ds.flows, ds.firms["firm_id"], [batch_T, *dates]) if shared else None
            if shared and own_flows:
                chain_flows(ds)
                give_back()
            return _passes(ds, lent, dates, batch_T, models, pols, cons, scale, say, ref, con, flow_pass,
                           side if shared else None, frame_needs(pols["monitoring"], ref) if narrow else None)
    finally:
        if con is not None:
            con.close()


def explain_scope(policy) -> str:
    """monitoring.yaml's ``explain.scope``: ``all`` (every lent firm's SHAP reasons at
    every as-of) or ``changed`` (only the firms :func:`scf_engine.monitor.judge.needs_drivers`
    flags); ``all`` when the policy does not say."""
    return str((policies.as_data(policy).get("explain") or {}).get("scope", "all"))


def _passes(ds, lent, dates, batch_T, models, pols, cons, scale, say, ref, con, flow_pass, side=None,
            needs: set | None = None) -> tuple:
    """:func:`compute`'s loop: the batch's snapshot, then one as-of after another, each
    judged on a thread of its own while the next as-of's snapshot is built (the same
    answers: the judges run one at a time, in date order). Why now: the overlap was
    measured before (x1.11-1.28 wall at 100,000 firms) but held a judged as-of under the
    next snapshot's peak, over 8 GiB; since the pass holds only the chain's flows
    (:func:`chain_flows`) each as-of's peak is ~1 GiB lower and the two fit.

    Under ``explain: {scope: changed}`` (monitoring.yaml) the decision core re-scores
    every lent firm without its SHAP reasons (PD, score, grade and limit are the same:
    :func:`scf_engine.credit.decide.precompute`), the firm is judged, and only then are
    the reasons derived, for the changed firms alone (:func:`explain_changed`). On the
    bench's 10,000-firm world over 12 monthly as-of dates, 39,356 of 89,964 firm-dates
    (44%) were green, kept, at an unmoved grade and went without SHAP; the rest are
    amber (17%), red (2%) or raised (16%: ``raise`` is an action, so it is explained)."""
    say(f"snapshot at the batch ({batch_T.date()})")
    batch = snapshot_at(ds, batch_T, models, con=con, flow_pass=flow_pass, side=side)
    batch.snapshot = None  # the pass reads the batch's table and chain; its copy of the flows can go
    give_back()
    requests = requests_frame(pd.DataFrame({"firm_id": lent["firm_id"].to_numpy()}))
    ids = pd.Index(lent["firm_id"], name="firm_id")
    seen = authenticity_seen(batch.table.reindex(ids).dropna(how="all"))  # the batch's alerts, once per pass
    default_on = ds.default_dates(ids).set_axis(ids)
    parts, pds, alerts, drift = [], [], [], []  # parts: each as-of's rows packed (:func:`packed`); pds: their PDs
    last = None  # the previous as-of's rows, whole (explain_changed reads them)
    changed_only = explain_scope(pols["monitoring"]) == "changed"

    def judge(T, now) -> None:
        """One as-of judged on its snapshot: the decision core, the frame, the signals,
        the rows; what it keeps goes into the pass's lists (one judge at a time, in date
        order: each reads the earlier dates' PDs and the previous rows)."""
        nonlocal last
        ctx = DecisionContext.build(now, models, pols, ds, cons)  # what decide builds; kept for explain_changed
        pre = precompute(now, models, pols, requests["firm_id"].astype(str).tolist(), dataset=ds, consents=cons,
                         scale=scale, context=ctx, explain=() if changed_only else None)
        # decide's two steps, the first kept for explain_changed; no memo lines (limit_basis)
        dec = finalize([pre], requests, pols, basis=False)
        raw = monitor_frame(ds, lent, dec, now, batch, cons, T, pols["monitoring"], needs)
        if ref is not None:  # the model's own score, before any credit repair; the frame's columns by
            # name, not raw.assign(...): inserting into the ~400 columns joined one by one warned
            # "DataFrame is highly fragmented" at every as-of (the demo printed it six times)
            columns = dict(raw.items())
            columns["b_score"] = pd.Series(scale.score(raw["pd_at_batch"].to_numpy(dtype=float)), index=raw.index)
            drift.append(drift_rows(ref, columns, T, pols["monitoring"]))
        frame = apply_repair(raw, pols["monitoring"], scale)
        a = pd.concat([fire(frame, pols["monitoring"], T),
                       new_authenticity(now.table.reindex(frame.index).dropna(how="all"), seen, pols["monitoring"], T)],
                      ignore_index=True)
        months = (T - batch_T).days / 30.4375
        history = pd.concat(pds, ignore_index=True) if pds else None  # the earlier dates' PDs (persistence)
        rows = portfolio_rows(frame, a, T, months, pols["monitoring"], scale,
                              ratings=policies.as_data(pols["master_scale"])["ratings"], history=history)
        if changed_only:
            rows = explain_changed(rows, frame, last, now, models, pre, ctx)
        last = rows
        pds.append(rows[["firm_id", "as_of", "pd"]])
        parts.append(packed(rows))
        alerts.append(a)
        drift.append(vintage_rows(lent, default_on, T, pols["monitoring"]))

    # each as-of is judged on a thread while the next one's snapshot is built (the features'
    # SQL lets the GIL go, the judging's LightGBM and SHAP too); the judge runs in a copy of
    # this thread's context, so it reads the pass's SHAP pattern memory (remembering)
    pending = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scf-judge") as judges:
        for i, T in enumerate(dates, 1):
            say(f"as-of {T.date()} ({i}/{len(dates)}): snapshot, decision core, signals")
            now = snapshot_at(ds, T, models, con=con, flow_pass=flow_pass, side=side)  # one being built, one judged
            if pending is not None:
                pending.result()  # the previous as-of judged before this one is (date order)
            give_back()  # what the previous as-of freed returned, not kept under this one's judging
            pending = judges.submit(contextvars.copy_context().run, judge, T, now)
            del now  # the judge holds it; gone when it is judged
        if pending is not None:
            pending.result()
    drift = pd.concat(drift, ignore_index=True) if drift else None
    del last
    return (pd.concat([unpacked(p) for p in parts], ignore_index=True),
            pd.concat(alerts, ignore_index=True)[ALERTS_COLUMNS], drift)


def packed(rows: pd.DataFrame) -> bytes:
    """One as-of's portfolio rows as zstd-compressed Parquet bytes, held in memory until
    the pass ends (:func:`unpacked` gives the same frame back: the same values and
    dtypes). Why: the rows are the pass's output and grow with every date, mostly the
    reasons' text (~320 characters a firm); at 100,000 firms that was ~35 MB an as-of
    held under every later as-of's peak, ~400 MB under the last one's. Compressed they
    are ~8x smaller (the reasons are templated text)."""
    out = pa.BufferOutputStream()
    rows.to_parquet(out, compression="zstd")
    return out.getvalue().to_pybytes()


def unpacked(part: bytes) -> pd.DataFrame:
    """The frame :func:`packed` packed."""
    return pd.read_parquet(pa.BufferReader(part))


def explain_changed(rows, frame, previous, now, models, pre, ctx) -> pd.DataFrame:
    """``rows`` (one as-of's portfolio rows, judged on a decision core run without SHAP
    reasons, ``pre`` its first step) with the decision core's reasons put back where a
    reader needs them: for every scored firm :func:`~scf_engine.monitor.judge.needs_drivers`
    flags, the same reason text the batch's decision core gives it
    (:func:`~scf_engine.credit.decide.reason_text` on those firms alone, on the as-of's
    own context: a firm's reasons do not depend on the others computed with it); for the rest, green and kept at an unmoved grade, what the rules
    read (:func:`~scf_engine.monitor.judge.unexplained_reason`). A firm the core did not
    score already carries the core's why (in default, no consent, ...)."""
    need = needs_drivers(rows, frame["repair_note"], previous)
    scored = frame["pd"].reindex(rows["firm_id"]).notna().to_numpy()
    rows = rows.copy()
    todo = rows.index[need & scored]
    if len(todo):
        ids = rows.loc[todo, "firm_id"].tolist()
        text = reason_text(pre, now, models, ids, context=ctx)
        rows.loc[todo, "reasons"] = [join_reasons(r, t) for r, t in zip(rows.loc[todo, "reasons"].tolist(), text)]
    rest = rows.loc[~need & scored, ["reasons", "pd", "pd_at_batch", "grade"]]
    # the columns as lists, zipped: itertuples iterates Arrow text a scalar at a time
    rows.loc[rest.index, "reasons"] = [join_reasons(r, unexplained_reason(p, b, g)) for r, p, b, g in
                                       zip(*(rest[c].tolist() for c in rest.columns))]
    return rows


def snapshot_at(ds, T, models, *, con=None, flow_pass=None, side=None):
    """The assembled snapshot at ``T`` with the propagation model's outputs. The pass
    builds one as-of at a time and lets it go: each snapshot holds its own copy of the
    flows before its date, and holding all of them (13 for a year of monthly dates) made
    the pass's memory grow with the number of dates. ``con``, ``flow_pass``: the pass's
    DuckDB connection and the legs built on it once (:func:`compute`); ``side``: the
    thread that builds the chain beside the flow features."""
    data = assemble(ds, [T], with_labels=False, con=con, flow_pass=flow_pass, side=side)
    add_propagation(data, models["propagation"])
    return data[T]


def frame_needs(policy, ref: dict | None) -> set | None:
    """The names (lower-cased) of the columns the judging of an as-of reads from its
    monitor frame: what the policy's rules and evidence templates name
    (:func:`scf_engine.monitor.signals.policy_columns`) and each drift variable of the
    training reference now and at the batch (``b_``); None (every column) when a rule's
    columns cannot be told."""
    named = policy_columns(policy)
    if named is None:
        return None
    return named | {str(v).lower() for v in ref or ()} | {f"b_{v}".lower() for v in ref or ()}


def monitor_frame(ds, lent, dec, now, batch, cons, T, policy, needs: set | None = None) -> pd.DataFrame:
    """One row per lent firm: what the rules read (features now, ``b_`` features at the
    batch, the core's answer, the batch's, consent, core distress, default).

    ``needs`` (:func:`frame_needs`): only the feature columns named there, now and at the
    batch; None: every feature, now and at the batch. Every feature twice is ~900 columns
    over the issue's 78,000 lent firms, copied again by the credit repair and handed to
    DuckDB by each rule query, while the rules and the drift read ~220 of them."""
    ids = pd.Index(lent["firm_id"], name="firm_id")
    res = dec.limits.set_index("firm_id").reindex(ids)
    kinds = now.table.dtypes
    drop = [c for c in now.table.columns if kinds[c] == object or c in ("pd", "score", "grade")]
    now_t, batch_t = now.table, batch.table
    if needs is not None:
        now_t = now_t[[c for c in now_t.columns if c.lower() in needs]]
        batch_t = batch_t[[c for c in batch_t.columns if f"b_{c}".lower() in needs]]
    feats = now_t.reindex(ids)
    base = batch_t.reindex(ids).drop(columns=drop, errors="ignore").add_prefix("b_")
    frame = feats.drop(columns=drop, errors="ignore").join(base)
    lb = lent.set_index("firm_id")
    frame["pd"] = res["pd"].astype(float)
    frame["score"] = res["score"]
    frame["grade"] = res["grade"]
    frame["core_reasons"] = res["reasons"].where(res["pd"].notna(), res["decision_reasons"])
    frame["core_limit"] = res["limit_cny"].astype(float)
    frame["pd_at_batch"] = pd.to_numeric(lb["pd"], errors="coerce")
    frame["grade_at_batch"] = lb["grade"]
    frame["limit_at_batch"] = lb["limit_cny"].astype(float)
    frame["pd_change"] = frame["pd"] - frame["pd_at_batch"]
    frame = frame.join(consent_days(ids, cons, T))
    distress = core_distress(now.chain, batch.chain, float(policy["core_distress"]["min_rise"]))
    frame = frame.join(distress.reindex(ids).fillna({"core_distress": 0.0, "distressed_core": ""}))
    d_on = ds.default_dates(ids).set_axis(ids)
    frame["in_default"] = (d_on < T).to_numpy()
    frame["fin_evidence"] = firm_evidence(now.snapshot).reindex(ids).fillna("").to_numpy()
    frame["default_on"] = d_on.dt.strftime("%Y-%m-%d").fillna("").to_numpy()
    return frame


def consent_days(ids: pd.Index, cons: pd.DataFrame | None, T: pd.Timestamp) -> pd.DataFrame:
    """Days from the as-of to the end of the firm's latest authorisation (negative once
    lapsed; empty without a consents file or with an open-ended one)."""
    out = pd.DataFrame({"consent_days_left": np.nan, "consent_expires_on": ""}, index=ids)
    if cons is None or cons.empty:
        return out
    status = consent_status(ids, cons, T)
    c = cons[isin(cons["firm_id"].astype(str), ids)]
    end = c.groupby(c["firm_id"].astype(str))["expires_on"].max()
    open_ended = c[c["expires_on"].isna()]["firm_id"].astype(str).unique()
    end = end.drop(index=end.index.intersection(open_ended)).reindex(ids)
    days = (end - T).dt.days
    days[status.reindex(ids).eq("missing").to_numpy()] = -1  # no authorisation at all counts as lapsed
    out["consent_days_left"] = days.astype(float)
    out["consent_expires_on"] = end.dt.strftime("%Y-%m-%d").fillna("none").to_numpy()
    return out


# -------------------------------------------------------------------------------- record


def summary(port: pd.DataFrame, alerts: pd.DataFrame) -> dict:
    """The pass's MLflow metrics (few and stable names: pitfalls.md), over the last as-of."""
    # the last as-of's rows of the columns read here only: a boolean filter of the whole frame
    # copied the reasons' text too (1.7 s of the record at 100,000 firms over 12 dates)
    last = port.loc[(port["as_of"] == port["as_of"].max()).to_numpy(),
                    ["firm_id", "limit_at_batch", "limit_now", "level", "action"]]
    out = {"n_firms": int(last["firm_id"].nunique()), "n_as_of": int(port["as_of"].nunique()),
           "n_alerts": len(alerts), "limit_at_batch_cny": float(last["limit_at_batch"].sum()),
           "limit_now_cny": float(last["limit_now"].sum()),
           # one vectorised any per firm (a Python function per firm took 7.2 s at 78,000 firms)
           "ever_red_share": float(port["level"].eq("red").groupby(port["firm_id"]).any().mean())}
    for lv in ("red", "amber", "green"):
        out[f"n_{lv}"] = int((last["level"] == lv).sum())
    for act in ("keep", "reduce", "freeze", "raise"):
        out[f"n_{act}"] = int((last["action"] == act).sum())
    return out


MONITOR_NAMES = ("portfolio.csv", "alerts.csv", "portfolio_quarantine.csv", "report.html", "drift.csv", QUARANTINE)
KIND = "monitor"  # passes live under DIR/.scf-outputs/monitor/ (scf_engine.publish)
ENTRY_LINK = "monitor_audit_entry.json"  # not audit_entry.json: a batch's limits.csv may share the folder


def record(store, frames, quarantined, out: Path, *, dates, batch_T, versions, pols, inputs, batch_run, audit_log,
           actor, memo_dir: Path | None = None, progress=None, report=None) -> MonitorResult:
    """portfolio.csv, alerts.csv, drift.csv, report.html (and the quarantine rows of unknown
    firms), one MLflow run and one audit entry, all or nothing, as a batch: staged in a
    folder of its own, the entry records the sha256 of the staged bytes, one flip
    publishes them all (:class:`scf_engine.publish.Publication`); what a killed pass left
    is removed by the next and noted on its entry."""
    port, alerts, drift = frames
    out.mkdir(parents=True, exist_ok=True)
    stats = summary(port, alerts)
    pub = Publication(out, KIND, names=MONITOR_NAMES, keep=pols["output"]["keep_published"], entry_link=ENTRY_LINK,
                      progress=progress)
    with pub, publish.write_errors(out), store.run(
            "monitor", f"monitor {dates[0].date()}..{dates[-1].date()}", tags={"scf_role": "monitor"}) as run:
        files = {"portfolio.csv": csv_bytes(port), "alerts.csv": csv_bytes(alerts)}
        if len(quarantined):
            files["portfolio_quarantine.csv"] = csv_bytes(quarantined)
        files.update(staged_files(report))  # the contract: bad rows go to a file beside the output
        files["report.html"] = render_report(port, alerts, drift, pols["monitoring"], memo_dir=memo_dir,
                                             out_dir=out).encode("utf-8")
        if drift is not None:
            files["drift.csv"] = csv_bytes(drift)
            for step, (day, v) in enumerate(drift[drift["kind"] == "psi"][["as_of", "value"]].itertuples(index=False)):
                run.log_metrics({"psi_score": v}, step=step)
        for name, data in files.items():
            pub.write(name, data)
        checkpoint("staged")
        run.log_params({"as_of": [str(t.date()) for t in dates], "batch_as_of": str(batch_T.date()),
                        "batch_run": batch_run or "", "model_versions": {k: v["version"] for k, v in versions.items()},
                        "policy_hashes": policies.fingerprint(pols)})
        run.log_metrics(stats)
        for name in files:
            run.log_artifact(pub.path(name), "monitor")
        checkpoint("logged")

        def append(hashes: dict) -> dict:
            return access.record(
                audit_log, actor, "monitor", "after-lending monitoring (贷后监测)", sorted(port["firm_id"].unique()),
                name_firms=True,  # named, as a batch's: `scf audit show --firm` finds who monitored a firm
                inputs=inputs, mlflow_run_id=run.id, as_of=[str(t.date()) for t in dates],
                model_versions={k: v["version"] for k, v in versions.items()},
                policy_hashes=policies.fingerprint(pols), output=hashes,
                **({"leftover_outputs": pub.leftovers} if pub.leftovers else {}))

        entry = pub.publish(audit_log, append, lambda e, path: run.log_artifact(path, "audit"))
    return MonitorResult(port, alerts, quarantined, out, run.id, entry, stats, drift, report)


__all__ = ["monitor", "compute", "read_portfolio", "MonitorResult", "PORTFOLIO_COLUMNS", "ALERTS_COLUMNS"]
