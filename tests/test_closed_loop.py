"""Closed loop of funds and no double financing (issue 15), on small hand-made datasets:
one financing per rule, so each check is seen firing and staying quiet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scf_engine import policies
from scf_engine.contract import make_uscc
from scf_engine.dataset import Dataset, empty_financings
from scf_engine.features.closed_loop import closed_loop_features, financing_checks
from scf_engine.monitor.signals import fire

S, C, X = make_uscc("320281", 11111111), make_uscc("320281", 44444444), make_uscc("320281", 22222222)
D = pd.Timestamp


def firms() -> pd.DataFrame:
    return pd.DataFrame({"firm_id": [S, C, X], "name": ["s", "c", "x"], "industry": ["C33", "C36", "C33"],
                         "region": "320281", "founded_on": D("2015-01-01"), "registered_capital": 1e6,
                         "is_core": [False, True, False], "core_rating": [None, "AA", None], "batch_group": None})


def receivables(n: int) -> pd.DataFrame:
    return pd.DataFrame({"receivable_id": [f"R{i}" for i in range(n)], "supplier_id": S, "buyer_id": C,
                         "amount": 100_000.0, "issued_on": D("2024-01-02"), "due_on": D("2024-04-01"),
                         "confirmed_on": D("2024-01-03"), "paid_on": D("2024-04-01"), "paid_amount": 100_000.0})


def financing(i: int, **kw) -> dict:
    row = dict(financing_id=f"F{i}", firm_id=S, receivable_id=f"R{i}", drawn_on=D("2024-01-10"), amount=80_000.0,
               maturity_on=D("2024-04-05"), collection_account=f"COL{i}", repaid_on=D("2024-04-02"),
               repaid_amount=80_000.0)
    row.update(kw)
    return row


def flow(day, payer, payee, amount, purpose="trade", payer_account="", payee_account="") -> dict:
    return dict(txn_id=None, booked_on=D(day), payer_id=payer, payee_id=payee, amount=float(amount), purpose=purpose,
                payer_account=payer_account, payee_account=payee_account)


def dataset(fins: list[dict], flows: list[dict], *, accounts: bool = True) -> Dataset:
    fl = pd.DataFrame(flows)
    fl["txn_id"] = [f"T{i}" for i in range(len(fl))]
    if not accounts:
        fl = fl.drop(columns=["payer_account", "payee_account"])
    fin = pd.concat([empty_financings(), pd.DataFrame(fins)], ignore_index=True) if fins else empty_financings()
    return Dataset(firms(), receivables(4), fl, pd.DataFrame({"firm_id": pd.Series([], dtype=str),
                                                             "default_on": pd.Series([], dtype="datetime64[s]")}),
                   financings=fin, has_financings=True)


def clean_money(i: int) -> list[dict]:
    """Financing i done right: drawn, spent on a supplier, the core pays into the
    collection account, repaid from it."""
    return [flow("2024-01-10", "EXT-BANK-1", S, 80_000, "loan_drawdown", payee_account="6201"),
            flow("2024-01-20", S, "EXT-VENDOR-1", 60_000, payer_account="6201"),
            flow("2024-04-01", C, S, 100_000, payee_account=f"COL{i}"),
            flow("2024-04-02", S, "EXT-BANK-1", 80_000, "loan_repayment", payer_account="6201")]


def checks(ds: Dataset, as_of="2024-06-01") -> pd.DataFrame:
    return financing_checks(ds.as_of(as_of)).set_index("financing_id")


def test_a_financing_done_right_raises_nothing():
    c = checks(dataset([financing(0)], clean_money(0))).loc["F0"]
    assert (c["diverted"], c["misused"], c["borrow_to_repay"], c["live"]) == (0.0, False, 0.0, False)


def test_the_cores_payment_outside_the_collection_account_is_a_diversion():
    money = clean_money(0)
    money[2] = flow("2024-04-01", C, S, 100_000, payee_account="6201")  # the firm's ordinary account
    c = checks(dataset([financing(0)], money)).loc["F0"]
    assert c["diverted"] == 1.0 and c["borrow_to_repay"] == 0.0  # repaid from the (diverted) core money
    assert "into 6201, not collection account COL0" in c["evidence"]
    # not known before the payment: at an as-of before it, nothing is diverted yet
    assert checks(dataset([financing(0)], money), "2024-03-15").loc["F0", "diverted"] == 0.0


def test_drawn_money_sent_back_to_the_core_or_round_a_circle_is_misuse():
    """Three financings a month or more apart (an outflow spends the latest drawdown)."""
    to_core = clean_money(0)
    to_core[1] = flow("2024-01-12", S, C, 70_000, payer_account="6201")
    circle = [flow("2024-02-15", "EXT-BANK-1", S, 80_000, "loan_drawdown"), flow("2024-02-17", S, X, 75_000),
              flow("2024-02-23", X, S, 74_000, "other")]  # back within days at the amount
    late_return = [flow("2024-03-20", "EXT-BANK-1", S, 80_000, "loan_drawdown"), flow("2024-03-22", S, X, 75_000),
                   flow("2024-05-20", X, S, 74_000, "other")]  # two months later: ordinary trade
    fins = [financing(0), financing(1, drawn_on=D("2024-02-15")), financing(2, drawn_on=D("2024-03-20"))]
    c = checks(dataset(fins, to_core + circle + late_return))
    assert c.loc["F0", "misused"] and c.loc["F0", "misuse_share"] == pytest.approx(70_000 / 80_000)
    assert "went to the core" in c.loc["F0", "evidence"]
    assert c.loc["F1", "misused"] and "a circle" in c.loc["F1", "evidence"]
    assert not c.loc["F2", "misused"]


def test_repaid_before_the_core_paid_is_borrowing_to_repay():
    money = clean_money(0)
    money[3] = flow("2024-03-10", S, "EXT-BANK-1", 80_000, "loan_repayment")
    money.append(flow("2024-03-08", "EXT-OTHER-BANK", S, 81_000, "loan_drawdown"))
    c = checks(dataset([financing(0, repaid_on=D("2024-03-10"))], money)).loc["F0"]
    assert c["borrow_to_repay"] == 1.0 and c["diverted"] == 0.0
    assert "new loan CNY 81,000 from EXT-OTHER-BANK on 2024-03-08" in c["evidence"]


def test_without_accounts_the_account_checks_say_nothing_and_without_financings_nothing_at_all():
    ds = dataset([financing(0)], clean_money(0), accounts=False)
    c = checks(ds).loc["F0"]
    assert np.isnan(c["diverted"]) and np.isnan(c["borrow_to_repay"])
    f = closed_loop_features(ds.as_of("2024-06-01"))
    assert np.isnan(f.loc[S, "fin_diverted_12m"]) and f.loc[S, "fin_live_n"] == 0.0
    v1 = dataset([], clean_money(0))
    v1.has_financings = False
    assert closed_loop_features(v1.as_of("2024-06-01")).empty


def test_live_and_overdue_financings_are_told_apart_by_maturity():
    ds = dataset([financing(0, repaid_on=pd.NaT, repaid_amount=np.nan)], clean_money(0)[:2])
    assert closed_loop_features(ds.as_of("2024-04-01")).loc[S, ["fin_live_n", "fin_overdue_n"]].tolist() == [1.0, 0.0]
    assert closed_loop_features(ds.as_of("2024-05-01")).loc[S, ["fin_live_n", "fin_overdue_n"]].tolist() == [1.0, 1.0]


def _row(**kw) -> dict:
    base = {"loan_service_open_gap": 3.0, "b_loan_service_open_gap": 0.0, "fin_live_n": np.nan, "fin_overdue_n": np.nan,
            "fin_diverted_12m": np.nan, "b_fin_diverted_12m": np.nan, "fin_misused_12m": np.nan, "b_fin_misused_12m": np.nan,
            "fin_misuse_share_12m": np.nan, "fin_borrow_to_repay_12m": np.nan, "b_fin_borrow_to_repay_12m": np.nan,
            "fin_evidence": ""}
    return base | kw


def test_monitoring_signals_loan_service_quiet_when_the_loan_simply_matured():
    """Every other rule's column present and quiet: only the closed-loop signals matter here."""
    pol = policies.load("monitoring")
    names = [s["name"] for s in pol["signals"]]
    frame = pd.DataFrame([_row(), _row(fin_live_n=0.0, fin_overdue_n=0.0), _row(fin_live_n=1.0, fin_overdue_n=1.0),
                          _row(fin_live_n=0.0, fin_overdue_n=0.0, fin_diverted_12m=1.0, b_fin_diverted_12m=0.0,
                               fin_misused_12m=1.0, b_fin_misused_12m=0.0, fin_misuse_share_12m=0.9,
                               fin_borrow_to_repay_12m=1.0, b_fin_borrow_to_repay_12m=0.0, fin_evidence="F9: paid into 6201")],
                         index=pd.Index(["no_file", "matured", "arrears", "diverted"], name="firm_id"))
    for col in {c for s in pol["signals"] for c in _columns(s["rule"])} - set(frame.columns):
        frame[col] = np.nan
    frame["in_default"] = False
    a = fire(frame, pol, D("2024-06-01"))
    got = {(f, s) for f, s in zip(a["firm_id"], a["signal"])}
    assert ("no_file", "loan_service_missed") in got  # without financings.csv: as before
    assert ("matured", "loan_service_missed") not in got  # financings.csv: nothing live, the loan matured
    assert {("arrears", "loan_service_missed"), ("arrears", "financing_overdue")} <= got
    assert {("diverted", "funds_diverted"), ("diverted", "funds_misused"), ("diverted", "borrowing_to_repay")} <= got
    ev = a[(a["firm_id"] == "diverted") & (a["signal"] == "funds_diverted")]["evidence"].iloc[0]
    assert "F9: paid into 6201" in ev
    assert {"financing_overdue", "funds_diverted", "funds_misused", "borrowing_to_repay"} <= set(names)


