"""Limits and decisions: "trade data sets the scene, fund flows set the amount".

The amount a firm can carry is read from money it actually received, not from its
balance sheet: a share of its 12-month trade inflow (the share rising with its grade),
plus an advance on the receivables a strong buyer has confirmed (确权) and not yet paid.
Caps then bring the amount down, and each one that lowers it is recorded, because the
first question of a credit committee reading a limit is "what held it back?":

1. ``requested``: the firm asked for less (batch ``requested_amount``);
2. ``max_limit``: the policy's largest batch limit (``max_limit_cny``);
3. ``expected_loss``: ``pd * lgd * limit <= max_expected_loss_cny`` per firm;
4. ``core_line``: in one core's chain (1+N), the suppliers' limits together may not
   exceed the core's line; they are scaled down pro rata (deterministic: a firm's share
   depends only on its own limit and the group total);
5. rounding down to ``round_to_cny`` (shown in the basis, not a cap).

The decision follows: ``decline`` (not scorable, PD above ``pd_decline_above``, or
nothing to lend), ``review`` (alternate grade, an authenticity flag, data-quality issues,
missing consent), ``approve`` otherwise. Every reason is a plain sentence for the memo.

Input frame of :func:`apply_limits` (one row per firm):

==========================  ==========================================================
``firm_id``                 str, required
``pd``                      final 12-month PD, NaN when no model scored the firm
``grade``                   ``premium`` / ``grade_1`` / ``alternate`` (None/NaN if not scorable)
``trade_in_12m``            CNY, trade inflow of the last 12 months (fund-flow platform)
``eligible_receivables``    CNY, from :func:`eligible_receivables`
``requested_amount``        optional; CNY, NaN where the batch gives none
``core_id``                 optional; the core whose 1+N chain the firm is financed in,
                            NaN where the batch is not one core's chain
``cycle_share_12m``         optional; share of trade money on rings (models/authenticity.yaml)
``round_trip_share_12m``    optional; share of trade money in round trips
``in_trade_cycle``          optional; 1 when the firm sits on a cycle of the trade graph
``months_since_reported``   optional; months since the firm's own account last reported
                            (models/features.yaml); NaN: never reported, not silent
``dq_issues``               optional; count of data-quality issues (quarantined rows...)
``consent_ok``              bool; required when the policy has ``require_consent: true``
``consent_status``          optional; ``ok/missing/expired/not_yet_valid`` (credit.consent)
                            used only to word the consent reason
``off_whitelist``           optional; True for a firm off the batch's whitelist when the
                            policy sends such firms to review (``off_whitelist: review``)
``whitelist_list``          optional; the programme's list picked from the file
                            (``--list``), named by the review reason
==========================  ==========================================================

An optional column that is absent counts as "no signal" (0 / NaN). NaN in an
authenticity or data-quality column (a firm without flows) also counts as no signal.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np
import pandas as pd

from scf_engine.contract import GRADES
from scf_engine.policies import Policy, PolicyError, as_data

REQUIRED_COLUMNS = ("firm_id", "pd", "grade", "trade_in_12m", "eligible_receivables")
CAPS = ("requested", "max_limit", "expected_loss", "core_line")  # order of application

CAP_SENTENCES = {
    "requested": "the requested amount",
    "max_limit": "the policy's maximum batch limit",
    "expected_loss": "the per-firm expected-loss budget",
    "core_line": "the core enterprise's line shared pro rata by its suppliers in the batch",
}


def _cny(x: float) -> str:
    return f"CNY {x:,.0f}"


def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%"


# ------------------------------------------------------------------------- from the chain


def buyer_eligible(nodes: pd.DataFrame, policy: Policy | Mapping[str, Any],
                   master_scale: Policy | Mapping[str, Any]) -> pd.Series:
    """Per firm (index of ``nodes``): True for a core whose confirmed payables count.

    "At or above ``buyer_rating_floor`` on the master scale" is read by PD: a core whose
    rating maps to a PD no higher than the floor rating's PD. A core marked ``defaulted``
    never counts.
    """
    d, scale = as_data(policy), as_data(master_scale)["ratings"]
    floor = d["buyer_rating_floor"]
    if floor not in scale:
        raise PolicyError(f"limit_policy: buyer_rating_floor {floor!r} is not a rating of the master scale")
    rating_pd = nodes["core_rating"].map(lambda r: scale.get(r, np.nan) if isinstance(r, str) else np.nan)
    ok = nodes["is_core"].astype(bool) & (rating_pd.astype(float) <= float(scale[floor]))
    if "defaulted" in nodes:
        ok &= ~nodes["defaulted"].fillna(False).astype(bool)
    return ok


def eligible_receivables(chain, policy: Policy | Mapping[str, Any],
                         master_scale: Policy | Mapping[str, Any]) -> pd.Series:
    """Confirmed, unpaid receivables each firm holds on eligible cores (CNY), by firm_id.

    From ``chain.edges.confirmed_open_not_due`` (confirmed, unpaid and not yet due: paper
    already overdue is not lent against) on edges whose buyer passes
    :func:`buyer_eligible`; every firm of ``chain.nodes`` appears (0 where none).
    """
    ok = buyer_eligible(chain.nodes, policy, master_scale)
    edges = chain.edges
    good = edges["buyer"].map(ok).fillna(False).astype(bool)
    out = edges.loc[good].groupby("supplier")["confirmed_open_not_due"].sum()
    out = out.reindex(chain.nodes.index, fill_value=0.0).astype(float)
    out.index.name = "firm_id"
    return out.rename("eligible_receivables")


def core_lines(chain, policy: Policy | Mapping[str, Any]) -> pd.Series:
    """Each core's line for its 1+N chain (CNY), by core firm_id:
    ``core_line_share_of_core_payments`` x the trade money the core paid its suppliers
    in the dataset over 12 months (``trade_volume_12m`` of edges where it is the buyer).
    A bank that sets the line itself passes its own Series to :func:`apply_limits`."""
    share = float(as_data(policy)["core_line_share_of_core_payments"])
    cores = chain.nodes.index[chain.nodes["is_core"].astype(bool)]
    paid = chain.edges.groupby("buyer")["trade_volume_12m"].sum()
    out = share * paid.reindex(cores, fill_value=0.0).astype(float)
    out.index.name = "firm_id"
    return out.rename("core_line_cny")


# ------------------------------------------------------------------------------ helpers


def _column(frame: pd.DataFrame, name: str, default: float = np.nan) -> np.ndarray:
    if name not in frame:
        return np.full(len(frame), default, dtype=float)
    return pd.to_numeric(frame[name], errors="raise").astype(float).to_numpy()


def _check_frame(frame: pd.DataFrame, d: Mapping[str, Any]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame]
    if d.get("require_consent", False) and "consent_ok" not in frame:
        missing.append("consent_ok (the policy requires consent)")
    if missing:
        raise ValueError(f"limit frame lacks column(s): {', '.join(missing)}")
    if frame["firm_id"].duplicated().any():
        raise ValueError("limit frame: firm_id must be unique")
    g = frame["grade"]
    bad = g.notna() & ~g.isin(GRADES)
    if bad.any():
        raise ValueError(f"limit frame: unknown grade(s) {sorted(set(g[bad]))}")


def _round_down(x: np.ndarray, unit: float) -> np.ndarray:
    if unit <= 0:
        return x
    # compared to a millionth of a yuan, so 0.2 * 10,000,000 = 1,999,999.9999999998
    # still rounds to 2,000,000 rather than 1,990,000
    return np.floor(np.round(x, 6) / unit) * unit


# ------------------------------------------------------------------------------- limits


def apply_limits(frame: pd.DataFrame, policy: Policy | Mapping[str, Any],
                 core_line: pd.Series | Mapping[str, float] | None = None) -> pd.DataFrame:
    """Limits and decisions for each firm of ``frame`` (see the module docstring for the
    columns) under ``limit_policy.yaml``.

    ``core_line``: the line of each core (by core firm_id), needed when any row has a
    ``core_id``; :func:`core_lines` computes the policy's default from the chain.

    Returns, on the frame's index: ``firm_id, flow_share, flow_part, receivable_part,
    uncapped_limit, limit_cny, binding_caps`` (list, in order of application),
    ``decision, decision_reasons`` (list of sentences) and ``limit_basis`` (list of lines
    for the credit memo). The work is :func:`limit_arrays` on the frame's columns.
    """
    d = as_data(policy)
    _check_frame(frame, d)
    return pd.DataFrame(limit_arrays(frame_columns(frame), d, core_line), index=frame.index)


# the features the review flags read (:func:`_review_flags`): authenticity and a silent
# account; the decision core carries them from the snapshot to the limit frame
REVIEW_FEATURES = ("cycle_share_12m", "round_trip_share_12m", "in_trade_cycle", "months_since_reported")


def frame_columns(frame: pd.DataFrame) -> dict:
    """The columns of a limit frame as the arrays :func:`limit_arrays` reads (an absent
    optional column stays absent)."""
    c = {"firm_id": frame["firm_id"].astype(str).to_numpy(),
         "grade": frame["grade"].where(frame["grade"].notna(), None).to_numpy(dtype=object)}
    for name in ("pd", "trade_in_12m", "eligible_receivables", "requested_amount", *REVIEW_FEATURES, "dq_issues"):
        if name in frame:
            c[name] = _column(frame, name)
    for name in ("consent_ok", "off_whitelist"):
        if name in frame:
            c[name] = frame[name].fillna(False).astype(bool).to_numpy()
    for name in ("core_id", "consent_status", "whitelist_list"):
        if name in frame:
            c[name] = frame[name].to_numpy(dtype=object)
    return c


def limit_arrays(c: Mapping[str, np.ndarray], policy: Policy | Mapping[str, Any],
                 core_line: pd.Series | Mapping[str, float] | None = None, *, basis: bool = True) -> dict:
    """:func:`apply_limits` on plain arrays (``c``: column name -> array, the frame's
    columns; ``firm_id`` and ``grade`` as object arrays, numbers as floats, ``consent_ok``
    and ``off_whitelist`` as bools), returning its columns as a dict of arrays and lists.
    ``basis``: write the memo's ``limit_basis`` lines (False: an empty list per row; the
    lines are text about numbers already in the other columns, and formatting them was
    over half of this function's time at 78,000 firms, at every as-of of ``scf monitor``,
    which writes no memo).

    Numpy throughout, no pandas on the way: this is the one amount-dependent step of a
    decision, and a service runs it per request on one row, where the fixed cost of a
    DataFrame operation (tens of microseconds each) would be the whole cost."""
    d = as_data(policy)
    w = _amounts(c, d)
    _apply_caps(c, d, w)
    _apply_core_line(c, w, core_line)
    unit = float(d.get("round_to_cny", 0) or 0)
    w.unit = unit
    w.limit_final = _round_down(np.clip(w.limit, 0, None), unit)
    flags = _review_flags(c, w.n, d)
    decision = np.empty(w.n, dtype=object)
    reasons: list[list[str]] = []
    lines: list[list[str]] = []  # the memo's limit_basis
    for i in range(w.n):
        decision[i], why = _decide_row(i, w, flags)
        reasons.append(why)
        lines.append(_basis_lines(i, w, decision[i]) if basis else [])
    limit_out = np.where(decision == "decline", 0.0, w.limit_final)
    return {"firm_id": w.firm, "flow_share": w.flow_share, "flow_part": w.flow_part, "receivable_part": w.recv_part,
            "uncapped_limit": w.uncapped, "limit_cny": limit_out, "binding_caps": w.binding,
            "decision": decision, "decision_reasons": reasons, "limit_basis": lines}


def _col(c: Mapping[str, np.ndarray], name: str, n: int, default: float = np.nan) -> np.ndarray:
    return np.asarray(c[name], dtype=float) if name in c else np.full(n, default, dtype=float)


def _amounts(c: Mapping[str, np.ndarray], d) -> SimpleNamespace:
    """Who is scorable and lendable, and the two parts of the uncapped limit."""
    firm = np.asarray(c["firm_id"], dtype=object)
    n = len(firm)
    w = SimpleNamespace(n=n, firm=firm, p=_col(c, "pd", n))
    w.grade = np.asarray(c["grade"], dtype=object)
    w.scorable = ~np.isnan(w.p) & np.array([g in GRADES for g in w.grade], dtype=bool)
    share_by_grade = {g: float(v) for g, v in d["flow_share_by_grade"].items()}
    w.flow_share = np.array([share_by_grade.get(g, 0.0) if ok else 0.0 for g, ok in zip(w.grade, w.scorable)], dtype=float)
    w.trade_in = _finite0(_col(c, "trade_in_12m", n)).clip(0)
    w.recv = _finite0(_col(c, "eligible_receivables", n)).clip(0)
    w.advance = float(d["advance_rate"])
    w.flow_part = w.flow_share * w.trade_in
    w.recv_part = np.where(w.scorable, w.advance * w.recv, 0.0)
    w.uncapped = w.flow_part + w.recv_part
    w.lgd = float(d["lgd"])
    w.pd_max = float(d["pd_decline_above"])
    w.declined_pd = w.scorable & (w.p > w.pd_max)
    w.lendable = w.scorable & ~w.declined_pd
    return w


def _apply_caps(c: Mapping[str, np.ndarray], d, w: SimpleNamespace) -> None:
    """The requested amount, the policy maximum and the expected-loss budget, in order;
    each one that lowers a limit is recorded."""
    n, p = w.n, w.p
    caps = {
        "requested": _col(c, "requested_amount", n),
        "max_limit": np.full(n, float(d.get("max_limit_cny", np.inf))),
    }
    w.max_el = d.get("max_expected_loss_cny")
    with np.errstate(divide="ignore"):
        caps["expected_loss"] = (np.where(p * w.lgd > 0, float(w.max_el) / (p * w.lgd), np.inf)
                                 if w.max_el is not None else np.full(n, np.inf))
    bad_req = ~np.isnan(caps["requested"]) & (caps["requested"] < 0)
    if bad_req.any():
        raise ValueError("requested_amount must be >= 0")
    limit = np.where(w.lendable, w.uncapped, 0.0)
    w.binding = [[] for _ in range(n)]
    w.cap_value = {}
    for name in ("requested", "max_limit", "expected_loss"):
        cap = np.where(np.isnan(caps[name]), np.inf, caps[name])
        w.cap_value[name] = cap
        binds = w.lendable & (cap < limit)
        limit = np.where(binds, cap, limit)
        for i in np.flatnonzero(binds):
            w.binding[i].append(name)
    w.limit = limit


def _apply_core_line(c: Mapping[str, np.ndarray], w: SimpleNamespace, core_line) -> None:
    """One core's chain: the suppliers' limits together within the core's line, pro rata."""
    n, limit, lendable = w.n, w.limit, w.lendable
    core_id = np.asarray(c["core_id"], dtype=object) if "core_id" in c else np.full(n, None, dtype=object)
    has_core = np.array([c is not None and not (isinstance(c, float) and math.isnan(c)) for c in core_id], dtype=bool)
    w.core_scale = np.ones(n)
    w.line_of = np.full(n, np.nan)
    if not has_core.any():
        return
    keys = [str(k) for k in core_id[has_core]]
    line_for = _lines_for(core_line, keys)
    value = np.where(has_core & lendable, limit, 0.0)
    if len(set(keys)) == len(keys):  # one supplier per core: the group's sum is its own limit
        used = value
    else:
        keys_all = np.where(has_core, core_id, "").astype(str)
        used = pd.Series(value).groupby(keys_all).transform("sum").to_numpy()
    w.line_of = np.full(n, np.nan)
    w.line_of[has_core] = [line_for[k] for k in keys]
    over = has_core & (used > w.line_of) & (used > 0)
    w.core_scale = np.where(over, np.divide(w.line_of, used, out=np.ones(n), where=used > 0), 1.0)
    binds = over & lendable & (limit > 0)
    w.limit = limit * w.core_scale
    for i in np.flatnonzero(binds):
        w.binding[i].append("core_line")


