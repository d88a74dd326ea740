"""scf monitor: a lent portfolio re-scored after the batch through the same decision core,
the contract's portfolio.csv and alerts.csv, bad input, and credit repair."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from scf_engine import policies, tracking
from scf_engine.cli import app
from scf_engine.contract import GRADES
from scf_engine.errors import PolicyError
from scf_engine.monitor.judge import PORTFOLIO_COLUMNS, repaired
from scf_engine.monitor.signals import ALERTS_COLUMNS, fire
from scf_engine.simulate import WorldConfig, simulate, write_dataset

runner = CliRunner()
BATCH = "2024-01-01"
AS_OF = ["2024-04-01", "2024-07-01", "2024-10-01", "2025-01-01"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def lent(tmp_path_factory):
    """A world with the after-lending scenario (15% of firms start to deteriorate and a
    healthy core declines from month 24, the batch date), champion models, and a batch
    scored a year before the data ends."""
    home = tmp_path_factory.mktemp("mon")
    cfg = WorldConfig(n_firms=500, seed=23, n_months=36, deteriorating_share=0.15, downgraded_cores=1, scenario_month=24)
    data = write_dataset(simulate(cfg), home / "data")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    log = home / "audit.jsonl"
    for args in (("train", data, "--out", home / "train"), ("compare", "--promote", "all", "--out", home / "cmp"),
                 ("score", data, "--batch", data / "batch.csv", "--consents", data / "consents.csv", "--as-of", BATCH,
                  "--out", home / "score" / "limits.csv", "--no-memos")):
        r = invoke(*args, "--tracking-uri", uri, "--audit-log", log)
        assert r.exit_code == 0, r.output
    run = tracking.Store(uri).latest_run("score", parent_only=False)
    return {"home": home, "data": data, "uri": uri, "log": log, "limits": home / "score" / "limits.csv",
            "batch_run": run.info.run_id}


def run_monitor(lent, out, *extra, portfolio=True):
    args = ["monitor", lent["data"], "--out", out, "--consents", lent["data"] / "consents.csv",
            "--tracking-uri", lent["uri"], "--audit-log", lent["log"]]
    if portfolio:
        args += ["--portfolio", lent["limits"]]
    for t in AS_OF:
        args += ["--as-of", t]
    return invoke(*args, *extra)


@pytest.fixture(scope="module")
def monitored(lent):
    out = lent["home"] / "mon"
    r = run_monitor(lent, out)
    assert r.exit_code == 0, r.output
    return out


def test_portfolio_and_alerts_follow_the_contract(lent, monitored):
    port = pd.read_csv(monitored / "portfolio.csv", dtype={"firm_id": str})
    alerts = pd.read_csv(monitored / "alerts.csv", dtype={"firm_id": str})
    assert list(port.columns) == PORTFOLIO_COLUMNS and list(alerts.columns) == ALERTS_COLUMNS
    limits = pd.read_csv(lent["limits"], dtype={"firm_id": str})
    book = limits[limits["limit_cny"] > 0]
    assert set(port["firm_id"]) == set(book["firm_id"])  # the portfolio is exactly the firms lent to
    assert sorted(port["as_of"].unique()) == AS_OF and len(port) == len(book) * len(AS_OF)
    assert set(port["action"]) <= {"keep", "reduce", "freeze", "raise"} and set(port["level"]) <= {"red", "amber", "green"}
    assert set(port["grade"].dropna()) <= set(GRADES)
    # the batch's own answer is carried, not recomputed
    b = book.set_index("firm_id")
    first = port[port["as_of"] == AS_OF[0]].set_index("firm_id")
    assert np.allclose(first["pd_at_batch"], b.loc[first.index, "pd"])
    assert np.allclose(first["limit_at_batch"], b.loc[first.index, "limit_cny"])
    # actions follow levels: red freezes to 0, amber never above the batch's limit, raise above it
    assert (port.loc[port["level"] == "red", "action"] == "freeze").all()
    assert (port.loc[port["action"] == "freeze", "limit_now"] == 0).all()
    assert (port.loc[port["action"] == "reduce", "limit_now"] < port.loc[port["action"] == "reduce", "limit_at_batch"]).all()
    assert (port.loc[port["action"] == "raise", "limit_now"] > port.loc[port["action"] == "raise", "limit_at_batch"]).all()
    # every alert names a firm of the portfolio at an as-of, its evidence carries a date
    assert len(alerts) > 0 and set(alerts["firm_id"]) <= set(port["firm_id"])
    assert alerts["evidence"].str.contains(r"\d{4}-\d{2}-\d{2}").all()
    # a firm with a red alert is red at that as-of
    red = alerts[alerts["level"] == "red"][["firm_id", "as_of"]].drop_duplicates()
    merged = red.merge(port, on=["firm_id", "as_of"])
    assert (merged["level"] == "red").all()


def test_the_pass_is_an_mlflow_run_and_an_audit_entry(lent, monitored):
    store = tracking.Store(lent["uri"])
    run = store.latest_run("monitor", parent_only=False)
    assert run is not None and run.data.metrics["n_firms"] > 0
    arts = {a.path for a in store.client.list_artifacts(run.info.run_id, "monitor")}
    assert {"monitor/portfolio.csv", "monitor/alerts.csv"} <= arts
    entries = [json.loads(line) for line in lent["log"].read_text().splitlines()]
    mine = [e for e in entries if e["action"] == "monitor"]
    assert mine and mine[-1]["details"]["mlflow_run_id"] == run.info.run_id
    assert set(mine[-1]["details"]["output"]) == {"portfolio.csv", "alerts.csv", "drift.csv", "report.html"}
    assert json.loads((monitored / "monitor_audit_entry.json").read_text()) == mine[-1]
    r = invoke("audit", "verify", lent["log"], "--out", monitored)
    assert r.exit_code == 0 and "never published" not in r.output, r.output


def test_audit_show_finds_the_monitoring_pass_that_read_a_lent_firm(lent, monitored):
    """The contract: ``scf audit show --firm ID`` lists who read a firm's data, when and
    why. A monitoring pass re-scores each lent firm from its flows and writes it into
    portfolio.csv, but its entry held only the count and hash of the portfolio's ids (as
    a whole-dataset read does), so neither --firm nor --firm with --data found it."""
    from scf_engine import access

    port = pd.read_csv(monitored / "portfolio.csv", dtype={"firm_id": str})
    firm = port["firm_id"].iloc[0]
    rows = access.show(lent["log"], firm=firm)
    seen = rows[rows["action"] == "monitor"]
    assert len(seen) >= 1 and (seen["match"] == "named").all()
    assert seen["purpose"].str.contains("monitoring").all()
    outsider = pd.read_csv(lent["data"] / "firms.csv", dtype=str)["firm_id"]
    outsider = outsider[~outsider.isin(port["firm_id"])].iloc[0]
    assert "monitor" not in set(access.show(lent["log"], firm=outsider)["action"])


# --- kill -9 while a pass is recorded (the same publish step as scf score: scf_engine.publish) ---------

SCF = [sys.executable, "-c", "from scf_engine.cli import app; app()"]


def view(folder: Path) -> dict:
    """What a reader finds under the folder's names (through the links) and its sha256."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if not p.name.startswith(".") and p.is_file()}


