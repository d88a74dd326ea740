"""Levels, actions and credit repair for one as-of (pure: frames in, frames out).

The decision core has already re-scored the portfolio; this module turns its answer, the
batch's answer and the signals that fired into ``portfolio.csv``: a level (the worst of
the signals' levels and the PD bands), an action by the level (red freezes, amber
reduces, green keeps, and a clean record earns a raise: 信用奖惩闭环), and credit
repair (信用修复): a firm whose delays are cured and stayed cured gets its batch grade
back.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scf_engine import policies
from scf_engine.credit.scale import grades_for_scores
from scf_engine.monitor.signals import fill, holds, rating_pd
from scf_engine.policies import as_data

PORTFOLIO_COLUMNS = ["firm_id", "as_of", "pd", "score", "grade", "pd_at_batch", "grade_at_batch", "limit_at_batch",
                     "limit_now", "action", "level", "reasons"]
LEVEL_RANK = {"green": 0, "amber": 1, "red": 2}
GRADE_RANK = {"premium": 0, "grade_1": 1, "alternate": 2}  # higher is worse


def persistent(frame: pd.DataFrame, history: pd.DataFrame | None, floor: float, months: int) -> pd.Series:
    """Firms at or above PD ``floor`` now and at each of the ``months - 1`` as-of dates of
    this pass just before (``history``: earlier rows, ``firm_id, as_of, pd``)."""
    now = frame["pd"].astype(float) >= floor
    if months <= 1:
        return now
    if history is None or history.empty:
        return pd.Series(False, index=frame.index)
    last = sorted(history["as_of"].unique())[-(months - 1):]
    if len(last) < months - 1:
        return pd.Series(False, index=frame.index)
    h = history[history["as_of"].isin(last)]
    held = (h["pd"].astype(float) >= floor).groupby(h["firm_id"]).agg(["all", "size"])
    ok = held["all"] & (held["size"] == months - 1)
    return now & ok.reindex(frame.index).fillna(False).astype(bool)


def watch_list(frame: pd.DataFrame, policy) -> pd.Series:
    """关注名单: the firms whose re-scored PD is among the worst ``watch_list.share`` of the
    live (not yet defaulted) lent firms with a PD at this as-of: a firm is on it when fewer
    than ``share`` x n live firms have a strictly higher PD (ties share a place, so a tie
    at the cut puts all of them on). Empty below ``min_firms`` live firms. A rank, not a
    PD band: it does not move with the model's calibration."""
    w = as_data(policy)["watch_list"]
    pd_ = frame["pd"].astype(float)
    live = pd_.notna() & ~(frame["in_default"].astype(bool) if "in_default" in frame else False)
    if live.sum() < int(w["min_firms"]) or float(w["share"]) <= 0:
        return pd.Series(False, index=frame.index)
    higher = pd_[live].rank(method="min", ascending=False) - 1  # live firms with a strictly higher PD
    return (higher < float(w["share"]) * live.sum()).reindex(frame.index, fill_value=False)


def firm_levels(frame: pd.DataFrame, alerts: pd.DataFrame, policy, ratings: dict | None = None,
                history: pd.DataFrame | None = None, watched: pd.Series | None = None) -> pd.Series:
    """Per firm: the worst of its alerts' levels (escalations of monitoring.yaml included),
    of the PD levels on the master scale (``ratings``: master_scale.yaml's; ``history``:
    this pass's earlier rows, for the persistent red) and amber for the watch list
    (``watched``: :func:`watch_list`'s answer, computed here when not given)."""
    p = as_data(policy)["pd_levels"]
    ratings = ratings if ratings is not None else as_data(policies.load("master_scale"))["ratings"]
    rank = pd.Series(0, index=frame.index)
    pd_ = frame["pd"].astype(float)
    rank[pd_ >= rating_pd(ratings, p["amber_rating"])] = 1
    rank[watched if watched is not None else watch_list(frame, policy)] = 1
    rank[pd_ >= rating_pd(ratings, p["red_rating"])] = 2
    rank[persistent(frame, history, rating_pd(ratings, p["red_persistent_rating"]), int(p["persist_months"]))] = 2
    if len(alerts):
        worst = alerts.assign(r=alerts["level"].map(LEVEL_RANK)).groupby("firm_id")["r"].max()
        rank = np.maximum(rank, worst.reindex(frame.index).fillna(0).astype(int))
    names = {v: k for k, v in LEVEL_RANK.items()}
    return pd.Series(rank, index=frame.index).map(names)


