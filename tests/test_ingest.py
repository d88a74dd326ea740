"""Ingestion: every contract rule, the quarantine report, encodings and structural errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from scf_engine.cli import app
from scf_engine.ingest import DatasetError, load_dataset
from scf_engine.simulate.faults import write_faulty_copy
from scf_engine.contract import make_uscc
from tests.conftest import write_csv

F1, F2, F3, CORE = (make_uscc("320281", s) for s in (11111111, 22222222, 33333333, 44444444))


def tiny(folder: Path, **overrides) -> Path:
    """A valid four-firm dataset; ``overrides[file]`` replaces a file's rows."""
    files = {
        "firms": [
            dict(firm_id=CORE, name="江阴核心集团股份有限公司", industry="C36", region="320281", founded_on="2001-05-01",
                 registered_capital="500000000", is_core="true", core_rating="AA", batch_group=""),
            dict(firm_id=F1, name="江阴恒达五金有限公司", industry="C33", region="320281", founded_on="2015-03-01",
                 registered_capital="1000000", is_core="false", core_rating="", batch_group="PARK-1"),
            dict(firm_id=F2, name="江阴鑫源电子有限公司", industry="C39", region="320281", founded_on="2018-07-15",
                 registered_capital="2000000.50", is_core="false", core_rating="", batch_group=""),
            dict(firm_id=F3, name="江阴华盛贸易有限公司", industry="F51", region="320281", founded_on="2020-01-01",
                 registered_capital="500000", is_core="false", core_rating="", batch_group=""),
        ],
        "receivables": [
            dict(receivable_id="R1", supplier_id=F1, buyer_id=CORE, amount="100000.00", issued_on="2024-01-05",
                 due_on="2024-03-05", confirmed_on="2024-01-08", paid_on="2024-03-01", paid_amount="100000.00"),
            dict(receivable_id="R2", supplier_id=F2, buyer_id=F1, amount="50000", issued_on="2024-02-01",
                 due_on="2024-03-01", confirmed_on="", paid_on="", paid_amount=""),
        ],
        "flows": [
            dict(txn_id="T1", booked_on="2024-03-01", payer_id=CORE, payee_id=F1, amount="100000.00", purpose="trade"),
            dict(txn_id="T2", booked_on="2024-03-10", payer_id=F1, payee_id="EXT-PAY-1", amount="20000", purpose="payroll"),
            dict(txn_id="T3", booked_on="2024-03-15", payer_id=F2, payee_id="EXT-TAX-1", amount="3000.5", purpose="tax"),
        ],
        "defaults": [dict(firm_id=F3, default_on="2024-06-01")],
    }
    files.update(overrides)
    for name, rows in files.items():
        if rows is not None:
            write_csv(folder, name, rows)
    return folder


def with_row(folder: Path, file: str, index: int, **changes) -> Path:
    df = pd.read_csv(folder / f"{file}.csv", dtype=str, keep_default_na=False)
    for k, v in changes.items():
        df.loc[index, k] = v
    df.to_csv(folder / f"{file}.csv", index=False)
    return folder


def test_clean_tiny_dataset_is_accepted_whole(tmp_path):
    ds = load_dataset(tiny(tmp_path))
    s = ds.report.summary().set_index("file")
    assert s["quarantined"].sum() == 0
    assert s.loc["flows.csv", "accepted"] == 3
    assert ds.flows["booked_on"].dtype == "datetime64[s]"
    assert ds.flows["amount"].dtype == "float64"
    assert ds.firms["is_core"].dtype == bool
    assert ds.receivables["confirmed_on"].isna().sum() == 1
    assert ds.firms.set_index("firm_id").loc[F2, "registered_capital"] == 2000000.5