def _lines_for(core_line, keys: list) -> dict:
    """The line of each core in ``keys`` (str -> float); a core without one is an error.
    A dict keyed by str (what a service keeps) is read as is, anything else converted."""
    if isinstance(core_line, pd.Series):
        core_line = dict(zip(core_line.index.astype(str), core_line.astype(float)))
    src = {} if core_line is None else core_line
    if any(not isinstance(k, str) for k in src):
        src = {str(k): v for k, v in src.items()}
    unknown = sorted(set(k for k in keys if k not in src))
    if unknown:
        raise ValueError(f"no core line given for core(s) {', '.join(unknown)}")
    return {k: float(src[k]) for k in set(keys)}


def _finite0(x: np.ndarray) -> np.ndarray:
    """NaN as 0 (``np.nan_to_num``), skipped when every value is finite: it is the
    slowest numpy call of a one-row request."""
    return x if np.isfinite(x).all() else np.nan_to_num(x, nan=0.0)


def _review_flags(c: Mapping[str, np.ndarray], n: int, d) -> SimpleNamespace:
    """What sends a lendable firm to review: authenticity, a silent account, data quality, consent."""
    return SimpleNamespace(
        cycle=_finite0(_col(c, "cycle_share_12m", n)),
        rtrip=_finite0(_col(c, "round_trip_share_12m", n)),
        in_cycle=_finite0(_col(c, "in_trade_cycle", n)),
        silent=_finite0(_col(c, "months_since_reported", n)),
        silent_max=d.get("silent_account_review_months"),
        dq=_finite0(_col(c, "dq_issues", n)),
        off_list=np.asarray(c["off_whitelist"], dtype=bool) if "off_whitelist" in c else np.zeros(n, dtype=bool),
        list_name=np.asarray(c["whitelist_list"], dtype=object) if "whitelist_list" in c else np.full(n, None, dtype=object),
        rt_max=float(d.get("round_trip_review_above", 0.0)),
        need_consent=bool(d.get("require_consent", False)),
        consent_ok=np.asarray(c["consent_ok"], dtype=bool) if "consent_ok" in c else np.ones(n, dtype=bool),
        consent_status=(np.asarray(c["consent_status"], dtype=object) if "consent_status" in c
                        else np.full(n, None, dtype=object)),
    )