def repaired(frame: pd.DataFrame, policy) -> pd.Series:
    """信用修复: the policy's rule holds (delays cured, none missed for its months, nothing
    open) and the re-scored grade fell below the batch's."""
    p = as_data(policy)
    rule = holds(frame, fill(p["credit_repair"]["rule"], p), "credit_repair")
    fell = frame["grade"].map(GRADE_RANK) > frame["grade_at_batch"].map(GRADE_RANK)
    return rule & fell.fillna(False)


def actions(frame: pd.DataFrame, level: pd.Series, months_since_batch: float, policy) -> pd.DataFrame:
    """``action`` and ``limit_now`` per firm. ``frame['core_limit']`` is what the decision
    core grants now; a cut never goes above it, a raise never above it either."""
    a = as_data(policy)["actions"]
    at_batch = frame["limit_at_batch"].astype(float)
    core = frame["core_limit"].fillna(0.0).astype(float)
    clean = holds(frame, a["clean_rule"], "actions.clean_rule")
    action = pd.Series("keep", index=frame.index, dtype=object)
    limit = at_batch.copy()
    red, amber = level.eq("red"), level.eq("amber")
    action[red], limit[red] = "freeze", 0.0
    action[amber] = "reduce"
    limit[amber] = np.minimum(at_batch[amber] * (1 - float(a["reduce_share"])), core[amber])
    up = level.eq("green") & clean & (core > at_batch) & (months_since_batch >= a["raise_after_months"])
    action[up] = "raise"
    limit[up] = np.minimum(core[up], at_batch[up] * (1 + float(a["raise_share"])))
    return pd.DataFrame({"action": action, "limit_now": limit.round(0)})


def repair(frame: pd.DataFrame, fix: pd.Series, scale, months: int) -> tuple[pd.DataFrame, pd.Series]:
    """A repaired firm (信用修复) takes the batch's PD, and the score and grade that PD has
    on the saved scale: the cured delays still sit in the model's 12-month counters, and
    the repair rule judges them no longer the firm's risk, so the PD the bank last judged
    without them (the batch's) stands, never above today's re-score (``fix`` only holds
    where the grade fell, so today's PD is the higher). PD, score and grade stay one
    coherent triple: restoring the grade label alone left a red-band PD beside a restored
    grade. The model's own re-score is kept in the reasons."""
    frame = frame.copy()
    note = pd.Series("", index=frame.index, dtype=object)
    if not fix.any():
        return frame, note
    f = frame.loc[fix]
    new_pd = np.minimum(f["pd_at_batch"].astype(float), f["pd"].astype(float))
    note[fix] = [f"repaired (信用修复): delays cured, none missed for {months} months; PD {p:.2%} / grade {g} "
                 f"before repair, batch PD {b:.2%} / grade {gb} restored"
                 for p, g, b, gb in zip(f["pd"], f["grade"], new_pd, f["grade_at_batch"])]
    frame.loc[fix, "pd"] = new_pd.to_numpy()
    if "pd_change" in frame:
        frame.loc[fix, "pd_change"] = (new_pd - f["pd_at_batch"].astype(float)).to_numpy()
    if scale is not None:
        frame.loc[fix, "score"] = scale.score(new_pd.to_numpy())
        frame.loc[fix, "grade"] = grades_for_scores(frame.loc[fix, "score"].to_numpy(dtype=float))
    else:
        frame.loc[fix, "grade"] = f["grade_at_batch"]
    return frame, note


def apply_repair(frame: pd.DataFrame, policy, scale=None) -> pd.DataFrame:
    """``frame`` with credit repair applied (:func:`repaired`, :func:`repair`) and the
    note in ``repair_note``: done before the signals fire, so ``pd_up`` and the PD bands
    read the repaired firm's PD, not the one its cured delays gave it."""
    frame, note = repair(frame, repaired(frame, policy), scale, as_data(policy)["credit_repair"]["months"])
    frame["repair_note"] = note
    return frame


