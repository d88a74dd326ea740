"""Property: for any corruption of a dataset, read = accepted + quarantined, per file,
and every accepted row satisfies the rules the corruption could break."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scf_engine.ingest import DatasetError, load_dataset
from tests.test_ingest import tiny

POOL = ["", " ", "0", "-1", "1.234", "abc", "2024-02-30", "2024-01-01", "是", "EXT-", "EXT-Z", "AA", "C34", "Z1",
        "1,000.00", "1,00,0", "trade", "NaN", "9" * 18, "320281", "2024-01-01 10:00:00", "\u00e9\u4e2d", "1e3"]
FILES = {"firms": 4, "receivables": 2, "flows": 3, "defaults": 1}
COLUMNS = {
    "firms": ["firm_id", "name", "industry", "region", "founded_on", "registered_capital", "is_core", "core_rating"],
    "receivables": ["receivable_id", "supplier_id", "buyer_id", "amount", "issued_on", "due_on", "confirmed_on", "paid_on", "paid_amount"],
    "flows": ["txn_id", "booked_on", "payer_id", "payee_id", "amount", "purpose"],
    "defaults": ["firm_id", "default_on"],
}

corruption = st.tuples(
    st.sampled_from(sorted(FILES)), st.integers(0, 3), st.integers(0, 8), st.sampled_from(POOL)
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(corruption, min_size=1, max_size=6))
def test_read_equals_accepted_plus_quarantined(changes):
    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny(Path(tmp))
        written = {}
        for file, n in FILES.items():
            df = pd.read_csv(folder / f"{file}.csv", dtype=str, keep_default_na=False)
            for f, row, col, value in changes:
                if f == file:
                    df.loc[row % len(df), COLUMNS[file][col % len(COLUMNS[file])]] = value
            df.to_csv(folder / f"{file}.csv", index=False)
            written[f"{file}.csv"] = len(df)
        try:
            ds = load_dataset(folder)
        except DatasetError as exc:  # nothing left to score is a legitimate outcome
            assert "nothing left to score" in str(exc)
            return
        s = ds.report.summary().set_index("file")
        for file, n in written.items():
            assert s.loc[file, "read"] == n
            assert s.loc[file, "read"] == s.loc[file, "accepted"] + s.loc[file, "quarantined"]
        q = ds.report.rows
        assert q.groupby("file")["line"].nunique().reindex(s.index).fillna(0).astype(int).tolist() == s["quarantined"].tolist()
        # what was accepted obeys the rules
        assert (ds.flows["amount"] > 0).all() and (ds.receivables["amount"] > 0).all()
        assert ds.flows["txn_id"].is_unique and ds.firms["firm_id"].is_unique
        assert ds.receivables["supplier_id"].isin(ds.firms["firm_id"]).all()
        assert (ds.receivables["due_on"] >= ds.receivables["issued_on"]).all()
        assert ds.flows["purpose"].isin(["trade", "payroll", "tax", "social_insurance", "housing_fund", "utilities",
                                         "loan_drawdown", "loan_repayment", "other"]).all()
        assert ds.firms["founded_on"].notna().all()