# One row breaking each rule: (file, row index, changes, column, reason fragment)
RULES = [
    ("firms", 1, dict(firm_id=F1[:-1] + ("0" if F1[-1] != "0" else "1")), "firm_id", "check character is wrong"),
    ("firms", 1, dict(firm_id=F1[:17]), "firm_id", "not 18 characters"),
    ("firms", 1, dict(firm_id=F1[:17] + "a"), "firm_id", "outside 0-9 and A-Z"),
    ("firms", 2, dict(firm_id=F1), "firm_id", "duplicate firm_id (first on line 3)"),
    ("firms", 1, dict(name=""), "name", "name is empty"),
    ("firms", 1, dict(industry="C7"), "industry", "GB/T 4754"),
    ("firms", 1, dict(industry="A44"), "industry", "GB/T 4754"),
    ("firms", 1, dict(region="990101"), "region", "administrative division"),
    ("firms", 1, dict(founded_on="2015-02-29"), "founded_on", "not a date"),
    ("firms", 1, dict(founded_on="2030-01-01"), "founded_on", "after the last date"),
    ("firms", 1, dict(registered_capital="-1"), "registered_capital", "negative"),
    ("firms", 1, dict(registered_capital="1.005"), "registered_capital", "more than 2 decimals"),
    ("firms", 1, dict(is_core="yes"), "is_core", "not a boolean"),
    ("firms", 0, dict(core_rating=""), "core_rating", "required when is_core"),
    ("firms", 1, dict(core_rating="AA"), "core_rating", "must be empty"),
    ("firms", 0, dict(core_rating="A++"), "core_rating", "not one of"),
    ("receivables", 1, dict(receivable_id="R1"), "receivable_id", "duplicate receivable_id"),
    ("receivables", 1, dict(receivable_id=""), "receivable_id", "is empty"),
    ("receivables", 1, dict(supplier_id=make_uscc("320281", 55555555)), "supplier_id", "not an accepted firm"),
    ("receivables", 1, dict(buyer_id="EXT-X"), "buyer_id", "not an accepted firm"),
    ("receivables", 1, dict(buyer_id=F2), "buyer_id", "equals supplier_id"),
    ("receivables", 1, dict(amount="0"), "amount", "must be > 0"),
    ("receivables", 1, dict(amount="1e"), "amount", "not a number"),
    ("receivables", 1, dict(amount="12,34.00"), "amount", "not a number"),
    ("receivables", 1, dict(issued_on="2024/02/01"), "issued_on", "not a date"),
    ("receivables", 1, dict(due_on="2024-01-01"), "due_on", "before issued_on"),
    ("receivables", 1, dict(confirmed_on="2024-01-31"), "confirmed_on", "before issued_on"),
    ("receivables", 0, dict(paid_on="2024-01-01"), "paid_on", "before issued_on"),
    ("receivables", 0, dict(paid_amount="-3"), "paid_amount", "negative"),
    ("receivables", 0, dict(paid_amount=""), "paid_amount", "paid_on is set but paid_amount is empty"),
    ("receivables", 1, dict(paid_amount="10"), "paid_on", "paid_amount is set but paid_on is empty"),
    ("flows", 1, dict(txn_id="T1"), "txn_id", "duplicate txn_id (first on line 2)"),
    ("flows", 1, dict(booked_on="20240310"), "booked_on", "not a date"),
    ("flows", 1, dict(payer_id="XYZ"), "payer_id", "neither an accepted firm"),
    ("flows", 1, dict(payee_id="EXT-"), "payee_id", "neither an accepted firm"),
    ("flows", 1, dict(payee_id=F1), "payee_id", "equals payer_id"),
    ("flows", 1, dict(amount="-20000"), "amount", "must be > 0"),
    ("flows", 1, dict(amount="20000.123"), "amount", "more than 2 decimals"),
    ("flows", 1, dict(purpose="salary"), "purpose", "not one of"),
    ("defaults", 0, dict(firm_id=make_uscc("320281", 66666666)), "firm_id", "not an accepted firm"),
    ("defaults", 0, dict(default_on="June 2024"), "default_on", "not a date"),
]


@pytest.mark.parametrize("file,index,changes,column,reason", RULES, ids=[f"{r[0]}-{r[3]}-{r[4][:20]}" for r in RULES])
def test_each_rule_quarantines_a_breaking_row(tmp_path, file, index, changes, column, reason):
    folder = with_row(tiny(tmp_path), file, index, **changes)
    ds = load_dataset(folder)
    q = ds.report.rows
    hits = q[(q["file"] == f"{file}.csv") & (q["column"] == column)]
    assert len(hits) >= 1, ds.report.rows
    assert hits["reason"].str.contains(reason, regex=False).any(), hits["reason"].tolist()
    assert (hits["line"] == index + 2).all()
    s = ds.report.summary().set_index("file")
    assert (s["read"] == s["accepted"] + s["quarantined"]).all()
    assert s.loc[f"{file}.csv", "quarantined"] == 1


def test_quarantined_firm_cascades_to_the_rows_that_name_it(tmp_path):
    folder = with_row(tiny(tmp_path), "firms", 1, industry="X00")
    ds = load_dataset(folder)
    q = ds.report.rows
    assert set(q["file"]) == {"firms.csv", "receivables.csv", "flows.csv"}
    assert (q.loc[q["file"] != "firms.csv", "parties"].str.contains(F1)).all()
    assert len(ds.report.rows_touching(F1)) == len(q)


def test_accepted_spellings_and_variants(tmp_path):
    folder = tiny(tmp_path)
    with_row(folder, "firms", 0, is_core="是")
    with_row(folder, "firms", 1, is_core="否")
    with_row(folder, "firms", 2, is_core="0")
    with_row(folder, "firms", 3, is_core="FALSE")
    with_row(folder, "flows", 0, amount="100,000.00", booked_on="2024-03-01 17:45:12")
    ds = load_dataset(folder)
    assert ds.report.n_quarantined == 0
    assert ds.firms["is_core"].tolist() == [True, False, False, False]
    assert ds.flows.loc[0, "amount"] == 100000.0
    assert ds.flows.loc[0, "booked_on"] == pd.Timestamp("2024-03-01")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030"])
def test_encodings_are_detected(tmp_path, encoding):
    folder = tiny(tmp_path)
    for f in folder.glob("*.csv"):
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
        df.to_csv(f, index=False, encoding=encoding)
    ds = load_dataset(folder)
    assert ds.report.n_quarantined == 0
    assert ds.firms.loc[0, "name"] == "江阴核心集团股份有限公司"