def kill_monitor_at(lent, out: Path, log: Path, stage: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("SCF_TEST_KILL_AT", None)
    if stage:
        env["SCF_TEST_KILL_AT"] = stage
    return subprocess.run([*SCF, "monitor", str(lent["data"]), "--portfolio", str(lent["limits"]), "--as-of", AS_OF[0],
                           "--out", str(out), "--consents", str(lent["data"] / "consents.csv"), "--tracking-uri",
                           lent["uri"], "--audit-log", str(log)], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("stage", ["staged", "appended", "published"])
def test_kill_9_while_a_pass_is_recorded_leaves_the_previous_pass_or_the_new_one(lent, monitored, tmp_path, stage):
    """Killed with its files staged, with its entry appended, or just after the flip:
    portfolio.csv, alerts.csv, drift.csv, report.html and the entry are all the previous
    pass's, byte for byte, or all the new one's, and verify --out passes on either; the
    next pass removes what the killed one left and notes it on its entry."""
    out, log = tmp_path / "mon", tmp_path / "audit.jsonl"
    shutil.copytree(monitored, out, symlinks=True)
    shutil.copy(lent["log"], log)
    before = view(out)
    p = kill_monitor_at(lent, out, log, stage)
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
    assert (view(out) == before) == (stage != "published")
    shown = json.loads((out / "monitor_audit_entry.json").read_text())
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert shown == (entries[-1] if stage == "published" else json.loads((monitored / "monitor_audit_entry.json").read_text()))
    assert invoke("audit", "verify", log, "--out", out).exit_code == 0
    if stage != "appended":
        return
    orphan = json.loads(log.read_text().splitlines()[-1])  # appended, never published
    p = kill_monitor_at(lent, out, log, None)
    assert p.returncode == 0 and "killed before publishing" in p.stdout + p.stderr, p.stdout + p.stderr
    note = json.loads((out / "monitor_audit_entry.json").read_text())["details"]["leftover_outputs"]
    assert note[0]["files"]["portfolio.csv"] == orphan["details"]["output"]["portfolio.csv"]
    r = invoke("audit", "verify", log, "--out", out)
    assert r.exit_code == 0 and "never published" not in r.output, r.output


def test_batch_run_gives_the_same_portfolio(lent, monitored, tmp_path):
    r = run_monitor(lent, tmp_path / "m2", "--batch-run", lent["batch_run"], portfolio=False)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m2" / "portfolio.csv").read_bytes() == (monitored / "portfolio.csv").read_bytes()


def test_unknown_firms_are_quarantined_not_monitored(lent, tmp_path):
    limits = pd.read_csv(lent["limits"], dtype=str)
    extra = limits[limits["limit_cny"].astype(float) > 0].head(2).copy()
    extra["firm_id"] = ["91000000000000001X", "91000000000000002X"]
    path = tmp_path / "limits.csv"
    pd.concat([limits, extra]).to_csv(path, index=False)
    out = tmp_path / "m"
    r = invoke("monitor", lent["data"], "--portfolio", path, "--as-of", AS_OF[0], "--out", out, "--consents",
               lent["data"] / "consents.csv", "--tracking-uri", lent["uri"], "--audit-log", lent["log"])
    assert r.exit_code == 0, r.output
    q = pd.read_csv(out / "portfolio_quarantine.csv", dtype=str)
    assert set(q["firm_id"]) == set(extra["firm_id"]) and q["reason"].str.contains("unknown firm").all()
    assert not set(extra["firm_id"]) & set(pd.read_csv(out / "portfolio.csv", dtype=str)["firm_id"])


def test_a_pass_on_a_dataset_with_bad_rows_publishes_its_quarantine_with_the_portfolio(lent, tmp_path):
    """The contract: a row that breaks a rule goes to a quarantine file beside the output.
    ``scf monitor`` wrote quarantine.csv only when the pass failed. It is now published
    with portfolio.csv (in the pass's audit entry: ``audit verify --out`` holds) and gone
    from the folder when a later pass on clean data is published there."""
    dirty = tmp_path / "dirty"
    shutil.copytree(lent["data"], dirty)
    flows = pd.read_csv(dirty / "flows.csv", dtype=str, keep_default_na=False)
    bad = flows.iloc[[0]].copy()
    bad["amount"] = "-5"
    bad["txn_id"] = "BAD-AMOUNT"
    pd.concat([flows, bad]).to_csv(dirty / "flows.csv", index=False)
    out = tmp_path / "m"
    args = ("--portfolio", lent["limits"], "--as-of", AS_OF[0], "--out", out, "--consents", lent["data"] / "consents.csv",
            "--tracking-uri", lent["uri"], "--audit-log", lent["log"])
    r = invoke("monitor", dirty, *args)
    assert r.exit_code == 0, r.output
    assert "quarantined" in r.output and str(out / "quarantine.csv") in r.output.replace("\n", "")
    q = pd.read_csv(out / "quarantine.csv", dtype=str)
    assert list(zip(q["file"], q["line"].astype(int), q["column"])) == [("flows.csv", len(flows) + 2, "amount")]
    entry = json.loads((out / "monitor_audit_entry.json").read_text())
    assert "quarantine.csv" in entry["details"]["output"]
    assert invoke("audit", "verify", lent["log"], "--out", out).exit_code == 0
    r = invoke("monitor", lent["data"], *args)
    assert r.exit_code == 0, r.output
    assert not (out / "quarantine.csv").exists()
    assert invoke("audit", "verify", lent["log"], "--out", out).exit_code == 0


@pytest.mark.parametrize("case,message", [
    ("before", "is not after the batch"),
    ("run", "no such run"),
    ("nobody", "none of its"),
])
def test_bad_input_is_one_line_and_exit_2(lent, tmp_path, case, message):
    args = ["monitor", lent["data"], "--out", tmp_path / "m", "--consents", lent["data"] / "consents.csv",
            "--tracking-uri", lent["uri"], "--audit-log", lent["log"]]
    if case == "before":
        args += ["--portfolio", lent["limits"], "--as-of", "2023-12-01"]
    elif case == "run":
        args += ["--batch-run", "0" * 32, "--as-of", AS_OF[0]]
    else:
        limits = pd.read_csv(lent["limits"], dtype=str)
        limits["firm_id"] = [f"9100000000000{i:04d}X" for i in range(len(limits))]
        limits.to_csv(tmp_path / "l.csv", index=False)
        args += ["--portfolio", tmp_path / "l.csv", "--as-of", AS_OF[0]]
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "m" / "portfolio.csv").exists()


def _firm(**over) -> dict:
    """A healthy firm's row as the rules read it."""
    row = {"payroll_open_gap": 0, "payroll_12m": 1.2e6, "payroll_missed_12m": 0, "payroll_cured_12m": 0,
           "tax_open_gap": 0, "tax_3m_last_year": 3e4, "tax_cured_12m": 0, "social_insurance_open_gap": 0,
           "social_insurance_missed_12m": 0, "social_insurance_cured_12m": 0, "housing_fund_open_gap": 0,
           "housing_fund_months_12m": 12, "utilities_missed_12m": 0, "b_utilities_missed_12m": 0,
           "loan_service_open_gap": 0, "b_loan_service_open_gap": 0, "trade_in_yoy_3m": 0.0, "trade_in_3m": 3e6,
           "trade_in_3m_last_year": 3e6, "recv_overdue_open_share": 0.0, "b_recv_overdue_open_share": 0.0,
           "core_distress": 0.0, "distressed_core": "", "core_late_rise": np.nan, "top_payer_share_12m": 0.3,
           "b_top_payer_share_12m": 0.3, "pd": 0.03, "pd_at_batch": 0.03, "pd_change": 0.0,
           "consent_days_left": 300.0, "consent_expires_on": "2025-12-31", "in_default": False, "default_on": "",
           "obligations_missed_12m": 0, "obligations_missed_3m": 0, "obligations_open": 0,
           "grade": "grade_1", "grade_at_batch": "grade_1", "months_since_reported": 0, "trade_in_12m": 1.2e7,
           # contract v1.1 closed-loop features: empty, as for a dataset without financings.csv
           **{f"{p}{c}": np.nan for p in ("", "b_") for c in ("fin_live_n", "fin_overdue_n", "fin_diverted_12m",
                                                              "fin_misused_12m", "fin_misuse_share_12m",
                                                              "fin_borrow_to_repay_12m")}, "fin_evidence": ""}
    row.update(over)
    return row


def test_a_cured_delay_weighs_less_than_an_open_one_in_the_rules():
    pol = policies.load("monitoring")
    frame = pd.DataFrame({
        "healthy": _firm(),
        # three months of payroll missed, still open
        "open": _firm(payroll_open_gap=3, payroll_missed_12m=3, obligations_missed_12m=3, obligations_missed_3m=3,
                      obligations_open=1, grade="alternate"),
        # three months missed half a year ago, caught up, nothing missed since
        "cured": _firm(payroll_missed_12m=3, payroll_cured_12m=1, obligations_missed_12m=3, grade="alternate"),
        # caught up only last month: not yet cured for the policy's months
        "fresh": _firm(payroll_missed_12m=3, payroll_cured_12m=1, obligations_missed_12m=3, obligations_missed_3m=2,
                       grade="alternate"),
    }).T.infer_objects()
    text = {"distressed_core", "consent_expires_on", "default_on", "grade", "grade_at_batch", "fin_evidence"}
    for c in set(frame.columns) - text:
        frame[c] = pd.to_numeric(frame[c]) if c != "in_default" else frame[c].astype(bool)
    alerts = fire(frame, pol, pd.Timestamp("2024-07-01"))
    assert set(alerts.loc[alerts["firm_id"] == "open", "signal"]) == {"payroll_missed"}
    assert not alerts["firm_id"].isin(["healthy", "cured", "fresh"]).any()
    fix = repaired(frame, pol)
    assert fix["cured"] and not fix["open"] and not fix["fresh"] and not fix["healthy"]


def test_a_repaired_firm_gets_a_coherent_pd_score_and_grade_and_says_so():
    """信用修复: the repaired firm takes the batch's PD and the score and grade that PD has
    on the scale (not a restored grade label beside a red-band PD); pd_up and the PD bands
    read the repaired PD; portfolio.csv's reasons say 'repaired' first."""
    from scf_engine.credit.scale import ScoreScale
    from scf_engine.monitor.judge import apply_repair, portfolio_rows

    pol = policies.load("monitoring")
    scale = ScoreScale.from_policy(policies.load("score_scale"))
    bad = {"grade": "alternate", "pd": 0.25, "pd_at_batch": 0.01, "pd_change": 0.24, "score": float(scale.score(0.25))}
    frame = pd.DataFrame({
        "cured": _firm(payroll_missed_12m=3, payroll_cured_12m=1, obligations_missed_12m=3, **bad),
        "open": _firm(payroll_open_gap=3, payroll_missed_12m=3, obligations_missed_12m=3, obligations_missed_3m=3,
                      obligations_open=1, **bad),
    }).T.infer_objects()
    for c in set(frame.columns) - {"distressed_core", "consent_expires_on", "default_on", "grade", "grade_at_batch"}:
        frame[c] = pd.to_numeric(frame[c]) if c != "in_default" else frame[c].astype(bool)
    frame = frame.assign(core_reasons="model reasons", limit_at_batch=1e6, core_limit=1e6)
    fixed = apply_repair(frame, pol, scale)
    c, o = fixed.loc["cured"], fixed.loc["open"]
    assert c["pd"] == pytest.approx(0.01) and c["score"] == pytest.approx(float(scale.score(0.01)))
    assert c["grade"] == scale.grade([0.01])[0] == "grade_1"
    assert o["pd"] == 0.25 and o["grade"] == "alternate"  # an open delay is not repaired
    T = pd.Timestamp("2024-07-01")
    alerts = fire(fixed, pol, T)
    assert "pd_up" not in set(alerts.loc[alerts["firm_id"] == "cured", "signal"])
    assert "pd_up" in set(alerts.loc[alerts["firm_id"] == "open", "signal"])
    rows = portfolio_rows(fixed, alerts, T, 6.0, pol, scale).set_index("firm_id")
    assert rows.loc["cured", "reasons"].startswith("repaired (信用修复)") and "25.00%" in rows.loc["cured", "reasons"]
    assert rows.loc["cured", "level"] == "green" and rows.loc["open", "level"] == "red"
    assert not rows.loc["open", "reasons"].startswith("repaired")


def test_pd_levels_read_the_master_scale_and_red_needs_ccc_two_months_running():
    from scf_engine.monitor.judge import firm_levels

    pol = policies.load("monitoring")
    ratings = policies.as_data(policies.load("master_scale"))["ratings"]
    b, ccc, cc = ratings["B"], ratings["CCC"], ratings["CC"]
    frame = pd.DataFrame({"pd": [0.02, b, ccc, ccc, cc, b - 1e-4]}, index=["low", "b", "ccc_new", "ccc_held", "cc", "just_under"])
    none = pd.DataFrame(columns=ALERTS_COLUMNS)
    history = pd.DataFrame({"firm_id": ["ccc_new", "ccc_held", "ccc_held"], "as_of": ["2024-02-01", "2024-02-01", "2024-03-01"],
                            "pd": [ccc, ccc * 0.5, ccc * 1.2]})
    lv = firm_levels(frame, none, pol, ratings, history)
    assert lv.to_dict() == {"low": "green", "b": "amber", "ccc_new": "amber", "ccc_held": "red", "cc": "red",
                            "just_under": "green"}
    # without a month before (the first as-of), CCC alone is not red yet
    assert firm_levels(frame, none, pol, ratings, None)["ccc_held"] == "amber"
    bad = policies.as_data(pol)
    bad = {**bad, "pd_levels": {**bad["pd_levels"], "amber_rating": "Z"}}
    with pytest.raises(PolicyError, match="not on the master scale"):
        firm_levels(frame, none, bad, ratings)


def test_watch_list_is_the_worst_share_of_the_live_portfolio_whatever_the_calibration():
    """关注名单: the worst tenth of the live lent firms by PD is amber even when every PD
    sits under the amber band (a model whose PDs run low), is said in the reasons, leaves
    out firms already in default, and is off for a portfolio under min_firms."""
    from scf_engine.monitor.judge import firm_levels, portfolio_rows, watch_list

    pol = policies.load("monitoring")
    ratings = policies.as_data(policies.load("master_scale"))["ratings"]
    w = policies.as_data(pol)["watch_list"]
    n = 200
    ids = [f"f{i:03d}" for i in range(n)]
    pd_ = np.linspace(0.001, 0.02, n)  # all under B (5%): no band makes anyone amber
    frame = pd.DataFrame({"pd": pd_, "in_default": False}, index=ids)
    frame.loc["f199", "in_default"] = True  # the worst PD has defaulted: not on the list, not counted
    watched = watch_list(frame, pol)
    live = n - 1
    expect = set(ids[-1 - int(np.ceil(w["share"] * live)):-1])
    assert set(watched[watched].index) == expect and "f199" not in expect
    none = pd.DataFrame(columns=ALERTS_COLUMNS)
    lv = firm_levels(frame, none, pol, ratings)
    assert set(lv[lv == "amber"].index) == expect
    # a tie at the cut puts every tied firm on the list
    tied = frame.assign(pd=np.r_[np.full(n - 30, 0.01), np.full(30, 0.015)], in_default=False)
    assert watch_list(tied, pol).sum() == 30
    # under min_firms live firms, no list
    small = frame.iloc[: w["min_firms"] - 1].assign(in_default=False)
    assert not watch_list(small, pol).any()
    # the reasons say why a green-band firm is amber
    rows = portfolio_rows(_frame(**{f: {} for f in ids}).assign(pd=pd_, in_default=False), none,
                          pd.Timestamp("2024-06-01"), 6.0, pol).set_index("firm_id")
    assert rows.loc["f199", "level"] == "amber" and rows.loc["f199", "reasons"].startswith("watch list (关注名单): PD 2.00%")
    assert rows.loc["f000", "level"] == "green" and "watch list" not in rows.loc["f000", "reasons"]


def _frame(**firms) -> pd.DataFrame:
    """Rows as the rules read them, typed as the pass types them."""
    frame = pd.DataFrame({k: _firm(**v) for k, v in firms.items()}).T.infer_objects()
    for c in set(frame.columns) - {"distressed_core", "consent_expires_on", "default_on", "grade", "grade_at_batch",
                                   "fin_evidence"}:
        frame[c] = pd.to_numeric(frame[c]) if c != "in_default" else frame[c].astype(bool)
    return frame.assign(core_reasons="", limit_at_batch=1e6, core_limit=1e6, score=600.0)


def test_statutory_misses_escalate_to_red_only_with_a_high_pd_or_together():
    """The escalations of monitoring.yaml: one statutory payment missed is amber; the same
    miss at a PD of B- or worse, or two misses at once, is red, as an alert of its own
    that names what combined; a high PD with no miss, a signal outside the list, or a
    miss at a low PD stays as it was."""
    from scf_engine.monitor.judge import portfolio_rows

    pol = policies.load("monitoring")
    tax = {"tax_open_gap": 2, "obligations_open": 1, "obligations_missed_3m": 2}
    frame = _frame(
        healthy={},
        tax_low_pd={**tax, "pd": 0.03},
        tax_high_pd={**tax, "pd": 0.10, "pd_at_batch": 0.09, "pd_change": 0.01},
        tax_and_payroll={**tax, "payroll_open_gap": 3, "pd": 0.03},
        high_pd_only={"pd": 0.10, "pd_at_batch": 0.09, "pd_change": 0.01},
        trade_falling={"trade_in_yoy_3m": -0.6, "trade_in_3m": 1.2e6, "pd": 0.02},
    )
    T = pd.Timestamp("2024-07-01")
    alerts = fire(frame, pol, T)
    by = alerts.groupby("firm_id")["signal"].agg(set)
    assert by["tax_low_pd"] == {"tax_missed"}
    assert by["tax_high_pd"] == {"tax_missed", "statutory_missed_at_high_pd"}
    assert by["tax_and_payroll"] == {"tax_missed", "payroll_missed", "statutory_missed_together"}
    assert by["trade_falling"] == {"trade_inflow_falling"} and "high_pd_only" not in by and "healthy" not in by
    esc = alerts[alerts["signal"].str.startswith("statutory_")].set_index("firm_id")
    assert (esc["level"] == "red").all()
    assert "tax_missed" in esc.loc["tax_high_pd", "evidence"] and "10.00%" in esc.loc["tax_high_pd", "evidence"]
    assert esc.loc["tax_and_payroll", "evidence"].startswith("payroll_missed + tax_missed")
    level = portfolio_rows(frame, alerts, T, 6.0, pol).set_index("firm_id")["level"]
    assert level.to_dict() == {"healthy": "green", "tax_low_pd": "amber", "tax_high_pd": "red",
                               "tax_and_payroll": "red", "high_pd_only": "amber", "trade_falling": "amber"}
    # an escalation may only combine signals of the same file
    data = policies.as_data(pol)
    bad = {**data, "escalations": [{**data["escalations"][0], "signals": ["tax_missed", "no_such_signal"]}]}
    with pytest.raises(PolicyError, match="signal names of this file"):
        policies.validate("monitoring", bad)


def test_a_silent_account_is_red_and_earns_neither_a_raise_nor_a_repair():
    """A firm whose own account stopped reporting shows no missed payment (misses count
    reported months only), so every payment signal stays quiet: account_silent fires from
    two silent months on (red: a freeze), not at one, not for a firm in default; a silent
    firm is not clean for a raise and not cured for credit repair."""
    from scf_engine.monitor.judge import portfolio_rows

    pol = policies.load("monitoring")
    cured = {"payroll_missed_12m": 3, "payroll_cured_12m": 1, "obligations_missed_12m": 3, "grade": "alternate"}
    frame = _frame(healthy={}, quiet_month={"months_since_reported": 1}, silent={"months_since_reported": 3},
                   silent_defaulted={"months_since_reported": 5, "in_default": True, "default_on": "2024-05-01"},
                   cured=cured, cured_then_silent={**cured, "months_since_reported": 2}).assign(core_limit=2e6)
    T = pd.Timestamp("2024-07-01")
    alerts = fire(frame, pol, T)
    silent = alerts[alerts["signal"] == "account_silent"].set_index("firm_id")
    assert set(silent.index) == {"silent", "cured_then_silent"} and (silent["level"] == "red").all()
    assert "in the 3 months before 2024-07-01" in silent.loc["silent", "evidence"]
    rows = portfolio_rows(frame, alerts, T, 12.0, pol).set_index("firm_id")
    assert rows.loc["silent", "level"] == "red" and rows.loc["silent", "action"] == "freeze"
    assert rows.loc["healthy", "action"] == "raise" and rows.loc["quiet_month", "action"] == "keep"
    fix = repaired(frame, pol)
    assert fix["cured"] and not fix["cured_then_silent"]


def test_a_firm_gone_silent_is_reviewed_at_scoring_and_red_after_lending(lent, tmp_path):
    """The whole path on the scenario world: one lent firm's own account stops reporting
    three months before an as-of (every flow with an outside party dropped; its trade with
    platform firms stays). Its missed-payment counts do not rise, yet scoring sends it to
    review with the reason and the monitor freezes it with account_silent; no other
    firm's decision or signal moves."""
    from scf_engine.features import flow_features
    from scf_engine.ingest import load_dataset

    T = pd.Timestamp("2025-01-01")
    limits = pd.read_csv(lent["limits"], dtype={"firm_id": str})
    feats0 = flow_features(load_dataset(lent["data"]).as_of(T))
    lent_ids = limits.loc[limits["limit_cny"] > 0, "firm_id"]
    fid = next(f for f in lent_ids if feats0.loc[f, "months_since_reported"] == 0 and feats0.loc[f, "payroll_missed_12m"] == 0)
    data = tmp_path / "data"
    shutil.copytree(lent["data"], data)
    flows = pd.read_csv(data / "flows.csv", dtype=str)  # the scenario world is written as CSV
    booked = pd.to_datetime(flows["booked_on"])
    own = ((flows["payer_id"] == fid) & flows["payee_id"].str.startswith("EXT-")) | (
        (flows["payee_id"] == fid) & flows["payer_id"].str.startswith("EXT-"))
    cut = own & (booked >= T - pd.DateOffset(months=3))
    assert cut.sum() > 0 and (~own & (flows["payer_id"].eq(fid) | flows["payee_id"].eq(fid)) & (booked >= T - pd.DateOffset(months=3))).any()
    flows[~cut].to_csv(data / "flows.csv", index=False)
    feats = flow_features(load_dataset(data).as_of(T))
    assert feats.loc[fid, "months_since_reported"] == 3 and feats.loc[fid, "payroll_missed_12m"] == 0
    batch = tmp_path / "batch.csv"
    pd.DataFrame({"firm_id": lent_ids}).to_csv(batch, index=False)
    out = {}
    for name, folder in (("before", lent["data"]), ("after", data)):
        r = invoke("score", folder, "--batch", batch, "--consents", lent["data"] / "consents.csv", "--as-of", str(T.date()),
                   "--out", tmp_path / name / "limits.csv", "--no-memos", "--tracking-uri", lent["uri"],
                   "--audit-log", tmp_path / "audit.jsonl")
        assert r.exit_code == 0, r.output
        out[name] = pd.read_csv(tmp_path / name / "limits.csv", dtype={"firm_id": str}).set_index("firm_id")
    after, before = out["after"], out["before"]
    assert after.loc[fid, "decision"] == "review" and "reported no flows for the last 3 months" in after.loc[fid, "decision_reasons"]
    others = after.index != fid
    assert (after.loc[others, "decision"] == before.loc[others, "decision"]).all()
    r = invoke("monitor", data, "--portfolio", lent["limits"], "--as-of", str(T.date()), "--out", tmp_path / "mon",
               "--consents", lent["data"] / "consents.csv", "--tracking-uri", lent["uri"], "--audit-log", tmp_path / "audit.jsonl")
    assert r.exit_code == 0, r.output
    alerts = pd.read_csv(tmp_path / "mon" / "alerts.csv", dtype={"firm_id": str})
    assert set(alerts.loc[alerts["signal"] == "account_silent", "firm_id"]) == {fid}
    row = pd.read_csv(tmp_path / "mon" / "portfolio.csv", dtype={"firm_id": str}).set_index("firm_id").loc[fid]
    assert row["level"] == "red" and row["action"] == "freeze"


def test_new_authenticity_alerts_ask_for_review_not_a_freeze():
    """authenticity.yaml's high severity means 'send to review' at the batch: after lending
    a newly firing ring gives at most the policy's authenticity_max_level (amber)."""
    from scf_engine.monitor.signals import new_authenticity

    pol = policies.load("monitoring")
    assert policies.as_data(pol)["authenticity_max_level"] == "amber"
    auth = policies.as_data(policies.load("authenticity"))["alerts"]
    high = next(a for a in auth if a["severity"] == "high")
    now = pd.DataFrame({c: [0.0, 0.0] for c in ("round_trip_share_12m", "cycle_share_12m", "cycle_parties_12m",
                                                "cycle_return_share_12m", "cycle_rings_12m", "cycle_min_parties_12m",
                                                "cycle_return_days_12m", "pass_through_share_12m", "scatter_gather_12m",
                                                "fan_in_burst_12m", "fan_out_burst_12m")}, index=["a", "b"])
    now.index.name = "firm_id"
    for col in now.columns:  # make every rule hold for firm a: large values everywhere
        now.loc["a", col] = 1e6 if "days" not in col else 1.0
    new = new_authenticity(now, set(), pol, pd.Timestamp("2024-07-01"))
    assert len(new) and set(new["firm_id"]) == {"a"}
    assert f"authenticity:{high['name']}" in set(new["signal"])  # the high one fired...
    assert (new["level"] != "red").all()  # ...and asks for review (amber), not a freeze


def test_signals_in_one_query_fire_as_one_query_each():
    """fire evaluates every signal in one DuckDB query: the same hits, in the policy's order,
    as each rule on its own (holds); a broken rule is still named in a one-line error."""
    from scf_engine.monitor.signals import fill, holds, holds_all

    pol = policies.as_data(policies.load("monitoring"))
    rng = np.random.default_rng(3)
    frame = pd.DataFrame([_firm(payroll_open_gap=int(rng.integers(0, 4)), tax_open_gap=int(rng.integers(0, 4)),
                                pd=float(rng.uniform(0, 0.3)), pd_change=float(rng.uniform(-0.05, 0.1)),
                                core_distress=float(rng.uniform(0, 0.1)), consent_days_left=float(rng.integers(-5, 60)),
                                top_payer_share_12m=float(rng.uniform(0, 1)))
                          for _ in range(200)], index=[f"f{i:03d}" for i in range(200)])
    rules = {s["name"]: fill(s["rule"], pol) for s in pol["signals"]}
    together = holds_all(frame, rules)
    for name, rule in rules.items():
        assert (together[name] == holds(frame, rule, name)).all(), name
    assert together.to_numpy().any() and not together.to_numpy().all()
    with pytest.raises(PolicyError, match="no_such_column"):
        holds_all(frame, {**rules, "broken": "no_such_column > 1"})


def test_a_cured_delay_weighs_less_than_an_open_one_in_the_model(lent):
    """The champion de-coupled model: the same firms with three payroll months missed,
    once still open, once caught up; the open delay gives the higher PD on average."""
    from scf_engine.assemble import assemble
    from scf_engine.ingest import load_dataset
    from scf_engine.learners.predict import predict_all

    store = tracking.Store(lent["uri"])
    model, _ = store.load_model("decoupled")
    ds = load_dataset(lent["data"])
    T = pd.Timestamp(AS_OF[-1])
    table = assemble(ds, [T], with_labels=False)[T].table
    rows = table[table["history_months"] >= 12].head(80)
    common = {"payroll_missed_12m": 3, "obligations_missed_12m": rows["obligations_missed_12m"] + 3}
    # open: the missed months are the latest three (no payroll in them, none clean since);
    # cured: they were paid back since, in full (the 12-month total as before, a clean
    # streak of 3 months)
    months = np.minimum(12, rows["history_months"])
    open_12m = rows["payroll_12m"] * (months - 3).clip(lower=0) / months
    open_ = rows.assign(**common, payroll_open_gap=3, payroll_cured_12m=0, obligations_open=1,
                        obligations_missed_3m=rows["obligations_missed_3m"] + 3, obligations_clean_months=0,
                        payroll_3m=0.0, payroll_12m=open_12m, payroll_trend_3v12=np.log(1 / (open_12m / months + 1)))
    cured = rows.assign(**common, payroll_open_gap=0, payroll_cured_12m=1, obligations_open=0,
                        obligations_clean_months=3)
    p_open = predict_all({"decoupled": model}, open_)["pd_decoupled"]
    p_cured = predict_all({"decoupled": model}, cured)["pd_decoupled"]
    assert (p_open >= p_cured - 1e-9).mean() >= 0.9
    assert p_open.mean() > p_cured.mean()


def test_psi_keeps_empty_bins_smoothed_and_sees_a_shift():
    from scf_engine.monitor.drift import psi, reference

    rng = np.random.default_rng(0)
    train = pd.DataFrame({"x": rng.normal(0, 1, 5000)})
    ref = reference(train, ["x"], 10)
    same = psi(ref["x"], pd.Series(rng.normal(0, 1, 5000)), 1e-4)
    # every row above the training maximum: all inner bins but the last empty
    moved = psi(ref["x"], pd.Series(rng.normal(10, 0.1, 500)), 1e-4)
    assert 0 <= same < 0.02 and np.isfinite(moved) and moved > 1.0
    # missing values are a bin of their own, not dropped
    assert psi(ref["x"], pd.Series([np.nan] * 100), 1e-4) > 1.0


def test_drift_compares_the_portfolio_with_itself_at_the_batch_not_with_training():
    """Lent firms are a selection (the better half here): against the training population
    their PSI is red by selection alone; against the same firms at the batch it is not,
    and a real move since the batch still shows."""
    from scf_engine.monitor.drift import drift_rows, psi, reference

    pol = policies.as_data(policies.load("monitoring"))
    rng = np.random.default_rng(1)
    train = pd.DataFrame({"score": rng.normal(70, 10, 20000)})
    ref = reference(train, ["score"], 10)
    lent = np.sort(rng.normal(70, 10, 4000))[2000:]  # selected: the top half
    now = lent + rng.normal(0, 0.5, len(lent))  # the same firms a month on, nothing moved
    frame = pd.DataFrame({"score": now, "b_score": lent})
    assert psi(ref["score"], frame["score"], 1e-4) > pol["drift"]["psi_red"]  # selection read as drift
    row = drift_rows(ref, frame, pd.Timestamp("2024-02-01"), pol).iloc[0]
    assert row["value"] < pol["drift"]["psi_amber"] and row["level"] == "green" and "batch" in row["baseline"]
    moved = drift_rows(ref, frame.assign(score=now - 12), pd.Timestamp("2024-02-01"), pol).iloc[0]
    assert moved["value"] > pol["drift"]["psi_red"]


def test_expected_against_observed_default_rate_by_vintage():
    from scf_engine.monitor.drift import vintage_rows

    pol = policies.as_data(policies.load("monitoring"))
    lent = pd.DataFrame({"firm_id": [f"f{i}" for i in range(10)], "pd": [0.12] * 10,
                         "batch_as_of": pd.Timestamp("2024-01-01")})
    d_on = pd.Series(pd.to_datetime(["2024-03-10", "2024-05-01", "2023-12-01"] + [None] * 7),
                     index=lent["firm_id"])
    six = vintage_rows(lent, d_on, pd.Timestamp("2024-07-01"), pol).set_index("kind")
    months = (pd.Timestamp("2024-07-01") - pd.Timestamp("2024-01-01")).days / 30.4375
    assert six.loc["expected_default_rate", "value"] == pytest.approx(1 - 0.88 ** (months / 12), abs=1e-6)
    assert six.loc["observed_default_rate", "value"] == pytest.approx(0.2)  # the one before the batch does not count
    assert six.loc["observed_default_rate", "level"] == "red"  # 0.2 against 0.062: 3.2x, above vintage_red
    assert (six["variable"] == "2024-01-01").all()
    late = vintage_rows(lent, d_on, pd.Timestamp("2025-06-01"), pol).set_index("kind")
    assert late.loc["expected_default_rate", "value"] == pytest.approx(0.12)  # matured: the 12-month PD itself


def test_drift_against_the_training_reference_month_by_month(lent, monitored):
    drift = pd.read_csv(monitored / "drift.csv")
    score = drift[drift["kind"] == "psi"]
    assert list(score["as_of"]) == AS_OF and (score["variable"] == "score").all()
    assert drift["value"].notna().all() and (drift["value"] >= 0).all()
    assert (score["baseline"] == "portfolio at the batch").all()
    vintage = drift[drift["kind"] == "observed_default_rate"]
    assert list(vintage["as_of"]) == AS_OF and (vintage["variable"] == BATCH).all()
    expected = drift[drift["kind"] == "expected_default_rate"]["value"].to_numpy()
    assert (np.diff(expected) > 0).all()  # the expected rate grows as the vintage matures
    assert drift.loc[drift["kind"] == "csi", "variable"].nunique() > 10
    client = tracking.Store(lent["uri"]).client
    exp = client.get_experiment_by_name("scf-monitor")
    runs = client.search_runs([exp.experiment_id], filter_string=f"metrics.n_as_of = {len(AS_OF)}")
    hist = client.get_metric_history(runs[0].info.run_id, "psi_score")
    assert len(hist) == len(AS_OF)


def test_the_report_opens_in_headless_chromium(lent, monitored, tmp_path):
    import re
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    page = (monitored / "report.html").as_uri()
    shot = tmp_path / "report.png"
    r = subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,1600", page],
                       capture_output=True, text=True, timeout=120)
    assert shot.is_file(), r.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"))
    assert img.std() > 5  # not a blank page
    dom = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    assert "评级迁移 Grade migration" in text and "Score PSI over time" in text and "预警 Alerts by level" in text
    port = pd.read_csv(monitored / "portfolio.csv", dtype={"firm_id": str})
    alerts = pd.read_csv(monitored / "alerts.csv", dtype={"firm_id": str})
    assert alerts["label_zh"].iloc[0] in text and "<polyline" in dom.stdout
    worst = port[port["as_of"] == AS_OF[-1]].sort_values("pd", ascending=False)
    red = worst[worst["level"] == "red"]
    assert (red["firm_id"].iloc[0] if len(red) else worst["firm_id"].iloc[0]) in text


