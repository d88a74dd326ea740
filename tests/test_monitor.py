"""scf monitor: a lent portfolio re-scored after the batch through the same decision core,
the contract's portfolio.csv and alerts.csv, bad input, and credit repair."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from scf_engine import policies, tracking
from scf_engine.cli import app
from scf_engine.contract import GRADES
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
    assert not list(monitored.glob(".scf-staging-*"))


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
           "grade": "grade_1", "grade_at_batch": "grade_1",
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
    open_ = rows.assign(**common, payroll_open_gap=3, payroll_cured_12m=0, obligations_open=1,
                        obligations_missed_3m=rows["obligations_missed_3m"] + 3)
    cured = rows.assign(**common, payroll_open_gap=0, payroll_cured_12m=1, obligations_open=0)
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


def test_drift_against_the_training_reference_month_by_month(lent, monitored):
    drift = pd.read_csv(monitored / "drift.csv")
    score = drift[drift["kind"] == "psi"]
    assert list(score["as_of"]) == AS_OF and (score["variable"] == "score").all()
    assert drift["value"].notna().all() and (drift["value"] >= 0).all()
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