def test_gb18030_file_with_a_bad_value_takes_the_text_path(tmp_path):
    folder = tiny(tmp_path)
    with_row(folder, "firms", 1, registered_capital="一百万")
    for f in folder.glob("*.csv"):
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
        df.to_csv(f, index=False, encoding="gb18030")
    ds = load_dataset(folder)
    q = ds.report.rows
    assert q.loc[q["column"] == "registered_capital", "value"].tolist() == ["一百万"]


def test_parquet_files_are_read_and_checked(tmp_path):
    folder = tiny(tmp_path)
    flows = pd.read_csv(folder / "flows.csv", dtype=str)
    flows["amount"] = flows["amount"].astype(float)
    flows.loc[1, "amount"] = 1.005  # more than 2 decimals
    flows["booked_on"] = pd.to_datetime(flows["booked_on"]).dt.date
    pq.write_table(pa.Table.from_pandas(flows, preserve_index=False), folder / "flows.parquet")
    (folder / "flows.csv").unlink()
    ds = load_dataset(folder)
    q = ds.report.rows
    assert q[["file", "line", "column"]].values.tolist() == [["flows.parquet", 2, "amount"]]
    assert len(ds.flows) == 2


def test_extra_columns_are_kept_and_ignored(tmp_path):
    folder = tiny(tmp_path)
    df = pd.read_csv(folder / "flows.csv", dtype=str)
    df["branch"] = "JY-01"
    df.to_csv(folder / "flows.csv", index=False)
    ds = load_dataset(folder)
    assert ds.report.n_quarantined == 0
    assert ds.flows["branch"].tolist() == ["JY-01"] * 3


def test_line_numbers_survive_quoted_newlines_and_malformed_rows(tmp_path):
    folder = tiny(tmp_path)
    text = (folder / "firms.csv").read_text()
    lines = text.splitlines()
    lines[2] = lines[2].replace("江阴恒达五金有限公司", '"江阴恒达\n五金有限公司"')
    lines.insert(4, "too,few,fields")
    (folder / "firms.csv").write_text("\n".join(lines) + "\n")
    with_row_text = (folder / "firms.csv").read_text()
    assert with_row_text.count("\n") == 7
    ds = load_dataset(folder)
    q = ds.report.rows
    bad = q[q["file"] == "firms.csv"]
    assert bad["line"].tolist() == [6]  # header, core, F1 on lines 3-4, F2, then the bad row
    assert "fields, expected 9" in bad["reason"].iloc[0]
    assert ds.firms.loc[1, "name"] == "江阴恒达\n五金有限公司"
    s = ds.report.summary().set_index("file")
    assert s.loc["firms.csv", "read"] == 5


@pytest.mark.parametrize(
    "breakage,message",
    [
        (lambda f: (f / "flows.csv").unlink(), "flows: missing required file"),
        (lambda f: (f / "firms.csv").write_text("firm_id,name\nx,y\n"), "missing required columns 'industry'"),
        (lambda f: (f / "receivables.csv").write_bytes(b""), "receivables.csv: unreadable: the file is empty"),
        # a broken character in a row quarantines that row (test_reliability); in the header, the file is unreadable
        (lambda f: (f / "flows.csv").write_bytes("txn_id,booked_on,payer_id,payee_id,amount,\xff\xfepurpose\n".encode("latin-1") + b"T9,2024-01-01,EXT-2,EXT-1,5,trade\n"),
         "flows.csv: unreadable"),
        (lambda f: shutil.copy(f / "flows.csv", f / "flows.parquet"), "both flows.csv and flows.parquet"),
        (lambda f: [(f / "receivables.csv").unlink(), (f / "receivables.parquet").write_bytes(b"not parquet")],
         "receivables.parquet: unreadable Parquet"),
    ],
    ids=["missing-file", "missing-column", "empty-file", "bad-encoding", "two-formats", "bad-parquet"],
)
def test_structural_problems_stop_with_one_line_and_exit_2(tmp_path, breakage, message):
    folder = tiny(tmp_path)
    breakage(folder)
    with pytest.raises(DatasetError) as info:
        load_dataset(folder)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    result = CliRunner().invoke(app, ["validate", str(folder), "--out", str(tmp_path / "q")])
    assert result.exit_code == 2
    assert message in result.output.replace("\n", "")


def test_nothing_left_to_score_is_an_error(tmp_path):
    folder = tiny(tmp_path)
    df = pd.read_csv(folder / "firms.csv", dtype=str, keep_default_na=False)
    df["industry"] = "??"
    df.to_csv(folder / "firms.csv", index=False)
    with pytest.raises(DatasetError, match="nothing left to score"):
        load_dataset(folder)


def test_defaults_file_is_optional(tmp_path):
    folder = tiny(tmp_path, defaults=None)
    ds = load_dataset(folder)
    assert not ds.has_defaults and ds.defaults.empty


