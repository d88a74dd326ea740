"""Third-party data: it gets in through a column mapping, and the engine's signals hold on it.

Two samples nobody on this project generated (``../shared/external-data``, see its README):

* IBM's accounts-receivable export (2,466 invoices of 100 customers, its own layout and
  M/D/YYYY dates) goes through ``data/mappings/ibm_accounts_receivable.yaml``; the
  registry's payment-delay features must agree with the export's own ``DaysLate``.
* IBM AMLSim transfers with planted cycles, mapped onto the flows contract; its cycles
  are not booked in time order, so the ring features (money that comes back, hop after
  hop) call none of them, and no ordinary account either; the order-free ring evidence
  (an amount handed on, money that could come back round thin relationships) ranks them
  at AUC 0.886, short of the issue's 0.90 (every planted hop in the sample gets in; 148
  cycle accounts have nothing of their ring in it); with rings of the real shape planted among its accounts the ring
  features find every ring account and no fan-in account.

Neither has a defaults file, as a foreign export would not, so every snapshot here also
checks that ``Dataset.as_of`` works without one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from scf_engine.features import flow_features
from scf_engine.graph import build_chain
from scf_engine.ingest import load_dataset
from scf_engine.ingest.mapping import import_export
from tests.conftest import EXTERNAL

REPO = Path(__file__).resolve().parents[1]
AR_CSV = EXTERNAL / "WA_Fn-UseC_-Accounts-Receivable.csv"
AR_MAPPING = REPO / "data" / "mappings" / "ibm_accounts_receivable.yaml"
AML_20K = EXTERNAL / "amlsim" / "ibm_20K_cycle200"
AML_TINY = EXTERNAL / "amlsim" / "ibm_sample_outputs_tiny"

CREDITOR = "IBM AR sample creditor"  # the mapping's constant supplier key (and firm name)

AML_20K_MAPPING = REPO / "data" / "mappings" / "ibm_amlsim_20k.yaml"
AML_TINY_MAPPING = REPO / "data" / "mappings" / "ibm_amlsim_tiny.yaml"


def keyed(ds, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (index firm_id) re-indexed by the source key; the mappings name firms ``{key}``."""
    return frame.rename(index=ds.firms.set_index("firm_id")["name"])


def quarantined(ds) -> int:
    return ds.report.n_quarantined


# --- IBM accounts-receivable export ------------------------------------------------------

@pytest.fixture(scope="module")
def ar(tmp_path_factory):
    out = tmp_path_factory.mktemp("ibm_ar")
    import_export(AR_CSV, AR_MAPPING, out)
    raw = pd.read_csv(AR_CSV, dtype={"invoiceNumber": str, "customerID": str})
    for c in ("InvoiceDate", "DueDate", "SettledDate"):
        raw[c] = pd.to_datetime(raw[c], format="%m/%d/%Y")
    return load_dataset(out), raw


def test_ar_export_gets_in_through_the_mapping(ar):
    ds, raw = ar
    assert quarantined(ds) == 0
    assert len(ds.receivables) == 2466
    names = ds.firms.set_index("firm_id")["name"]
    assert len(ds.firms) == 101 and ds.firms["firm_id"].is_unique
    assert set(names[ds.receivables["buyer_id"]]) == set(raw["customerID"]) and raw["customerID"].nunique() == 100
    assert set(names[ds.receivables["supplier_id"]]) == {CREDITOR}
    assert not ds.firms["is_core"].any()
    ids = ds.receivables["receivable_id"]
    assert sorted(ids) == sorted(raw["invoiceNumber"])  # as text, so '0000611365' keeps its zeros
    assert ids.str.startswith("0").sum() == raw["invoiceNumber"].str.startswith("0").sum() > 0
    got = ds.receivables.set_index("receivable_id").loc["0000611365"]
    assert (got["issued_on"], got["due_on"], got["paid_on"], got["amount"]) == (
        pd.Timestamp("2013-01-02"), pd.Timestamp("2013-02-01"), pd.Timestamp("2013-01-15"), 55.94)


