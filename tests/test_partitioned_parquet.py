"""A contract file as a folder of Parquet part files, as Spark and Hive write a table
(issue 19: banks keep flows in lakes): read, checked, fingerprinted and featurised
exactly as the same rows in one file."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from scf_engine.cli import app
from scf_engine.ingest import DatasetError, load_dataset
from scf_engine.ingest.load import fingerprint
from tests.test_ingest import tiny

runner = CliRunner()


def spark_markers(folder: Path) -> None:
    """What Spark and Hadoop leave beside the parts: none of it is data."""
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / "._SUCCESS.crc").write_bytes(b"crc")
    (folder / "_committed_123").write_text('{"added": []}')
    (folder / "_temporary" / "0").mkdir(parents=True)
    (folder / "_temporary" / "0" / "part-99999.parquet").write_bytes(b"half-written, not Parquet")
    for part in folder.rglob("part-*.parquet"):
        (part.parent / f".{part.name}.crc").write_bytes(b"crc")


def flows_table(folder: Path) -> pa.Table:
    """flows.csv as Arrow reads it (dates and amounts typed), ids as text."""
    names = pacsv.read_csv(folder / "flows.csv").column_names
    return pacsv.read_csv(folder / "flows.csv", convert_options=pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names if n not in ("booked_on", "amount")}))


def copy_with_flows(src: Path, dst: Path, write_flows) -> Path:
    """``src`` with its flows.csv replaced by what ``write_flows(table, dst / 'flows.parquet')`` writes."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("flows.csv"))
    write_flows(flows_table(src), dst / "flows.parquet")
    return dst


def hive_by_month(table: pa.Table, path: Path) -> None:
    """Spark's ``df.write.partitionBy('booked_month').parquet(path)``, in row order, up to
    ten parts a month (pyarrow numbers parts part-0..part-9 unpadded: ten keep path order)."""
    month = pc.strftime(table["booked_on"], format="%Y-%m")
    per_part = -(-max(pc.value_counts(month).field("counts").to_pylist()) // 10)
    pads.write_dataset(table.append_column("booked_month", month), path, format="parquet",
                       partitioning=["booked_month"], partitioning_flavor="hive", preserve_order=True,
                       max_rows_per_file=per_part, max_rows_per_group=per_part, basename_template="part-{i}.parquet")
    spark_markers(path)


@pytest.fixture(scope="module")
def single_and_folder(small_world_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("lake")
    single = copy_with_flows(small_world_dir, base / "single", lambda t, p: pq.write_table(t, p))
    folder = copy_with_flows(small_world_dir, base / "folder", hive_by_month)
    return single, folder


def test_a_hive_partitioned_flows_folder_loads_and_scores_like_one_file(single_and_folder, tmp_path):
    single, folder = single_and_folder
    parts = sorted(p for p in (folder / "flows.parquet").rglob("part-*.parquet") if "_temporary" not in p.parts)
    assert len(parts) > 36 * 5  # 36 months, most in several parts
    a, b = load_dataset(single), load_dataset(folder)
    assert b.report.n_quarantined == a.report.n_quarantined == 0
    assert b.report.summary().set_index("file").loc["flows.parquet", "read"] == len(a.flows)
    assert b.flows["booked_month"].tolist() == a.flows["booked_on"].dt.strftime("%Y-%m").tolist()  # an extra column
    pd.testing.assert_frame_equal(b.flows.drop(columns="booked_month"), a.flows)  # row for row, in order
    for ds, name in ((single, "single"), (folder, "folder")):
        r = runner.invoke(app, ["features", str(ds), "--out", str(tmp_path / f"{name}.parquet"),
                                "--audit-log", str(tmp_path / "audit.jsonl")])
        assert r.exit_code == 0, r.output
    assert (tmp_path / "single.parquet").read_bytes() == (tmp_path / "folder.parquet").read_bytes()


def test_a_partition_column_that_is_a_contract_column_comes_back_typed(small_world_dir, tmp_path):
    """Partitioned by ``purpose`` (a contract vocabulary) and by an extra code with
    leading zeros: both come back as text, as they would from a file, zeros kept."""
    def by_purpose(table, path):
        table = table.append_column("branch", pa.array(["007"] * table.num_rows))
        pads.write_dataset(table, path, format="parquet", partitioning=["purpose", "branch"],
                           partitioning_flavor="hive", preserve_order=True)
    folder = copy_with_flows(small_world_dir, tmp_path / "ds", by_purpose)
    assert (folder / "flows.parquet" / "purpose=trade" / "branch=007").is_dir()
    b = load_dataset(folder)
    a = load_dataset(small_world_dir)
    assert b.report.n_quarantined == 0 and b.flows["branch"].eq("007").all()
    assert str(b.flows["purpose"].dtype) == str(a.flows["purpose"].dtype)
    by_id = b.flows.drop(columns="branch").sort_values("txn_id", ignore_index=True)
    pd.testing.assert_frame_equal(by_id, a.flows.sort_values("txn_id", ignore_index=True))


def write_parts(folder: Path, name: str, parts: dict[str, pd.DataFrame]) -> Path:
    """``NAME.parquet/`` with one Parquet file per relative path in ``parts``."""
    root = folder / f"{name}.parquet"
    for rel, frame in parts.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), root / rel)
    (folder / f"{name}.csv").unlink()
    return root


