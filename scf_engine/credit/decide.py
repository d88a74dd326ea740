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

import numpy as np
import pandas as pd

from scf_engine.contract import LIMITS_COLUMNS
from scf_engine.credit.consent import consent_lookup, consent_ok, consent_table
from scf_engine.credit.encumbrance import eligible_after_exclusions, earmarked, left_out, receivable_status
from scf_engine.credit.envelope import allocate_envelope
from scf_engine.credit.limits import apply_limits, buyer_eligible, core_lines, eligible_receivables
from scf_engine.credit.scale import ScoreScale, final_pd, score_frame
from scf_engine.errors import RequestError
from scf_engine.explain.model_reasons import propagation_reasons, shap_reasons
from scf_engine.explain.reasons import format_reasons, industry_medians
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

    def __post_init__(self):
        if self.group_by not in GROUP_BY:
            raise RequestError(f"--group-by takes {' or '.join(GROUP_BY)}, not {self.group_by!r}")
        if self.group_limit is not None and not self.group_limit >= 0:
            raise RequestError(f"--group-limit must be a number >= 0, not {self.group_limit!r}")


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
        dq = report.touching_counts() if report is not None else pd.Series(dtype="int64")
        d = dataset.defaults.set_index("firm_id")["default_on"].astype("datetime64[s]")
        snap = data.snapshot
        status = receivable_status(snap.receivables, snap.financings,
                                   buyer_eligible(chain.nodes, pols["limit_policy"], pols["master_scale"]),
                                   data.as_of, earmarks)
        eligible, excluded = eligible_after_exclusions(
            eligible_receivables(chain, pols["limit_policy"], pols["master_scale"]), status)
        return cls(dataset.firms.set_index("firm_id"), d, eligible,
                   core_lines(chain, pols["limit_policy"]), medians,
                   models["propagation"].design(chain)[0] if "propagation" in models else None, dq,
                   consent_table(consents, data.as_of), status, excluded)


# ----------------------------------------------------------------------------- eligibility


def eligibility(dataset, requests: pd.DataFrame, as_of: pd.Timestamp, consent: pd.Series, require_consent: bool,
                dishonest: pd.Series | None = None, off_list: pd.Series | None = None, *,
                context: DecisionContext | None = None) -> pd.Series:
    """Per request row, why the firm may not be scored at ``as_of`` ("" when it may);
    ``context`` (optional): the dataset's firms and default dates already indexed."""
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
    if off_list is not None:
        why[(why == "") & off_list] = "not on the programme's whitelist (名单制)"
    if require_consent:
        no_consent = (why == "") & (consent != "ok")
        why[no_consent] = [f"not scored: no valid data-sharing authorisation ({s.replace('_', ' ')})" for s in consent[no_consent]]
    return why


def single_core(nodes: pd.DataFrame) -> str | None:
    """The one core every scorable firm of the batch is tied to, if there is exactly one
    (a 1+N chain batch); else None."""
    cores = nodes["cores"].dropna()
    if cores.empty:
        return None
    common = set(cores.iloc[0])
    for c in cores.iloc[1:]:
        common &= set(c)
    return sorted(common)[0] if len(common) == 1 and all(len(c) >= 1 for c in cores) else None


# ------------------------------------------------------------------------------- the core