def test_unmappable_rows_are_kept_for_the_quarantine(tmp_path):
    """A row the mapping cannot read is not dropped: it reaches the loader, which
    quarantines it on the export's own line, showing the value as it was written."""
    raw = pd.read_csv(AR_CSV, dtype=str, keep_default_na=False)
    raw.loc[3, "InvoiceDate"] = "2013-02-10"  # not M/D/YYYY
    raw.loc[5, "customerID"] = ""  # no debtor
    raw.to_csv(tmp_path / "ar.csv", index=False)
    import_export(tmp_path / "ar.csv", AR_MAPPING, tmp_path / "data")
    ds = load_dataset(tmp_path / "data")
    assert len(ds.receivables) == 2466 - 2
    rows = ds.report.rows.set_index("line")
    assert sorted(rows.index) == [3 + 2, 5 + 2]
    assert rows.loc[5, ["column", "value"]].tolist() == ["issued_on", "unmapped:2013-02-10"]
    assert rows.loc[7, "reason"] == "buyer_id is empty"


def expected_delays(raw: pd.DataFrame, T: pd.Timestamp) -> tuple[pd.DataFrame, pd.Series]:
    """From the raw export: per customer, the amount-weighted mean DaysLate of invoices
    settled in the 12 months before T, and the amount share with DaysLate > 0 of invoices
    due in those 12 months (one due before T but unpaid at T, which the engine counts as
    late, is settled after its due date, so its DaysLate is > 0 too)."""
    start = T - pd.DateOffset(months=12)
    settled = raw[(raw["SettledDate"] >= start) & (raw["SettledDate"] < T)]
    due = raw[(raw["DueDate"] >= start) & (raw["DueDate"] < T)]
    late = due["InvoiceAmount"].where(due["DaysLate"] > 0, 0.0)

    def per_customer(num, den, frame):
        total = den.groupby(frame["customerID"]).sum()
        return num.groupby(frame["customerID"]).sum() / total

    out = pd.DataFrame({
        "days_late": per_customer(settled["InvoiceAmount"] * settled["DaysLate"], settled["InvoiceAmount"], settled),
        "late_share": per_customer(late, due["InvoiceAmount"], due),
    })
    overall = pd.Series({
        "days_late": (settled["InvoiceAmount"] * settled["DaysLate"]).sum() / settled["InvoiceAmount"].sum(),
        "late_share": late.sum() / due["InvoiceAmount"].sum(),
    })
    return out, overall


@pytest.mark.parametrize("as_of", ["2014-02-01", "2013-07-01"])  # after the last date; mid-file
def test_payment_delay_features_agree_with_days_late(ar, as_of):
    ds, raw = ar
    T = pd.Timestamp(as_of)
    want, overall = expected_delays(raw, T)
    nodes = keyed(ds, build_chain(ds.as_of(T)).nodes)
    customers = nodes.drop(index=CREDITOR)
    assert len(want["days_late"].dropna()) >= 90  # nearly every customer settled something
    for feature, column in (("payables_days_late", "days_late"), ("payables_late_share", "late_share")):
        got = customers[feature].dropna()
        assert set(got.index) == set(want[column].dropna().index), feature
        np.testing.assert_allclose(got.to_numpy(), want[column].reindex(got.index).to_numpy(), rtol=0, atol=1e-6,
                                   err_msg=feature)
    creditor = nodes.loc[CREDITOR]
    assert creditor["recv_days_late"] == pytest.approx(overall["days_late"], abs=1e-6)
    assert creditor["recv_late_share"] == pytest.approx(overall["late_share"], abs=1e-6)


# --- IBM AMLSim: planted cycles ---------------------------------------------------------

def import_amlsim(tx_csv: Path, out: Path, mapping: Path) -> tuple:
    import_export(tx_csv, mapping, out)
    ds = load_dataset(out)
    return ds, keyed(ds, flow_features(ds.as_of(ds.default_as_of)))


