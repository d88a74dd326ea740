"""The decision core: credit for a set of requested firms at one as-of date.

:func:`decide` is the one place where a request becomes a decision: who may be scored,
each model's PD, the final PD, score and grade, the receivables that back a limit, the
core's line in a 1+N batch, limits, group envelopes, decisions and reasons. It reads
nothing from disk, writes nothing, opens no MLflow run and appends no audit entry, so the
batch pipeline, ``scf explain``, the benchmarks and the notebooks all call the same code
and a benchmark measures the product, not a copy of it.

A requested firm that is unknown, a core, not yet founded, in default, without a valid
consent (when the policy requires one), or that no model can score gets a row with an
empty PD, ``decline`` and the reason: never a silent gap, whatever the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pandas as pd

from scf_engine.contract import LIMITS_COLUMNS
from scf_engine.credit.consent import consent_lookup, consent_table
from scf_engine.credit.encumbrance import eligible_after_exclusions, earmarked, left_out, receivable_status
from scf_engine.credit.envelope import allocate_envelope
from scf_engine.credit.limits import REVIEW_FEATURES, buyer_eligible, core_lines, eligible_receivables, limit_arrays
from scf_engine.credit.scale import ScoreScale, final_pd, score_frame
from scf_engine.errors import RequestError
from scf_engine.explain.model_reasons import propagation_reasons, shap_reasons
from scf_engine.explain.reasons import format_reasons, industry_medians, reason_codes
from scf_engine.learners.jiangyin import grade_from_indicators, indicator_grades
from scf_engine.learners.predict import predict_all
from scf_engine.policies import as_data

GROUP_BY = ("batch", "batch_group")
PD_COLUMNS = ["pd_propagation", "pd_decoupled", "pd_hybrid"]


@dataclass(frozen=True)
class BatchOptions:
    """What a batch may share: one envelope (``group_limit`` CNY, for the whole batch or
    per ``batch_group``) and the core whose 1+N chain it is (default: detected when every
    scorable firm is tied to exactly one core)."""

    group_limit: float | None = None
    group_by: str = "batch"
    chain_core: str | None = None
    whitelist: frozenset | None = None  # 名单制: the programme's list; None: no list
    whitelist_list: str | None = None  # the list's name when one programme was picked from the file: reasons say it

    def __post_init__(self):
        if self.group_by not in GROUP_BY:
            raise RequestError(f"--group-by takes {' or '.join(GROUP_BY)}, not {self.group_by!r}")
        if self.group_limit is not None and not self.group_limit >= 0:
            raise RequestError(f"--group-limit must be a number >= 0, not {self.group_limit!r}")


@dataclass(frozen=True)
class ModelOutputs:
    """The LightGBM models' outputs computed elsewhere, by firm: ``pd_decoupled`` and
    ``pd_hybrid`` (``pds``, index firm_id) and each model's SHAP contributions
    (``contributions``: kind -> frame, index firm_id, columns the model's features then
    ``expected_value``). Scoring on Spark computes them per partition
    (:mod:`scf_engine.pipelines.score_spark`) with the same model code; :func:`decide`
    then takes them instead of calling the models, and everything after is unchanged."""

    pds: pd.DataFrame
    contributions: dict


@dataclass
class Decisions:
    """The outcome for every requested row (same index as the requests)."""

    as_of: pd.Timestamp
    limits: pd.DataFrame  # what limits.csv holds, one row per request
    scored: pd.Series  # bool: the row got a PD, a score and a grade
    reasons: pd.Series  # list of explain.Reason per row (empty when not scored)
    contributions: dict  # model kind -> SHAP contributions of the rows whose final PD it gave
    limit_detail: pd.DataFrame  # limit_basis, decision_reasons, binding_caps as lists
    chain_core: str | None
    summary: dict = field(default_factory=dict)
    jiangyin: pd.DataFrame | None = None  # the guide's 13 indicator grades and its grade, per row with flows
    left_out: pd.DataFrame | None = None  # receivables of the requested firms left out, and why (credit.encumbrance)
    earmarked: list = field(default_factory=list)  # [receivable_id, firm_id] behind this batch's limits

    @property
    def firm_ids(self) -> pd.Series:
        return self.limits["firm_id"]


@dataclass(frozen=True)
class DecisionContext:
    """What every decision on one snapshot shares, whichever firms are asked: the firms
    table by id, default dates, eligible receivables, the cores' lines, the industry
    medians the reasons quote, the propagation model's design and the data-quality counts.

    :func:`decide` builds it itself when not given one, so a batch computes it once per
    batch; a service builds it once per loaded snapshot (:meth:`build`) and passes it to
    every call, which takes the whole-table work out of a one-firm request. Same code,
    same answers: the context holds what :func:`decide` would otherwise compute inline.
    """

    firms: pd.DataFrame  # dataset.firms indexed by firm_id
    default_on: pd.Series  # default date by firm_id (NaT: none)
    eligible: pd.Series  # eligible receivables by firm_id (credit.limits), those left out taken off
    lines: pd.Series  # each core's 1+N line by core firm_id (credit.limits)
    medians: dict  # model kind -> industry medians of its features (explain.reasons)
    propagation_design: pd.DataFrame  # the propagation model's design over the chain
    dq_counts: pd.Series  # quarantine rows naming each firm, by firm_id
    consent: pd.Series | None  # best authorisation rank by firm_id at the as-of (credit.consent)
    receivables: pd.DataFrame | None = None  # candidate receivables and why each is left out (credit.encumbrance)
    excluded: pd.Series | None = None  # how many of each firm's candidate receivables are left out, by firm_id

    @classmethod
    def build(cls, data, models: dict, pols: dict, dataset, consents: pd.DataFrame | None = None,
              earmarks: pd.DataFrame | None = None) -> "DecisionContext":
        """The context of snapshot ``data`` with ``models``, ``pols``, ``dataset`` and
        ``consents`` (the frame :func:`decide` is given with it); ``earmarks``: the
        receivables earlier batches on this snapshot lent against (credit.encumbrance)."""
        table, chain = data.table, data.chain
        reference = table.assign(industry=chain.nodes["industry"].reindex(table.index))
        medians = {k: industry_medians(reference, models[k].features_) for k in ("hybrid", "decoupled") if k in models}
        report = getattr(dataset, "report", None)
        dq = report.touching_counts(before=data.as_of) if report is not None else pd.Series(dtype="int64")
        d = dataset.defaults.set_index("firm_id")["default_on"].astype("datetime64[s]")
        snap = data.snapshot
        status = receivable_status(snap.receivables, snap.financings,
                                   buyer_eligible(chain.nodes, pols["limit_policy"], pols["master_scale"]),
                                   data.as_of, earmarks)
        eligible, excluded = eligible_after_exclusions(
            eligible_receivables(chain, pols["limit_policy"], pols["master_scale"]), status)
        design = None
        if "propagation" in models:  # the snapshot's own when this model made it (assemble.add_propagation)
            made = getattr(data, "propagation_design", None)
            design = made[1] if made is not None and made[0] is models["propagation"] else \
                models["propagation"].design(chain)[0]
        return cls(dataset.firms.set_index("firm_id"), d, eligible,
                   core_lines(chain, pols["limit_policy"]), medians, design, dq,
                   consent_table(consents, data.as_of), status, excluded)


# ----------------------------------------------------------------------------- eligibility

NOT_SCORABLE = "not scorable: no fund-flow history and no chain link to a core"
OFF_LIST = "not on the programme's whitelist (名单制)"


def off_list_reason(list_name: str | None) -> str:
    """Why a firm off the whitelist is declined: which programme's list, when one was
    picked (``--list``), so a file of several lists leaves no doubt which one said no."""
    return OFF_LIST if list_name is None else f"{OFF_LIST}: list {list_name!r}"


def eligibility(dataset, requests: pd.DataFrame, as_of: pd.Timestamp, consent: pd.Series, require_consent: bool,
                dishonest: pd.Series | None = None, *, context: DecisionContext | None = None) -> pd.Series:
    """Per request row, why the firm may not be scored at ``as_of`` ("" when it may);
    ``context`` (optional): the dataset's firms and default dates already indexed. The
    whitelist is not checked here: :func:`decide_rows` applies it, after these reasons,
    because its policy may send a firm off the list to review rather than decline it."""
    firms = context.firms if context is not None else dataset.firms.set_index("firm_id")
    ids = requests["firm_id"]
    why = requests["request_problem"].copy() if "request_problem" in requests else pd.Series("", index=requests.index, dtype=object)
    known = pd.Series(firms.index.get_indexer(ids) >= 0, index=ids.index)  # hashed: no scan of the table
    why[(why == "") & ~known] = "unknown firm: not in firms"
    is_core = ids.map(firms["is_core"]).eq(True)
    why[(why == "") & is_core] = "core enterprise: rated externally, not scored by this engine"
    founded = ids.map(firms["founded_on"])
    why[(why == "") & known & (founded >= as_of)] = f"not founded before the as-of date {as_of.date()}"
    if context is not None:
        defaulted_on = context.default_on.reindex(pd.Index(ids)).set_axis(requests.index)
    else:
        defaulted_on = dataset.default_dates(ids).set_axis(requests.index)
    in_default = (why == "") & (defaulted_on < as_of)
    why[in_default] = [f"in default since {d.date()}" for d in defaulted_on[in_default]]
    if dishonest is not None:
        why[(why == "") & dishonest.eq(1.0)] = "serious dishonesty record (严重失信): not graded, declined"
    if require_consent:
        late = consent_reasons(consent)
        why[why == ""] = late[why == ""]
    return why


def consent_reasons(consent: pd.Series) -> pd.Series:
    """Why each row may not be scored for want of a valid data-use authorisation ("" when
    its consent is ``ok``); read only when the policy requires consent."""
    out = pd.Series("", index=consent.index, dtype=object)
    bad = consent != "ok"
    out[bad] = [f"not scored: no valid data-sharing authorisation ({s.replace('_', ' ')})" for s in consent[bad]]
    return out


def _single_core(cores: list) -> str | None:
    """The one core every scorable firm of the batch is tied to (``cores``: each firm's
    list of cores), if there is exactly one (a 1+N chain batch); else None."""
    cores = [c for c in cores if not _missing(c)]
    if not cores:
        return None
    common = set(cores[0])
    for c in cores[1:]:
        common &= set(c)
    return sorted(common)[0] if len(common) == 1 and all(len(c) >= 1 for c in cores) else None


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


# ------------------------------------------------------------ the per-firm part, once


@dataclass
class Precomputed:
    """Everything about a decision that does not depend on the request, for a set of
    firms at one as-of: why a firm may not be scored (unknown, core, not founded, in
    default, dishonesty record, consent, no model), each model's PD, the final PD, score
    and grade, the limit policy's inputs (trade inflow, eligible receivables,
    authenticity and data-quality counts, consent), the firm's cores, its reasons and
    their SHAP contributions, and its Jiangyin grade.

    A batch computes it for its own firms (:func:`decide`); a service computes it once
    for every firm of the loaded snapshot, so that a request runs only :func:`finalize`
    (the request's own checks, the whitelist, the 1+N core, the limits with their caps,
    the envelope): the same two steps, so the same answers. Columns are numpy arrays,
    one entry per firm, found by :meth:`positions`."""

    as_of: pd.Timestamp
    index: dict  # firm_id -> position
    cols: dict  # column name -> np.ndarray, one entry per firm
    reasons: np.ndarray  # object: the list of explain.Reason of each firm (empty when not scored)
    contributions: dict  # model kind -> SHAP contributions by firm_id of the firms whose final PD it gave
    jiangyin: pd.DataFrame  # the 13 indicator grades and the guide's grade, by firm_id (firms with flows)
    lines: dict  # each core's 1+N line by core firm_id (DecisionContext.lines as a dict)
    receivables: pd.DataFrame | None = None  # candidate receivables and why each is left out (credit.encumbrance)

    def __len__(self) -> int:
        return len(self.index)

    def missing(self, ids) -> list:
        """The ids (in first-seen order, once each) this table does not hold."""
        return [f for f in dict.fromkeys(ids) if f not in self.index]

    def take(self, ids) -> dict:
        """The columns for ``ids`` in order (every id must be held)."""
        pos = np.fromiter((self.index[f] for f in ids), dtype=np.intp, count=len(ids))
        out = {k: v[pos] for k, v in self.cols.items()}
        out["_reasons"] = self.reasons[pos]
        return out

    def nbytes(self) -> int:
        """Bytes held by the numeric columns' buffers (strings and lists are counted apart)."""
        return int(sum(v.nbytes for v in self.cols.values()))