def portfolio_rows(frame: pd.DataFrame, alerts: pd.DataFrame, as_of: pd.Timestamp, months_since_batch: float,
                   policy, scale=None, *, ratings: dict | None = None, history: pd.DataFrame | None = None) -> pd.DataFrame:
    """portfolio.csv's rows for one as-of, in the contract's columns. ``frame`` holds per
    firm: pd, score, grade, core_reasons (the decision core's), pd_at_batch,
    grade_at_batch, limit_at_batch, core_limit and the features the rules read, and
    ``repair_note`` once :func:`apply_repair` has run (run here when it has not);
    ``scale``: the saved score scale a repaired firm's PD is scored on; ``ratings`` and
    ``history``: see :func:`firm_levels`."""
    if "repair_note" not in frame:
        frame = apply_repair(frame, policy, scale)
    note = frame["repair_note"]
    watched = watch_list(frame, policy)
    level = firm_levels(frame, alerts, policy, ratings, history, watched)
    share = float(as_data(policy)["watch_list"]["share"])
    note = note.copy()  # the watched firms' note, written for them alone
    note[watched] = [f"watch list (关注名单): PD {p:.2%} among the worst {share:.0%} of the lent portfolio"
                     + (f"; {n}" if n else "") for p, n in zip(frame.loc[watched, "pd"].astype(float).tolist(),
                                                              note[watched].tolist())]
    act = actions(frame, level, months_since_batch, policy)
    fired = alerts.groupby("firm_id")["signal"].agg("; ".join) if len(alerts) else pd.Series(dtype=object)
    sig = fired.reindex(frame.index).fillna("")
    reasons = [join_reasons(n, f"signals: {s}" if s else "", r)
               for n, s, r in zip(note.tolist(), sig.tolist(), frame["core_reasons"].fillna("").tolist())]
    out = pd.DataFrame({
        "firm_id": frame.index, "as_of": str(as_of.date()), "pd": frame["pd"].astype(float).round(6).to_numpy(),
        "score": frame["score"].to_numpy(), "grade": frame["grade"].to_numpy(),
        "pd_at_batch": frame["pd_at_batch"].to_numpy(), "grade_at_batch": frame["grade_at_batch"].to_numpy(),
        "limit_at_batch": frame["limit_at_batch"].to_numpy(), "limit_now": act["limit_now"].to_numpy(),
        "action": act["action"].to_numpy(), "level": level.to_numpy(), "reasons": reasons,
    })
    return out[PORTFOLIO_COLUMNS]


def join_reasons(*parts: str) -> str:
    """A portfolio row's reasons: its non-empty parts (the repair or watch-list note, the
    signals that fired, the decision core's reasons) joined by "; "."""
    return "; ".join(x for x in parts if x)


def needs_drivers(rows: pd.DataFrame, repair_note: pd.Series, previous: pd.DataFrame | None) -> np.ndarray:
    """Which of one as-of's portfolio ``rows`` a monitoring reader needs the model's
    drivers (SHAP reasons) for, under ``explain: {scope: changed}`` of monitoring.yaml:
    a firm is *changed* when its level is amber or red, or its action is not ``keep``
    (reduce, freeze, raise), or its grade differs from the batch's (``grade_at_batch``)
    or from the previous as-of of this pass (``previous``: that as-of's rows; at the
    first as-of the batch stands for it), or credit repair was applied (``repair_note``
    by firm_id, not empty). Everything else is green, kept, at an unmoved grade: its
    reasons say what the rules saw without the drivers (:func:`unexplained_reason`).
    A missing grade (a firm not scored) counts as a grade of its own."""
    grade = rows["grade"].astype(object).where(rows["grade"].notna(), "")
    batch = rows["grade_at_batch"].astype(object).where(rows["grade_at_batch"].notna(), "")
    if previous is None:
        before = batch
    else:
        prev = previous.set_index("firm_id")["grade"]
        before = prev.where(prev.notna(), "").reindex(rows["firm_id"]).fillna("").set_axis(rows.index)
    repaired_now = repair_note.reindex(rows["firm_id"]).fillna("").ne("").to_numpy()
    return ((rows["level"] != "green") | (rows["action"] != "keep") | (grade != batch) | (grade != before)).to_numpy() \
        | repaired_now


def unexplained_reason(pd_now: float, pd_at_batch: float, grade: str) -> str:
    """The decision core's part of the reasons of a firm :func:`needs_drivers` leaves
    out: what the rules read (its PD now and at the batch, its unmoved grade) and where
    the drivers are (``scf explain`` derives them on demand)."""
    return f"PD {pd_now:.2%} against {pd_at_batch:.2%} at the batch, grade {grade} unchanged; green, kept: {UNEXPLAINED}"


UNEXPLAINED = "model drivers not re-derived at this as-of (monitoring.yaml explain.scope: changed; scf explain gives them)"


__all__ = ["PORTFOLIO_COLUMNS", "UNEXPLAINED", "join_reasons", "needs_drivers", "unexplained_reason", "watch_list", "firm_levels", "repaired", "repair", "apply_repair", "actions", "portfolio_rows"]