@pytest.fixture(scope="module")
def aml20k(tmp_path_factory):
    """The 20K-account sample as flows. Its 14 self-transfers are left out first: they
    move no money between parties (the contract rejects them, and a ring needs three)."""
    tmp = tmp_path_factory.mktemp("aml20k")
    tx = pd.read_csv(AML_20K / "transactions.csv", dtype=str)
    self_transfer = tx["sourceNodeId"] == tx["targetNodeId"]
    assert self_transfer.sum() == 14
    tx[~self_transfer].to_csv(tmp / "transactions.csv", index=False)
    ds, feats = import_amlsim(tmp / "transactions.csv", tmp / "data", AML_20K_MAPPING)
    nodes = pd.read_csv(AML_20K / "nodes.csv", dtype={"nodeid": str}).set_index("nodeid")
    # accounts with no transfer at all are firms with no cycle money
    return ds, feats.reindex(nodes.index), nodes["isFraud"]


def test_amlsim_transfers_get_in_as_flows(aml20k):
    ds, _, is_fraud = aml20k
    assert quarantined(ds) == 0
    assert len(ds.flows) == 117_805 - 14
    assert (ds.flows["purpose"] == "trade").all() and ds.receivables.empty
    assert len(is_fraud) == 20_000 and is_fraud.sum() == 945


def test_every_planted_hop_in_the_sample_reaches_the_ring_search(aml20k):
    """Where the planted cycles go on the way in. AMLSim sends a cycle's hops at its one
    amount, drawn between the typology's min and max (10-20 here); ordinary transfers carry
    the sender's balance (100-600), so every transfer under 100 is a planted hop, each
    repeated 1-5 times on its day. All 1,899 such rows (479 hops of 145 rings, one amount
    each) are imported, none quarantined, and all lie in the 12 months of trade flows the
    ring search reads at the default as-of date (the day after the last transfer; the
    sample spans 149 days). What the sample lacks it never had: rings are scheduled up to
    and past its last step (a ring's first hop comes on day 81 on average), so 55 of the
    200 rings have no hop in it, only 15 close, and 326 of the 945 cycle accounts have no
    planted hop at all; 148 of those lie on no cycle of cycle accounts of any length
    either (their ring edges carried no transfer), so nothing of their ring is in the data.
    """
    import networkx as nx

    ds, _, is_fraud = aml20k
    raw = pd.read_csv(AML_20K / "transactions.csv", dtype={"sourceNodeId": str, "targetNodeId": str})
    planted = raw[raw["value"] < 100]
    cycle = set(is_fraud.index[is_fraud == 1])
    assert planted["value"].between(10, 20).all() and len(planted) == 1_899
    assert planted["sourceNodeId"].isin(cycle).all() and planted["targetNodeId"].isin(cycle).all()
    T = ds.default_as_of
    read = ds.as_of(T).flows
    name = ds.firms.set_index("firm_id")["name"]
    read = read[(read["purpose"] == "trade") & (read["booked_on"] >= T - pd.DateOffset(months=12))]
    got = pd.DataFrame({"s": read["payer_id"].map(name), "t": read["payee_id"].map(name), "v": read["amount"],
                        "d": (read["booked_on"] - pd.Timestamp("2017-01-01")).dt.days})
    got = got[got["v"] < 100].value_counts().sort_index()
    want = planted.rename(columns={"sourceNodeId": "s", "targetNodeId": "t", "value": "v", "time": "d"})
    want = want[["s", "t", "v", "d"]].value_counts().sort_index()
    assert got.to_dict() == want.to_dict() and len(want) == 479  # every hop, every copy
    rings = planted.drop_duplicates(["sourceNodeId", "targetNodeId", "time"]).groupby("value")
    closed = sum(set(g["sourceNodeId"]) == set(g["targetNodeId"]) for _, g in rings)
    assert len(rings) == 145 and closed == 15
    traced = set(planted["sourceNodeId"]) | set(planted["targetNodeId"])
    between = raw[raw["sourceNodeId"].astype(str).isin(cycle) & raw["targetNodeId"].astype(str).isin(cycle)]
    g = nx.DiGraph(list(zip(between["sourceNodeId"], between["targetNodeId"])))
    on_cycle = {v for c in nx.strongly_connected_components(g) if len(c) > 1 for v in c}
    assert len(cycle - traced) == 326 and len(cycle - traced - on_cycle) == 148