def precompute(data, models: dict, pols: dict, firm_ids, *, dataset, consents: pd.DataFrame | None = None,
               scale: ScoreScale | None = None, context: DecisionContext | None = None,
               outputs: ModelOutputs | None = None, explain=None) -> Precomputed:
    """The request-independent part of every decision for ``firm_ids`` (any ids: an
    unknown one gets its "unknown firm" row) on snapshot ``data`` (see :func:`decide`
    for the arguments). Every step is per firm, so a firm's entry is the same whichever
    other firms are computed with it (the randomised tests check it).

    ``explain``: None (the default, what a batch, ``scf explain`` and ``scf serve`` use)
    derives the model reasons (SHAP for the LightGBM models, the design terms for
    propagation) of every scored firm; a collection of firm ids derives them for those
    only, and every other scored firm gets an empty reason list, empty reason text and no
    SHAP contributions, with its PD, score, grade and limit inputs unchanged. SHAP is the
    dearest step of a re-score (LightGBM ``pred_contrib``: with the cross-fitted models,
    27 of a 96 s monitoring pass over 10,000 firms and 12 dates when the whole booster
    was asked, 16 s asked per split pattern, :mod:`scf_engine.learners.treeshap`), and
    ``scf monitor`` needs it only for the firms it flags (``monitoring.yaml``'s
    ``explain``)."""
    T = data.as_of
    ctx = context if context is not None else DecisionContext.build(data, models, pols, dataset, consents)
    ids = list(dict.fromkeys(str(f) for f in firm_ids))
    req = pd.DataFrame({"firm_id": pd.Series(ids, dtype=object)})
    consent = consent_lookup(req["firm_id"], ctx.consent).set_axis(req.index)
    require = bool(pols["limit_policy"].get("require_consent", False))
    rows = data.table.reindex(req["firm_id"]).set_axis(req.index)
    why = eligibility(dataset, req, T, consent, False, rows.get("ind_dishonest"), context=ctx)
    late = consent_reasons(consent).where(why == "", "") if require else pd.Series("", index=req.index, dtype=object)
    preds, fin = _predict(models, pols, rows, (why == "") & (late == ""), outputs, req["firm_id"])
    late[(why == "") & (late == "") & fin["pd"].isna()] = NOT_SCORABLE
    ok = (why == "") & (late == "")
    sg = score_frame(fin["pd"].where(ok), scale or ScoreScale.from_policy(pols["score_scale"]))
    nodes = data.chain.nodes.reindex(req["firm_id"]).set_axis(req.index)
    explained = ok if explain is None else ok & req["firm_id"].isin(set(map(str, explain)))
    reasons, contribs = _reasons(models, ctx, data.chain, rows, nodes, explained, fin["pd_source"], req["firm_id"],
                                 outputs)
    jy_cols, jy = jiangyin_columns(rows, pols)
    cols = {"firm_id": np.array(ids, dtype=object), "why": why.to_numpy(dtype=object),
            "why_late": late.to_numpy(dtype=object), "ok": ok.to_numpy(dtype=bool),
            **{c: preds[c].to_numpy(dtype=float) for c in PD_COLUMNS},
            "pd": fin["pd"].where(ok).to_numpy(dtype=float), "pd_source": fin["pd_source"].where(ok, "").to_numpy(dtype=object),
            "score": sg["score"].where(ok).to_numpy(dtype=float), "grade": sg["grade"].where(ok).to_numpy(dtype=object),
            "text": np.array([format_reasons(r) if o and r else "" for r, o in zip(reasons, ok)], dtype=object),
            "trade_in_12m": nodes["trade_in_12m"].fillna(0.0).to_numpy(dtype=float),
            "eligible_receivables": ctx.eligible.reindex(req["firm_id"]).fillna(0.0).to_numpy(dtype=float),
            "excluded_receivables": req["firm_id"].map(ctx.excluded if ctx.excluded is not None else {}).fillna(0)
            .to_numpy(dtype=float),
            "dq_issues": req["firm_id"].map(ctx.dq_counts).fillna(0).astype(int).to_numpy(),
            "consent": consent.to_numpy(dtype=object),
            "cores": nodes["cores"].to_numpy(dtype=object), "batch_group": nodes["batch_group"].to_numpy(dtype=object),
            "jiangyin_grade": jy_cols["jiangyin_grade"].to_numpy(dtype=object),
            "jiangyin_a": jy_cols["jiangyin_a"].to_numpy(dtype=float, na_value=np.nan),
            "jiangyin_c": jy_cols["jiangyin_c"].to_numpy(dtype=float, na_value=np.nan),
            "has_flows": (rows["history_months"].notna() if "history_months" in rows
                          else pd.Series(False, index=rows.index)).to_numpy(dtype=bool)}
    for c in REVIEW_FEATURES:
        if c in rows:
            cols[c] = pd.to_numeric(rows[c], errors="raise").to_numpy(dtype=float)
    by_id = pd.Index(ids, dtype=object)
    return Precomputed(T, {f: i for i, f in enumerate(ids)}, cols, reasons.to_numpy(dtype=object),
                       {k: c.set_axis(by_id[c.index]) for k, c in contribs.items()}, jy.set_axis(by_id[jy.index]),
                       dict(zip(ctx.lines.index.astype(str), ctx.lines.astype(float))), ctx.receivables)