def _columns(rule: str) -> set:
    import re

    return set(re.findall(r"\b([a-z][a-z0-9_]*)\b", rule)) - {"and", "or", "not", "coalesce", "null", "is", "true", "false"}


def test_the_simulator_plants_closed_loop_cases_that_load_clean_and_are_found(tmp_path):
    """WorldConfig(closed_loop=True): every new file and column follows the contract (not
    one row quarantined), the truth names each planted kind, and the checks find them; the
    default world writes no financings and keeps world.json's keys as before."""
    import json

    from scf_engine.ingest import load_dataset
    from scf_engine.simulate import WorldConfig, simulate, write_dataset

    data = write_dataset(simulate(WorldConfig(n_firms=300, seed=9, n_months=30, closed_loop=True)), tmp_path / "cl")
    ds = load_dataset(data)
    assert ds.report.n_quarantined == 0 and ds.has_financings and len(ds.financings) > 100
    assert {"pledged_to", "transferred_on"} <= set(ds.receivables.columns) and "payee_account" in ds.flows
    truth = pd.read_csv(data / "closed_loop_truth.csv", dtype=str, keep_default_na=False)
    assert set(truth["kind"]) == {"double_pledge", "transferred", "diversion", "misuse_core", "misuse_circle",
                                  "borrow_to_repay"}
    c = financing_checks(ds.as_of(ds.default_as_of))
    for kind, col in (("diversion", "diverted"), ("misuse", "misused"), ("borrow_to_repay", "borrow_to_repay")):
        pos = set(truth.loc[truth["kind"].str.startswith(kind), "financing_id"])
        flagged = set(c.loc[c[col] == 1, "financing_id"])
        assert len(pos & flagged) >= 0.9 * len(pos) and len(pos & flagged) >= 0.9 * len(flagged), kind
    plain = write_dataset(simulate(WorldConfig(n_firms=300, seed=9, n_months=30)), tmp_path / "plain")
    assert not (plain / "financings.csv").exists() and not (plain / "closed_loop_truth.csv").exists()
    assert "closed_loop" not in json.loads((plain / "world.json").read_text())["config"]
    assert pd.read_csv(plain / "flows.csv", nrows=1).columns.tolist() == ["txn_id", "booked_on", "payer_id", "payee_id",
                                                                           "amount", "purpose"]