def test_amlsim_cycles_are_not_time_ordered_so_no_ring_is_called(aml20k):
    """A planted cycle shows as one small amount (10-20) handed from account to account, but
    AMLSim books the hops at unrelated days: the 16.43 ring goes 3916 -> 18533 (day 22),
    18533 -> 8624 (day 91), 8624 -> 19433 (day 50), 19433 -> 19914 (day 28),
    19914 -> 3916 (day 138). Money cannot come back before it left, so the time-ordered ring
    features call no account (AUC 0.5): no false ring among 19,055 ordinary accounts either.
    The order-free ring evidence (next test) is what sees these.
    """
    _, feats, is_fraud = aml20k
    raw = pd.read_csv(AML_20K / "transactions.csv")
    hop = {s: (t, d) for s, t, d in raw.loc[raw["value"] == 16.43, ["sourceNodeId", "targetNodeId", "time"]].itertuples(index=False)}
    at, days = 3916, []
    for _ in range(5):
        at, day = hop[at]
        days.append(day)
    assert at == 3916 and days == [22, 91, 50, 28, 138]  # closed, but not in time order
    for c in ("cycle_share_12m", "cycle_return_share_12m", "cycle_rings_12m"):
        assert (feats[c].fillna(0) == 0).all(), c
    ring = ["3916", "18533", "8624", "19433", "19914"]
    assert (feats.loc[ring, "cycle_chain_hops_12m"] > 0).all()  # the amount handed on, order ignored
    assert (feats.loc[ring, "cycle_structural_parties_12m"] <= 5).all()


def test_amlsim_cycle_accounts_by_order_free_ring_evidence(aml20k):
    """The issue's target, ROC AUC >= 0.90 for the cycle accounts, is missed: the ring score
    reaches 0.886 (measured), from 0.556 for the best feature before and 0.873 with the
    shortest structural ring in the score.

    How AMLSim plants a cycle (IBM/AMLSim, CycleTypology / CycleTransactionModel): k accounts
    (5 here) are joined by ring edges in its transaction graph; each hop is sent at a random
    step, in no order, at the ring's one amount; the ordinary transaction models then use
    the ring edges like any other. So a ring leaves (1) an amount handed from account to
    account, when two adjacent hops fall inside the sample's 149 days, and (2) a closed
    chain of relationships, when its edges carried any transfer at all.

    * (1), ``cycle_chain_hops_12m`` (exact amount, 180 days either way): 501 of the 945
      accounts, and 16 of 19,055 ordinary ones (90 days: 490 and 16);
    * (2), ``cycle_structural_parties_12m`` alone: AUC 0.83; 11,000 ordinary accounts sit on
      some cycle of 6 or fewer, mostly through hubs. ``cycle_walk_return_12m``, the chance
      that money comes back if every party spreads it evenly over its payees, discounts a
      ring through a hub: AUC 0.86 alone, and it is what the score weighs;
    * nothing is lost on the way in (previous test): 326 cycle accounts have no planted hop
      in the sample, and 148 of them lie on no cycle of cycle accounts either, so no ring
      signal can see them; an oracle that knew every other cycle account and ranked these
      148 at chance would reach 0.92.

    The score ranks (1) above any (2); the floors asserted are a little under the measurements.
    """
    _, feats, is_fraud = aml20k
    score = feats["cycle_score_12m"].fillna(0)
    assert roc_auc_score(is_fraud, score) >= 0.88
    chain = feats["cycle_chain_hops_12m"].fillna(0) > 0
    assert chain[is_fraud == 1].sum() >= 495 and chain[is_fraud == 0].sum() <= 20
    assert roc_auc_score(is_fraud, -feats["cycle_structural_parties_12m"].fillna(99)) >= 0.82
    walk = feats["cycle_walk_return_12m"].fillna(0)
    assert roc_auc_score(is_fraud, walk) >= 0.85 and walk.between(0, 1).all()
    assert roc_auc_score(is_fraud, feats["cycle_share_12m"].fillna(0)) == 0.5  # time order: nothing