def reason_text(pre: Precomputed, data, models: dict, firm_ids, *, context: DecisionContext) -> np.ndarray:
    """The reason text (:func:`precompute`'s ``text``) of ``firm_ids``, firms that ``pre``
    holds computed without their model reasons (``explain=()``), as :func:`precompute`
    derives it when asked for them: the reasons of the model that gave each scored
    firm's final PD (:func:`_reasons`), from the firm's own row. What ``pre`` already
    holds (eligibility, both models' PDs, the final PD and its source, the score) is read
    from it, not computed again: ``scf monitor`` explains the firms it flags after the
    decision core has scored them all, and computing their whole entry a second time cost
    ~3 s of CPU an as-of at 100,000 firms for the same PD and source."""
    cols = pre.take(list(firm_ids))
    ids = pd.Series(cols["firm_id"], dtype=object)
    rows = data.table.reindex(ids).set_axis(ids.index)
    nodes = data.chain.nodes.reindex(ids).set_axis(ids.index)
    ok = pd.Series(cols["ok"], index=ids.index)
    reasons, _ = _reasons(models, context, data.chain, rows, nodes, ok, pd.Series(cols["pd_source"], index=ids.index),
                          ids)
    return np.array([format_reasons(r) if o and r else "" for r, o in zip(reasons, ok)], dtype=object)