def test_alerts_fire_on_the_firms_that_go_bad_and_stay_quiet_on_the_rest(lent, monitored):
    """The simulator's truth says which lent firms started to deteriorate after the batch:
    a year on, most of them are amber or red, at least twice the share of the rest."""
    port = pd.read_csv(monitored / "portfolio.csv", dtype={"firm_id": str})
    truth = pd.read_csv(lent["data"] / "truth_firms.csv", dtype={"firm_id": str}).set_index("firm_id")
    last = port[port["as_of"] == AS_OF[-1]].assign(bad=lambda d: d["firm_id"].map(truth["deteriorates"]).astype(bool))
    flagged = last["level"].isin(["amber", "red"])
    assert last["bad"].sum() >= 10  # enough of them were lent to for the comparison to mean something
    bad_share, rest_share = flagged[last["bad"]].mean(), flagged[~last["bad"]].mean()
    assert bad_share >= 0.5 and bad_share >= 2 * rest_share, (bad_share, rest_share)
    # before the deterioration could show (3 months in), the two groups look alike
    first = port[port["as_of"] == AS_OF[0]].assign(bad=lambda d: d["firm_id"].map(truth["deteriorates"]).astype(bool))
    assert first.loc[first["bad"], "level"].isin(["amber", "red"]).mean() < bad_share