def plant(tx: pd.DataFrame, rng, *, n_rings: int, n_fans: int) -> tuple[pd.DataFrame, set, set]:
    """AMLSim's transfers plus rings of 3-5 new accounts passing money hop after hop (each
    hop 1-3% smaller, 1-10 days later, back within the ring policy's 90 days) and fan-in
    accounts paid by 8-12 new accounts within three days (money that never comes back)."""
    rows, ring_accounts, fan_accounts = [], set(), set()
    for r in range(n_rings):
        members = [f"R{r}-{i}" for i in range(int(rng.integers(3, 6)))]
        ring_accounts |= set(members)
        for start in rng.integers(1, 120, size=3):
            day, amount = int(start), round(float(rng.uniform(1e4, 1e5)), 2)
            for i, m in enumerate(members):
                rows.append((m, members[(i + 1) % len(members)], amount, day))
                amount, day = round(amount * (1 - rng.uniform(0.01, 0.03)), 2), day + int(rng.integers(1, 11))
    for f in range(n_fans):
        fan_accounts.add(f"F{f}")
        day = int(rng.integers(1, 140))
        for j in range(int(rng.integers(8, 13))):
            rows.append((f"F{f}-{j}", f"F{f}", round(float(rng.uniform(1e4, 1e5)), 2), day + int(rng.integers(0, 3))))
    planted = pd.DataFrame(rows, columns=["sourceNodeId", "targetNodeId", "value", "time"]).astype(str)
    return pd.concat([tx, planted], ignore_index=True), ring_accounts, fan_accounts


def test_rings_with_decay_and_delays_are_found_among_amlsim_accounts_and_fan_ins_are_not(tmp_path):
    """A mixed sample: AMLSim's 20,000 accounts and 117,791 transfers as the background,
    40 planted rings (real 资金空转: money shrinks a little at each hop and comes back over
    weeks) and 40 fan-in accounts. Every ring account is found (ROC AUC >= 0.90, the
    issue's target, measured 1.0), no background or fan-in account is called a ring, and
    the fan-in accounts stand out on the fan-in burst instead."""
    tx = pd.read_csv(AML_20K / "transactions.csv", dtype=str)
    tx = tx[tx["sourceNodeId"] != tx["targetNodeId"]]
    mixed, rings, fans = plant(tx, np.random.default_rng(5), n_rings=40, n_fans=40)
    mixed.to_csv(tmp_path / "mixed.csv", index=False)
    _, feats = import_amlsim(tmp_path / "mixed.csv", tmp_path / "data", AML_20K_MAPPING)
    feats = feats[~feats.index.str.contains("-") | feats.index.str.startswith("R")]  # fan-in payers are not scored
    is_ring = feats.index.isin(rings)
    share = feats["cycle_share_12m"].fillna(0)
    assert roc_auc_score(is_ring, share) >= 0.90
    assert (share[is_ring] > 0).all() and (share[~is_ring] == 0).all()
    starters = [a for a in rings if a.endswith("-0")]  # whose money went round and came back
    assert (feats.loc[starters, "cycle_rings_12m"] == 3).all() and (feats.loc[starters, "cycle_return_share_12m"] > 0).all()
    is_fan = feats.index.isin(fans)
    assert roc_auc_score(is_fan, feats["fan_in_burst_12m"].fillna(0)) >= 0.95
    assert (feats.loc[list(fans), "cycle_rings_12m"] == 0).all()
    # the order-free evidence does not call a fan-in account a ring either, and the one
    # ring score puts every ring account (on a ring in time order) above every other
    fan = feats.loc[list(fans)]
    assert (fan["cycle_score_12m"] == 0).all() and fan["cycle_structural_parties_12m"].isna().all()
    assert (fan["cycle_chain_hops_12m"] == 0).all()
    score = feats["cycle_score_12m"].fillna(0)
    assert score[is_ring].min() > score[~is_ring].max()