def tiny_flow_parts(folder: Path) -> dict[str, pd.DataFrame]:
    """The tiny dataset's three flows and four more, over two monthly partitions."""
    flows = pd.read_csv(folder / "flows.csv", dtype=str, keep_default_na=False)
    more = flows.assign(txn_id=["T4", "T5", "T6"], booked_on=["2024-04-02", "2024-04-03", "2024-04-04"])
    more = pd.concat([more, flows.iloc[[1]]], ignore_index=True)  # T2 again: a duplicate across parts
    more.loc[2, "amount"] = "-5"  # row 3 of the April part
    return {"booked_month=2024-03/part-00000.parquet": flows, "booked_month=2024-04/part-00000.parquet": more}


def test_a_bad_row_in_a_part_is_quarantined_with_its_part_and_row(tmp_path):
    folder = tiny(tmp_path)
    parts = tiny_flow_parts(folder)
    parts["booked_month=2024-03/part-00000.parquet"].loc[0, "purpose"] = "gift"  # row 1 of the March part
    write_parts(folder, "flows", parts)
    ds = load_dataset(folder)
    q = ds.report.rows
    march, april = "flows.parquet/booked_month=2024-03/part-00000.parquet", "flows.parquet/booked_month=2024-04/part-00000.parquet"
    got = sorted(q[["file", "line", "column"]].itertuples(index=False, name=None))
    assert got == [(march, 1, "purpose"), (april, 3, "amount"), (april, 4, "txn_id")]
    dup = q.loc[q["column"] == "txn_id", "reason"].item()
    assert dup == f"duplicate txn_id (first on row 2 of {march})"
    s = ds.report.summary().set_index("file").loc["flows.parquet"]
    assert (s["read"], s["accepted"], s["quarantined"]) == (7, 4, 3)
    assert ds.flows["txn_id"].tolist() == ["T2", "T3", "T4", "T5"]
    out = tmp_path / "out"
    r = runner.invoke(app, ["validate", str(folder), "--out", str(out)])
    assert r.exit_code == 1, r.output
    written = pd.read_csv(out / "quarantine.csv", dtype=str)
    assert (march, "1") in set(zip(written["file"], written["line"]))


def test_row_one_of_two_parts_is_two_quarantined_rows(tmp_path):
    """Each part numbers its rows from 1: a row is (part, row), never the row alone."""
    folder = tiny(tmp_path)
    parts = tiny_flow_parts(folder)
    for frame in parts.values():
        frame.loc[0, "purpose"] = "gift"
    write_parts(folder, "flows", parts)
    s = load_dataset(folder).report.summary().set_index("file").loc["flows.parquet"]
    assert (s["read"], s["quarantined"]) == (7, 4)  # row 1 of each part, the negative amount, the duplicate