def test_escalations_on_the_scenario_world_fire_where_the_rule_holds_and_nowhere_else(lent, monitored):
    """On the small world of the after-lending scenario: each statutory escalation fired
    exactly at the (firm, as-of) pairs where its rule holds over the other alerts of
    that pass (enough signals of its list, the PD at or worse than its rating), its firm
    is red there, and a firm with one statutory miss at a lower PD was not escalated."""
    port = pd.read_csv(monitored / "portfolio.csv", dtype={"firm_id": str}).set_index(["firm_id", "as_of"])
    alerts = pd.read_csv(monitored / "alerts.csv", dtype={"firm_id": str})
    pol = policies.as_data(policies.load("monitoring"))
    ratings = policies.as_data(policies.load("master_scale"))["ratings"]
    fired = alerts.groupby(["firm_id", "as_of"])["signal"].agg(set)
    quiet = 0
    for e in pol["escalations"]:
        n = fired.map(lambda s: len(s & set(e["signals"])))
        # no rating: any PD, even none (a firm the core could not score)
        high = port["pd"].reindex(n.index) >= ratings[e["pd_rating"]] if e["pd_rating"] else n >= 0
        should = set(n.index[(n >= e["min_signals"]) & high])
        did = set(zip(*alerts.loc[alerts["signal"] == e["name"], ["firm_id", "as_of"]].T.to_numpy()))
        assert did == should, e["name"]
        assert (port.loc[sorted(did), "level"] == "red").all()
        quiet += int(((n >= e["min_signals"]) & ~high).sum())
    assert alerts["signal"].str.startswith("statutory_missed").sum() > 0  # the world has firms that go bad
    assert quiet > 0  # ...and firms with a miss at a PD below the escalation's rating, left amber