# ------------------------------------------------------------------------------- the core


def decide(data, models: dict, pols: dict, requests: pd.DataFrame, *, dataset, consents: pd.DataFrame | None = None,
           options: BatchOptions = BatchOptions(), scale: ScoreScale | None = None,
           context: DecisionContext | None = None, precomputed: Precomputed | None = None,
           outputs: ModelOutputs | None = None, earmarks: pd.DataFrame | None = None, explain=None) -> Decisions:
    """Decisions for ``requests`` (``firm_id``, optional ``requested_amount`` and
    ``request_problem``, as :func:`scf_engine.ingest.requests.read_batch` returns) on the
    assembled snapshot ``data`` (an :class:`~scf_engine.assemble.SnapshotData` with the
    propagation model's outputs added), with ``models`` (propagation, decoupled, hybrid),
    the loaded policies ``pols`` and the consents frame. ``dataset`` tells known from
    unknown firms, founding and default dates and data-quality issues; ``scale`` is the
    score scale saved with the models (default: the policy's); ``context``: the
    snapshot's :class:`DecisionContext` (built here when not given).

    Two steps: :func:`precompute` (per firm, whatever the request) and :func:`finalize`
    (the request). ``precomputed``: a table the caller keeps for the snapshot (a
    service's, over every firm); firms it lacks (unknown ids) are computed here.
    ``outputs``: the models' PDs and contributions when computed elsewhere
    (:class:`ModelOutputs`, scoring on Spark); ``earmarks``: the receivables earlier
    batches on this snapshot lent against (used when the context is built here);
    ``explain``: the firms whose model reasons are derived (None: every scored firm; see
    :func:`precompute`)."""
    ctx = context if context is not None else DecisionContext.build(data, models, pols, dataset, consents, earmarks)
    ids = requests["firm_id"].astype(str).tolist()
    extra = None
    if precomputed is None or precomputed.missing(ids):
        todo = ids if precomputed is None else precomputed.missing(ids)
        extra = precompute(data, models, pols, todo, dataset=dataset, consents=consents, scale=scale, context=ctx,
                           outputs=outputs, explain=explain)
    tables = [t for t in (precomputed, extra) if t is not None]
    return finalize(tables, requests, pols, options)


