"""Reliability of scoring under faults and bad input: nothing half-done, nothing
unaudited, no traceback. One small trained world is shared by the module; the fault
injections (an unwritable audit log, a full disk, a tracking server killed mid-run, a
``kill -9`` at each stage of ``score``) each check that what is left is either the
previous audited output or a new output with its audit entry, and that ``scf audit
verify`` says so."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from scf_engine import audit, publish, tracking
from scf_engine.cli import app
from scf_engine.pipelines.score import STAGES, verify_output
from scf_engine.simulate import WorldConfig, simulate, write_dataset

runner = CliRunner()


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_line_error(r) -> str:
    """The output of a command that must have failed with one line and exit 2."""
    assert r.exit_code == 2, r.output
    text = r.output.strip()
    assert "Traceback" not in text and len([ln for ln in text.splitlines() if ln.startswith("error:")]) == 1, text
    return text


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """300 firms, 36 months, trained and promoted in a fresh SQLite store, and one scored
    batch of 12 firms (with memos) in ``home/score``: the "previous audited output"."""
    home = tmp_path_factory.mktemp("reliab")
    data = write_dataset(simulate(WorldConfig(n_firms=300, seed=5, n_months=36)), home / "data")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    assert invoke("train", data, "--tracking-uri", uri, "--out", home / "train").exit_code == 0
    assert invoke("compare", "--tracking-uri", uri, "--promote", "all", "--out", home / "compare").exit_code == 0
    batch = home / "batch.csv"
    pd.read_csv(data / "batch.csv", dtype=str).head(12).to_csv(batch, index=False)
    w = {"home": home, "data": data, "uri": uri, "batch": batch, "log": home / "audit.jsonl"}
    r = score(w, home / "score")
    assert r.exit_code == 0, r.output
    return w


def score(w, out_dir: Path, *extra, log=None, batch=None, uri=None):
    return invoke("score", w["data"], "--batch", batch or w["batch"], "--consents", w["data"] / "consents.csv",
                  "--out", out_dir / "limits.csv", "--tracking-uri", uri or w["uri"], "--memo-formats", "md",
                  "--audit-log", log or w["log"], *extra)


def snapshot(folder: Path) -> dict:
    """Every file a user reaches under ``folder`` (through its links: ``limits.csv`` and
    ``memos`` are links to the published output; the engine's hidden folders left out)
    and its sha256."""
    found = {}
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            p = Path(root) / f
            if not f.startswith(".") and p.is_file():
                found[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def assert_audited(out_dir: Path, log: Path) -> None:
    """The output folder holds a limits.csv whose bytes and memos are exactly those of
    an entry in the audit log, its audit_entry.json is that entry, no staging folder is
    left, and the chain verifies."""
    entry = json.loads((out_dir / "audit_entry.json").read_text())
    logged = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert entry in logged
    out = entry["details"]["output"]
    assert out["limits.csv"] == hashlib.sha256((out_dir / "limits.csv").read_bytes()).hexdigest()
    memos = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out_dir / "memos").iterdir()} \
        if (out_dir / "memos").exists() else {}
    assert memos == out.get("memos", {})
    assert (out_dir / "limits.csv").is_symlink() and verify_output(out_dir, log) == []
    assert invoke("audit", "verify", log).exit_code == 0


def copy_log(w, tmp_path) -> Path:
    log = tmp_path / "audit.jsonl"
    shutil.copy(w["log"], log)
    return log


def copy_output(w, tmp_path) -> Path:
    out_dir = tmp_path / "score"
    shutil.copytree(w["home"] / "score", out_dir, symlinks=True)  # as `cp -r` does: the links stay links
    return out_dir


# --- 1. all or nothing, audited ------------------------------------------------------------------


def test_a_batch_is_published_with_the_entry_over_the_bytes_written(world):
    assert_audited(world["home"] / "score", world["log"])
    run = tracking.Store(world["uri"]).get_run(json.loads((world["home"] / "score" / "audit_entry.json").read_text())
                                               ["details"]["mlflow_run_id"])
    assert run.info.status == "FINISHED"


def test_an_unwritable_audit_log_stops_before_any_output_or_run(world, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the audit folder should be")
    store = tracking.Store(world["uri"])
    before = store.count_runs("score")
    r = score(world, tmp_path / "out", log=blocker / "audit.jsonl")
    assert "--audit-log" in one_line_error(r)
    assert not (tmp_path / "out" / "limits.csv").exists() and store.count_runs("score") == before


def test_an_unwritable_out_is_one_line_before_scoring(world, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    log = copy_log(world, tmp_path)
    r = score(world, blocker / "sub", log=log)
    assert "--out" in one_line_error(r)
    assert log.read_bytes() == world["log"].read_bytes()


def test_a_failed_append_leaves_the_previous_output_and_a_failed_run(world, tmp_path, monkeypatch):
    """The append fails (the log's disk is full): nothing of the new batch is published,
    the previous output stays as it was, and the MLflow run is marked FAILED."""
    from scf_engine.errors import AuditError

    out_dir, log = copy_output(world, tmp_path), copy_log(world, tmp_path)
    before_out, before_log = snapshot(out_dir), log.read_bytes()

    def full(*a, **k):
        raise AuditError(f"audit log {log}: the entry could not be written (No space left on device)")

    monkeypatch.setattr(audit, "append", full)
    r = score(world, out_dir, log=log)
    assert "audit log" in one_line_error(r)
    assert log.read_bytes() == before_log and snapshot(out_dir) == before_out
    store = tracking.Store(world["uri"])
    last = store.client.search_runs([store.experiment_id("score")], max_results=1, order_by=["attributes.start_time DESC"])
    assert last[0].info.status == "FAILED"


APPEND_UNDER_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
from scf_engine import audit
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
log = sys.argv[1]
size = len(open(log, "rb").read())
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, size + 40))  # room for 40 bytes of the entry, not all
try:
    audit.append(log, "tester", "score", {"batch_id": "x" * 200})
except Exception as exc:
    print(type(exc).__name__, str(exc).splitlines()[0])
    sys.exit(3)
"""


def test_an_append_that_hits_a_full_disk_is_cut_back(tmp_path):
    """A real short write (a file-size limit, as a full disk gives): the half entry is
    removed, the log verifies, and the next append continues the chain."""
    log = tmp_path / "audit.jsonl"
    audit.append(log, "tester", "score", {"n": 1})
    before = log.read_bytes()
    p = subprocess.run([sys.executable, "-c", APPEND_UNDER_A_FILE_SIZE_LIMIT, str(log)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert p.returncode == 3 and "AuditError" in p.stdout, p.stdout + p.stderr
    assert log.read_bytes() == before
    assert audit.verify(log) == (True, [])
    assert audit.append(log, "tester", "score", {"n": 2})["seq"] == 2


def test_rollback_takes_back_only_the_last_entry_it_wrote(tmp_path):
    log = tmp_path / "audit.jsonl"
    a = audit.append(log, "t", "score", {"n": 1})
    b = audit.append(log, "t", "score", {"n": 2})
    assert not audit.rollback(log, a)  # another entry follows it: it stays
    assert audit.rollback(log, b) and audit.head(log) == {"seq": 1, "hash": a["hash"]}
    assert audit.verify(log) == (True, [])


# --- 2 and 7. a row per firm, one line per user error --------------------------------------------


def test_explain_of_an_unknown_firm_is_a_decline_row_not_a_crash(world, tmp_path):
    r = invoke("explain", world["data"], "--firm", "91110000000000000X", "--consents", world["data"] / "consents.csv",
               "--out", tmp_path / "x", "--tracking-uri", world["uri"], "--audit-log", tmp_path / "audit.jsonl")
    assert r.exit_code == 0, r.output
    assert "unknown firm" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("as_of", ["1990-01-01", "2099-01-01"])
def test_an_as_of_outside_the_data_is_one_line_or_a_decline_row_per_firm(world, tmp_path, as_of):
    r = score(world, tmp_path, "--as-of", as_of, log=tmp_path / "audit.jsonl")
    assert "Traceback" not in r.output
    if r.exit_code == 2:
        assert "--as-of" in one_line_error(r)
    else:
        lim = pd.read_csv(tmp_path / "limits.csv", dtype={"firm_id": str})
        assert len(lim) == 12 and lim["decision"].isin(["approve", "review", "decline"]).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_is_one_line_at_the_start(world, tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    r = invoke("train", world["data"], "--tracking-uri", uri, "--out", tmp_path / "train")
    assert uri in one_line_error(r) and "tracking" in r.output
    r = score(world, tmp_path, uri=uri, log=tmp_path / "audit.jsonl")
    assert uri in one_line_error(r) and "no champion" not in r.output
    assert time.monotonic() - t0 < 60 and not (tmp_path / "limits.csv").exists()


# --- 3 and 6. formulas and markup ---------------------------------------------------------------


def test_formula_cells_are_neutralised_in_limits_and_quarantine(world, tmp_path):
    evil = ["=HYPERLINK(\"http://x\",\"y\")", "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3*cmd"]
    batch = tmp_path / "batch.csv"
    pd.DataFrame({"firm_id": evil + ["-100"]}).to_csv(batch, index=False)
    r = score(world, tmp_path, batch=batch, log=tmp_path / "audit.jsonl")
    assert r.exit_code == 0, r.output
    lim = pd.read_csv(tmp_path / "limits.csv", dtype=str, keep_default_na=False)
    assert lim["firm_id"].tolist() == ["'" + e for e in evil] + ["-100"]  # a plain number stays a number
    assert not any(str(v).startswith(("=", "+", "@")) for v in lim.to_numpy().ravel())
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    flows = pd.read_csv(data / "flows.csv", dtype=str, keep_default_na=False)
    flows.loc[0, "amount"] = "=1+1"
    flows.to_csv(data / "flows.csv", index=False)
    r = invoke("validate", data, "--out", tmp_path / "v")
    q = pd.read_csv(tmp_path / "v" / "quarantine.csv", dtype=str, keep_default_na=False)
    assert "'=1+1" in q["value"].tolist() and "=1+1" not in q["value"].tolist()


def test_markdown_memos_escape_html():
    from scf_engine.memo.render import render_markdown

    ctx = {"firm": {"firm_id": "91320281107684262D", "name": "<script>alert(1)</script><img src=x onerror=alert(2)>",
                    "industry": "C34", "region": "320281", "founded_on": "2010-01-01", "batch_group": "<b>g</b>"},
           "as_of": "2024-01-01", "models": [], "reasons": [],
           "final": {"pd": 0.02, "score": 70, "grade": "alternate", "limit_cny": 1e6, "decision": "review",
                     "limit_basis": ["<iframe src=x>"]}}
    md = render_markdown(ctx)
    assert "<script" not in md and "<img" not in md and "<iframe" not in md and "<b>" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md


# --- 4, 5, 8. ingestion -------------------------------------------------------------------------


def _copy_data(world, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    return data


def test_future_dated_records_are_quarantined_and_do_not_move_the_as_of(world, tmp_path):
    from scf_engine.ingest import load_dataset

    base = load_dataset(world["data"])
    data = _copy_data(world, tmp_path)
    flows = pd.read_csv(data / "flows.csv", dtype=str, keep_default_na=False)
    flows.loc[3, "booked_on"] = "2099-06-01"
    flows.loc[4, "booked_on"] = (base.last_date + pd.DateOffset(months=8)).strftime("%Y-%m-%d")
    flows.to_csv(data / "flows.csv", index=False)
    ds = load_dataset(data)
    assert ds.default_as_of == base.default_as_of
    rows = ds.report.rows
    future = rows[rows["reason"].str.contains("in the future")]
    assert future["line"].tolist() == [5, 6] and "2099-06-01" in future["value"].tolist()
    r = score(world, tmp_path / "out", log=tmp_path / "audit.jsonl")
    assert r.exit_code == 0 and f"as-of {base.default_as_of.date()} (default" in r.output


def test_null_spellings_are_quarantined_with_their_value_on_the_typed_path(world, tmp_path):
    from scf_engine.ingest import load_dataset

    data = _copy_data(world, tmp_path)
    rec = pd.read_csv(data / "receivables.csv", dtype=str, keep_default_na=False)
    rec.loc[0, "confirmed_on"], rec.loc[1, "paid_amount"], rec.loc[2, "amount"] = "N/A", "NULL", "NaN"
    rec.to_csv(data / "receivables.csv", index=False)
    firms = pd.read_csv(data / "firms.csv", dtype=str, keep_default_na=False)
    firms.loc[0, "registered_capital"] = "NaN"
    firms.to_csv(data / "firms.csv", index=False)
    rows = load_dataset(data).report.rows
    got = {(r.file, r.line): (r.column, r.value) for r in rows.itertuples()}
    assert got[("receivables.csv", 2)] == ("confirmed_on", "N/A")
    assert got[("receivables.csv", 3)][1] in ("NULL", "2") or ("paid_amount", "NULL") in got.values()
    assert got[("receivables.csv", 4)] == ("amount", "NaN")
    assert got[("firms.csv", 2)] == ("registered_capital", "NaN")


def test_a_too_long_field_and_a_cut_off_character_quarantine_their_row_not_the_file(world, tmp_path):
    from scf_engine.ingest import load_dataset

    data = _copy_data(world, tmp_path)
    flows = pd.read_csv(data / "flows.csv", dtype=str, keep_default_na=False)
    flows.loc[1, "purpose"] = "x" * 6_000_000  # longer than Arrow's read block: once "straddles two block boundaries"
    flows.to_csv(data / "flows.csv", index=False)
    raw = (data / "firms.csv").read_bytes()
    cut = raw.rstrip(b"\n")
    last_multibyte = max(i for i, b in enumerate(cut) if b >= 0xE0)
    (data / "firms.csv").write_bytes(cut[: last_multibyte + 2])  # the file ends inside a character
    ds = load_dataset(data)
    rows = ds.report.rows
    assert "characters long" in rows[(rows["file"] == "flows.csv") & (rows["line"] == 3)]["reason"].iloc[0]
    n_firm_lines = raw.rstrip(b"\n").count(b"\n") + 1
    broken = rows[(rows["file"] == "firms.csv") & rows["reason"].str.contains("broken character")]
    assert broken["line"].tolist() == [n_firm_lines]
    assert ds.firms["name"].str.contains("�").sum() == 0  # read as UTF-8, not re-read as GB18030


def test_an_unusable_dataset_still_writes_its_quarantine_report(world, tmp_path):
    data = _copy_data(world, tmp_path)
    firms = pd.read_csv(data / "firms.csv", dtype=str, keep_default_na=False)
    firms["firm_id"] = "not-a-code-" + firms.index.astype(str)
    firms.to_csv(data / "firms.csv", index=False)
    r = invoke("validate", data, "--out", tmp_path / "v")
    assert "nothing left to score" in one_line_error(r)
    q = pd.read_csv(tmp_path / "v" / "quarantine.csv")
    assert (q["file"] == "firms.csv").sum() >= len(firms)


def test_a_parquet_column_of_the_wrong_type_stops_with_its_quarantine_report(world, tmp_path):
    """firm_id typed as integers in a Parquet export: every firm row is refused, exit 2,
    and the report says why for each row (once, no quarantine.csv on an exit-2 path)."""
    data = _copy_data(world, tmp_path)
    firms = pd.read_csv(data / "firms.csv", dtype=str, keep_default_na=False)
    firms["firm_id"] = range(len(firms))
    firms.to_parquet(data / "firms.parquet")
    (data / "firms.csv").unlink()
    r = invoke("validate", data, "--out", tmp_path / "v")
    assert "firms.parquet" in one_line_error(r) and "quarantine report" in r.output
    q = pd.read_csv(tmp_path / "v" / "quarantine.csv")
    assert (q["file"] == "firms.parquet").sum() == len(firms)


def test_records_dated_after_today_are_in_the_future_even_without_a_gap(world, tmp_path):
    """The data-end rule alone cannot see records that run on, without a gap, past
    today: the flows shifted to end ten days from now. Those after today (the policy's
    max_days_after_today: 0) are quarantined as in the future and the default as-of is
    no later than tomorrow."""
    from scf_engine.ingest import load_dataset

    data = _copy_data(world, tmp_path)
    flows = pd.read_csv(data / "flows.csv", dtype=str, keep_default_na=False)
    booked = pd.to_datetime(flows["booked_on"])
    today = pd.Timestamp.today().normalize()
    flows["booked_on"] = (booked + (today + pd.Timedelta(days=10) - booked.max())).dt.strftime("%Y-%m-%d")
    flows.to_csv(data / "flows.csv", index=False)
    ds = load_dataset(data)
    rows = ds.report.rows
    future = rows[(rows["file"] == "flows.csv") & rows["reason"].str.contains("in the future")]
    after = (pd.to_datetime(flows["booked_on"]) > today).sum()
    assert after > 0 and len(future) == after
    assert ds.default_as_of <= today + pd.Timedelta(days=1)


def test_text_cells_starting_with_a_tab_or_a_carriage_return_are_neutralised():
    """OWASP's list includes tab and CR (a spreadsheet strips them, then reads the
    formula); numbers, negative ones included, stay numbers."""
    from scf_engine.tables import csv_bytes

    df = pd.DataFrame({"name": ["\t=cmd|' /C calc'!A0", "\r+1+1", "a\rb", 'say "x"\r\n', "plain", "-12.5"],
                       "limit_cny": [1.5, -2.0, 0.0, 3.0, 4.0, 5.0]})
    data = csv_bytes(df)
    got = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)  # a bare CR once split the row here
    assert got["name"].tolist() == ["'\t=cmd|' /C calc'!A0", "'\r+1+1", "a\rb", 'say "x"\r\n', "plain", "-12.5"]
    assert got["limit_cny"].tolist() == ["1.5", "-2.0", "0.0", "3.0", "4.0", "5.0"]
    assert [r[0] for r in csv.reader(io.StringIO(data.decode(), newline=""))][1:] == got["name"].tolist()
    assert data.endswith(b"5.0\n") and csv_bytes(df.iloc[4:]) == b"name,limit_cny\nplain,4.0\n-12.5,5.0\n"


# --- fault injection: kill -9 at each stage, a full disk ------------------------------------------

SCF = [sys.executable, "-c", "from scf_engine.cli import app; app()"]


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_at_each_stage_leaves_the_previous_audited_output_or_the_new_one(world, tmp_path, stage):
    """A kill -9 at every named point of the record step (limits staged, memos staged,
    the MLflow run logged, the entry appended, every link made, the flip done): the
    folder shows the previous audited batch, byte for byte, or the new one with its
    entry, never a mix (once, a kill between moving the memos and limits.csv left one);
    ``scf audit verify --out`` passes on what it shows and notes the unpublished rest."""
    out_dir, log = copy_output(world, tmp_path), copy_log(world, tmp_path)
    before = snapshot(out_dir)
    kill_score_at(world, out_dir, log, stage)
    assert invoke("audit", "verify", log).exit_code == 0
    if stage == "published":
        assert snapshot(out_dir) != before
        assert json.loads((out_dir / "audit_entry.json").read_text()) == json.loads(log.read_text().splitlines()[-1])
    else:
        assert snapshot(out_dir) == before
    assert_audited(out_dir, log)
    r = invoke("audit", "verify", log, "--out", out_dir)
    assert r.exit_code == 0 and ("never published" in r.output) == (stage != "published"), r.output


def test_a_full_disk_under_out_publishes_nothing(world, tmp_path):
    """--out on a 64 KiB tmpfs: the memos fill it; one line, the previous output intact
    (nothing there before), the log unchanged, the run FAILED. Where tmpfs cannot be
    mounted (not root, a container without CAP_SYS_ADMIN) that part cannot run, so the
    same fault also comes from a size-limited file (:func:`full_file_under_out`), which
    runs everywhere: the case is never skipped, and never run twice over the same fault."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode == 0:
        try:
            log = copy_log(world, tmp_path)
            before = log.read_bytes()
            r = invoke("score", world["data"], "--batch", world["data"] / "batch.csv", "--consents",
                       world["data"] / "consents.csv", "--out", mnt / "limits.csv", "--tracking-uri", world["uri"],
                       "--memo-formats", "html,md", "--audit-log", log)
            assert "--out" in one_line_error(r) and "No space left" in r.output
            assert list(mnt.iterdir()) == [] and log.read_bytes() == before
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    full_file_under_out(world, tmp_path)


FILE_SIZE_LIMIT = 256 * 1024


def _limit_file_size():
    """In the child before exec: no file may grow past FILE_SIZE_LIMIT (a write past it
    fails with EFBIG, as on a full disk, rather than killing the process)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def full_file_under_out(world, tmp_path):
    """``scf score`` in a subprocess under RLIMIT_FSIZE. The limit is per file, so the
    batch is made to give the largest file the command writes: the whole world plus
    1,000 unknown firms (a decline row each) make limits.csv about 360 KB, while the model
    files it downloads stay under the limit, and the tracking store is an ``mlflow
    server`` (another process, not limited). Writing the staged limits.csv fails: one
    line naming --out, nothing under --out, the log unchanged, the run FAILED."""
    with serving(world, tmp_path) as srv:
        batch = tmp_path / "big-batch.csv"
        firms = pd.read_csv(world["data"] / "firms.csv", dtype=str)["firm_id"].tolist()
        pd.DataFrame({"firm_id": firms + [f"9132000000{i:07d}X" for i in range(1000)]}).to_csv(batch, index=False)
        log, out_dir = copy_log(world, tmp_path), tmp_path / "limited"
        before = log.read_bytes()
        assert len(before) < FILE_SIZE_LIMIT / 2
        p = subprocess.run([*SCF, "score", str(world["data"]), "--batch", str(batch), "--consents",
                            str(world["data"] / "consents.csv"), "--out", str(out_dir / "limits.csv"), "--tracking-uri",
                            srv["uri"], "--no-memos", "--audit-log", str(log)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": REPO}, preexec_fn=_limit_file_size, timeout=300)
        text = p.stdout + p.stderr
        errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
        assert p.returncode == 2 and "Traceback" not in text and len(errors) == 1, text
        assert "--out" in errors[0] and "File too large" in errors[0], text
        assert list(out_dir.iterdir()) == [] and log.read_bytes() == before
        store = tracking.Store(srv["uri"])
        last = store.client.search_runs([store.experiment_id("score")], max_results=1,
                                        order_by=["attributes.start_time DESC"])
        assert last[0].info.status == "FAILED"


def test_a_keyed_chain_cannot_be_rewritten_without_the_key(tmp_path, monkeypatch):
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("SCF_AUDIT_KEY", "committee-secret")
    for n in range(3):
        audit.append(log, "t", "score", {"n": n})
    anchor = audit.head(log)
    assert audit.verify(log, anchor=anchor) == (True, [])
    lines = log.read_text().splitlines()
    forged = json.loads(lines[-1])
    forged["details"]["n"] = 99
    forged.pop("key_id")
    forged["hash"] = audit.entry_hash(forged)  # a writer without the key re-hashes the tail as a plain chain
    log.write_text("\n".join(lines[:-1] + [json.dumps(forged)]) + "\n")
    ok, problems = audit.verify(log)
    assert not ok and "unkeyed entry after keyed ones" in problems[0]
    monkeypatch.setenv("SCF_AUDIT_KEY", "wrong")
    assert not audit.verify(log)[0]
    monkeypatch.delenv("SCF_AUDIT_KEY")
    ok, problems = audit.verify(log)
    assert not ok and "SCF_AUDIT_KEY" in problems[0]


# --- a real tracking server killed mid-run -------------------------------------------------------

REPO = str(Path(__file__).resolve().parents[1])


def start_mlflow_server(db: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on loopback over ``db`` (a copy of the world's store: its runs,
    registry and file artifacts), waited for until /health answers."""
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_bin)] if mlflow_bin.exists() else [sys.executable, "-m", "mlflow"]
    proc = subprocess.Popen([*cmd, "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "mlflow server exited at start"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    kill_server(proc)
    raise AssertionError("mlflow server did not start within 120 s")


def kill_server(proc: subprocess.Popen) -> None:
    """SIGKILL to the server's whole process group (its uvicorn workers too), as a crash."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@contextmanager
def serving(world, tmp_path):
    db = tmp_path / "server.db"
    shutil.copy(Path(world["uri"].split("sqlite:///", 1)[1]), db)
    port = _free_port()
    proc = start_mlflow_server(db, port)
    try:
        yield {"proc": proc, "uri": f"http://127.0.0.1:{port}", "db": db}
    finally:
        kill_server(proc)


@pytest.fixture
def server(world, tmp_path):
    with serving(world, tmp_path) as srv:
        yield srv


def scf_paused_at(stage: str, flag: Path, *args) -> subprocess.Popen:
    env = {**os.environ, "SCF_TEST_PAUSE_AT": stage, "SCF_TEST_PAUSE_FILE": str(flag), "PYTHONPATH": REPO}
    return subprocess.Popen([*SCF, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def kill_server_at_pause(server, proc: subprocess.Popen, flag: Path) -> tuple[int, str]:
    """Wait for ``proc`` to reach its pause point, kill the tracking server, let ``proc``
    go on; its exit code and its output."""
    deadline = time.monotonic() + 300
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "never reached the pause point"
        time.sleep(0.1)
    kill_server(server["proc"])
    flag.unlink()
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def assert_one_line(rc: int, text: str, uri: str) -> None:
    assert rc == 2, text
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in text and len(errors) == 1 and uri in errors[0] and "tracking" in errors[0], text


@pytest.mark.parametrize("stage", ["staged_memos", "logged"])
def test_a_tracking_server_killed_mid_score_leaves_the_previous_audited_output(world, server, tmp_path, stage):
    """The server dies while the batch is recorded (memos staged, nothing logged yet; or
    all logged, the audit entry about to be appended): one line naming the URI, exit 2,
    the previous output and the log exactly as they were, verify right about both."""
    out_dir, log = copy_output(world, tmp_path), copy_log(world, tmp_path)
    before_out, before_log = snapshot(out_dir), log.read_bytes()
    flag = tmp_path / "paused"
    proc = scf_paused_at(stage, flag, "score", world["data"], "--batch", world["data"] / "batch.csv", "--consents",
                         world["data"] / "consents.csv", "--out", out_dir / "limits.csv", "--tracking-uri",
                         server["uri"], "--memo-formats", "md", "--audit-log", log)
    assert_one_line(*kill_server_at_pause(server, proc, flag), server["uri"])
    assert snapshot(out_dir) == before_out and log.read_bytes() == before_log
    assert_audited(out_dir, log)
    assert invoke("audit", "verify", log, "--out", out_dir).exit_code == 0


def test_two_runs_into_one_out_each_record_the_bytes_they_wrote(world, tmp_path):
    """Two ``scf score`` into one --out: the first waits with its entry appended and
    every link made (its flip next) while the second runs start to end. Each entry
    records the hashes of its own bytes (once, an entry re-read the file and recorded
    the other run's); the second leaves the first's output alone; the folder ends with
    the batch flipped last and its entry, and the other batch is kept with its entry."""
    out_dir, log = copy_output(world, tmp_path), copy_log(world, tmp_path)
    flag = tmp_path / "paused"
    first = scf_paused_at("linked", flag, "score", world["data"], "--batch", world["batch"], "--consents",
                          world["data"] / "consents.csv", "--out", out_dir / "limits.csv", "--tracking-uri", world["uri"],
                          "--memo-formats", "md", "--audit-log", log)
    deadline = time.monotonic() + 300
    while not flag.exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    small = tmp_path / "small.csv"
    pd.read_csv(world["batch"], dtype=str).head(5).to_csv(small, index=False)
    r = score(world, out_dir, log=log, batch=small)
    assert r.exit_code == 0 and "left alone" in r.output, r.output
    second = json.loads((out_dir / "audit_entry.json").read_text())
    assert len(pd.read_csv(out_dir / "limits.csv")) == 5
    flag.unlink()
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    shown = json.loads((out_dir / "audit_entry.json").read_text())
    logged = [json.loads(x) for x in log.read_text().splitlines()]
    assert shown in logged and second in logged and shown["seq"] < second["seq"]  # appended first, flipped last
    assert len(pd.read_csv(out_dir / "limits.csv")) == 12
    assert_audited(out_dir, log)
    kept = [p for p in publish._outputs(out_dir / publish.OUTPUTS / "score")
            if json.loads((p / "audit_entry.json").read_text()) == second]
    assert len(kept) == 1 and hashlib.sha256((kept[0] / "limits.csv").read_bytes()).hexdigest() == \
        second["details"]["output"]["limits.csv"]


def test_a_tracking_server_killed_during_train_is_one_line(world, server, tmp_path):
    flag = tmp_path / "paused"
    proc = scf_paused_at("train_run_started", flag, "train", world["data"], "--tracking-uri", server["uri"],
                         "--out", tmp_path / "train", "--audit-log", tmp_path / "audit.jsonl")
    assert_one_line(*kill_server_at_pause(server, proc, flag), server["uri"])
    assert not (tmp_path / "audit.jsonl").exists()  # no training recorded as done


# --- runs left RUNNING by a kill -9 ----------------------------------------------------------------


def test_a_run_left_running_by_kill_9_is_marked_failed_by_the_next_run(world, tmp_path):
    store = tracking.Store(world["uri"])
    out_dir, log = copy_output(world, tmp_path), copy_log(world, tmp_path)
    env = {**os.environ, "SCF_TEST_KILL_AT": "logged", "PYTHONPATH": REPO}
    p = subprocess.Popen([*SCF, "score", str(world["data"]), "--batch", str(world["batch"]), "--consents",
                          str(world["data"] / "consents.csv"), "--out", str(out_dir / "limits.csv"), "--tracking-uri",
                          world["uri"], "--memo-formats", "md", "--audit-log", str(log)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert p.wait(timeout=300) == -signal.SIGKILL
    killed = store.client.search_runs([store.experiment_id("score")],
                                      filter_string=f"tags.scf_owner_pid = '{p.pid}'")
    assert len(killed) == 1 and killed[0].info.status == "RUNNING"  # MLflow cannot know the process died
    r = score(world, out_dir, log=log)
    assert r.exit_code == 0, r.output
    assert f"MLflow run {killed[0].info.run_id} was left RUNNING" in r.output
    run = store.get_run(killed[0].info.run_id)
    assert run.info.status == "FAILED" and str(p.pid) in run.data.tags["scf_failed_reason"]
    mine = store.client.search_runs([store.experiment_id("score")], filter_string="attributes.status = 'RUNNING'")
    assert all(m.data.tags.get("scf_owner_pid") != str(os.getpid()) for m in mine)  # a live process's run stays


def test_a_live_processes_run_is_not_marked_failed(world):
    """The sweep must not fail a run in progress: this test's own open run stays RUNNING."""
    store = tracking.Store(world["uri"])
    with store.run("score", "in progress") as run:
        assert run.id not in store.fail_stale_runs()
        assert store.get_run(run.id).info.status == "RUNNING"
    assert store.get_run(run.id).info.status == "FINISHED"


# --- leftovers of a kill, and verify --out ----------------------------------------------------------


def kill_score_at(world, out_dir: Path, log: Path, stage: str) -> None:
    env = {**os.environ, "SCF_TEST_KILL_AT": stage, "PYTHONPATH": REPO}
    p = subprocess.run([*SCF, "score", str(world["data"]), "--batch", str(world["data"] / "batch.csv"), "--consents",
                        str(world["data"] / "consents.csv"), "--out", str(out_dir / "limits.csv"), "--tracking-uri",
                        world["uri"], "--memo-formats", "md", "--audit-log", str(log)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr


@pytest.mark.parametrize("stage", ["appended", "linked"])
def test_an_output_left_after_the_append_is_removed_and_noted_by_the_next_run(world, tmp_path, stage):
    """Killed after its entry was appended, before the flip: the entry names an output
    nobody can see; the next run removes it and its entry names the leftover's hashes
    (so an auditor can match the orphan entry)."""
    out_dir, log = copy_output(world, tmp_path), copy_log(world, tmp_path)
    kill_score_at(world, out_dir, log, stage)
    left = publish.unpublished(out_dir)
    orphan = json.loads(log.read_text().splitlines()[-1])  # appended, never published
    assert len(left) == 1 and orphan["details"]["output"]["limits.csv"] == hashlib.sha256(
        (left[0] / "limits.csv").read_bytes()).hexdigest()
    r = score(world, out_dir, log=log)
    assert r.exit_code == 0, r.output
    assert f"removed {left[0].relative_to(out_dir)}" in r.output and publish.unpublished(out_dir) == []
    assert_audited(out_dir, log)
    note = json.loads((out_dir / "audit_entry.json").read_text())["details"]["leftover_outputs"]
    assert [(n["folder"], n["files"]["limits.csv"]) for n in note] == [
        (str(left[0].relative_to(out_dir)), orphan["details"]["output"]["limits.csv"])]


def test_a_folder_written_before_the_links_is_adopted_by_the_next_run(world, tmp_path):
    """An output folder of the previous layout (real limits.csv, memos, audit entry, as
    copying with the links followed also gives): verify passes on it, the next run moves
    it under the linked layout, byte for byte, and publishes over it."""
    out_dir, log = tmp_path / "score", copy_log(world, tmp_path)
    shutil.copytree(world["home"] / "score", out_dir)  # the links followed: real files
    shutil.rmtree(out_dir / publish.OUTPUTS)
    before = snapshot(out_dir)
    assert not (out_dir / "limits.csv").is_symlink() and verify_output(out_dir, log) == []
    r = score(world, out_dir, log=log)
    assert r.exit_code == 0 and "moved audit_entry.json, limits.csv, memos under" in r.output, r.output
    assert_audited(out_dir, log)
    adopted = [p for p in publish._outputs(out_dir / publish.OUTPUTS / "score") if "adopted" in p.name]
    assert len(adopted) == 1 and snapshot(adopted[0]) == before


def test_verify_out_refuses_an_unaudited_or_edited_folder(world, tmp_path):
    out_dir, log = copy_output(world, tmp_path), copy_log(world, tmp_path)
    memo = next((out_dir / "memos").iterdir())
    memo.write_text(memo.read_text() + "edited")
    (out_dir / "memos" / "memo_extra.md").write_text("not from this batch")
    r = invoke("audit", "verify", log, "--out", out_dir)
    assert r.exit_code == 1 and memo.name in r.output and "did not record" in r.output
    (out_dir / "limits.csv").unlink()
    (out_dir / "limits.csv").write_bytes((out_dir / publish.OUTPUTS / "score" / "current" / "limits.csv").read_bytes())
    r = invoke("audit", "verify", log, "--out", out_dir)  # the same bytes, but no longer the published batch's link
    assert r.exit_code == 1 and "limits.csv: not the link" in r.output
    (out_dir / publish.OUTPUTS / "score" / "current" / "audit_entry.json").unlink()
    r = invoke("audit", "verify", log, "--out", out_dir)
    assert r.exit_code == 1 and "not audited" in r.output
