"""The closed-loop scenario (contract v1.1): financings, accounts and registry records,
with planted double pledges, diversions, misused drawdowns and borrowing to repay.

Off by default (``WorldConfig.closed_loop``), and drawn from its own random stream, so
every existing world, the shipped sample included, stays byte for byte the same. When on,
:func:`closed_loop_records` takes the world's contract tables as written and returns:

* receivables with ``pledged_to, pledged_on, transferred_to, transferred_on``: a share of
  the confirmed receivables pledged to another bank or transferred to a factor (double
  pledges the engine must never lend against), dated a few days to months after issue,
  some after the benchmark's as-of (a clean receivable at that date);
* ``financings.csv``: the bank's drawdowns on a share of the receivables confirmed by
  cores (80% of face value, maturity a few days after the due date, a collection account
  each) and on flow-based lines;
* flows with ``payer_account, payee_account`` (every firm has one ordinary account) and
  the money of each financing: the drawdown, what the borrower spends it on, the core's
  payment of the receivable, the repayment. Planted: the core paying into the borrower's
  ordinary account instead of the collection account (diversion), the drawn money sent
  back to the core or round a related party that pays it straight back (misuse), and the
  financing repaid before the core paid, from a new loan of another lender (borrowing to
  repay);
* ``closed_loop_truth.csv``: one row per planted case (kind, receivable or financing,
  firm, date).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BANK = "EXT-SCFBANK-01"  # the lending bank's own code in the flows
TRUTH_COLUMNS = ["kind", "receivable_id", "financing_id", "firm_id", "on"]


def _account(ids: pd.Series) -> pd.Series:
    """Each firm's one ordinary account (an EXT- party: none known)."""
    return ids.where(ids.str.startswith("EXT-"), "62" + ids.str[-12:]).where(~ids.str.startswith("EXT-"), "")


def closed_loop_records(cfg, firms: pd.DataFrame, receivables: pd.DataFrame, flows: pd.DataFrame) -> dict:
    """The scenario's tables (see the module docstring); ``flows`` as written, with
    ``booked_on`` as datetime. Returns receivables, flows, financings and truth. One
    random stream, drawn stage by stage in a fixed order."""
    rng = np.random.default_rng([cfg.seed, 8])
    end = flows["booked_on"].max()
    r, pledged, transferred = _registry_records(receivables, rng, cfg, end)
    f = _financings(r, set(firms.loc[firms["is_core"], "firm_id"]), rng, cfg, end)
    rows, planted = _money(f, rng)
    line = _flow_lines(firms, rng, end, rows)
    rep = f["repaid_on"].notna()
    fin = pd.DataFrame({"financing_id": f["financing_id"], "firm_id": f["supplier_id"], "receivable_id": f["receivable_id"],
                        "drawn_on": f["drawn_on"], "amount": f["fin_amount"], "maturity_on": f["maturity_on"],
                        "collection_account": f["collection_account"], "repaid_on": f["repaid_on"],
                        "repaid_amount": f["fin_amount"].where(rep)})
    fin = pd.concat([fin, line], ignore_index=True)
    extra = pd.concat(rows, ignore_index=True)
    extra = extra[extra["booked_on"] <= end]
    extra.insert(0, "txn_id", [f"TC{i + 1:09d}" for i in range(len(extra))])
    flows = flows.assign(payer_account=_account(flows["payer_id"]), payee_account=_account(flows["payee_id"]))
    flows = pd.concat([flows, extra[flows.columns]], ignore_index=True)
    return {"receivables": r, "flows": flows, "financings": fin,
            "truth": _truth(r, pledged, transferred, f, planted)}