def test_the_scenario_leaves_existing_worlds_as_they_were(tmp_path):
    """The scenario draws from its own stream: a world without it is byte for byte the
    world the simulator made before the scenario existed (same files, same truth)."""
    import filecmp

    cfg = WorldConfig(n_firms=120, seed=4, n_months=24)
    a = write_dataset(simulate(cfg), tmp_path / "a")
    b = write_dataset(simulate(WorldConfig(n_firms=120, seed=4, n_months=24, deteriorating_share=0.0)), tmp_path / "b")
    assert all(filecmp.cmp(a / f.name, b / f.name, shallow=False) for f in a.iterdir())
    assert "deteriorating_share" not in (a / "world.json").read_text()
    c = write_dataset(simulate(WorldConfig(n_firms=120, seed=4, n_months=24, deteriorating_share=0.2)), tmp_path / "c")
    assert filecmp.cmp(a / "firms.csv", c / "firms.csv", shallow=False)  # who exists is the same
    assert not filecmp.cmp(a / "flows.csv", c / "flows.csv", shallow=False)  # what happens to them is not


@pytest.mark.filterwarnings("error::pandas.errors.PerformanceWarning")
def test_the_shared_pass_answers_as_one_snapshot_per_date_does(lent, tmp_path):
    """compute builds the flows' legs once for the batch date and every as-of (FlowPass);
    the portfolio, the alerts and the drift rows are the same, value for value, as when
    each date is built on its own from its snapshot's flows, as scf score builds one. Two
    as-of dates on different days of the month (the month index of a flow depends on it).
    Neither way warns that a frame is "highly fragmented" (pandas' PerformanceWarning,
    an error here): a snapshot's table of hundreds of blocks made every later reindex
    and join of the judging slow, at every as-of."""
    from scf_engine.ingest.load import load_or_report
    from scf_engine.ingest.requests import read_consents
    from scf_engine.pipelines.compare import load_models
    from scf_engine.pipelines.monitor import compute, drift_reference, read_portfolio, split_known
    from scf_engine.pipelines.score import saved_scale

    pols = policies.load_all()
    store = tracking.Store(lent["uri"])
    ds = load_or_report(lent["data"], tmp_path / "q.csv")
    book, _ = split_known(read_portfolio(lent["limits"]), ds)
    models, versions = load_models(store, "champion")
    scale, ref = saved_scale(store, versions, pols["score_scale"]), drift_reference(store, versions)
    cons = read_consents(lent["data"] / "consents.csv")
    dates = [pd.Timestamp("2024-03-01"), pd.Timestamp("2024-06-17")]
    args = (ds, book, dates, book["batch_as_of"].max(), models, pols, cons, scale, lambda *a, **k: None, ref)
    fast, slow = compute(*args), compute(*args, shared=False)
    assert len(fast[0]) == len(book) * 2 and len(fast[1]) > 0
    for got, want in zip(fast, slow):
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_the_pass_holds_each_dates_rows_packed_and_gives_them_back_as_they_were(lent, tmp_path, monkeypatch):
    """compute holds each as-of's portfolio rows compressed until the pass ends (packed):
    each comes back with the same values, dtypes and index, and the portfolio is the
    rows of every date as judged, in order."""
    from scf_engine.pipelines import monitor as mon

    given, pack = [], mon.packed

    def keep(rows):
        given.append(rows.copy())
        return pack(rows)

    monkeypatch.setattr(mon, "packed", keep)
    args = _pass_inputs(lent, tmp_path, "changed")
    portfolio = mon.compute(*args)[0]
    assert len(given) == len(args[2]) and all(len(g) > 0 for g in given)
    assert list(portfolio["as_of"].unique()) == [str(t.date()) for t in args[2]]
    for rows in given:
        pd.testing.assert_frame_equal(mon.unpacked(pack(rows)), rows, check_exact=True)
    pd.testing.assert_frame_equal(portfolio, pd.concat(given, ignore_index=True), check_exact=True)


