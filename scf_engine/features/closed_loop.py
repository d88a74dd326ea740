"""Closed loop of funds (资金闭环管理): follow each financing's money, point in time.

For every financing drawn before the as-of (``Snapshot.financings``; a repayment on or
after the as-of is not known yet), from the flows booked before the as-of:

* **diversion** (回款挪用): the core's payment of the financed receivable (a flow from the
  receivable's buyer to the borrower at the receivable's amount, from the drawdown until
  ``due_on`` + the policy's days) reached only accounts other than the financing's
  ``collection_account``. Needs the flows' ``payee_account``; without it the check says
  nothing (NaN), never "clean";
* **use of funds** (贷款用途): the share of the financing that, within the policy's
  window after the drawdown, went back to the core that owes the receivable (to any
  core, for a flow-based line) or round a circle (the payee paid it back within days at
  the amount). Large outflows only: the policy's ``min_outflow_share`` of the financing;
* **borrowing to repay** (借新还旧): a financing repaid before the core's payment of its
  receivable reached the borrower at all was repaid from other money; the evidence names
  a drawdown from another lender shortly before the repayment when there is one (a
  payment that reached the borrower outside the collection account is a diversion).

:func:`financing_checks` gives one row per financing (what a monitor's evidence and the
benchmark read); :func:`closed_loop_features` sums them per firm into the catalogue's
``fin_*`` features (``kind: code, function: closed_loop``). Without ``financings.csv``
every feature is empty (NaN): the absence of a file says nothing about a firm. The
windows and tolerances are ``models/closed_loop.yaml``'s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scf_engine import policies
from scf_engine.policies import as_data

CHECK_COLUMNS = ["financing_id", "firm_id", "receivable_id", "drawn_on", "amount", "live", "overdue", "diverted",
                 "misuse_share", "misused", "borrow_to_repay", "evidence"]
FEATURES = ["fin_live_n", "fin_overdue_n", "fin_diverted_12m", "fin_misused_12m", "fin_misuse_share_12m",
            "fin_borrow_to_repay_12m"]


def load_policy(models_dir=None) -> policies.Policy:
    return policies.load("closed_loop", models_dir)


def _days(n) -> pd.Timedelta:
    return pd.Timedelta(days=float(n))


def _core_payments(fin: pd.DataFrame, recv: pd.DataFrame, flows: pd.DataFrame, p: dict) -> pd.DataFrame:
    """Per receivable-backed financing: whether a matching payment of the core reached the
    collection account (and the first day it did), or only other accounts."""
    f = fin[fin["receivable_id"].notna()].merge(
        recv[["receivable_id", "buyer_id", "amount", "paid_amount", "due_on"]].rename(columns={"amount": "r_amount"}),
        on="receivable_id", how="inner")
    if f.empty or "payee_account" not in flows:
        return pd.DataFrame(columns=["financing_id", "matched", "paid_first_on", "closed_on", "other_account"])
    f["expected"] = f["paid_amount"].fillna(f["r_amount"])
    pay = flows.loc[flows["purpose"] == "trade", ["payer_id", "payee_id", "booked_on", "amount", "payee_account"]]
    m = f.merge(pay, left_on=["buyer_id", "firm_id"], right_on=["payer_id", "payee_id"], suffixes=("", "_flow"))
    tol = float(p["payment"]["amount_tolerance"])
    m = m[(m["booked_on"] >= m["drawn_on"]) & (m["booked_on"] <= m["due_on"] + _days(p["payment"]["match_days"]))
          & ((m["amount_flow"] - m["expected"]).abs() <= tol * m["expected"])]
    m = m.assign(closed=m["payee_account"].astype(str) == m["collection_account"].astype(str))
    g = m.groupby("financing_id")
    out = pd.DataFrame({"matched": g.size() > 0, "paid_first_on": g["booked_on"].min(),
                        "closed_on": m[m["closed"]].groupby("financing_id")["booked_on"].min(),
                        "other_account": m[~m["closed"]].groupby("financing_id")["payee_account"].first()})
    return out.rename_axis("financing_id").reset_index()


def _use_of_funds(fin: pd.DataFrame, recv: pd.DataFrame, flows: pd.DataFrame, cores: set, p: dict) -> pd.DataFrame:
    """Per financing: the share of it that went back to the core or round a circle
    within the window after the drawdown, and the first such payee."""
    u = p["use_of_funds"]
    f = fin.merge(recv[["receivable_id", "buyer_id"]], on="receivable_id", how="left")
    f = f[["financing_id", "firm_id", "drawn_on", "amount", "buyer_id"]].sort_values(["drawn_on", "financing_id"])
    f = f.astype({"firm_id": object, "drawn_on": "datetime64[s]"})
    out_flows = flows.loc[flows["purpose"].isin(["trade", "other"]) & flows["payer_id"].isin(set(f["firm_id"])),
                          ["payer_id", "payee_id", "booked_on", "amount"]].rename(columns={"amount": "amount_out"})
    out_flows = out_flows.astype({"payer_id": object, "booked_on": "datetime64[s]"})
    # an outflow spends the latest drawdown before it (not every financing still in its
    # window): an as-of join per firm, not a cross product of financings and outflows
    m = pd.merge_asof(out_flows.sort_values("booked_on"), f, left_on="booked_on", right_on="drawn_on",
                      left_by="payer_id", right_by="firm_id", direction="backward")
    m = m[m["financing_id"].notna() & (m["booked_on"] <= m["drawn_on"] + _days(u["window_days"]))
          & (m["amount_out"] >= float(u["min_outflow_share"]) * m["amount"])].reset_index(drop=True)
    if m.empty:
        return pd.DataFrame(columns=["financing_id", "misused_amount", "misuse_to"])
    to_core = np.where(m["buyer_id"].notna(), m["payee_id"] == m["buyer_id"], m["payee_id"].isin(cores))
    back = flows[["payer_id", "payee_id", "booked_on", "amount"]].rename(
        columns={"payer_id": "payee_id", "payee_id": "firm_id", "booked_on": "back_on", "amount": "back_amount"})
    c = m.reset_index().merge(back, on=["payee_id", "firm_id"])
    c = c[(c["back_on"] >= c["booked_on"]) & (c["back_on"] <= c["booked_on"] + _days(u["circle_days"]))
          & ((c["back_amount"] - c["amount_out"]).abs() <= float(u["circle_tolerance"]) * c["amount_out"])]
    circle = m.index.isin(c["index"])
    bad = m[to_core | circle].assign(kind=np.where(to_core, "the core", "a circle")[to_core | circle])
    g = bad.groupby("financing_id")
    first = g[["kind", "payee_id"]].first()
    return pd.DataFrame({"misused_amount": g["amount_out"].sum(),
                         "misuse_to": first["kind"] + " (" + first["payee_id"] + ")"}).rename_axis("financing_id").reset_index()


def financing_checks(snapshot, policy=None) -> pd.DataFrame:
    """One row per financing drawn before the as-of: live, overdue (live past maturity),
    diverted (True / False / NaN when accounts are not known), misuse share and flag,
    borrowing to repay, and the evidence in words."""
    fin = snapshot.financings
    if fin.empty:
        return pd.DataFrame(columns=CHECK_COLUMNS)
    p = as_data(policy or load_policy())
    T, flows, recv = snapshot.as_of, snapshot.flows, snapshot.receivables
    fin = fin.assign(receivable_id=fin["receivable_id"].where(fin["receivable_id"].astype(str).ne("") & fin["receivable_id"].notna()))
    cores = set(snapshot.firms.loc[snapshot.firms["is_core"], "firm_id"])
    pay = _core_payments(fin, recv, flows, p).set_index("financing_id").reindex(fin["financing_id"])
    use = _use_of_funds(fin, recv, flows, cores, p).set_index("financing_id").reindex(fin["financing_id"])
    out = fin[["financing_id", "firm_id", "receivable_id", "drawn_on", "amount"]].reset_index(drop=True)
    out["live"] = fin["repaid_on"].isna().to_numpy()
    out["overdue"] = (out["live"] & (fin["maturity_on"] < T).to_numpy())
    accounts = "payee_account" in flows
    matched = pay["matched"].fillna(False).astype(bool).to_numpy()
    closed = pay["closed_on"].notna().to_numpy()
    backed = out["receivable_id"].notna().to_numpy()
    out["diverted"] = np.where(backed & accounts, matched & ~closed, np.nan)
    out["misuse_share"] = np.minimum(1.0, use["misused_amount"].fillna(0.0).to_numpy() / out["amount"].to_numpy())
    out["misused"] = out["misuse_share"] >= float(p["use_of_funds"]["misuse_share"])
    # repaid from the core's payment: one reached the borrower (into any account: a
    # diverted payment is a diversion, not a new loan) by the repayment + grace days
    grace = _days(p["borrow_to_repay"]["grace_days"])
    repaid = fin["repaid_on"].notna().to_numpy()
    first = pd.to_datetime(pay["paid_first_on"]).to_numpy()
    early = np.isnat(first) | (first > (fin["repaid_on"] + grace).to_numpy())
    out["borrow_to_repay"] = np.where(backed & accounts, repaid & early, np.nan)
    out["evidence"] = _evidence(out, fin, pay, use, flows, p)
    return out[CHECK_COLUMNS]


def _evidence(out, fin, pay, use, flows, p) -> list[str]:
    """The words behind each flag: the account paid, where the money went, the new loan
    (only the flagged financings are worded; a plain loop over them, not over all)."""
    flagged = set(out.loc[out["borrow_to_repay"] == 1, "firm_id"])
    draws = flows.loc[(flows["purpose"] == "loan_drawdown") & flows["payee_id"].isin(flagged),
                      ["payee_id", "booked_on", "amount", "payer_id"]]
    by_firm = {k: g for k, g in draws.groupby("payee_id")}
    window = _days(p["borrow_to_repay"]["window_days"])
    days = p["use_of_funds"]["window_days"]
    div, mis, bor = (out["diverted"] == 1).to_numpy(), out["misused"].to_numpy(), (out["borrow_to_repay"] == 1).to_numpy()
    words = [""] * len(out)
    for i in np.flatnonzero(div | mis | bor):
        r, w = out.iloc[i], []
        if div[i]:
            w.append(f"core paid receivable {r['receivable_id']} into {pay['other_account'].iloc[i]}, "
                     f"not collection account {fin['collection_account'].iloc[i]}")
        if mis[i]:
            w.append(f"{r['misuse_share']:.0%} of CNY {r['amount']:,.0f} drawn {r['drawn_on'].date()} went to "
                     f"{use['misuse_to'].iloc[i]} within {days} days")
        if bor[i]:
            day = fin["repaid_on"].iloc[i]
            d = by_firm.get(r["firm_id"], draws.iloc[:0])
            d = d[(d["booked_on"] <= day) & (d["booked_on"] > r["drawn_on"]) & (d["booked_on"] >= day - window)]
            loan = f"; new loan CNY {d['amount'].iloc[-1]:,.0f} from {d['payer_id'].iloc[-1]} on {d['booked_on'].iloc[-1].date()}" if len(d) else ""
            w.append(f"financing {r['financing_id']} repaid {day.date()} before the core's payment reached "
                     f"the borrower{loan}")
        words[i] = "; ".join(w)
    return words


def closed_loop_features(snapshot, policy=None) -> pd.DataFrame:
    """The catalogue's ``fin_*`` features per firm (index firm_id): live and overdue
    financings at the as-of, and over financings drawn in the last ``lookback_months``:
    diverted, misused (count and the largest misuse share) and repaid by borrowing.
    Empty frame (every feature NaN after the join) without a financings file; 0 for a
    firm with no financing when there is one."""
    if not getattr(snapshot, "has_financings", False):
        return pd.DataFrame(columns=FEATURES, index=pd.Index([], name="firm_id"), dtype="float64")
    p = as_data(policy or load_policy())
    ids = pd.Index(snapshot.firms["firm_id"], name="firm_id")
    c = financing_checks(snapshot, p)
    out = pd.DataFrame(0.0, index=ids, columns=FEATURES)
    if c.empty:
        return out
    recent = c[c["drawn_on"] >= snapshot.as_of - pd.DateOffset(months=int(p["lookback_months"]))]
    g, gr = c.groupby("firm_id"), recent.groupby("firm_id")
    counts = {"fin_live_n": g["live"].sum(), "fin_overdue_n": g["overdue"].sum(),
              "fin_diverted_12m": gr["diverted"].sum(min_count=1), "fin_misused_12m": gr["misused"].sum(),
              "fin_misuse_share_12m": gr["misuse_share"].max(), "fin_borrow_to_repay_12m": gr["borrow_to_repay"].sum(min_count=1)}
    for name, s in counts.items():
        out[name] = s.astype(float).reindex(ids).fillna(0.0)
    if "payee_account" not in snapshot.flows:  # the account checks could not be made: unknown, not clean
        out[["fin_diverted_12m", "fin_borrow_to_repay_12m"]] = np.nan
    return out


def firm_evidence(snapshot, policy=None) -> pd.Series:
    """Per firm (index firm_id): the evidence of its flagged financings drawn in the
    lookback window, ``|``-separated ("" where none): what a monitoring alert quotes."""
    if not getattr(snapshot, "has_financings", False):
        return pd.Series(dtype=object, name="fin_evidence")
    p = as_data(policy or load_policy())
    c = financing_checks(snapshot, p)
    c = c[(c["drawn_on"] >= snapshot.as_of - pd.DateOffset(months=int(p["lookback_months"]))) & (c["evidence"] != "")]
    return c.groupby("firm_id")["evidence"].agg(" | ".join).rename("fin_evidence")


__all__ = ["financing_checks", "firm_evidence", "closed_loop_features", "load_policy", "FEATURES", "CHECK_COLUMNS"]
