"""Reliability of scoring under faults and bad input: nothing half-done, nothing
unaudited, no traceback. One small trained world is shared by the module; the fault
injections (an unwritable audit log, a full disk, a tracking server killed mid-run, a
``kill -9`` at each stage of ``score``) each check that what is left is either the
previous audited output or a new output with its audit entry, and that ``scf audit
verify`` says so."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from scf_engine import audit, tracking
from scf_engine.cli import app
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
    """Every file under ``folder`` and its sha256 (what a user would find there)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


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
    assert not list(out_dir.glob(".scf-staging-*"))
    assert invoke("audit", "verify", log).exit_code == 0


def copy_log(w, tmp_path) -> Path:
    log = tmp_path / "audit.jsonl"
    shutil.copy(w["log"], log)
    return log


def copy_output(w, tmp_path) -> Path:
    out_dir = tmp_path / "score"
    shutil.copytree(w["home"] / "score", out_dir)
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