def test_a_frame_of_the_columns_the_rules_read_answers_as_every_column_does(lent, tmp_path):
    """compute builds each as-of's monitor frame of the feature columns the policy's rules,
    its evidence templates and the drift read (frame_needs), not of every feature now and
    at the batch: the portfolio, the alerts and the drift rows are the same, value for
    value. The policy here adds a signal whose rule spells its columns in capitals (DuckDB
    matches names whatever their case) and quotes a batch column in its evidence only, so
    a name the narrowing missed would change the alerts or fail the rule."""
    from scf_engine.ingest.load import load_or_report
    from scf_engine.ingest.requests import read_consents
    from scf_engine.pipelines.compare import load_models
    from scf_engine.pipelines.monitor import compute, drift_reference, frame_needs, read_portfolio, split_known
    from scf_engine.pipelines.score import saved_scale

    pols = policies.load_all()
    p = policies.as_data(pols["monitoring"])
    extra = {"name": "purchases_down_spelled_upper", "label_zh": "采购支出下降", "label_en": "Trade outflow down",
             "severity": "low", "rule": "TRADE_OUT_3M < 0.8 * B_Trade_Out_3m",
             "evidence": "CNY {trade_out_3m:,.0f} paid in 3 months (batch {b_trade_out_3m:,.0f}; tax {b_tax_3m:,.0f})"}
    pols["monitoring"] = {**p, "signals": [*p["signals"], extra]}
    policies.validate("monitoring", pols["monitoring"])
    store = tracking.Store(lent["uri"])
    ds = load_or_report(lent["data"], tmp_path / "q.csv")
    book, _ = split_known(read_portfolio(lent["limits"]), ds)
    models, versions = load_models(store, "champion")
    scale, ref = saved_scale(store, versions, pols["score_scale"]), drift_reference(store, versions)
    needs = frame_needs(pols["monitoring"], ref)
    assert {"trade_out_3m", "b_trade_out_3m", "b_tax_3m", "pd_change"} <= needs
    assert ref and all(v.lower() in needs and f"b_{v}".lower() in needs for v in ref)
    cons = read_consents(lent["data"] / "consents.csv")
    dates = [pd.Timestamp("2024-03-01"), pd.Timestamp("2024-06-17")]
    args = (ds, book, dates, book["batch_as_of"].max(), models, pols, cons, scale, lambda *a, **k: None, ref)
    narrow, every = compute(*args), compute(*args, narrow=False)
    assert narrow[1]["signal"].eq("purchases_down_spelled_upper").any()
    for got, want in zip(narrow, every):
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_the_columns_a_policy_reads_are_every_name_its_rules_and_templates_use():
    """policy_columns: the names of monitoring.yaml's rules (with the policy's numbers put
    in: credit repair's obligations_missed_{months}m) and templates, lower-cased; None,
    every column kept, when a rule reads columns it does not name or does not parse."""
    from scf_engine.monitor.signals import policy_columns, rule_columns

    p = policies.as_data(policies.load("monitoring"))
    named = policy_columns(p)
    assert {"obligations_missed_3m", "b_top_payer_share_12m", "consent_expires_on", "pd_change"} <= named
    assert not any("{" in n for n in named)
    assert rule_columns("Payroll_Open_Gap >= 2 AND coalesce(b_x, 0) = 0") == {"payroll_open_gap", "b_x"}
    for blind in ("COLUMNS('tax_.*') > 0", "*", "payroll_open_gap >="):
        assert rule_columns(blind) is None, blind
        bad = {**p, "signals": [*p["signals"], {**p["signals"][0], "name": "blind", "rule": blind}]}
        assert policy_columns(bad) is None
    unparsed = {**p, "signals": [*p["signals"], {**p["signals"][0], "name": "odd", "evidence": "unbalanced {pd"}]}
    assert policy_columns(unparsed) is None