def test_any_contract_file_may_be_a_folder_of_unpartitioned_parts(tmp_path):
    """Spark without partitionBy: part-00000, part-00001 side by side (receivables here)."""
    folder = tiny(tmp_path)
    flat = load_dataset(folder)
    rec = pd.read_csv(folder / "receivables.csv", dtype=str, keep_default_na=False)
    write_parts(folder, "receivables", {"part-00000.parquet": rec.iloc[:1], "part-00001.parquet": rec.iloc[1:]})
    spark_markers(folder / "receivables.parquet")
    ds = load_dataset(folder)
    pd.testing.assert_frame_equal(ds.receivables, flat.receivables)
    assert sorted(ds.fingerprints) == ["defaults.csv", "firms.csv", "flows.csv", "receivables.parquet"]


@pytest.mark.parametrize("make,message", [
    (lambda p: p.mkdir(), "flows.parquet: unreadable: the folder holds no Parquet part file"),
    (lambda p: [p.mkdir(), (p / "_SUCCESS").write_bytes(b""), (p / ".part-0.crc").write_bytes(b"x")],
     "flows.parquet: unreadable: the folder holds no Parquet part file"),
    (lambda p: [p.mkdir(), (p / "part-00000.parquet").write_bytes(b"not parquet")],
     "flows.parquet: unreadable Parquet: flows.parquet/part-00000.parquet:"),
    (lambda p: [(p / "m=1").mkdir(parents=True), pq.write_table(pa.table({"txn_id": ["T1"]}), p / "m=1" / "a.parquet"),
                pq.write_table(pa.table({"txn_id": ["T2"]}), p / "b.parquet")],
     "flows.parquet: unreadable: part files under different partition folders ((none) vs m)"),
], ids=["empty", "only-markers", "not-parquet", "mixed-levels"])
def test_an_unusable_folder_is_a_one_line_error(tmp_path, make, message):
    folder = tiny(tmp_path)
    (folder / "flows.csv").unlink()
    make(folder / "flows.parquet")
    with pytest.raises(DatasetError) as info:
        load_dataset(folder)
    assert message in str(info.value) and "\n" not in str(info.value)
    r = runner.invoke(app, ["validate", str(folder), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and message in r.output


def test_the_fingerprint_of_a_folder_follows_its_parts_bytes_only(tmp_path):
    folder = tiny(tmp_path)
    root = write_parts(folder, "flows", tiny_flow_parts(folder))
    first = fingerprint(folder)["flows.parquet"]
    # the manifest, computed here independently: "<sha256>  <relative path>\n" per part, sorted
    rels = ["booked_month=2024-03/part-00000.parquet", "booked_month=2024-04/part-00000.parquet"]
    manifest = "".join(f"{hashlib.sha256((root / r).read_bytes()).hexdigest()}  {r}\n" for r in rels)
    assert first == hashlib.sha256(manifest.encode()).hexdigest()
    spark_markers(root)  # markers, checksums and a half-written attempt are not data
    part = root / rels[1]
    os.utime(part, (0, 0))  # nor are file times
    assert fingerprint(folder)["flows.parquet"] == first
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 1  # one bit of one part
    part.write_bytes(bytes(data))
    second = fingerprint(folder)["flows.parquet"]
    assert second != first
    (root / "booked_month=2024-02").mkdir()
    shutil.copy(root / rels[0], root / "booked_month=2024-02" / "part-00000.parquet")  # a part more
    assert fingerprint(folder)["flows.parquet"] not in (first, second)


def test_simulate_replaces_an_earlier_flows_folder(tmp_path):
    """``scf simulate --out`` over a dataset whose flows are a lake's folder writes its own
    flows in their place, not beside them (which would leave two flows files)."""
    from scf_engine.simulate import WorldConfig, simulate, write_dataset

    root = tmp_path / "flows.parquet" / "booked_month=2024-01"
    root.mkdir(parents=True)
    pq.write_table(pa.table({"txn_id": ["OLD"]}), root / "part-00000.parquet")
    write_dataset(simulate(WorldConfig(n_firms=60, seed=1, n_months=12)), tmp_path, fmt="csv")
    assert not (tmp_path / "flows.parquet").exists()
    assert "OLD" not in load_dataset(tmp_path).flows["txn_id"].tolist()