def test_validate_exit_codes_and_report_file(tmp_path):
    runner = CliRunner()
    clean = tiny(tmp_path / "clean")
    r = runner.invoke(app, ["validate", str(clean), "--out", str(tmp_path / "o1")])
    assert r.exit_code == 0, r.output
    dirty = with_row(tiny(tmp_path / "dirty"), "flows", 2, purpose="gift")
    r = runner.invoke(app, ["validate", str(dirty), "--out", str(tmp_path / "o2")])
    assert r.exit_code == 1, r.output
    q = pd.read_csv(tmp_path / "o2" / "quarantine.csv")
    assert q[["file", "line", "column", "value"]].values.tolist() == [["flows.csv", 4, "purpose", "gift"]]
    assert set(q.columns) >= {"file", "line", "column", "value", "reason"}


def test_injected_faults_are_each_quarantined_and_nothing_else(small_world_dir, tmp_path):
    manifest = write_faulty_copy(small_world_dir, tmp_path / "faulty", seed=3)
    # every contract file gets faults, of the kinds the manifest lists
    assert set(manifest["file"]) == {"firms.csv", "receivables.csv", "flows.csv", "defaults.csv", "indicators.csv"}
    ds = load_dataset(tmp_path / "faulty")
    q = ds.report.rows
    for fault in manifest.itertuples():
        hit = q[(q["file"] == fault.file) & (q["line"] == fault.line)]
        assert fault.column in set(hit["column"]), (fault, hit.to_dict("records"))
        assert hit["reason"].str.contains(fault.reason, regex=False).any(), (fault, hit["reason"].tolist())
    assert set(zip(q["file"], q["line"])) == set(zip(manifest["file"], manifest["line"]))
    s = ds.report.summary().set_index("file")
    assert (s["read"] == s["accepted"] + s["quarantined"]).all()
    clean = load_dataset(small_world_dir).report.summary().set_index("file")
    for name in ("firms", "receivables", "flows", "defaults", "indicators"):
        assert s.loc[f"{name}.csv", "accepted"] == clean.loc[f"{name}.csv", "accepted"]


def test_typed_parquet_booleans_and_dates(tmp_path):
    folder = tiny(tmp_path)
    firms = pd.read_csv(folder / "firms.csv", dtype=str, keep_default_na=False)
    firms["is_core"] = firms["is_core"] == "true"
    firms["founded_on"] = pd.to_datetime(firms["founded_on"])
    firms["registered_capital"] = firms["registered_capital"].astype(float)
    pq.write_table(pa.Table.from_pandas(firms, preserve_index=False), folder / "firms.parquet")
    (folder / "firms.csv").unlink()
    ds = load_dataset(folder)
    assert ds.report.n_quarantined == 0
    assert ds.firms["is_core"].tolist() == [True, False, False, False]
    assert ds.firms["founded_on"].iloc[0] == pd.Timestamp("2001-05-01")


def test_a_row_breaking_several_rules_reports_each_value(tmp_path):
    folder = with_row(tiny(tmp_path), "flows", 1, amount="abc", purpose="gift")
    q = load_dataset(folder).report.rows.set_index("column")
    assert q.loc["amount", "value"] == "abc" and q.loc["purpose", "value"] == "gift"
    assert (q["line"] == 3).all()


def test_trim_is_skipped_only_when_no_value_can_carry_edge_whitespace():
    """The byte-level pre-check that lets clean id columns skip the trim copy must never
    let a padded value through: ASCII spaces, tabs, a full-width space (U+3000), in a
    sliced chunk, in large_string columns."""
    import pyarrow as pa

    from scf_engine.ingest.reading import _may_need_trim

    def col(values, typ=pa.string()):
        return pa.chunked_array([pa.array(["  pad  "] + values, typ).slice(1)])  # offset into the buffers

    for typ in (pa.string(), pa.large_string()):
        assert not _may_need_trim(col(["A1", "B2", "", None], typ))
        for bad in (" A1", "A1 ", "\tA1", "A1\n", "\u3000A1", "A1\u3000"):
            assert _may_need_trim(col(["ok", bad, "ok"], typ)), repr(bad)


def test_typed_and_text_paths_load_the_same_frames(tmp_path):
    """A file whose values all parse is checked on the typed path (DuckDB only judges the
    rows; the output is the Arrow table as read, amounts rounded, empty optional text
    made null); one value with a thousands separator sends the file down the text path,
    where DuckDB parses every value. Both must hand back the same frames."""
    typed = tiny(tmp_path / "typed")
    with_row(typed, "firms", 1, batch_group=" PARK-1 ")
    with_row(typed, "receivables", 0, amount="100000.000001")  # within the 2-decimal tolerance: rounded
    text = tiny(tmp_path / "text")
    with_row(text, "firms", 1, batch_group=" PARK-1 ")
    with_row(text, "receivables", 0, amount="100,000.000001")
    with_row(text, "firms", 1, registered_capital="1,000,000")
    with_row(text, "flows", 0, amount="100,000.00")
    a, b = load_dataset(typed), load_dataset(text)
    assert a.report.n_quarantined == b.report.n_quarantined == 0
    for name in ("firms", "receivables", "flows", "defaults"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True, obj=name)
    assert a.firms["batch_group"].isna().tolist() == [True, False, True, True]
    assert a.firms.loc[1, "batch_group"] == "PARK-1"
    assert a.receivables.loc[0, "amount"] == 100000.0