def finalize(tables, requests: pd.DataFrame, pols: dict, options: BatchOptions = BatchOptions(), *,
             basis: bool = True) -> Decisions:
    """The request step: :class:`Decisions` for ``requests`` from the per-firm tables
    (a :class:`Precomputed` or a list of them; each requested firm is read from the first
    that holds it), with the request's own checks, the whitelist, the batch's 1+N core,
    the limits and their caps, and the envelope (:func:`decide_rows`). ``basis``: with
    the memo's account of each limit (``limit_detail``'s ``limit_basis``; False: empty
    lists, every other column the same: ``scf monitor`` writes no memo). Decisions made
    with ``basis=False`` are not for memos: a memo of them would have no limit lines."""
    tables = list(tables) if isinstance(tables, (list, tuple)) else [tables]
    requests = requests.reset_index(drop=True)
    ids = requests["firm_id"].astype(str).tolist()
    amounts = requests["requested_amount"].to_numpy(dtype=float) if "requested_amount" in requests else None
    problems = requests["request_problem"].to_numpy(dtype=object) if "request_problem" in requests else None
    cols, w = decide_rows(tables, ids, amounts, problems, pols, options, basis=basis)
    result = limits_frame(cols)
    ok, index = w.ok, result.index
    reasons = pd.Series([list(r) if o else [] for r, o in zip(w.reasons, ok)], index=index, dtype=object)
    contribs = {}
    for kind in ("hybrid", "decoupled"):
        use = ok & (cols["pd_source"] == kind)
        use &= np.isin(w.ids, np.concatenate([t.contributions[kind].index.to_numpy(dtype=object) for t in tables
                                               if kind in t.contributions] or [np.array([], dtype=object)]))
        if use.any():  # (a firm left out of precompute's ``explain`` has no contributions)
            contribs[kind] = _rows_by_id([t.contributions.get(kind) for t in tables], w.ids[use]).set_axis(index[use])
    known = w.has_flows
    jy = (_rows_by_id([t.jiangyin for t in tables], w.ids[known]).set_axis(index[known]) if known.any()
          else pd.DataFrame(index=index[known]))
    detail = pd.DataFrame({"limit_basis": w.basis, "decision_reasons": w.decision_reasons, "binding_caps": w.binding},
                          index=index)
    status = next((t.receivables for t in tables if t.receivables is not None), None)
    return Decisions(tables[0].as_of, result, pd.Series(ok, index=index), reasons, contribs, detail, w.core,
                     summary(result, pols), jy, left_out(status, w.ids[ok]) if status is not None else None,
                     earmarked(status, result[ok]) if status is not None else [])