CONSENT_WORDING = {"missing": "no data-use authorisation is on file",
                   "expired": "the firm's data-use authorisation has expired",
                   "not_yet_valid": "the firm's data-use authorisation is not yet valid"}


def _decide_row(i: int, w: SimpleNamespace, f: SimpleNamespace) -> tuple[str, list[str]]:
    """Decision and its reasons (plain sentences) for row ``i``."""
    why: list[str] = []
    if not w.scorable[i]:
        why.append("No model could score the firm, so no PD or grade is available.")
    elif w.declined_pd[i]:
        why.append(f"PD {_pct(w.p[i], 2)} is above the decline threshold of {_pct(w.pd_max, 2)}.")
    elif w.limit_final[i] <= 0:
        if w.uncapped[i] <= 0:
            why.append("No trade inflow in the last 12 months and no eligible confirmed receivables, "
                       "so there is no amount to lend against.")
        else:
            why.append(f"After caps and rounding down to {_cny(w.unit)} the limit is zero.")
    if why:
        return "decline", why
    if w.grade[i] == "alternate":
        why.append("Grade is alternate (备选): normal, strict review.")
    if f.cycle[i] > 0:
        why.append(f"{_pct(f.cycle[i])} of trade money moved on rings: passed hop after hop through "
                   "three or more parties and back (possible fabricated trade, 资金空转).")
    if f.rtrip[i] > f.rt_max:
        why.append(f"{_pct(f.rtrip[i])} of trade money went out and came back at a matching amount "
                   f"within days, above the {_pct(f.rt_max)} review threshold.")
    if f.in_cycle[i] >= 1:
        why.append("The firm sits on a closed loop of the trade graph (goods or money may circulate).")
    if f.silent_max is not None and f.silent[i] >= f.silent_max:
        why.append(f"The firm's own account has reported no flows for the last {int(f.silent[i])} months (no payroll, "
                   "tax, social insurance, utilities or outside trade reached the platform, 账户流水中断): its missed "
                   "payments cannot be counted; ask for its account statements before lending.")
    if f.dq[i] > 0:
        why.append(f"{int(f.dq[i])} data-quality issue(s) in the firm's records.")
    if f.off_list[i]:
        named = f", list {f.list_name[i]!r}" if f.list_name[i] is not None else ""
        why.append(f"Not on the programme's whitelist (名单制){named}: manual review before any lending.")
    if f.need_consent and not f.consent_ok[i]:
        why.append(f"Consent check failed: {CONSENT_WORDING.get(f.consent_status[i], 'no valid data-use authorisation')}; "
                   "data may be used only with the firm's authorisation.")
    if why:
        return "review", why
    return "approve", ["Within policy: scorable, PD below the decline threshold, no review flags."]