def decide(data, models: dict, pols: dict, requests: pd.DataFrame, *, dataset, consents: pd.DataFrame | None = None,
           options: BatchOptions = BatchOptions(), scale: ScoreScale | None = None,
           context: DecisionContext | None = None, earmarks: pd.DataFrame | None = None) -> Decisions:
    """Decisions for ``requests`` (``firm_id``, optional ``requested_amount`` and
    ``request_problem``, as :func:`scf_engine.ingest.requests.read_batch` returns) on the
    assembled snapshot ``data`` (an :class:`~scf_engine.assemble.SnapshotData` with the
    propagation model's outputs added), with ``models`` (propagation, decoupled, hybrid),
    the loaded policies ``pols`` and the consents frame. ``dataset`` tells known from
    unknown firms, founding and default dates and data-quality issues; ``scale`` is the
    score scale saved with the models (default: the policy's); ``context``: the
    snapshot's :class:`DecisionContext` (built here when not given); ``earmarks``: the
    receivables earlier batches on this snapshot lent against (used when the context is
    built here)."""
    T = data.as_of
    ctx = context if context is not None else DecisionContext.build(data, models, pols, dataset, consents, earmarks)
    requests = requests.reset_index(drop=True)
    consent = consent_lookup(requests["firm_id"], ctx.consent).set_axis(requests.index)
    require = bool(pols["limit_policy"].get("require_consent", False))
    rows = data.table.reindex(requests["firm_id"]).set_axis(requests.index)
    off_list = ~requests["firm_id"].isin(options.whitelist) if options.whitelist is not None else None
    decline_off_list = as_data(pols["limit_policy"]).get("off_whitelist", "decline") == "decline"
    why = eligibility(dataset, requests, T, consent, require, rows.get("ind_dishonest"),
                      off_list if decline_off_list else None, context=ctx)
    preds, fin = _predict(models, pols, rows, why == "")
    why[(why == "") & fin["pd"].isna()] = "not scorable: no fund-flow history and no chain link to a core"
    ok = why == ""
    sg = score_frame(fin["pd"].where(ok), scale or ScoreScale.from_policy(pols["score_scale"]))
    nodes = data.chain.nodes.reindex(requests["firm_id"]).set_axis(requests.index)
    core = options.chain_core or single_core(nodes[ok])
    lim_in = _limit_inputs(ctx, requests, rows, nodes, fin["pd"].where(ok), sg["grade"].where(ok), consent,
                           require, core)
    if off_list is not None and not decline_off_list:
        lim_in["off_whitelist"] = off_list.to_numpy()
    lim, group = _limits(lim_in, nodes, ok, pols, core, ctx.lines, options)
    reasons, contribs = _reasons(models, ctx, data.chain, rows, nodes, ok, fin["pd_source"], requests["firm_id"])
    result = _result(requests, T, fin, sg, preds, lim, ok, why, reasons, consent, group, ctx)
    jy_cols, jy = jiangyin_columns(rows, pols)
    result = result.join(jy_cols)
    status = ctx.receivables
    return Decisions(T, result, ok, reasons, contribs, lim[["limit_basis", "decision_reasons", "binding_caps"]], core,
                     summary(result, pols), jy, left_out(status, requests["firm_id"][ok]) if status is not None else None,
                     earmarked(status, result[ok]) if status is not None else [])


