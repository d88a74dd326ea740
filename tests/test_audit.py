"""The hash-chained audit log: append, verify, and every kind of tampering."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import numpy as np
import pytest

from scf_engine import audit
from scf_engine.hashing import file_sha256


def make_log(tmp_path, n=5) -> Path:
    path = tmp_path / "logs" / "audit.jsonl"
    for i in range(n):
        audit.append(path, "analyst.li", "score", {
            "firm_ids": [f"F{i}", f"F{i + 1}"], "inputs": {"firms.csv": "ab" * 32},
            "models": {"decoupled": i}, "policies": {"limit_policy": "cd" * 32}, "output": "ef" * 32,
        })
    return path


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_append_builds_a_chain(tmp_path):
    path = make_log(tmp_path)
    entries = [json.loads(x) for x in lines(path)]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev_hash"] == "0" * 64
    for a, b in zip(entries, entries[1:]):
        assert b["prev_hash"] == a["hash"]
    for e in entries:
        body = {k: v for k, v in e.items() if k != "hash"}
        canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        import hashlib
        assert e["hash"] == hashlib.sha256(canon).hexdigest()
        assert e["timestamp"].endswith("Z") and e["actor"] == "analyst.li"
    assert audit.verify(path) == (True, [])


def test_append_returns_what_it_wrote_and_defaults_actor(tmp_path):
    path = tmp_path / "a.jsonl"
    e = audit.append(path, None, "train", {"n": np.int64(3), "pd": np.float64(0.25), "path": Path("x/y"),
                                            "ids": {"b", "a"}, "arr": np.array([1, 2])})
    assert json.loads(lines(path)[0]) == e
    assert e["details"] == {"n": 3, "pd": 0.25, "path": "x/y", "ids": ["a", "b"], "arr": [1, 2]}
    try:
        user = getpass.getuser()
    except Exception:
        user = None
    if user:
        assert e["actor"] == user
    assert audit.head(path) == {"seq": 1, "hash": e["hash"]}
    with pytest.raises(ValueError):
        audit.append(path, "x", "", {})
    with pytest.raises(ValueError):
        audit.append(path, "x", "score", {"pd": float("nan")})
    assert audit.verify(path) == (True, [])  # a refused append leaves the log as it was


def test_edited_field_is_found(tmp_path):
    path = make_log(tmp_path)
    ls = lines(path)
    e = json.loads(ls[2])
    e["details"]["firm_ids"] = ["F99"]
    ls[2] = json.dumps(e) + "\n"
    path.write_text("".join(ls), encoding="utf-8")
    ok, problems = audit.verify(path)
    assert not ok and problems[0].startswith("line 3:") and "edited" in problems[0]
    assert len(problems) == 1


def test_edited_and_rehashed_entry_breaks_the_next_link(tmp_path):
    path = make_log(tmp_path)
    ls = lines(path)
    e = json.loads(ls[1])
    e["actor"] = "someone.else"
    e["hash"] = audit.entry_hash(e)
    ls[1] = audit.canonical(e).decode() + "\n"
    path.write_text("".join(ls), encoding="utf-8")
    ok, problems = audit.verify(path)
    assert not ok and problems[0].startswith("line 3:") and "prev_hash" in problems[0]


def test_deleted_line_is_found(tmp_path):
    path = make_log(tmp_path)
    ls = lines(path)
    del ls[2]
    path.write_text("".join(ls), encoding="utf-8")
    ok, problems = audit.verify(path)
    assert not ok and problems[0].startswith("line 3:")
    assert any("seq 4 where 3 was expected" in p for p in problems)


def test_deleted_first_line_is_found(tmp_path):
    path = make_log(tmp_path)
    path.write_text("".join(lines(path)[1:]), encoding="utf-8")
    ok, problems = audit.verify(path)
    assert not ok and problems[0].startswith("line 1:") and "deleted" in problems[0]


def test_swapped_lines_are_found(tmp_path):
    path = make_log(tmp_path)
    ls = lines(path)
    ls[1], ls[2] = ls[2], ls[1]
    path.write_text("".join(ls), encoding="utf-8")
    ok, problems = audit.verify(path)
    assert not ok and problems[0].startswith("line 2:") and "reordered" in problems[0]


def test_truncated_last_line_is_found_and_blocks_appending(tmp_path):
    path = make_log(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    ok, problems = audit.verify(path)
    assert not ok and problems[0] == "line 5: truncated (the file ends inside this entry)"
    with pytest.raises(audit.AuditError):
        audit.append(path, "x", "score", {})
    # only the newline lost: the entry is intact but the write did not finish
    path.write_bytes(data[:-1])
    ok, problems = audit.verify(path)
    assert not ok and problems == ["line 5: no newline at the end of the file (truncated or an interrupted write)"]


def test_tail_deletion_needs_an_anchor(tmp_path):
    path = make_log(tmp_path)
    anchor = audit.head(path)
    path.write_text("".join(lines(path)[:-1]), encoding="utf-8")
    assert audit.verify(path) == (True, [])  # a clean cut at a line boundary looks whole...
    ok, problems = audit.verify(path, anchor=anchor)  # ...but not against a recorded head
    assert not ok and "seq 5" in problems[0]


def test_append_refuses_a_broken_last_entry(tmp_path):
    path = make_log(tmp_path, 2)
    ls = lines(path)
    e = json.loads(ls[-1])
    e["action"] = "delete"
    ls[-1] = json.dumps(e) + "\n"
    path.write_text("".join(ls), encoding="utf-8")
    with pytest.raises(audit.AuditError, match="hash"):
        audit.append(path, "x", "score", {})


def test_append_reads_only_the_last_line(tmp_path, monkeypatch):
    path = make_log(tmp_path, 3)
    # a long log: appending must not read it all
    big = path.stat().st_size
    reads = []
    real_open = open  # the builtin; audit.open is patched below

    class Spy:
        def __init__(self, fh):
            self._fh = fh

        def read(self, n=-1):
            out = self._fh.read(n)
            reads.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return self._fh.__exit__(*a)

    for i in range(300):
        audit.append(path, "batch", "score", {"i": i, "pad": "x" * 200})
    size = path.stat().st_size
    assert size > 20 * big
    monkeypatch.setattr(audit, "open", lambda *a, **k: Spy(real_open(*a, **k)), raising=False)
    audit.append(path, "batch", "score", {"i": -1})
    monkeypatch.undo()
    assert reads and sum(reads) < 10_000 < size
    assert audit.verify(path) == (True, [])
    assert audit.head(path)["seq"] == 304


def test_verify_missing_and_empty(tmp_path):
    ok, problems = audit.verify(tmp_path / "none.jsonl")
    assert not ok and "no such audit log" in problems[0]
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert audit.verify(tmp_path / "empty.jsonl") == (True, [])


def test_file_sha256(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes(b"firm_id\n")
    import hashlib
    assert file_sha256(p) == hashlib.sha256(b"firm_id\n").hexdigest()


def test_cli_verify_prints_the_head_and_checks_an_anchor(tmp_path):
    from typer.testing import CliRunner

    from scf_engine.cli import app

    path = make_log(tmp_path)
    top = audit.head(path)
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", str(path)])
    assert ok.exit_code == 0 and f"head {top['seq']}:{top['hash']}" in ok.output
    path.write_text("".join(lines(path)[:-1]), encoding="utf-8")  # the last entry cut off cleanly
    assert runner.invoke(app, ["audit", "verify", str(path)]).exit_code == 0
    cut = runner.invoke(app, ["audit", "verify", str(path), "--anchor", f"{top['seq']}:{top['hash']}"])
    assert cut.exit_code == 1 and "seq 5" in cut.output
    bad = runner.invoke(app, ["audit", "verify", str(path), "--anchor", "five:abc"])
    assert bad.exit_code == 2 and "SEQ:HASH" in bad.output


def test_two_processes_appending_at_the_same_moment_keep_the_chain(tmp_path):
    """Two writers released at one instant append 60 entries each: one chain, 120 links."""
    import subprocess
    import sys
    import time

    log = tmp_path / "audit.jsonl"
    start = time.time() + 2.0
    code = ("import sys, time\nfrom scf_engine import audit\n"
            f"while time.time() < {start}: pass\n"
            "for i in range(60):\n"
            f"    audit.append({str(log)!r}, sys.argv[1], 'explain', {{'i': i}})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, name]) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    ok, problems = audit.verify(log)
    assert ok, problems
    lines = log.read_text().splitlines()
    assert len(lines) == 120 and [json.loads(x)["seq"] for x in lines] == list(range(1, 121))


def test_a_failing_precondition_aborts_the_append_under_the_lock(tmp_path):
    """append's precondition runs with the lock held and before any byte is written: what
    it raises leaves the log exactly as it was, and the next append chains on as usual."""
    log = tmp_path / "audit.jsonl"
    audit.append(log, "a", "score", {"n": 1})
    before = log.read_bytes()
    seen = []

    def refuse():
        seen.append(log.read_bytes())  # the precondition may read the log itself
        raise RuntimeError("taken meanwhile")

    with pytest.raises(RuntimeError, match="taken meanwhile"):
        audit.append(log, "b", "score", {"n": 2}, precondition=refuse)
    assert log.read_bytes() == before and seen == [before]
    entry = audit.append(log, "b", "score", {"n": 2}, precondition=lambda: None)
    assert entry["seq"] == 2 and audit.verify(log) == (True, [])


def served_log(tmp_path, scored: tuple, operator: str) -> Path:
    """A log with one ``scf score`` entry (``scored``: actor, firms) and one entry of a
    service run by ``operator``: platform-a's key decided F1 and F2, ana's read F2's
    memo, and a request without a key was refused."""
    from scf_engine import access
    from scf_engine.serve.audit_writer import AuditWriter

    log = tmp_path / "audit.jsonl"
    access.record(log, scored[0], "score", "batch credit decision", scored[1], name_firms=True)
    writer = AuditWriter(log, operator)
    futures = [writer.submit({"method": "POST", "path": "/v1/decisions", "key": "platform-a", "firms": ["F1", "F2"]}),
               writer.submit({"method": "GET", "path": "/v1/firms/F2/memo", "key": "ana", "firms": ["F2"]}),
               writer.submit({"method": "POST", "path": "/v1/decisions", "key": None, "status": 401})]
    for f in futures:
        f.result(timeout=30)
    writer.close()
    return log


def test_audit_show_says_why_the_service_read_a_firm_and_for_which_key(tmp_path):
    """The contract: ``scf audit show --firm ID`` lists who read a firm's data, when and
    why. A ``scf serve`` entry groups HTTP requests and has no purpose of its own, so the
    service's reads were listed with an empty "why". The requests that read the firm now
    say it: the endpoint and the key it was called with; a refused request (no firms)
    names nobody."""
    from scf_engine import access

    log = served_log(tmp_path, ("analyst.li", ["F1", "F2"]), "svc")
    rows = access.show(log, firm="F2")
    assert list(rows["action"])[0] == "score" and rows["purpose"].iloc[0] == "batch credit decision"
    served = rows[rows["action"] == "serve"]
    said = "; ".join(served["purpose"])
    assert "POST /v1/decisions (key platform-a)" in said and "GET /v1/firms/F2/memo (key ana)" in said
    assert (served["purpose"] != "").all() and "(key -)" not in said
    said_f1 = "; ".join(access.show(log, firm="F1").query("action == 'serve'")["purpose"])
    assert "platform-a" in said_f1 and "memo" not in said_f1


def test_audit_show_actor_finds_what_an_api_key_holder_read_through_the_service(tmp_path):
    """``scf audit show --actor NAME`` matched only the entry's actor, but the service
    appends its entries under the operator who started it and names each request's API
    key holder inside: a key holder's reads were invisible to "what did this person
    read". Now a key holder is an actor: the service's entries list only that holder's
    requests (purpose, firms counted), say so in ``via``, and the operator still sees all."""
    from typer.testing import CliRunner

    from scf_engine import access
    from scf_engine.cli import app

    log = served_log(tmp_path, ("ana", ["F9"]), "svc-operator")
    rows = access.show(log, actor="ana")
    assert list(rows["action"]) == ["score", "serve"] and list(rows["via"]) == ["", "service, key ana"]
    served = rows.iloc[1]
    assert served["actor"] == "svc-operator" and served["purpose"] == "GET /v1/firms/F2/memo (key ana)"
    assert served["firms_count"] == 1 and served["named"] == 1
    assert access.show(log, actor="ana", firm="F1").empty  # ana's key never read F1
    assert list(access.show(log, actor="ana", firm="F2")["action"]) == ["serve"]
    platform = access.show(log, actor="platform-a")
    assert len(platform) == 1 and platform["firms_count"].iloc[0] == 2 and "memo" not in platform["purpose"].iloc[0]
    everything = access.show(log, actor="svc-operator")  # the operator answers for every request it served
    assert len(everything) == 1 and everything["firms_count"].iloc[0] == 2
    assert "key ana" in everything["purpose"].iloc[0] and "key platform-a" in everything["purpose"].iloc[0]
    assert access.show(log, actor="nobody").empty
    r = CliRunner().invoke(app, ["audit", "show", str(log), "--actor", "ana"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "2 entries for actor ana" in r.output and "service, key ana" in r.output