def test_the_pass_on_the_flows_it_keeps_answers_as_on_every_flow(lent, tmp_path):
    """scf monitor keeps only the flows booked before its last as-of, without txn_id and
    with purpose as a category, in a compact copy (lean_flows), and once the pass's legs are
    built only the trade flows with a firm on one side (chain_flows, own_flows=True): the
    portfolio, the alerts and the drift rows are the same, value for value, as one
    snapshot per date built from the dataset as loaded."""
    from scf_engine.ingest.load import load_or_report
    from scf_engine.ingest.requests import read_consents
    from scf_engine.pipelines.compare import load_models
    from scf_engine.pipelines.monitor import compute, drift_reference, lean_flows, read_portfolio, split_known
    from scf_engine.pipelines.score import saved_scale

    pols = policies.load_all()
    store = tracking.Store(lent["uri"])
    whole, lean = (load_or_report(lent["data"], tmp_path / "q.csv") for _ in range(2))
    dates = [pd.Timestamp("2024-03-01"), pd.Timestamp("2024-06-17")]
    lean_flows(lean, dates[-1])
    assert lean.flows["booked_on"].max() < dates[-1] <= whole.flows["booked_on"].max()
    assert "txn_id" not in lean.flows and lean.flows["purpose"].dtype == "category"
    book, _ = split_known(read_portfolio(lent["limits"]), whole)
    models, versions = load_models(store, "champion")
    scale, ref = saved_scale(store, versions, pols["score_scale"]), drift_reference(store, versions)
    cons = read_consents(lent["data"] / "consents.csv")
    rest = (book, dates, book["batch_as_of"].max(), models, pols, cons, scale, lambda *a, **k: None, ref)
    before = len(lean.flows)
    kept, every = compute(lean, *rest, own_flows=True), compute(whole, *rest, shared=False)
    assert not lean.has_financings  # else the closed-loop checks read every flow and none is cut
    firms = set(lean.firms["firm_id"])
    assert (lean.flows["purpose"] == "trade").all()
    assert (lean.flows["payer_id"].isin(firms) | lean.flows["payee_id"].isin(firms)).all()
    assert 0 < len(lean.flows) < before
    for got, want in zip(kept, every):
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_an_alerts_evidence_reads_the_same_from_the_columns_its_template_names():
    """_signal_rows hands each template only the columns it names (nested format fields
    too): for every signal of monitoring.yaml, and for templates naming a missing column
    or not parseable, the text is what the whole row gives."""
    from scf_engine.monitor.signals import _template_columns, evidence

    p = policies.as_data(policies.load("monitoring"))
    templates = [s["evidence"] for s in p["signals"]] + [
        "PD {pd:.{digits}f} vs {pd_at_batch:.2%}", "{not_a_column} at {pd:.2%}", "unbalanced {pd", "{pd!r} {grade}"]
    rng = np.random.default_rng(3)
    row = {c: float(rng.normal()) for c in ("pd", "pd_at_batch", "pd_change", "score", "limit_at_batch", "junk_a")}
    row.update({"digits": 3, "grade": "grade_1", "junk_b": "x"})
    for t in templates + ["{{literal}} {pd:.1%}"]:
        narrowed = {c: row[c] for c in _template_columns(t, list(row))}
        assert evidence(t, {**narrowed, "as_of": "2024-05-01"}) == evidence(t, {**row, "as_of": "2024-05-01"}), t
    assert _template_columns("{pd:.{digits}f} {junk_a.real}", list(row)) == ["pd", "junk_a", "digits"]


def _pass_inputs(lent, tmp_path, scope: str):
    from scf_engine.ingest.load import load_or_report
    from scf_engine.ingest.requests import read_consents
    from scf_engine.pipelines.compare import load_models
    from scf_engine.pipelines.monitor import drift_reference, read_portfolio, split_known
    from scf_engine.pipelines.score import saved_scale

    pols = policies.load_all()
    pols["monitoring"] = {**policies.as_data(pols["monitoring"]), "explain": {"scope": scope}}
    policies.validate("monitoring", pols["monitoring"])
    store = tracking.Store(lent["uri"])
    ds = load_or_report(lent["data"], tmp_path / f"q_{scope}.csv")
    book, _ = split_known(read_portfolio(lent["limits"]), ds)
    models, versions = load_models(store, "champion")
    scale, ref = saved_scale(store, versions, pols["score_scale"]), drift_reference(store, versions)
    cons = read_consents(lent["data"] / "consents.csv")
    return (ds, book, [pd.Timestamp(t) for t in AS_OF], book["batch_as_of"].max(), models, pols, cons, scale,
            lambda *a, **k: None, ref)