def _basis_lines(i: int, w: SimpleNamespace, decision: str) -> list[str]:
    """The memo's account of how row ``i``'s limit was reached."""
    if not w.scorable[i]:
        return ["Limit: CNY 0 (not scorable)."]
    lines = [f"Flow part: {_pct(w.flow_share[i], 0)} ({w.grade[i]}) of 12-month trade inflow "
             f"{_cny(w.trade_in[i])} = {_cny(w.flow_part[i])}.",
             f"Receivable part: {_pct(w.advance, 0)} of eligible confirmed open receivables "
             f"{_cny(w.recv[i])} = {_cny(w.recv_part[i])}.",
             f"Uncapped limit: {_cny(w.uncapped[i])}."]
    for name in w.binding[i]:
        if name == "core_line":
            lines.append(f"Capped by {CAP_SENTENCES[name]}: line {_cny(w.line_of[i])}, suppliers scaled "
                         f"to {_pct(w.core_scale[i])} of their limits.")
        elif name == "expected_loss":
            lines.append(f"Capped by {CAP_SENTENCES[name]} ({_cny(float(w.max_el))} at PD {_pct(w.p[i], 2)}, "
                         f"LGD {_pct(w.lgd, 0)}): {_cny(w.cap_value[name][i])}.")
        else:
            lines.append(f"Capped by {CAP_SENTENCES[name]}: {_cny(w.cap_value[name][i])}.")
    if w.lendable[i] and w.unit > 0 and w.limit_final[i] < w.limit[i]:
        lines.append(f"Rounded down to a multiple of {_cny(w.unit)}.")
    lines.append("Limit: CNY 0 (declined, see the reasons)." if decision == "decline" else f"Limit: {_cny(w.limit_final[i])}.")
    return lines