def test_duplicate_keys_are_found_whether_or_not_the_keys_come_sorted():
    """Strictly ascending keys are proven unique by comparing neighbours; anything else
    goes to the hash aggregate. Both must report exactly the rows repeating an earlier key,
    with the first row of that key, empty keys aside."""
    import numpy as np
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from scf_engine.ingest.load import _duplicate_rows
    from scf_engine.duck import connect

    con = connect()

    def reference(keys):
        first, out = {}, []
        for i, k in enumerate(keys):
            if k in first and k != "":
                out.append((i, first[k]))
            first.setdefault(k, i)
        return out

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.sampled_from(["", "A", "B", "C", "T1", "T10", "T2"]), max_size=12), st.booleans())
    def check(keys, ordered):
        if ordered:
            keys = sorted(keys)
        table = pa.table({"k": pa.array(keys, pa.string()), "_row": pa.array(np.arange(len(keys)), pa.int64())})
        got = _duplicate_rows(con, table, "k")
        assert list(zip(got["row"].tolist(), got["first_row"].tolist())) == reference(keys)

    check()
    con.close()


def test_uscc_violations_report_every_row_of_a_bad_code():
    from scf_engine.ingest.rules import uscc_violations

    bad_check = F1[:-1] + ("0" if F1[-1] != "0" else "1")
    ids = pa.chunked_array([[F1, bad_check, "", F2.lower()], [bad_check, F1[:10], "1" * 18]])
    v = uscc_violations(ids, "firm_id")
    assert v["row"].tolist() == [1, 3, 4, 5, 6]
    reasons = dict(zip(v["row"], v["reason"]))
    assert "check character" in reasons[1] and "check character" in reasons[4]
    assert "outside 0-9 and A-Z" in reasons[3] and "not 18 characters" in reasons[5]
    assert reasons[6]  # the right shape, but not a valid code


def test_codes_of_every_gb32100_registering_authority_are_firms(tmp_path):
    """GB 32100-2015 lets the first two characters (registering authority, entity type)
    be letters: a rural collective registered by agriculture is ``N2...``, an "other"
    authority ``Y1...``. python-stdnum's validator wants digits there and quarantined
    such firms, and with them every flow and receivable naming them (a village batch
    lost whole); a wrong check character or a letter in the division code still fails."""
    from stdnum.cn import uscc

    def code(prefix: str, org: str) -> str:
        partial = prefix + "320281" + org
        return partial + uscc.calc_check_digit(partial)

    village, other = code("N2", "MA1K2P3Q4"), code("Y1", "000123457")
    folder = tiny(tmp_path, flows=[
        dict(txn_id="T1", booked_on="2024-03-01", payer_id=CORE, payee_id=village, amount="100000.00", purpose="trade"),
        dict(txn_id="T2", booked_on="2024-03-10", payer_id=other, payee_id="EXT-PAY-1", amount="20000", purpose="payroll"),
    ])
    firms = pd.read_csv(folder / "firms.csv", dtype=str, keep_default_na=False)
    firms.loc[1, "firm_id"], firms.loc[2, "firm_id"] = village, other
    firms.to_csv(folder / "firms.csv", index=False)
    (folder / "receivables.csv").write_text((folder / "receivables.csv").read_text().replace(F1, village).replace(F2, other))
    ds = load_dataset(folder)
    assert ds.report.n_quarantined == 0, ds.report.rows
    assert {village, other} <= set(ds.firms["firm_id"]) and len(ds.flows) == 2 and len(ds.receivables) == 2

    from scf_engine.ingest.rules import uscc_reason
    assert "check character" in uscc_reason(village[:-1] + ("0" if village[-1] != "0" else "1"), "firm_id")
    assert uscc_reason(code("91", "MA1K2P3Q4")[:2] + "3A0281" + village[8:], "firm_id")  # a letter in the division