def test_explain_scope_changed_keeps_every_answer_and_the_drivers_of_every_changed_row(lent, tmp_path):
    """monitoring.yaml's explain.scope: ``changed`` derives SHAP reasons only for the rows
    a reader acts on (amber/red, action not keep, grade moved from the batch's or the
    previous as-of's, credit repair). PD, score, grade, level, action, limit, alerts and
    drift are those of ``all`` value for value; a changed row's reasons are ``all``'s
    word for word; a green-keep row at an unmoved grade says what the rules saw and
    carries no SHAP driver. ``all`` is the decision core's text for every scored firm:
    the batch's own reasons for the same firm and as-of (scf score's decide)."""
    from scf_engine.credit.decide import decide
    from scf_engine.ingest.requests import requests_frame
    from scf_engine.monitor.judge import needs_drivers
    from scf_engine.pipelines.monitor import compute, snapshot_at

    full = compute(*_pass_inputs(lent, tmp_path, "all"))
    args = _pass_inputs(lent, tmp_path, "changed")
    lean = compute(*args)
    for got, want in zip(lean[1:], full[1:]):  # alerts, drift
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    a, c = full[0], lean[0]
    pd.testing.assert_frame_equal(c.drop(columns="reasons"), a.drop(columns="reasons"), check_exact=True)
    changed = pd.Series(False, index=a.index)
    prev = None
    for day, rows in a.groupby("as_of", sort=True):
        # the repair note is the only note a green row can carry (the watch list is amber)
        repaired_ = rows.set_index("firm_id")["reasons"].str.startswith("repaired")
        need = needs_drivers(rows, repaired_.map({True: "x", False: ""}), prev)
        changed[rows.index] = need
        prev = rows
    green_keep = ~changed
    assert changed.any() and green_keep.sum() > len(a) / 4, "the scenario world must have both kinds of rows"
    assert (c.loc[changed, "reasons"] == a.loc[changed, "reasons"]).all()
    scored = a["pd"].notna()
    quiet = green_keep & scored
    assert quiet.any()
    assert (c.loc[quiet, "reasons"] != a.loc[quiet, "reasons"]).all()
    assert c.loc[quiet, "reasons"].str.contains("explain.scope: changed").all()
    assert c.loc[quiet, "reasons"].str.contains(r"PD \d+\.\d\d% against \d+\.\d\d% at the batch").all()
    assert not c.loc[quiet, "reasons"].str.contains("industry median").any()  # the SHAP reasons quote medians
    assert a.loc[quiet, "reasons"].str.contains("industry median").any()
    # a quiet row's signals (a low one, green) are still named
    sig = a.loc[quiet, "reasons"].str.startswith("signals: ")
    assert (c.loc[quiet & sig, "reasons"].str.split("; ").str[0] == a.loc[quiet & sig, "reasons"].str.split("; ").str[0]).all()
    # scope all is the decision core's own text, as scf score writes it, for one as-of
    ds, book, dates, batch_T, models, pols, cons, scale = args[:8]
    T = dates[-1]
    now = snapshot_at(ds, T, models)
    dec = decide(now, models, pols, requests_frame(pd.DataFrame({"firm_id": book["firm_id"].to_numpy()})),
                 dataset=ds, consents=cons, scale=scale).limits.set_index("firm_id")
    last = a[(a["as_of"] == str(T.date())) & scored & ~a["reasons"].str.startswith("repaired")]
    assert len(last) and all(r.endswith(dec.at[f, "reasons"]) for f, r in zip(last["firm_id"], last["reasons"]))


def test_precompute_explains_only_the_firms_asked_and_answers_the_same(lent, tmp_path):
    """decide(explain=ids): the same limits row for every firm (PD, score, grade, limit,
    decision), the reasons and SHAP contributions only for ``ids``; scf score and scf serve
    call it without ``explain`` and explain every scored firm."""
    from scf_engine.credit.decide import decide
    from scf_engine.ingest.requests import requests_frame
    from scf_engine.pipelines.monitor import snapshot_at

    ds, book, dates, batch_T, models, pols, cons, scale = _pass_inputs(lent, tmp_path, "all")[:8]
    now = snapshot_at(ds, dates[0], models)
    req = requests_frame(pd.DataFrame({"firm_id": book["firm_id"].to_numpy()}))
    full = decide(now, models, pols, req, dataset=ds, consents=cons, scale=scale)
    lgbm = full.limits[full.limits["pd_source"].isin(["hybrid", "decoupled"])]["firm_id"]
    some = set(lgbm.iloc[::3])
    part = decide(now, models, pols, req, dataset=ds, consents=cons, scale=scale, explain=some)
    keep = [c for c in full.limits.columns if c != "reasons"]
    pd.testing.assert_frame_equal(part.limits[keep], full.limits[keep], check_exact=True)
    asked = full.limits["firm_id"].isin(some)
    assert (part.limits.loc[asked, "reasons"] == full.limits.loc[asked, "reasons"]).all()
    other = full.limits["pd"].notna() & ~asked
    assert other.any() and (part.limits.loc[other, "reasons"] == "").all()
    got = set().union(*[set(part.limits.loc[c.index, "firm_id"]) for c in part.contributions.values()])
    assert got == some
    for kind, c in part.contributions.items():
        pd.testing.assert_frame_equal(c, full.contributions[kind].loc[c.index], check_exact=True)


@pytest.mark.parametrize("bad", [{"scope": "some"}, {"scope": "changed", "top": 3}, "changed"])
def test_the_schema_refuses_an_unknown_explain_scope(bad):
    data = {**policies.as_data(policies.load("monitoring")), "explain": bad}
    with pytest.raises(PolicyError, match="explain"):
        policies.validate("monitoring", data)
    assert policies.as_data(policies.load("monitoring"))["explain"] == {"scope": "changed"}


def test_evidence_shows_missing_values_as_na_without_touching_words_that_contain_nan():
    """An evidence template is filled field by field: a missing value reads 'n/a', and the
    words around it stay as written. "nan" was replaced in the whole text, so every
    financing signal's evidence read "fin/acing(s) ... (fin/acings.csv)"."""
    from scf_engine.monitor.signals import evidence

    t = "{fin_overdue_n:.0f} financing(s) past maturity at {as_of} (financings.csv), {share:.0%} of one; {who}"
    assert evidence(t, {"fin_overdue_n": 2.0, "as_of": "2024-01-01", "share": 0.5, "who": "NANJING nanotech"}) == (
        "2 financing(s) past maturity at 2024-01-01 (financings.csv), 50% of one; NANJING nanotech")
    assert evidence(t, {"fin_overdue_n": float("nan"), "as_of": "2024-01-01", "who": None}) == (
        "n/a financing(s) past maturity at 2024-01-01 (financings.csv), n/a of one; n/a")


def test_chain_flows_keeps_the_trade_with_a_firm_in_order_and_leaves_a_dataset_with_financings_whole():
    """What the pass holds after its legs are built: trade flows with a firm of the dataset
    as payer or payee, in their order; every flow when the closed-loop checks will read
    them (a financings file)."""
    import types

    from scf_engine.pipelines.monitor import chain_flows

    flows = pd.DataFrame({
        "booked_on": pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-06"]),
        "payer_id": pd.Series(["A", "EXT-1", "EXT-2", "A", "B"], dtype="str"),
        "payee_id": pd.Series(["B", "A", "EXT-3", "EXT-4", "EXT-5"], dtype="str"),
        "amount": [1.0, 2.0, 3.0, 4.0, 5.0],
        "purpose": pd.Categorical(["trade", "trade", "trade", "payroll", "trade"])})
    firms = pd.DataFrame({"firm_id": pd.Series(["A", "B"], dtype="str")})
    ds = types.SimpleNamespace(flows=flows.copy(), firms=firms, has_financings=False)
    chain_flows(ds)
    assert ds.flows["amount"].tolist() == [1.0, 2.0, 5.0]  # not EXT->EXT, not payroll
    assert list(ds.flows.columns) == list(flows.columns) and (ds.flows.dtypes == flows.dtypes).all()
    assert ds.flows.index.equals(pd.RangeIndex(3))
    whole = types.SimpleNamespace(flows=flows.copy(), firms=firms, has_financings=True)
    chain_flows(whole)
    pd.testing.assert_frame_equal(whole.flows, flows)


def test_the_pass_metrics_are_of_the_last_as_of_and_ever_red_of_any():
    """The MLflow metrics of a pass (``summary``): counts and limits over the last as-of's
    rows only, whatever order the rows come in; ``ever_red_share`` over every as-of."""
    from scf_engine.pipelines.monitor import summary

    t1, t2 = pd.Timestamp("2024-02-01"), pd.Timestamp("2024-03-01")
    port = pd.DataFrame({
        "firm_id": ["A", "B", "C", "A", "B", "C"], "as_of": [t2, t1, t1, t1, t2, t2],
        "level": ["green", "red", "amber", "red", "amber", "amber"],
        "action": ["raise", "freeze", "reduce", "freeze", "reduce", "keep"],
        "limit_at_batch": [10.0, 20.0, 30.0, 10.0, 20.0, 30.0], "limit_now": [12.0, 0.0, 15.0, 0.0, 10.0, 30.0],
        "reasons": ["x" * 50] * 6})
    alerts = pd.DataFrame({"firm_id": ["B"]})
    s = summary(port, alerts)
    assert s == {"n_firms": 3, "n_as_of": 2, "n_alerts": 1, "limit_at_batch_cny": 60.0, "limit_now_cny": 52.0,
                 "ever_red_share": 2 / 3, "n_red": 0, "n_amber": 2, "n_green": 1,
                 "n_keep": 1, "n_reduce": 1, "n_freeze": 0, "n_raise": 1}