def _predict(models: dict, pols: dict, rows: pd.DataFrame, ok: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    preds = pd.DataFrame(index=rows.index, columns=PD_COLUMNS, dtype=float)
    if ok.any():
        p = predict_all({"decoupled": models["decoupled"], "hybrid": models["hybrid"]}, rows[ok])
        preds.loc[ok, PD_COLUMNS] = p[PD_COLUMNS].to_numpy()
    return preds, final_pd(preds, pols["final_pd"])


def _limit_inputs(ctx: DecisionContext, requests, rows, nodes, pd_, grade, consent, require, core) -> pd.DataFrame:
    """One row per request: what the limit policy reads (credit.limits' input frame)."""
    elig = ctx.eligible
    dq_count = requests["firm_id"].map(ctx.dq_counts).fillna(0).astype(int)
    return pd.DataFrame({
        "firm_id": requests["firm_id"], "pd": pd_, "grade": grade,
        "trade_in_12m": nodes["trade_in_12m"].fillna(0.0),
        "eligible_receivables": elig.reindex(requests["firm_id"]).fillna(0.0).to_numpy(),
        "requested_amount": requests["requested_amount"] if "requested_amount" in requests else np.nan,
        "core_id": core if core else np.nan,
        "cycle_share_12m": rows.get("cycle_share_12m"), "round_trip_share_12m": rows.get("round_trip_share_12m"),
        "in_trade_cycle": rows.get("in_trade_cycle"), "dq_issues": dq_count,
        "consent_ok": consent_ok(consent).to_numpy() if require else True,
        "consent_status": consent.to_numpy(),
    }, index=requests.index)


def _limits(lim_in, nodes, ok, pols, core, core_line: pd.Series, options: BatchOptions):
    """Limits for the scorable rows (unique firms: a repeat is not scorable), envelopes,
    and a zero-limit decline for every other row."""
    policy = pols["limit_policy"]
    lines = core_line if core else None
    lim = apply_limits(lim_in[ok], policy, core_line=lines).reindex(lim_in.index)
    group = None
    if options.group_limit is not None:
        lim_ok, group = _envelope(lim[ok], lim_in[ok], nodes[ok], options.group_limit, options.group_by, policy)
        lim.loc[ok, "limit_cny"] = lim_ok["limit_cny"]
        group = group.reindex(lim_in.index)
    lim.loc[~ok, "limit_cny"] = 0.0
    lim.loc[~ok, "decision"] = "decline"
    for col in ("binding_caps", "decision_reasons", "limit_basis"):
        lim[col] = [v if isinstance(v, list) else [] for v in lim[col]]
    return lim, group


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


def _reasons(models, ctx: DecisionContext, chain, rows, nodes, ok, source, ids: pd.Series) -> tuple[pd.Series, dict]:
    """Reasons of the model that gave each final PD: SHAP for the LightGBM models, the
    design terms for a firm only propagation scores."""
    reasons = pd.Series([[] for _ in rows.index], index=rows.index, dtype=object)
    contribs = {}
    for kind in ("hybrid", "decoupled"):
        use = ok & (source == kind)
        if use.any():
            X = rows[use].assign(industry=nodes.loc[use, "industry"])
            reasons[use], contribs[kind] = shap_reasons(models[kind], X, medians=ctx.medians[kind])
    use = ok & (source == "propagation")
    if use.any():
        reasons[use] = propagation_reasons(models["propagation"], chain, ids[use], design=ctx.propagation_design)
    return reasons, contribs


def _result(requests, T, fin, sg, preds, lim, ok, why, reasons, consent, group, ctx) -> pd.DataFrame:
    """The limits.csv frame: the contract's columns first, then the working."""
    text = [format_reasons(r) if o and r else ("" if o else w) for r, o, w in zip(reasons, ok, why)]
    ids = requests["firm_id"]
    excluded = ctx.excluded if ctx.excluded is not None else pd.Series(dtype="int64")
    result = pd.DataFrame({
        "firm_id": requests["firm_id"], "as_of": T.strftime("%Y-%m-%d"),
        "pd": fin["pd"].where(ok).round(6), "score": sg["score"].where(ok), "grade": sg["grade"].where(ok),
        "limit_cny": lim["limit_cny"].fillna(0.0), "decision": lim["decision"], "reasons": text,
        "pd_propagation": preds["pd_propagation"].round(6), "pd_decoupled": preds["pd_decoupled"].round(6),
        # v1.1: what backs the receivable part, and how many receivables were left out
        "eligible_receivables_cny": ctx.eligible.reindex(ids).fillna(0.0).set_axis(requests.index).where(ok),
        "excluded_receivables": ids.map(excluded).fillna(0).astype(int).where(ok).astype("Int64"),
        "pd_hybrid": preds["pd_hybrid"].round(6), "pd_source": fin["pd_source"].where(ok, ""),
        "requested_amount": requests["requested_amount"] if "requested_amount" in requests else np.nan,
        "uncapped_limit": lim["uncapped_limit"].where(ok),
        "flow_part": lim["flow_part"].where(ok), "receivable_part": lim["receivable_part"].where(ok),
        "binding_caps": lim["binding_caps"].map(lambda c: ";".join(c) if isinstance(c, list) else ""),
        "decision_reasons": [("; ".join(r) if isinstance(r, list) else "") if o else w
                             for r, o, w in zip(lim["decision_reasons"], ok, why)],
        "consent": consent.to_numpy(),
    })
    if group is not None:
        result["group"] = group["group"]
        result["group_allocation_cny"] = group["allocation_cny"]
        result["group_bound_by"] = group["bound_by"]
    assert list(result.columns[: len(LIMITS_COLUMNS)]) == list(LIMITS_COLUMNS)
    return result


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


__all__ = ["BatchOptions", "DecisionContext", "Decisions", "decide", "eligibility", "single_core", "summary"]