def test_an_extra_column_named_like_one_of_the_engines_is_ignored(tmp_path):
    """Extra columns are kept and ignored, but one named like a column the engine uses
    itself broke it: ``_row`` (the record index) stopped the load with a traceback, and
    ``buyer_id`` in financings or ``firm_id`` in flows collided with the engine's joins
    (a KeyError in every command that builds features). Such columns are now ignored:
    the dataset loads to exactly the frames it has without them; other extras stay."""
    plain = tiny(tmp_path / "plain")
    fin = [dict(financing_id="F1", firm_id=F1, receivable_id="R1", drawn_on="2024-01-10", amount="80000",
                maturity_on="2024-03-05", collection_account="ACC-1", repaid_on="", repaid_amount="")]
    write_csv(plain, "financings", fin)
    extra = tmp_path / "extra"
    shutil.copytree(plain, extra)
    for name, cols in {"firms": ("_row", "__d_founded_on", "_mask"), "flows": ("firm_id", "_row", "buyer_id"),
                       "receivables": ("firm_id", "booked_on"), "financings": ("buyer_id", "supplier_id", "due_on")}.items():
        df = pd.read_csv(extra / f"{name}.csv", dtype=str, keep_default_na=False)
        for c in cols:
            df[c] = "X"
        df["branch"] = "JY-01"
        df.to_csv(extra / f"{name}.csv", index=False)
    a, b = load_dataset(plain), load_dataset(extra)
    assert b.report.n_quarantined == 0
    for name in ("firms", "flows", "receivables", "financings"):
        got = getattr(b, name)
        assert got["branch"].tolist() == ["JY-01"] * len(got)
        pd.testing.assert_frame_equal(got.drop(columns="branch"), getattr(a, name))
    r = CliRunner().invoke(app, ["features", str(extra), "--out", str(tmp_path / "f.parquet"),
                            "--audit-log", str(tmp_path / "audit.jsonl")])
    assert r.exit_code == 0, r.output