def _rows_by_id(frames: list, ids: np.ndarray) -> pd.DataFrame:
    """The rows of ``ids`` in order, each from the first frame (indexed by firm_id) holding it."""
    frames = [f for f in frames if f is not None]
    if len(frames) == 1:
        return frames[0].loc[ids]
    parts = [f.loc[f.index.intersection(pd.Index(ids))] for f in frames]
    both = pd.concat(parts)
    return both[~both.index.duplicated()].loc[ids]


def _gather(tables: list, ids: list) -> dict:
    """The precomputed columns of ``ids`` in order, from the first table holding each."""
    if len(tables) == 1:
        return tables[0].take(ids)
    where = np.array([next(j for j, t in enumerate(tables) if f in t.index) for f in ids], dtype=int)
    parts = [(where == j, t.take([f for f, k in zip(ids, where) if k == j])) for j, t in enumerate(tables)]
    out = {}
    for name in parts[0][1]:
        col = np.empty(len(ids), dtype=np.result_type(*[p[name].dtype for _, p in parts]))
        for mask, p in parts:
            col[mask] = p[name]
        out[name] = col
    return out


def decide_rows(tables: list, ids: list, amounts: np.ndarray | None, problems: np.ndarray | None, pols: dict,
                options: BatchOptions = BatchOptions(), *, basis: bool = True) -> tuple[dict, SimpleNamespace]:
    """The request step on plain arrays: the ``limits.csv`` columns (a dict of arrays, in
    the contract's order) for request rows ``ids`` with their requested ``amounts`` (NaN:
    none) and ``problems`` (the request's own row problems, "" when none), and the
    working :func:`finalize` turns into :class:`Decisions` (``basis``: with the memo's
    limit lines, :func:`scf_engine.credit.limits.limit_arrays`).

    No pandas unless an envelope is asked for: a service runs this per request on one
    row, where each DataFrame operation's fixed cost would be the whole cost."""
    p, n = _gather(tables, ids), len(ids)
    d = as_data(pols["limit_policy"])
    idarr = np.array(ids, dtype=object)
    why = p["why"] if problems is None else np.where(problems != "", problems, p["why"])
    off_list = np.array([f not in options.whitelist for f in ids], dtype=bool) if options.whitelist is not None else None
    decline_off = d.get("off_whitelist", "decline") == "decline"
    if off_list is not None and decline_off:
        why = np.where((why == "") & off_list, off_list_reason(options.whitelist_list), why)
    blocked = why != ""  # by the request or the whitelist: no model was run for the row
    why = np.where(blocked, why, p["why_late"])
    ok = why == ""
    k = np.flatnonzero(ok)
    pd_ = np.where(ok, p["pd"], np.nan)
    grade = np.where(ok, p["grade"], np.nan)
    core = options.chain_core or _single_core(list(p["cores"][k]))
    req = amounts if amounts is not None else np.full(n, np.nan)
    lim = limit_arrays(_limit_input(p, idarr, k, pd_, grade, req, core, off_list if not decline_off else None, d,
                                    options.whitelist_list), d, core_line=tables[0].lines if core else None,
                       basis=basis)
    limit_cny = np.zeros(n)
    limit_cny[k] = lim["limit_cny"]
    group = None
    if options.group_limit is not None:
        limit_cny[k], group = _envelope_rows(lim, k, pd_, p["batch_group"], n, options, pols["limit_policy"])
    decision = np.full(n, "decline", dtype=object)
    decision[k] = lim["decision"]
    part = {}
    for name in ("uncapped_limit", "flow_part", "receivable_part"):
        part[name] = np.full(n, np.nan)
        part[name][k] = lim[name]
    binding, reasons_, basis = ([[] for _ in range(n)] for _ in range(3))
    for j, i in enumerate(k):
        binding[i], reasons_[i], basis[i] = lim["binding_caps"][j], lim["decision_reasons"][j], lim["limit_basis"][j]
    cols = {"firm_id": idarr, "as_of": np.full(n, tables[0].as_of.strftime("%Y-%m-%d"), dtype=object),
            "pd": np.round(pd_, 6), "score": np.where(ok, p["score"], np.nan), "grade": grade, "limit_cny": limit_cny,
            "decision": decision, "reasons": np.where(ok, p["text"], why),
            **{c: np.round(np.where(blocked, np.nan, p[c]), 6) for c in ("pd_propagation", "pd_decoupled")},
            # v1.1: what backs the receivable part, and how many receivables were left out
            "eligible_receivables_cny": np.where(ok, p["eligible_receivables"], np.nan),
            "excluded_receivables": np.where(ok, p["excluded_receivables"], np.nan),
            "pd_hybrid": np.round(np.where(blocked, np.nan, p["pd_hybrid"]), 6),
            "pd_source": np.where(ok, p["pd_source"], "").astype(object), "requested_amount": req, **part,
            "binding_caps": np.array([";".join(b) for b in binding], dtype=object),
            "decision_reasons": np.array(["; ".join(r) if o else w for r, o, w in zip(reasons_, ok, why)], dtype=object),
            "consent": p["consent"]}
    if group is not None:
        cols.update(group)
    cols.update({c: p[c] for c in ("jiangyin_grade", "jiangyin_a", "jiangyin_c")})
    w = SimpleNamespace(ok=ok, ids=idarr, reasons=p["_reasons"], core=core, binding=binding, basis=basis,
                        decision_reasons=reasons_, has_flows=p["has_flows"])
    return cols, w