def _registry_records(receivables: pd.DataFrame, rng, cfg, end) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Double pledges and transfers on confirmed receivables (a record after the data's
    end is left out: it would be quarantined as in the future)."""
    r = receivables.copy()
    day = pd.to_timedelta
    conf = r.index[r["confirmed_on"].notna()]
    u = rng.random(len(r))
    pledged = np.zeros(len(r), bool)
    pledged[conf] = u[conf] < cfg.double_pledge_share
    transferred = np.zeros(len(r), bool)
    transferred[conf] = (u[conf] >= cfg.double_pledge_share) & (u[conf] < 1.4 * cfg.double_pledge_share)
    lag = day(rng.integers(1, 120, len(r)), unit="D")
    r["pledged_to"] = np.where(pledged, "BANK-" + pd.Series(rng.integers(1, 9, len(r))).astype(str), None)
    r["pledged_on"] = pd.Series(r["issued_on"] + lag).where(pledged)
    r["transferred_to"] = np.where(transferred, "FACTOR-" + pd.Series(rng.integers(1, 5, len(r))).astype(str), None)
    r["transferred_on"] = pd.Series(r["issued_on"] + lag).where(transferred)
    for col in ("pledged_on", "transferred_on"):
        late = r[col] > end
        r.loc[late, col] = pd.NaT
        r.loc[late, col.replace("_on", "_to")] = None
    return r, pledged, transferred


def _financings(r: pd.DataFrame, cores: set, rng, cfg, end) -> pd.DataFrame:
    """The bank's drawdowns on receivables confirmed by a core and free elsewhere, and
    which of them are planted as diverted, misused (core / circle) or borrowed to repay."""
    day = pd.to_timedelta
    ok = (r["confirmed_on"].notna() & r["buyer_id"].isin(cores) & r["pledged_on"].isna() & r["transferred_on"].isna()
          & ((r["due_on"] - r["confirmed_on"]).dt.days >= 20) & (r["confirmed_on"] + day(12, unit="D") < end))
    pick = r.index[ok & (rng.random(len(r)) < cfg.financed_share)]
    f = r.loc[pick, ["receivable_id", "supplier_id", "buyer_id", "amount", "confirmed_on", "due_on", "paid_on",
                     "paid_amount"]].reset_index(drop=True)
    n = len(f)
    f["financing_id"] = [f"FN{i + 1:08d}" for i in range(n)]
    f["drawn_on"] = f["confirmed_on"] + day(rng.integers(1, 11, n), unit="D")
    f["fin_amount"] = np.round(0.8 * f["amount"], 2)
    f["maturity_on"] = f["due_on"] + day(5, unit="D")
    f["collection_account"] = ["COL" + fid[2:] for fid in f["financing_id"]]
    kind = rng.random(n)
    rate = cfg.misuse_share
    f["diverted"] = f["paid_on"].notna() & (kind < rate)
    f["misuse"] = np.where((kind >= rate) & (kind < 2 * rate), "core",
                           np.where((kind >= 2 * rate) & (kind < 3 * rate), "circle", ""))
    f["borrow"] = f["paid_on"].notna() & (kind >= 3 * rate) & (kind < 4 * rate) \
        & ((f["paid_on"] - f["drawn_on"]).dt.days > 18)
    paid = f["paid_on"].notna()
    f["repaid_on"] = (f["paid_on"] + day(rng.integers(0, 3, n), unit="D")).where(paid)
    early = f["paid_on"] - day(rng.integers(6, 16, n), unit="D")  # clearly before the core paid
    f.loc[f["borrow"], "repaid_on"] = np.maximum(early, f["drawn_on"] + day(2, unit="D"))[f["borrow"]]
    f.loc[f["repaid_on"] > end, "repaid_on"] = pd.NaT
    return f


def _money(f: pd.DataFrame, rng) -> tuple[list[pd.DataFrame], dict]:
    """The flows of each financing: drawdown, spending (clean, back to the core, round a
    related party), the core's payment (collection account or diverted), repayment, and
    the other lender's loan before a borrowed repayment."""
    day = pd.to_timedelta
    n = len(f)
    ordinary = _account(f["supplier_id"])
    rows = []

    def add(on, payer, payee, amount, purpose, payer_acct, payee_acct):
        rows.append(pd.DataFrame({"booked_on": on, "payer_id": payer, "payee_id": payee, "amount": np.round(amount, 2),
                                  "purpose": purpose, "payer_account": payer_acct, "payee_account": payee_acct}))

    sup, amt = f["supplier_id"], f["fin_amount"]
    add(f["drawn_on"], BANK, sup, amt, "loan_drawdown", "", ordinary)
    spend_on = f["drawn_on"] + day(rng.integers(3, 21, n), unit="D")
    clean = f["misuse"] == ""
    vendor = "EXT-VND-" + pd.Series(rng.integers(1, 5000, n)).astype(str)
    add(spend_on[clean], sup[clean], vendor[clean], (amt * rng.uniform(0.5, 0.9, n))[clean], "trade",
        ordinary[clean], "")
    bad_on = f["drawn_on"] + day(rng.integers(1, 10, n), unit="D")
    share = rng.uniform(0.6, 1.0, n)
    to_core = f["misuse"] == "core"
    add(bad_on[to_core], sup[to_core], f["buyer_id"][to_core], (amt * share)[to_core], "trade", ordinary[to_core],
        _account(f["buyer_id"])[to_core])
    circ = f["misuse"] == "circle"
    related = "EXT-REL-" + pd.Series(rng.integers(1, 99999, n)).astype(str)
    out_amt = amt * share
    add(bad_on[circ], sup[circ], related[circ], out_amt[circ], "trade", ordinary[circ], "")
    add((bad_on + day(rng.integers(1, 8, n), unit="D"))[circ], related[circ], sup[circ],
        (out_amt * (1 - rng.uniform(0, 0.02, n)))[circ], "other", "", ordinary[circ])
    paid = f["paid_on"].notna()
    pay_to = np.where(f["diverted"], ordinary, f["collection_account"])
    add(f["paid_on"][paid], f["buyer_id"][paid], sup[paid], f["paid_amount"][paid], "trade",
        _account(f["buyer_id"])[paid], pd.Series(pay_to)[paid])
    rep = f["repaid_on"].notna()
    add(f["repaid_on"][rep], sup[rep], BANK, amt[rep], "loan_repayment", ordinary[rep], "")
    lender = "EXT-OTHERBANK-" + pd.Series(rng.integers(1, 50, n)).astype(str)
    b = f["borrow"] & rep
    add((f["repaid_on"] - day(rng.integers(1, 6, n), unit="D"))[b], lender[b], sup[b], (amt * 1.01)[b],
        "loan_drawdown", "", ordinary[b])
    return rows, {"diversion": f["diverted"], "misuse_core": to_core, "misuse_circle": circ, "borrow_to_repay": b}