def test_the_engine_allocates_arrow_memory_from_malloc_unless_told_otherwise():
    """Importing the engine swaps pyarrow's default mimalloc pool for the system allocator
    (mimalloc tripled a fresh process's big reads: see scf_engine/__init__.py), but a pool
    the user chose with ARROW_DEFAULT_MEMORY_POOL is left alone."""
    import os
    import subprocess
    import sys

    probe = "import scf_engine, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "system"
    chosen = subprocess.run([sys.executable, "-c", probe], env={**env, "ARROW_DEFAULT_MEMORY_POOL": "jemalloc"},
                            capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "jemalloc"


def test_duckdb_connections_carry_their_settings_or_say_why_not(monkeypatch):
    """A DuckDB that refuses a connection setting still connects, but says so: a silent
    fallback once ran every query without the settings."""
    import duckdb

    from scf_engine import duck

    con = duck.connect()
    assert con.sql("SELECT current_setting('preserve_insertion_order')").fetchall() == [(True,)]
    assert con.sql("SELECT current_setting('enable_progress_bar')").fetchall() == [(False,)]
    con.close()
    monkeypatch.setattr(duck, "CONFIG", {**duck.CONFIG, "no_such_setting_anywhere": True})
    with pytest.warns(RuntimeWarning, match="refused the connection settings"):
        con = duck.connect()
    assert con.sql("SELECT 1").fetchall() == [(1,)]
    con.close()
    assert isinstance(con, duckdb.DuckDBPyConnection)


def test_a_memory_cap_for_duckdb_comes_from_the_environment(monkeypatch):
    """$SCF_DUCKDB_MEMORY_LIMIT caps DuckDB (it spills beyond); unset, DuckDB's default."""
    from scf_engine import duck

    monkeypatch.delenv(duck.MEMORY_ENV, raising=False)
    default = duck.connect().sql("SELECT current_setting('memory_limit')").fetchall()[0][0]
    monkeypatch.setenv(duck.MEMORY_ENV, "1GB")
    capped = duck.connect().sql("SELECT current_setting('memory_limit')").fetchall()[0][0]
    assert capped != default and capped.endswith("MiB") and 900 <= float(capped.split()[0]) <= 1000


def test_duckdbs_threads_come_from_the_environment(monkeypatch):
    """$SCF_DUCKDB_THREADS sets DuckDB's threads (a container's CPU quota is not what DuckDB
    sees); a value DuckDB refuses is a warning naming it, and DuckDB's defaults."""
    from scf_engine import duck

    monkeypatch.setenv(duck.THREADS_ENV, "1")
    assert duck.connect().sql("SELECT current_setting('threads')").fetchall()[0][0] == 1
    monkeypatch.setenv(duck.THREADS_ENV, "3")
    assert duck.connect().sql("SELECT current_setting('threads')").fetchall()[0][0] == 3
    monkeypatch.setenv(duck.THREADS_ENV, "two")
    with pytest.warns(RuntimeWarning, match="refused the connection settings"):
        con = duck.connect()
    assert con.sql("SELECT 1").fetchall() == [(1,)]


# --- contract v1.1: financings, pledge/transfer records, accounts (issue 15) ------------------------


def with_pledges(folder: Path, pledged_to=("", ""), pledged_on=("", ""), transferred_to=("", ""),
                 transferred_on=("", "")) -> Path:
    r = pd.read_csv(folder / "receivables.csv", dtype=str, keep_default_na=False)
    r["pledged_to"], r["pledged_on"] = list(pledged_to), list(pledged_on)
    r["transferred_to"], r["transferred_on"] = list(transferred_to), list(transferred_on)
    r.to_csv(folder / "receivables.csv", index=False)
    return folder


def financing(**changes) -> dict:
    row = dict(financing_id="FN1", firm_id=F1, receivable_id="R1", drawn_on="2024-01-10", amount="80000",
               maturity_on="2024-03-10", collection_account="COL-0001", repaid_on="2024-03-02", repaid_amount="80000")
    row.update(changes)
    return row


def test_a_v1_dataset_loads_into_exactly_the_v1_frames(tmp_path):
    """No new file, no new column: the frames are those of contract v1 (the optional
    v1.1 columns are not even added empty), so a v1 dataset scores exactly as before."""
    ds = load_dataset(tiny(tmp_path))
    assert list(ds.receivables.columns) == ["receivable_id", "supplier_id", "buyer_id", "amount", "issued_on", "due_on",
                                            "confirmed_on", "paid_on", "paid_amount"]
    assert list(ds.flows.columns) == ["txn_id", "booked_on", "payer_id", "payee_id", "amount", "purpose"]
    assert not ds.has_financings and ds.financings.empty


def test_financings_pledges_and_accounts_load_typed(tmp_path):
    folder = with_pledges(tiny(tmp_path), pledged_to=("BANK-B", ""), pledged_on=("2024-01-09", ""))
    flows = pd.read_csv(folder / "flows.csv", dtype=str, keep_default_na=False)
    flows["payer_account"], flows["payee_account"] = "", ["COL-0001", "", ""]
    flows.to_csv(folder / "flows.csv", index=False)
    write_csv(folder, "financings", [financing(), financing(financing_id="FN2", receivable_id="", repaid_on="",
                                                           repaid_amount="")])
    ds = load_dataset(folder)
    assert ds.report.n_quarantined == 0, ds.report.rows
    assert ds.has_financings and ds.financings["financing_id"].tolist() == ["FN1", "FN2"]
    assert ds.financings["drawn_on"].dtype == "datetime64[s]" and ds.financings["amount"].tolist() == [80000.0, 80000.0]
    assert ds.receivables.loc[0, "pledged_on"] == pd.Timestamp("2024-01-09")
    assert ds.flows["payee_account"].tolist()[0] == "COL-0001"
    snap = ds.as_of("2024-03-01")  # the repayment on 2024-03-02 is not known yet
    assert snap.financings["repaid_on"].isna().all()
    assert pd.isna(ds.as_of("2024-01-09").receivables.loc[0, "pledged_to"])  # pledged on the as-of: not known


@pytest.mark.parametrize("row, column, reason", [
    (financing(receivable_id="R404"), "receivable_id", "is not an accepted receivable"),
    (financing(receivable_id="R2"), "receivable_id", "is a receivable of another supplier"),
    (financing(firm_id=make_uscc("320281", 55555555)), "firm_id", "is not an accepted firm"),
    (financing(repaid_on="2024-01-01"), "repaid_on", "repaid before drawn"),
    (financing(maturity_on="2024-01-01"), "maturity_on", "maturity_on is before drawn_on"),
    (financing(amount="-5"), "amount", "amount must be > 0"),
    (financing(repaid_amount="-1"), "repaid_amount", "repaid_amount is negative"),
    (financing(repaid_amount=""), "repaid_amount", "repaid_on is set but repaid_amount is empty"),
    (financing(collection_account=""), "collection_account", "collection_account is empty"),
    (financing(drawn_on="2099-01-01", maturity_on="2099-02-01", repaid_on="", repaid_amount=""), "drawn_on",
     "in the future"),
])
def test_each_financing_rule_quarantines_its_row(tmp_path, row, column, reason):
    folder = tiny(tmp_path)
    write_csv(folder, "financings", [financing(financing_id="FN0"), row | {"financing_id": "FN9"}])
    ds = load_dataset(folder)
    q = ds.report.rows
    assert q["file"].eq("financings.csv").all() and q["line"].eq(3).all(), q
    assert ((q["column"] == column) & q["reason"].str.contains(reason, regex=False)).any(), q[["column", "reason"]]
    s = ds.report.summary().set_index("file").loc["financings.csv"]
    assert (s["read"], s["accepted"], s["quarantined"]) == (2, 1, 1)
    assert ds.financings["financing_id"].tolist() == ["FN0"]


@pytest.mark.parametrize("changes, column, reason", [
    (dict(pledged_to=("BANK-B", ""), pledged_on=("2024-01-01", "")), "pledged_on", "a pledge before issue"),
    (dict(transferred_to=("", "F-X"), transferred_on=("", "2024-01-31")), "transferred_on", "a transfer before issue"),
    (dict(pledged_to=("BANK-B", ""), pledged_on=("", "")), "pledged_on", "pledged_to is set but pledged_on is empty"),
    (dict(pledged_to=("", ""), pledged_on=("2024-02-01", "")), "pledged_to", "pledged_on is set but pledged_to is empty"),
])
def test_each_registry_record_rule_quarantines_its_receivable(tmp_path, changes, column, reason):
    ds = load_dataset(with_pledges(tiny(tmp_path), **changes))
    q = ds.report.rows
    assert ((q["column"] == column) & q["reason"].str.contains(reason, regex=False)).any(), q[["column", "reason"]]
    s = ds.report.summary().set_index("file").loc["receivables.csv"]
    assert s["read"] == s["accepted"] + s["quarantined"] and s["quarantined"] == 1


@pytest.mark.parametrize("bad_amount", [False, True], ids=["typed", "text"])
def test_a_zoned_parquet_timestamp_is_dated_on_its_own_clock(tmp_path, bad_amount):
    """Spark and pandas write ``timestamp[tz=Asia/Shanghai]`` columns; 2024-03-10 00:00
    in Shanghai is 2024-03-09 16:00 UTC, and the typed path dated it by UTC: every date of
    the file one day early, so a flow booked on the as-of date entered that snapshot
    (look-ahead). Its date is the one on its own clock, on the typed path and on the text
    path a broken value sends the file down."""
    folder = tiny(tmp_path)
    flows = pd.read_csv(folder / "flows.csv", dtype=str)
    booked = pd.to_datetime(flows["booked_on"]).dt.tz_localize("Asia/Shanghai")
    amounts = pa.array(["abc" if i == 2 else v for i, v in enumerate(flows["amount"])]) if bad_amount \
        else pa.array(flows["amount"].astype(float))
    table = pa.table({"txn_id": flows["txn_id"], "booked_on": pa.Array.from_pandas(booked), "payer_id": flows["payer_id"],
                      "payee_id": flows["payee_id"], "amount": amounts, "purpose": flows["purpose"]})
    pq.write_table(table, folder / "flows.parquet")
    (folder / "flows.csv").unlink()
    ds = load_dataset(folder)
    assert ds.report.n_quarantined == (1 if bad_amount else 0)
    want = pd.to_datetime(flows["booked_on"])[: len(ds.flows)]
    assert ds.flows["booked_on"].dt.strftime("%Y-%m-%d").tolist() == want.dt.strftime("%Y-%m-%d").tolist()


def test_a_firms_data_quality_rows_are_those_known_before_the_as_of(small_world_dir, tmp_path):
    """The memo lists a firm's quarantined rows beside a decision that counts them; the
    decision counts only rows whose problem was known before the as-of, so the memo must
    list the same rows: a bad flow booked after T is no note at T, one before T is, and
    one without a readable date is at every as-of."""
    import shutil

    from scf_engine.ingest import load_dataset

    data = tmp_path / "d"
    shutil.copytree(small_world_dir, data)
    flows = pd.read_csv(data / "flows.csv", dtype=str, keep_default_na=False)
    f = flows["payer_id"][~flows["payer_id"].str.startswith("EXT-")].iloc[0]
    T = pd.to_datetime(flows["booked_on"]).max() - pd.DateOffset(months=6)
    bad = flows.iloc[[0, 0, 0]].copy()
    bad["txn_id"] = ["B1", "B2", "B3"]
    bad["payer_id"], bad["payee_id"], bad["amount"] = f, "EXT-X", ["-1", "-1", "12"]  # one broken rule a row
    bad["booked_on"] = [str((T - pd.DateOffset(days=1)).date()), str(T.date()), "later"]
    pd.concat([flows, bad]).to_csv(data / "flows.csv", index=False)
    report = load_dataset(data).report
    n = len(flows)
    lines = lambda rows: sorted(rows.loc[rows["file"] == "flows.csv", "line"].astype(int))  # noqa: E731
    assert lines(report.rows_touching(f)) == [n + 2, n + 3, n + 4]
    assert lines(report.rows_touching(f, before=T)) == [n + 2, n + 4]
    assert report.touching_counts(before=T)[f] == 2 and report.touching_counts()[f] == 3


def test_whitelist_rows_are_checked_as_the_contract_asks_and_a_list_is_picked_by_name(tmp_path):
    """whitelist.csv: an empty id stopped the run and a repeat passed silently; now both
    are set aside with their line and reason (a firm on two programmes' lists is no
    repeat). ``--list`` on a file without a ``list`` column, or a list it lacks, is one
    line; a picked list with no firm of the dataset is one line, not a batch of declines."""
    from scf_engine.errors import DatasetError, RequestError
    from scf_engine.ingest.requests import read_whitelist

    (tmp_path / "plain.csv").write_text("firm_id\nA\n\nA\n \nB\n", encoding="utf-8")
    plain = read_whitelist(tmp_path / "plain.csv")
    assert plain.firms == {"A", "B"} and plain.list_name is None
    bad = plain.violations()
    assert list(bad["line"]) == [4, 5] and list(bad["reason"]) == ["firm_id repeated (first on line 2)", "firm_id is empty"]
    with pytest.raises(RequestError, match="has no 'list' column"):
        read_whitelist(tmp_path / "plain.csv", "chain-A")
    (tmp_path / "lists.csv").write_text("firm_id,list\nA,chain-A\nA,park-B\nC,park-B\n", encoding="utf-8")
    picked = read_whitelist(tmp_path / "lists.csv", " park-B ")
    assert picked.firms == {"A", "C"} and picked.violations().empty and picked.list_name == "park-B"
    checked = picked.checked(["A", "B"])
    assert checked.firms == {"A"} and list(checked.violations()["reason"]) == ["unknown firm: not in firms"]
    with pytest.raises(DatasetError, match="list 'park-B' holds no firm of the dataset"):
        picked.checked(["B"])
    assert read_whitelist(tmp_path / "lists.csv").checked(["A"]).firms == {"A"}