def test_amlsim_tiny_cycle_alerts(tmp_path):
    """Accounts 24 and 25 carry the two ``cycle`` alerts, yet their ring never closes in
    ``tx.csv``: the alert amount 11.17 goes 24 -> 25 (day 27) -> 26 (day 48), and the hop
    26 -> 24 that would close it falls after the sample's last day (the one 26 -> 24
    transfer, day 14, is 143.41: 26's own balance). No ring closes at a matching amount,
    so nobody is flagged. Closing it with that one hop flags exactly the ring.

    Also shows the importer's bad-row policy: the 3 self-transfers are kept and the loader
    quarantines them on their own line of tx.csv.
    """
    ds, feats = import_amlsim(AML_TINY / "tx.csv", tmp_path / "raw", AML_TINY_MAPPING)
    raw = pd.read_csv(AML_TINY / "tx.csv", dtype=str)
    self_lines = raw.index[raw["ACCOUNT_ID"] == raw["COUNTER_PARTY_ACCOUNT_NUM"]] + 2  # header is line 1
    rows = ds.report.rows
    assert quarantined(ds) == 3 and sorted(rows["line"]) == sorted(self_lines)
    assert set(rows["reason"]) == {"payee_id equals payer_id"}
    chain = raw[raw["TXN_AMOUNT_ORIG"] == "11.17"]
    assert list(zip(chain["ACCOUNT_ID"], chain["COUNTER_PARTY_ACCOUNT_NUM"])) == [("24", "25"), ("25", "26")]
    assert (feats["cycle_share_12m"].fillna(0) == 0).all()

    closed = pd.concat([raw, pd.DataFrame([dict(TXN_ID="999", ACCOUNT_ID="26", COUNTER_PARTY_ACCOUNT_NUM="24",
                                                TXN_SOURCE_TYPE_CODE="WIRE", tx_count="1", TXN_AMOUNT_ORIG="11.17",
                                                start="51", end="51")])])
    closed.to_csv(tmp_path / "tx_closed.csv", index=False)
    _, feats = import_amlsim(tmp_path / "tx_closed.csv", tmp_path / "closed", AML_TINY_MAPPING)
    flagged = feats.index[feats["cycle_share_12m"].fillna(0) > 0]
    assert sorted(flagged) == ["24", "25", "26"]


@pytest.mark.parametrize("case", ["no source", "empty source", "mapping not YAML", "no mapping", "bad encoding"])
def test_an_unreadable_export_or_mapping_is_one_line_and_exit_2(tmp_path, case):
    """``scf import`` on a source that is not there, empty, or a mapping that is not YAML
    (or not there, or names an encoding that does not exist) ended in a Python traceback
    instead of the contract's one-line error and exit code 2."""
    from typer.testing import CliRunner

    from scf_engine.cli import app

    source, mapping = tmp_path / "ar.csv", tmp_path / "m.yaml"
    pd.read_csv(AR_CSV, dtype=str, nrows=5).to_csv(source, index=False)
    mapping.write_text(Path(AR_MAPPING).read_text(encoding="utf-8"), encoding="utf-8")
    if case == "no source":
        source.unlink()
    elif case == "empty source":
        source.write_bytes(b"")
    elif case == "mapping not YAML":
        mapping.write_text("produces: receivables\ncolumns: [\n", encoding="utf-8")
    elif case == "no mapping":
        mapping.unlink()
    else:
        text = mapping.read_text(encoding="utf-8")
        mapping.write_text("source:\n  encoding: no-such-codec\n" + "\n".join(
            line for line in text.splitlines() if not line.startswith("source:") and "encoding:" not in line),
            encoding="utf-8")
    r = CliRunner().invoke(app, ["import", str(source), "--mapping", str(mapping), "--out", str(tmp_path / "data"),
                                 "--audit-log", str(tmp_path / "audit.jsonl")])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), r.output
    name = mapping.name if case in ("mapping not YAML", "no mapping") else source.name
    assert f"error: {name}:" in r.output and len(r.output.strip().splitlines()) == 1, r.output