def _flow_lines(firms: pd.DataFrame, rng, end, rows: list) -> pd.DataFrame:
    """Flow-based credit lines (no receivable), drawn and clean; their drawdowns join ``rows``."""
    day = pd.to_timedelta
    lines = firms.loc[~firms["is_core"], "firm_id"].sample(frac=0.02, random_state=int(rng.integers(1 << 31)))
    ln = len(lines)
    line_on = end - day(rng.integers(60, 600, ln), unit="D")
    line_amt = np.round(rng.uniform(1e5, 1e6, ln), -3)
    line = pd.DataFrame({"financing_id": [f"FL{i + 1:08d}" for i in range(ln)], "firm_id": lines.to_numpy(),
                         "receivable_id": None, "drawn_on": line_on, "amount": line_amt,
                         "maturity_on": line_on + day(365, unit="D"), "collection_account": "",
                         "repaid_on": pd.NaT, "repaid_amount": np.nan})
    line["collection_account"] = _account(line["firm_id"])
    rows.append(pd.DataFrame({"booked_on": line["drawn_on"], "payer_id": BANK, "payee_id": line["firm_id"],
                              "amount": np.round(line["amount"], 2), "purpose": "loan_drawdown", "payer_account": "",
                              "payee_account": line["collection_account"]}))
    return line


def _truth(r, pledged, transferred, f, planted: dict) -> pd.DataFrame:
    """One row per planted case."""
    truth = []
    for kind_name, mask, on in (("double_pledge", pledged & r["pledged_on"].notna(), r["pledged_on"]),
                                ("transferred", transferred & r["transferred_on"].notna(), r["transferred_on"])):
        truth.append(pd.DataFrame({"kind": kind_name, "receivable_id": r.loc[mask, "receivable_id"], "financing_id": "",
                                   "firm_id": r.loc[mask, "supplier_id"], "on": on[mask]}))
    for kind_name, mask in planted.items():
        truth.append(pd.DataFrame({"kind": kind_name, "receivable_id": f.loc[mask, "receivable_id"],
                                   "financing_id": f.loc[mask, "financing_id"], "firm_id": f.loc[mask, "supplier_id"],
                                   "on": f.loc[mask, "drawn_on"]}))
    return pd.concat(truth, ignore_index=True)[TRUTH_COLUMNS]


__all__ = ["closed_loop_records", "BANK", "TRUTH_COLUMNS"]