def _limit_input(p: dict, idarr, k, pd_, grade, req, core, off_list, d, list_name=None) -> dict:
    """What the limit policy reads (credit.limits' columns) for the scorable rows ``k``;
    ``list_name``: the whitelist's programme, named by a review for being off it."""
    if len(set(idarr[k])) < len(k):
        raise ValueError("limit frame: firm_id must be unique")
    c = {"firm_id": idarr[k], "pd": pd_[k], "grade": grade[k], "trade_in_12m": p["trade_in_12m"][k],
         "eligible_receivables": p["eligible_receivables"][k], "requested_amount": req[k],
         "dq_issues": p["dq_issues"][k].astype(float), "consent_status": p["consent"][k]}
    if core:
        c["core_id"] = np.full(len(k), core, dtype=object)
    for name in REVIEW_FEATURES:
        if name in p:
            c[name] = p[name][k]
    if d.get("require_consent", False):
        c["consent_ok"] = p["consent"][k] == "ok"
    if off_list is not None:
        c["off_whitelist"] = off_list[k]
        if list_name is not None:
            c["whitelist_list"] = np.full(len(k), list_name, dtype=object)
    return c


def _envelope_rows(lim: dict, k, pd_, batch_group, n: int, options: BatchOptions, policy):
    """The envelope over the scorable rows ``k``: their limits within it, and the
    ``group``, ``group_allocation_cny`` and ``group_bound_by`` columns of every row."""
    frame = pd.DataFrame(lim, index=k)
    lim_ok, group = _envelope(frame, pd.DataFrame({"pd": pd_[k]}, index=k),
                              pd.DataFrame({"batch_group": batch_group[k]}, index=k),
                              options.group_limit, options.group_by, policy)
    group = group.reindex(pd.RangeIndex(n))
    return lim_ok["limit_cny"].to_numpy(), {"group": group["group"].to_numpy(dtype=object),
                                             "group_allocation_cny": group["allocation_cny"].to_numpy(),
                                             "group_bound_by": group["bound_by"].to_numpy(dtype=object)}


def limits_frame(cols: dict) -> pd.DataFrame:
    """The ``limits.csv`` frame of :func:`decide_rows`' columns (the Jiangyin counts as
    nullable integers)."""
    result = pd.DataFrame(cols)
    result["pd_source"] = result["pd_source"].astype(object)  # as the batch has always written it
    for c in INT_COLUMNS:
        result[c] = result[c].astype("Int64")
    assert list(result.columns[: len(LIMITS_COLUMNS)]) == list(LIMITS_COLUMNS)
    return result


INT_COLUMNS = ("excluded_receivables", "jiangyin_a", "jiangyin_c")  # counts: nullable integers in the frame, ints in JSON


def records(cols: dict) -> list[dict]:
    """The rows of :func:`decide_rows`' columns as JSON-ready dicts, as the rows of
    :func:`limits_frame` read: NaN as None, numbers as Python numbers, the Jiangyin
    counts as ints. What a service answers without building the frame."""
    lists = {k: (v.tolist() if isinstance(v, np.ndarray) else list(v)) for k, v in cols.items()}
    out = []
    for i in range(len(lists["firm_id"])):
        row = {}
        for k, v in lists.items():
            x = v[i]
            if isinstance(x, float) and x != x:
                x = None
            elif k in INT_COLUMNS and x is not None:
                x = int(x)
            row[k] = x
        out.append(row)
    return out


