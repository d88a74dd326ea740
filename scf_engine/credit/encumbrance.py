"""No double financing (防重复融资): which receivables may back a new limit at an as-of.

A receivable backs the receivable part of a limit only when it is the firm's, open (not
paid before the as-of), not yet due, owed by a core the limit policy accepts, confirmed
by that core (确权) and free: not pledged (质押) or transferred (转让) on the registry
before the as-of, not backing a financing still live at the as-of (``financings.csv``),
and not earmarked by another batch on the same snapshot (see :func:`earmarks_in_force`).
Everything here is pure: the frames come from the snapshot, the earmarks from whoever
read the audit log (the score pipeline).

Why the audit log carries the earmarks across batches: two batches scored on the same
snapshot see the same ``financings.csv``, so neither can learn from the data what the
other granted; the out folders are per batch and may be anywhere; the audit log is the
one shared, append-only, hash-chained record every batch already writes, under a lock.
Each ``scf score`` entry records the receivables that back its limits
(``earmarked_receivables``), and the next batch on the same snapshot leaves them out. A
later snapshot reads the bank's later ``financings.csv``, which says what was drawn, so
an earmark binds only batches whose as-of lies within ``earmark_window_days`` of it (0:
the same as-of). A re-run of the same request (the same ``batch_id``: the as-of and the
request's rows, whatever file carried them) replaces its own earlier limits and is not
blocked by them.

The reasons, most decisive first: transferred (the receivable is no longer the firm's),
pledged, already financed, earmarked by another batch, not confirmed.
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from scf_engine.membership import isin

STATUS_COLUMNS = ("receivable_id", "firm_id", "buyer_id", "amount", "confirmed", "reason")


def _date(x) -> str:
    return pd.Timestamp(x).strftime("%Y-%m-%d")


def receivable_status(receivables: pd.DataFrame, financings: pd.DataFrame, buyer_ok: pd.Series,
                      as_of: pd.Timestamp, earmarks: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per candidate receivable (the firm's, open, not yet due, on a core the
    policy accepts) of the snapshot: ``receivable_id, firm_id, buyer_id, amount,
    confirmed`` and ``reason`` ("" when it may back a limit, else why not, with the
    registry's or the financing's record). ``financings``: the snapshot's (drawn before
    the as-of, repayments after it masked); ``earmarks``: ``receivable_id, firm_id,
    batch_id, as_of`` in force (:func:`earmarks_in_force`)."""
    r = receivables
    # a hash lookup in the accepted cores, not a map of every receivable to its buyer's flag
    # (~1 s an as-of over a 100,000-firm world's receivables; the same rows)
    ok_buyer = r["buyer_id"].isin(buyer_ok.index[buyer_ok.fillna(False).to_numpy(dtype=bool)])
    cand = r[r["paid_on"].isna() & (r["due_on"] >= as_of) & ok_buyer]
    reason = pd.Series("", index=cand.index, dtype=object)
    unconfirmed = cand["confirmed_on"].isna()
    reason[unconfirmed] = "not confirmed by the buyer (确权)"
    if earmarks is not None and len(earmarks):
        em = earmarks.drop_duplicates("receivable_id").set_index("receivable_id")
        hit = cand["receivable_id"].isin(em.index) & cand["supplier_id"].eq(cand["receivable_id"].map(em["firm_id"]))
        for i in cand.index[hit]:
            e = em.loc[cand.at[i, "receivable_id"]]
            reason[i] = f"earmarked by batch {e['batch_id']} (as-of {e['as_of']}): backs a limit granted there"
    live = financings[financings["repaid_on"].isna() & financings["receivable_id"].notna()
                      & (financings["receivable_id"].astype(str) != "")]
    if len(live):
        first = live.sort_values(["drawn_on", "financing_id"]).drop_duplicates("receivable_id").set_index("receivable_id")
        hit = cand["receivable_id"].isin(first.index)
        for i in cand.index[hit]:
            f = first.loc[cand.at[i, "receivable_id"]]
            reason[i] = (f"already financed: financing {f['financing_id']} drawn {_date(f['drawn_on'])}, "
                         f"CNY {f['amount']:,.0f}, live at the as-of")
    for who, when, word in (("pledged_to", "pledged_on", "pledged"), ("transferred_to", "transferred_on", "transferred")):
        if when in cand:
            hit = cand[when].notna() & (cand[when] < as_of)
            for i in cand.index[hit]:
                reason[i] = f"{word} to {cand.at[i, who]} on {_date(cand.at[i, when])} (registry)"
    return pd.DataFrame({
        "receivable_id": cand["receivable_id"].to_numpy(), "firm_id": cand["supplier_id"].to_numpy(),
        "buyer_id": cand["buyer_id"].to_numpy(), "amount": cand["amount"].to_numpy(dtype=float),
        "confirmed": (~unconfirmed).to_numpy(), "reason": reason.to_numpy(),
    }, columns=list(STATUS_COLUMNS))


