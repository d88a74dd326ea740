"""Whole-group batch credit (整园 / 整会 / 整村授信): one envelope shared by a group.

A park, an association or a village gets one envelope; the bank then shares it among
the members. The rules, in the order they apply:

1. **Who takes part.** A member with a positive own limit (``limit_cny`` from
   :func:`scf_engine.credit.limits.apply_limits`), a known PD, a positive weight and a
   decision other than ``decline``. Everyone else gets 0 (``bound_by = not_eligible``).
2. **Pro rata by capacity, water-filled.** The envelope is shared in proportion to the
   policy's ``envelope_weight`` (by default the uncapped limit, i.e. the member's flow and
   receivable capacity before caps). A member whose share would pass its own limit gets
   exactly its limit (``own_limit``), and what it leaves is shared again among the
   others, until nobody is over: no money is left on the table while someone still has
   room. The result is the unique allocation ``min(limit_i, t * w_i)`` with the largest
   level ``t`` whose total fits the envelope.
3. **The group's expected-loss budget.** ``sum(pd * lgd * alloc) <=
   expected_loss_budget_share * total``. When it is exceeded, allocations are cut starting
   from the highest PD (ties: firm_id) until the budget holds (``expected_loss_budget``).
   What is cut is not handed to safer members: that would be a different policy (fill
   the safest first), and the committee chose pro rata by capacity.
4. **Rounding** down to ``round_to_cny``, so the sum never exceeds the envelope and the
   budget still holds.

Everything is computed on rows sorted by firm_id, so the same members in any order get
the same allocation to the yuan.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from scf_engine.policies import Policy, as_data


def water_fill(weights: np.ndarray, caps: np.ndarray, total: float) -> tuple[np.ndarray, np.ndarray]:
    """``(alloc, capped)``: ``alloc_i = min(caps_i, t * weights_i)`` with ``sum(alloc) <=
    total`` and ``t`` as large as possible; ``capped`` marks members held at their cap.

    Solved exactly by sorting members by ``caps / weights`` (the level at which each one
    fills up) instead of iterating share-and-redistribute; both give the same answer.
    """
    w = np.asarray(weights, dtype=float)
    c = np.asarray(caps, dtype=float)
    n = len(w)
    alloc = np.zeros(n)
    capped = np.zeros(n, dtype=bool)
    live = (w > 0) & (c > 0)
    if total <= 0 or not live.any():
        return alloc, capped
    idx = np.flatnonzero(live)
    if c[idx].sum() <= total:  # the envelope covers every own limit
        alloc[idx] = c[idx]
        capped[idx] = True
        return alloc, capped
    with np.errstate(over="ignore", divide="ignore"):  # a vanishing weight fills up last
        level = c[idx] / w[idx]
    srt = np.argsort(level, kind="stable")
    order, level = idx[srt], level[srt]
    # money left once the first k are full, and the weight of the k-th onwards; taken as
    # prefix / suffix sums, not running subtractions, so rounding never leaves a
    # negative weight or envelope
    left = total - np.concatenate([[0.0], np.cumsum(c[order])])[:-1]
    w_rest = np.cumsum(w[order][::-1])[::-1]
    with np.errstate(over="ignore", invalid="ignore"):
        fills = level * w_rest <= left  # the k-th fills up before the money runs out
    # members fill in order of level, so `fills` is True for a prefix only
    k = int(np.argmin(fills)) if not fills.all() else len(order)
    full = order[:k]
    alloc[full] = c[full]
    capped[full] = True
    if k < len(order):
        rest = order[k:]
        t = max(0.0, left[k]) / w_rest[k]
        alloc[rest] = np.minimum(c[rest], t * w[rest])
    return alloc, capped


def trim_expected_loss(alloc: np.ndarray, pd_: np.ndarray, lgd: float, budget: float) -> tuple[np.ndarray, np.ndarray]:
    """``(alloc, trimmed)``: allocations cut from the highest PD down until
    ``sum(pd * lgd * alloc) <= budget``. Rows are assumed sorted by firm_id, which breaks
    PD ties."""
    alloc = np.asarray(alloc, dtype=float).copy()
    el = pd_ * lgd * alloc
    excess = el.sum() - budget
    trimmed = np.zeros(len(alloc), dtype=bool)
    if excess <= 0:
        return alloc, trimmed
    order = np.lexsort((np.arange(len(alloc)), -pd_))  # highest PD first, then row order
    for i in order:
        if excess <= 0:
            break
        unit_el = pd_[i] * lgd
        if alloc[i] <= 0 or unit_el <= 0:
            continue
        cut = min(alloc[i], excess / unit_el)
        alloc[i] -= cut
        excess -= cut * unit_el
        trimmed[i] = True
    return alloc, trimmed


def allocate_envelope(frame: pd.DataFrame, total_cny: float, policy: Policy | Mapping[str, Any]) -> pd.DataFrame:
    """Share ``total_cny`` among the members in ``frame`` under ``limit_policy.yaml``.

    ``frame``: ``firm_id``, ``pd``, ``limit_cny`` (the member's own limit, its cap), the
    weight column named by the policy's ``envelope_weight`` (default ``uncapped_limit``)
    and optionally ``decision`` (a ``decline`` never takes part).

    Returns, on the frame's index: ``firm_id, weight, cap, allocation_cny, bound_by`` with
    ``bound_by`` one of ``own_limit`` (held at its own limit), ``envelope`` (its pro rata
    share of the envelope), ``expected_loss_budget`` (cut to keep the group's expected
    loss within budget) and ``not_eligible``. ``attrs["summary"]`` holds the envelope,
    the amount allocated, the group's expected loss and its budget.
    """
    d = as_data(policy)
    if not np.isfinite(total_cny) or total_cny < 0:
        raise ValueError("the envelope must be a finite amount >= 0")
    wcol = d.get("envelope_weight", "uncapped_limit")
    missing = [c for c in ("firm_id", "pd", "limit_cny", wcol) if c not in frame]
    if missing:
        raise ValueError(f"envelope frame lacks column(s): {', '.join(missing)}")
    if frame["firm_id"].duplicated().any():
        raise ValueError("envelope frame: firm_id must be unique")

    order = np.argsort(frame["firm_id"].astype(str).to_numpy(), kind="stable")
    f = frame.iloc[order]
    p = pd.to_numeric(f["pd"], errors="raise").astype(float).to_numpy()
    cap = np.nan_to_num(pd.to_numeric(f["limit_cny"], errors="raise").astype(float).to_numpy(), nan=0.0)
    w = np.nan_to_num(pd.to_numeric(f[wcol], errors="raise").astype(float).to_numpy(), nan=0.0)
    eligible = ~np.isnan(p) & (cap > 0) & (w > 0)
    if "decision" in f:
        eligible &= (f["decision"] != "decline").to_numpy()

    alloc, capped = water_fill(np.where(eligible, w, 0.0), np.where(eligible, cap, 0.0), float(total_cny))
    lgd = float(d["lgd"])
    budget = float(d["expected_loss_budget_share"]) * float(total_cny)
    alloc, trimmed = trim_expected_loss(alloc, np.nan_to_num(p, nan=0.0), lgd, budget)

    unit = float(d.get("round_to_cny", 0) or 0)
    if unit > 0:
        # compared to a millionth of a yuan (float noise never costs a whole unit); the
        # guards below keep that tolerance from lifting anyone over a cap or the sum over
        # the envelope
        alloc = np.floor(np.round(alloc, 6) / unit) * unit
        alloc = np.minimum(alloc, np.floor(np.round(cap, 6) / unit) * unit)
    while alloc.sum() > total_cny + 1e-6:  # float guard; never more than a step or two
        j = int(np.argmax(alloc))
        alloc[j] = max(0.0, alloc[j] - (unit or alloc.sum() - total_cny))

    bound = np.where(~eligible, "not_eligible",
                     np.where(trimmed, "expected_loss_budget", np.where(capped, "own_limit", "envelope")))
    out = pd.DataFrame({
        "firm_id": f["firm_id"].to_numpy(), "weight": w, "cap": cap,
        "allocation_cny": alloc, "bound_by": bound,
    }, index=f.index).loc[frame.index]
    el = float(np.nansum(p * lgd * alloc))
    out.attrs["summary"] = {
        "envelope_cny": float(total_cny), "allocated_cny": float(alloc.sum()),
        "unallocated_cny": float(total_cny - alloc.sum()), "expected_loss_cny": el,
        "expected_loss_budget_cny": budget, "members": int(len(f)), "eligible": int(eligible.sum()),
    }
    return out