def _predict(models: dict, pols: dict, rows: pd.DataFrame, ok: pd.Series, outputs: ModelOutputs | None,
             ids: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    preds = pd.DataFrame(index=rows.index, columns=PD_COLUMNS, dtype=float)
    if ok.any() and outputs is not None:
        p = outputs.pds.reindex(ids[ok]).set_axis(rows.index[ok])
        p["pd_propagation"] = rows.loc[ok, "pd_propagation"] if "pd_propagation" in rows else np.nan
        preds.loc[ok, PD_COLUMNS] = p[PD_COLUMNS].to_numpy()
    elif ok.any():
        p = predict_all({"decoupled": models["decoupled"], "hybrid": models["hybrid"]}, rows[ok])
        preds.loc[ok, PD_COLUMNS] = p[PD_COLUMNS].to_numpy()
    return preds, final_pd(preds, pols["final_pd"])


def _envelope(lim, lim_in, nodes, total, group_by, policy):
    frame = lim.assign(pd=lim_in["pd"])
    groups = nodes["batch_group"].fillna("(none)") if group_by == "batch_group" else pd.Series("batch", index=lim.index)
    parts = []
    for g, idx in groups.groupby(groups).groups.items():
        alloc = allocate_envelope(frame.loc[idx], float(total), policy)
        parts.append(alloc.assign(group=g))
    a = pd.concat(parts).reindex(lim.index) if parts else pd.DataFrame(columns=["allocation_cny", "group", "bound_by"], index=lim.index)
    lim = lim.copy()
    lim["limit_cny"] = a["allocation_cny"].astype(float).fillna(0.0)
    return lim, a


def _reasons(models, ctx: DecisionContext, chain, rows, nodes, ok, source, ids: pd.Series,
             outputs: ModelOutputs | None = None) -> tuple[pd.Series, dict]:
    """Reasons of the model that gave each final PD: SHAP for the LightGBM models (or the
    contributions in ``outputs``), the design terms for a firm only propagation scores."""
    # an empty list per row, counted, not by iterating the index (Arrow text: a scalar each)
    reasons = pd.Series([[] for _ in range(len(rows))], index=rows.index, dtype=object)
    contribs = {}
    for kind in ("hybrid", "decoupled"):
        use = ok & (source == kind)
        if use.any():
            X = rows[use].assign(industry=nodes.loc[use, "industry"])
            if outputs is None:
                reasons[use], contribs[kind] = shap_reasons(models[kind], X, medians=ctx.medians[kind])
            else:
                contribs[kind] = outputs.contributions[kind].reindex(ids[use]).set_axis(X.index)
                reasons[use] = reason_codes(contribs[kind], X, models[kind].features_, medians=ctx.medians[kind])
    use = ok & (source == "propagation")
    if use.any():
        reasons[use] = propagation_reasons(models["propagation"], chain, ids[use], design=ctx.propagation_design)
    return reasons, contribs


def jiangyin_columns(rows: pd.DataFrame, pols: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Jiangyin guide's grade and its counts of A and C over the 13 indicators for
    every request row with flow history (empty elsewhere; the grade is empty for a firm
    with a serious-dishonesty record), and the per-indicator grades behind them."""
    out = pd.DataFrame({"jiangyin_grade": "", "jiangyin_a": np.nan, "jiangyin_c": np.nan}, index=rows.index)
    known = rows["history_months"].notna() if "history_months" in rows else pd.Series(False, index=rows.index)
    detail = pd.DataFrame(index=rows.index[known])
    if known.any():
        rule = {k: v for k, v in as_data(pols["jiangyin"]).items() if k != "version"}
        X = rows[known]
        ind = indicator_grades(X, rule)
        g = grade_from_indicators(ind, rule, X.get("ind_bonus"), X.get("ind_dishonest"))
        detail = ind.join(g)
        out.loc[known, "jiangyin_grade"] = g["grade"]
        out.loc[known, "jiangyin_a"] = g["n_a"]
        out.loc[known, "jiangyin_c"] = g["n_c"]
    out["jiangyin_a"] = out["jiangyin_a"].astype("Int64")
    out["jiangyin_c"] = out["jiangyin_c"].astype("Int64")
    return out, detail


def summary(result: pd.DataFrame, pols: dict) -> dict:
    """Counts and totals of a batch (the metrics of its MLflow run)."""
    lgd = float(pols["limit_policy"]["lgd"])
    el = float((result["pd"].fillna(0) * lgd * result["limit_cny"]).sum())
    out = {"n_requested": len(result), "total_limit_cny": float(result["limit_cny"].sum()), "expected_loss_cny": el,
           "n_scored": int(result["pd"].notna().sum())}
    for d in ("approve", "review", "decline"):
        out[f"n_{d}"] = int((result["decision"] == d).sum())
    for g in ("premium", "grade_1", "alternate"):
        out[f"n_{g}"] = int((result["grade"] == g).sum())
    return out


__all__ = ["BatchOptions", "DecisionContext", "Decisions", "ModelOutputs", "Precomputed", "decide", "decide_rows", "eligibility", "finalize",
           "limits_frame", "off_list_reason", "precompute", "reason_text", "records", "summary"]