def eligible_after_exclusions(eligible: pd.Series, status: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """The eligible amount per firm with the confirmed receivables left out taken off
    (``eligible``: the chain's confirmed open not-due amount on accepted cores, by
    firm_id), and how many of each firm's candidate receivables were left out. A firm
    with nothing left out keeps its amount exactly (no re-summing: a v1 dataset scores
    bit for bit as before)."""
    out = status[status["reason"] != ""]
    taken = out[out["confirmed"]].groupby("firm_id")["amount"].sum()
    taken = taken.reindex(eligible.index).fillna(0.0)
    adjusted = eligible.where(taken == 0, (eligible - taken).clip(lower=0.0).round(2))
    count = out.groupby("firm_id").size().reindex(eligible.index).fillna(0).astype(int)
    return adjusted, count


def earmarks_in_force(entries: Iterable[dict], as_of: pd.Timestamp, window_days: int,
                      batch_id: str | None = None) -> pd.DataFrame:
    """``receivable_id, firm_id, batch_id, as_of`` of the receivables that back limits of
    earlier ``scf score`` batches (audit entries, oldest first) still binding at
    ``as_of``: the batch's as-of within ``window_days`` before ``as_of`` (never after it:
    a later batch cannot bind an earlier snapshot), and not the same ``batch_id`` (a re-run
    of one request replaces its own limits)."""
    rows = []
    for e in entries:
        d = e.get("details") or {}
        if e.get("action") != "score" or not d.get("earmarked_receivables") or d.get("batch_id") == batch_id:
            continue
        try:
            t = pd.Timestamp(d.get("as_of"))
        except (TypeError, ValueError):
            continue
        if not (as_of - pd.Timedelta(days=int(window_days)) <= t <= as_of):
            continue
        for rid, fid in d["earmarked_receivables"]:
            rows.append((str(rid), str(fid), str(d.get("batch_id")), str(t.date())))
    return pd.DataFrame(rows, columns=["receivable_id", "firm_id", "batch_id", "as_of"])


def earmarked(status: pd.DataFrame, limits: pd.DataFrame) -> list[list[str]]:
    """``[receivable_id, firm_id]`` of every free receivable behind a limit this batch
    granted (limit > 0 and a receivable part): what the next batch must leave out."""
    backed = limits.loc[(limits["limit_cny"] > 0) & (limits["receivable_part"].fillna(0) > 0), "firm_id"]
    free = status[(status["reason"] == "") & status["confirmed"] & isin(status["firm_id"], backed)]
    return [[r, f] for r, f in zip(free["receivable_id"], free["firm_id"])]


def left_out(status: pd.DataFrame, firm_ids) -> pd.DataFrame:
    """The receivables left out for each of ``firm_ids`` (for memos), by firm then id."""
    out = status[(status["reason"] != "") & isin(status["firm_id"], firm_ids)]
    return out.sort_values(["firm_id", "receivable_id"], kind="stable").reset_index(drop=True)


__all__ = ["receivable_status", "eligible_after_exclusions", "earmarks_in_force", "earmarked", "left_out"]
