"""train -> compare -> score, tracked in MLflow: the embedded store, a real server, the
registry, batch scoring with every kind of bad request, and the audit chain."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from scf_engine import tracking
from scf_engine.cli import app
from scf_engine.contract import DECISIONS, GRADES, LIMITS_COLUMNS
from scf_engine.simulate import WorldConfig, simulate, write_dataset
from scf_engine.simulate.faults import write_faulty_copy
from tests.conftest import with_bad_flows

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    return write_dataset(simulate(WorldConfig(n_firms=500, seed=22, n_months=36)), tmp_path_factory.mktemp("w") / "data")


@pytest.fixture(scope="module")
def trained(world_dir, tmp_path_factory):
    """One training, comparison with promotion, and a scored batch, in a fresh store.
    Nothing depends on the working directory: the store's artifacts sit beside its
    database file."""
    home = tmp_path_factory.mktemp("home")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    r = invoke("train", world_dir, "--tracking-uri", uri, "--out", home / "train", "--audit-log", home / "audit.jsonl",
               "--actor", "analyst.li")
    assert r.exit_code == 0, r.output
    r = invoke("compare", "--tracking-uri", uri, "--promote", "all", "--out", home / "compare", "--audit-log",
               home / "audit.jsonl", "--actor", "analyst.li")
    assert r.exit_code == 0, r.output
    r = invoke("score", world_dir, "--batch", world_dir / "batch.csv", "--consents", world_dir / "consents.csv",
               "--out", home / "score" / "limits.csv", "--tracking-uri", uri, "--memo-formats", "html,md",
               "--audit-log", home / "audit.jsonl")
    assert r.exit_code == 0, r.output
    assert (home / "mlartifacts").is_dir()
    return {"home": home, "uri": uri, "data": world_dir}


def fluent(uri):
    """MLflow's module-level API pointed at ``uri`` (for the tests' own queries)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow


def test_training_is_one_parent_run_with_a_child_per_model_and_registered_challengers(trained):
    mlflow = fluent(trained["uri"])
    store = tracking.Store(trained["uri"])

    exp = mlflow.get_experiment_by_name("scf-train")
    runs = mlflow.search_runs([exp.experiment_id])
    parents = runs[runs["tags.scf_role"] == "parent"]
    children = runs[runs["tags.scf_role"] == "model"]
    assert len(parents) == 1 and set(children["tags.model_kind"]) == {"propagation", "decoupled", "hybrid", "jiangyin"}
    assert (children["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]).all()
    p = parents.iloc[0]
    assert json.loads(p["params.dataset_fingerprint"]).keys() >= {"firms.csv", "flows.csv", "receivables.csv"}
    assert json.loads(p["params.policy_hashes"]).keys() >= {"features", "lightgbm", "master_scale", "limit_policy"}
    assert p["metrics.rows_quarantined"] == 0
    for kind in ("propagation", "decoupled", "hybrid"):
        c = children[children["tags.model_kind"] == kind].iloc[0]
        assert 0.5 < c["metrics.auc"] <= 1 and 0 < c["metrics.coverage"] <= 1
        assert store.model_version(kind, "challenger") is not None
        assert store.model_version(kind, "champion") is not None
    arts = {a.path for a in store.client.list_artifacts(children[children["tags.model_kind"] == "hybrid"]["run_id"].iloc[0], "plots")}
    assert {"plots/roc.png", "plots/ks.png", "plots/calibration.png", "plots/lift.png"} <= arts


def test_a_registered_model_gives_exactly_the_same_pds(trained):
    store = tracking.Store(trained["uri"])
    from scf_engine.assemble import add_propagation, assemble, stack
    from scf_engine.ingest import load_dataset

    ds = load_dataset(trained["data"])
    T = ds.snapshot_dates()[-1]
    prop, _ = store.load_model("propagation", "champion")
    hyb, _ = store.load_model("hybrid", "challenger")
    data = assemble(ds, [T])
    add_propagation(data, prop)
    X = stack(data, [T])
    heldout = pd.read_parquet(trained["home"] / "train" / "evaluation" / "heldout_predictions.parquet")
    before = heldout[heldout["as_of"] == T].set_index("firm_id")["pd_hybrid"]
    after = pd.Series(hyb.predict_proba(X)[:, 1], index=X["firm_id"]).reindex(before.index)
    assert np.array_equal(before.to_numpy(), after.to_numpy())


def _logged_models(uri: str) -> dict[str, str]:
    """Model URI per kind: the registered challengers and the training run's rule baseline."""
    fluent(uri).set_registry_uri(uri)  # the tests' own mlflow calls below
    uris = {k: f"models:/{tracking.registered_name(k)}@challenger" for k in tracking.MODEL_KINDS}
    uris["jiangyin"] = tracking.Store(uri).latest_run("train").data.tags["baseline_model_uri"]
    return uris


def test_registered_models_serve_pds_without_the_engine(trained, tmp_path):
    """A registered model is an MLflow pyfunc from code over plain state: a fresh Python
    loads and runs it with MLflow alone (no scf_engine module imported), and its PDs on
    the logged input example are the engine's to the last bit."""
    uris = _logged_models(trained["uri"])
    code = f"""
import json, sys
import mlflow
import numpy as np
mlflow.set_tracking_uri({trained["uri"]!r}); mlflow.set_registry_uri({trained["uri"]!r})
out = {{}}
for kind, uri in {uris!r}.items():
    model = mlflow.pyfunc.load_model(uri)
    out[kind] = np.asarray(model.predict(model.input_example), dtype=float).tolist()
out["engine_modules"] = sorted(m for m in sys.modules if m == "scf_engine" or m.startswith("scf_engine."))
print(json.dumps(out))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    served = json.loads(r.stdout.strip().splitlines()[-1])
    assert served.pop("engine_modules") == []
    import mlflow

    for kind, uri in uris.items():
        store = tracking.Store(trained["uri"])
        model = store.load_model(kind, "challenger")[0] if kind != "jiangyin" else store.load_logged_model(uri)
        example = mlflow.pyfunc.load_model(uri).input_example
        assert len(served[kind]) == len(example) > 0
        assert np.array_equal(np.asarray(served[kind]), model.predict_pd(example)), kind


def test_registered_state_names_no_engine_class(trained, tmp_path, monkeypatch):
    """What a registered version stores: state JSON (and LightGBM's booster text), no
    pickle, no class path; pointing a kind at a moved class still loads every version."""
    import mlflow

    from scf_engine.learners import DecoupledModel, HybridModel, JiangyinGrading
    from scf_engine.learners import state as model_state
    from scf_engine.propagation import CorePropagation

    uris = _logged_models(trained["uri"])
    for kind, uri in uris.items():
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / kind)))
        files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
        assert "artifacts/state.json" in files and not any(f.endswith((".pkl", ".pickle")) for f in files)
        assert ("artifacts/booster.txt" in files) == (kind in ("decoupled", "hybrid"))
        text = (local / "artifacts" / "state.json").read_text(encoding="utf-8")
        assert "scf_engine" not in text and json.loads(text)["kind"] == kind
        assert "scf_engine" not in (local / "requirements.txt").read_text()

    moved = {}
    for kind, cls in {"decoupled": DecoupledModel, "hybrid": HybridModel, "jiangyin": JiangyinGrading,
                      "propagation": CorePropagation}.items():
        moved[kind] = type(f"Moved{cls.__name__}", (cls,), {"__module__": "somewhere.else"})
        monkeypatch.setitem(model_state.KINDS, kind, moved[kind])
    for kind, uri in uris.items():
        store = tracking.Store(trained["uri"])
        model = store.load_model(kind, "challenger")[0] if kind != "jiangyin" else store.load_logged_model(uri)
        assert type(model) is moved[kind]


def test_comparison_report_and_segments(trained):
    out = trained["home"] / "compare"
    html = (out / "comparison.html").read_text()
    assert "pd_jiangyin" in html and "bootstrap" in html and "data:image/png;base64" in html
    boot = pd.read_csv(out / "bootstrap.csv")
    assert {"auc_lo", "auc_hi", "ks_lo", "ks_hi"} <= set(boot.columns) and (boot["auc_lo"] <= boot["auc_hi"]).all()
    overall = pd.read_csv(out / "overall.csv").set_index("model")
    assert overall.loc["pd_propagation", "coverage"] < overall.loc["pd_decoupled", "coverage"]


def test_batch_limits_follow_the_contract(trained):
    lim = pd.read_csv(trained["home"] / "score" / "limits.csv", dtype={"firm_id": str})
    batch = pd.read_csv(trained["data"] / "batch.csv", dtype={"firm_id": str})
    assert list(lim.columns[: len(LIMITS_COLUMNS)]) == list(LIMITS_COLUMNS)
    assert lim["firm_id"].tolist() == batch["firm_id"].tolist()
    scored = lim["pd"].notna()
    assert scored.mean() > 0.8
    assert lim.loc[scored, "pd"].between(0, 1).all() and lim.loc[scored, "score"].between(0, 100).all()
    assert set(lim.loc[scored, "grade"]) <= set(GRADES) and set(lim["decision"]) <= set(DECISIONS)
    assert (lim["limit_cny"] >= 0).all() and (lim.loc[~scored, "decision"] == "decline").all()
    assert lim.loc[~scored, "reasons"].str.len().gt(0).all() and lim.loc[scored, "reasons"].str.count(";").ge(2).all()
    premium = lim["grade"] == "premium"
    assert (lim.loc[premium, "score"] >= 90).all()
    memos = trained["home"] / "score" / "memos"
    assert len(list(memos.glob("*.html"))) == scored.sum() and len(list(memos.glob("*.md"))) == scored.sum()
    r = invoke("audit", "verify", trained["home"] / "audit.jsonl")
    assert r.exit_code == 0, r.output


def test_the_batch_is_an_mlflow_run_and_an_audit_entry(trained):
    mlflow = fluent(trained["uri"])

    exp = mlflow.get_experiment_by_name("scf-score")
    run = mlflow.search_runs([exp.experiment_id]).iloc[0]
    assert run["params.batch_id"] and json.loads(run["params.model_versions"]).keys() == {"propagation", "decoupled", "hybrid"}
    lim = pd.read_csv(trained["home"] / "score" / "limits.csv")
    assert run["metrics.total_limit_cny"] == pytest.approx(lim["limit_cny"].sum())
    assert run["metrics.n_approve"] + run["metrics.n_review"] + run["metrics.n_decline"] == len(lim)
    entry = json.loads((trained["home"] / "audit.jsonl").read_text().splitlines()[-1])
    assert entry["details"]["mlflow_run_id"] == run["run_id"] and entry["action"] == "score"
    assert run["tags.audit_head"] == f"{entry['seq']}:{entry['hash']}"  # the anchor for `scf audit verify --anchor`
    assert set(entry["details"]["inputs"]) >= {"batch", "firms.csv"}


def test_same_batch_same_models_same_limits(trained, tmp_path):
    home, uri, data = trained["home"], trained["uri"], trained["data"]
    r = invoke("score", data, "--batch", data / "batch.csv", "--consents", data / "consents.csv", "--out", tmp_path / "limits.csv",
               "--tracking-uri", uri, "--no-memos", "--audit-log", home / "audit.jsonl")
    assert r.exit_code == 0, r.output
    a = pd.read_csv(home / "score" / "limits.csv")
    b = pd.read_csv(tmp_path / "limits.csv")
    pd.testing.assert_frame_equal(a, b)


def test_a_batch_on_a_dataset_with_bad_rows_publishes_its_quarantine_beside_the_limits(trained, tmp_path):
    """The contract: a row that breaks a rule goes to a quarantine file beside the output,
    and the summary prints read, accepted and quarantined per file. ``scf score`` wrote
    neither (only validate and train did): the rows a batch was decided without were
    nowhere beside its limits. quarantine.csv is now published with limits.csv (in the
    audit entry: ``audit verify --out`` holds), and gone from the folder when a later
    batch on clean data is published there."""
    home, uri, data = trained["home"], trained["uri"], trained["data"]
    dirty = tmp_path / "dirty"
    n = with_bad_flows(data, dirty)
    out = tmp_path / "batch" / "limits.csv"
    args = ("--batch", data / "batch.csv", "--consents", data / "consents.csv", "--out", out, "--tracking-uri", uri,
            "--no-memos", "--audit-log", home / "audit.jsonl")
    r = invoke("score", dirty, *args)
    assert r.exit_code == 0, r.output
    assert "quarantined" in r.output and str(out.parent / "quarantine.csv") in r.output.replace("\n", "")
    q = pd.read_csv(out.parent / "quarantine.csv", dtype=str)
    assert sorted(zip(q["file"], q["line"].astype(int), q["column"])) == [
        ("flows.csv", n + 2, "txn_id"), ("flows.csv", n + 3, "amount")]
    assert invoke("audit", "verify", home / "audit.jsonl", "--out", out.parent).exit_code == 0
    r = invoke("score", data, *args)
    assert r.exit_code == 0, r.output
    assert not (out.parent / "quarantine.csv").exists()
    assert invoke("audit", "verify", home / "audit.jsonl", "--out", out.parent).exit_code == 0


def test_features_and_explain_on_a_dataset_with_bad_rows_write_its_quarantine_beside_their_output(trained, tmp_path):
    """The contract asks every run for a quarantine file beside its output and the
    read/accepted/quarantined counts. ``scf features`` and ``scf explain`` wrote
    quarantine.csv only when the run failed: a successful run on a dataset with bad rows
    left no trace of the rows it went without. It is now written beside features.parquet
    and beside the memo, its sha256 is in the audit entry, and a later clean run removes
    it (the file beside an output describes that output's run)."""
    home, uri, data = trained["home"], trained["uri"], trained["data"]
    n = with_bad_flows(data, tmp_path / "dirty")
    expected = [("flows.csv", n + 2, "txn_id"), ("flows.csv", n + 3, "amount")]
    log = tmp_path / "audit.jsonl"  # not the fixture's log: other tests read who is in it
    feats = tmp_path / "f" / "features.parquet"
    firm = pd.read_csv(data / "batch.csv", dtype=str)["firm_id"].iloc[0]
    # features writes one file into a folder it does not own: its report is named after it,
    # and another command's quarantine.csv there is left alone
    (feats.parent).mkdir(parents=True)
    (feats.parent / "quarantine.csv").write_text("another command's report\n")
    runs = {"features": (("features", "--out", feats), feats.parent / "features.quarantine.csv"),
            "explain": (("explain", "--firm", firm, "--consents", data / "consents.csv", "--out", tmp_path / "x",
                         "--tracking-uri", uri), tmp_path / "x" / "quarantine.csv")}
    for action, (args, report) in runs.items():
        r = invoke(args[0], tmp_path / "dirty", *args[1:], "--audit-log", log)
        assert r.exit_code == 0, r.output
        assert "quarantined" in r.output and str(report) in r.output.replace("\n", "")
        q = pd.read_csv(report, dtype=str)
        assert sorted(zip(q["file"], q["line"].astype(int), q["column"])) == expected
        entry = json.loads(log.read_text().splitlines()[-1])
        assert entry["action"] == action
        assert entry["details"]["output"][report.name] == hashlib.sha256(report.read_bytes()).hexdigest()
        r = invoke(args[0], data, *args[1:], "--audit-log", log)
        assert r.exit_code == 0, r.output
        assert not report.exists() and "quarantine report" not in r.output
    assert (feats.parent / "quarantine.csv").read_text() == "another command's report\n"


def test_bad_requests_each_get_a_row_with_a_reason(trained, tmp_path):
    home, uri, data = trained["home"], trained["uri"], trained["data"]
    firms = pd.read_csv(data / "firms.csv", dtype=str)
    defaults = pd.read_csv(data / "defaults.csv", dtype=str)
    good = pd.read_csv(data / "batch.csv", dtype=str)["firm_id"].tolist()
    core = firms.loc[firms["is_core"] == "true", "firm_id"].iloc[0]
    rows = [(good[0], "-100"), (good[1], "lots"), (good[2], ""), (good[2], ""), ("91110000000000000X", ""),
            (defaults["firm_id"].iloc[0], ""), (core, ""), (good[3], "1,000,000")]
    batch = tmp_path / "batch.csv"
    pd.DataFrame(rows, columns=["firm_id", "requested_amount"]).to_csv(batch, index=False)
    r = invoke("score", data, "--batch", batch, "--consents", data / "consents.csv", "--out", tmp_path / "limits.csv",
               "--tracking-uri", uri, "--no-memos", "--audit-log", home / "audit.jsonl")
    assert r.exit_code == 0, r.output
    lim = pd.read_csv(tmp_path / "limits.csv", dtype={"firm_id": str})
    assert len(lim) == len(rows)
    reasons = lim["reasons"].tolist()
    assert "requested_amount '-100'" in reasons[0] and "requested_amount 'lots'" in reasons[1]
    assert "repeated in the batch" in reasons[3] and "unknown firm" in reasons[4]
    assert "in default since" in reasons[5] and "core enterprise" in reasons[6]
    assert lim.loc[[0, 1, 3, 4, 5, 6], "decision"].eq("decline").all() and lim.loc[[0, 1, 3, 4, 5, 6], "pd"].isna().all()
    assert lim.loc[7, "limit_cny"] <= 1_000_000 and lim.loc[7, "requested_amount"] == 1_000_000


def test_consent_refusal_and_group_envelope(trained, tmp_path):
    home, uri, data = trained["home"], trained["uri"], trained["data"]
    batch = pd.read_csv(data / "batch.csv", dtype=str).head(12)
    batch.to_csv(tmp_path / "batch.csv", index=False)
    consents = pd.read_csv(data / "consents.csv", dtype=str)
    consents = consents[consents["firm_id"] != batch["firm_id"].iloc[0]]
    consents.to_csv(tmp_path / "consents.csv", index=False)
    r = invoke("score", data, "--batch", tmp_path / "batch.csv", "--consents", tmp_path / "consents.csv", "--out",
               tmp_path / "limits.csv", "--tracking-uri", uri, "--no-memos", "--group-limit", "3000000",
               "--audit-log", home / "audit.jsonl")
    assert r.exit_code == 0, r.output
    lim = pd.read_csv(tmp_path / "limits.csv", dtype={"firm_id": str})
    assert "no valid data-sharing authorisation" in lim.loc[0, "reasons"] and np.isnan(lim.loc[0, "pd"])
    assert lim["limit_cny"].sum() <= 3_000_000 + 1e-6
    assert "group_allocation_cny" in lim


@pytest.mark.parametrize("content,message", [
    ("requested_amount\n100\n", "missing required column 'firm_id'"),
    ("firm_id,requested_amount\n", "nothing to score"),
])
def test_unusable_batch_is_one_clear_error(trained, tmp_path, content, message):
    batch = tmp_path / "batch.csv"
    batch.write_text(content)
    r = invoke("score", trained["data"], "--batch", batch, "--out", tmp_path / "l.csv", "--tracking-uri", trained["uri"])
    assert r.exit_code == 2 and message in r.output


def test_missing_champion_is_one_clear_error(world_dir, tmp_path):
    r = invoke("score", world_dir, "--batch", world_dir / "batch.csv", "--out", tmp_path / "l.csv", "--consents",
               world_dir / "consents.csv", "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}", "--no-memos")
    assert r.exit_code == 2 and "no champion model registered" in r.output
    r = invoke("explain", world_dir, "--firm", "91320281107684262D", "--alias", "challenger", "--out", tmp_path / "x",
               "--consents", world_dir / "consents.csv", "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}")
    assert r.exit_code == 2 and "no challenger model registered" in r.output  # --alias is the alias looked up
    r = invoke("compare", "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}", "--out", tmp_path / "c")
    assert r.exit_code == 2 and "no training run found" in r.output


def test_unusable_dataset_stops_before_any_run(trained, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained["data"], broken)
    (broken / "flows.csv").unlink()
    store = tracking.Store(trained["uri"])
    before = store.count_runs("train")
    r = invoke("train", broken, "--tracking-uri", trained["uri"], "--out", tmp_path / "o")
    assert r.exit_code == 2 and "flows: missing required file" in r.output
    assert store.count_runs("train") == before


@pytest.mark.parametrize("emptied, message", [
    ("flows.csv", "flows: no firm has a fund flow before the training snapshot dates"),
    ("defaults.csv", "too few defaults to train: 0 firm(s)"),
])
def test_nothing_to_learn_is_one_line_and_exit_2(small_world_dir, tmp_path, emptied, message):
    """A dataset whose flows or defaults file has only its header (a bank whose flow
    platform is not connected yet, a portfolio without a default): one line naming the
    file and no training run (without flows it was LightGBM's traceback)."""
    data = tmp_path / "data"
    shutil.copytree(small_world_dir, data)
    (data / emptied).write_text((data / emptied).read_text().splitlines()[0] + "\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = invoke("train", data, "--tracking-uri", uri, "--out", tmp_path / "o", "--audit-log", tmp_path / "audit.jsonl")
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert len([line for line in r.output.splitlines() if line.startswith("error:")]) == 1
    assert tracking.Store(uri).count_runs("train") == 0


def test_audit_log_tampering_is_detected(trained, tmp_path):
    log = tmp_path / "audit.jsonl"
    shutil.copy(trained["home"] / "audit.jsonl", log)
    lines = log.read_text().splitlines()
    entry = json.loads(lines[0])
    entry["details"]["as_of"] = "1999-01-01"
    lines[0] = json.dumps(entry)
    log.write_text("\n".join(lines) + "\n")
    r = invoke("audit", "verify", log)
    assert r.exit_code == 1 and "line 1" in r.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_and_compare_against_a_real_mlflow_server(world_dir, tmp_path):
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    uri = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=1).status == 200:
                    break
            except Exception:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not come up on loopback within 60 s")
        r = invoke("train", world_dir, "--tracking-uri", uri, "--out", tmp_path / "train")
        assert r.exit_code == 0, r.output
        r = invoke("compare", "--tracking-uri", uri, "--promote", "hybrid", "--out", tmp_path / "compare")
        assert r.exit_code == 0, r.output
        store = tracking.Store(uri)
        # the hybrid reads the propagation model's PD: promoting it promotes both, and says so
        assert "promoting propagation with hybrid" in r.output
        for kind in ("hybrid", "propagation"):
            assert store.model_version(kind, "champion") is not None
        assert store.model_version("decoupled", "champion") is None
        assert store.count_runs("compare") == 1
        assert any((tmp_path / "artifacts").rglob("MLmodel"))  # artifacts went through the server
    finally:
        server.terminate()
        server.wait(timeout=30)


ROOT = Path(__file__).resolve().parents[1]


# --- the decision core and its pipelines (issue: one decision core) ----------------------------


def test_a_batch_with_no_scorable_firm_gets_a_decline_row_per_firm(trained, tmp_path):
    """Unknown firms and a core only: once a TypeError deep in the limit policy; now one
    decline row each, with its reason."""
    data = trained["data"]
    firms = pd.read_csv(data / "firms.csv", dtype=str)
    core = firms.loc[firms["is_core"] == "true", "firm_id"].iloc[0]
    batch = tmp_path / "batch.csv"
    pd.DataFrame({"firm_id": ["91110000000000000X", "EXT-NOBODY", core]}).to_csv(batch, index=False)
    r = invoke("score", data, "--batch", batch, "--consents", data / "consents.csv", "--out", tmp_path / "limits.csv",
               "--tracking-uri", trained["uri"], "--audit-log", trained["home"] / "audit.jsonl")
    assert r.exit_code == 0, r.output
    lim = pd.read_csv(tmp_path / "limits.csv", dtype={"firm_id": str})
    assert len(lim) == 3 and lim["decision"].eq("decline").all() and lim["pd"].isna().all()
    assert lim["limit_cny"].eq(0).all()
    assert lim["reasons"].tolist()[:2] == ["unknown firm: not in firms"] * 2 and "core enterprise" in lim["reasons"].iloc[2]
    assert not (tmp_path / "memos").exists()


def test_the_core_decides_a_batch_of_nobody_without_files_or_runs(trained):
    """decide() itself: no scorable row at all is a plain outcome, not an error."""
    from scf_engine import policies
    from scf_engine.assemble import add_propagation, assemble
    from scf_engine.credit import decide
    from scf_engine.ingest import load_dataset
    from scf_engine.ingest.requests import requests_frame
    from scf_engine.pipelines.compare import load_models

    store = tracking.Store(trained["uri"])
    runs_before = store.count_runs("score")
    ds = load_dataset(trained["data"])
    models, _ = load_models(store, "champion")
    T = ds.default_as_of
    data = assemble(ds, [T], with_labels=False)[T]
    add_propagation({T: data}, models["propagation"])
    d = decide(data, models, policies.load_all(), requests_frame(pd.DataFrame({"firm_id": ["X1", "X2"]})), dataset=ds)
    assert d.limits["decision"].tolist() == ["decline", "decline"] and not d.scored.any()
    assert d.summary["n_requested"] == 2 and d.summary["total_limit_cny"] == 0
    assert store.count_runs("score") == runs_before


def test_a_shared_decision_context_gives_the_answers_decide_gives_alone(trained):
    """scf serve builds the snapshot's DecisionContext once and passes it to every call;
    a batch lets decide build it. Same rows, same limits, reasons and details, whether the
    batch is whole, one firm, or has unknown, core and unconsented firms in it."""
    from scf_engine.ingest.requests import requests_frame
    from scf_engine.pipelines.score import decide_loaded, decision_context, load_for_decisions

    data = trained["data"]
    loaded = load_for_decisions(data, consents=data / "consents.csv", tracking_uri=trained["uri"])
    ctx = decision_context(loaded)
    firms = pd.read_csv(data / "firms.csv", dtype=str)
    consented = set(pd.read_csv(data / "consents.csv", dtype=str)["firm_id"])
    core = firms.loc[firms["is_core"].str.lower() == "true", "firm_id"].iloc[0]
    defaulted = set(pd.read_csv(data / "defaults.csv", dtype=str)["firm_id"])
    plain = firms[(firms["is_core"].str.lower() != "true") & (pd.to_datetime(firms["founded_on"]) < loaded.data.as_of)]
    no_consent = next(f for f in plain["firm_id"] if f not in consented and f not in defaulted)
    batch = pd.read_csv(data / "batch.csv", dtype=str)["firm_id"].tolist()
    asks = [batch, batch[:1], batch[1:2], ["NOT-A-FIRM", core, no_consent] + batch[:3]]
    for ids in asks:
        req = requests_frame(pd.DataFrame({"firm_id": ids, "requested_amount": ["500000"] * len(ids)}))
        alone, shared = decide_loaded(loaded, req), decide_loaded(loaded, req, context=ctx)
        pd.testing.assert_frame_equal(alone.limits, shared.limits)
        pd.testing.assert_frame_equal(alone.limit_detail, shared.limit_detail)
        assert [[r.to_dict() for r in rs] for rs in alone.reasons] == [[r.to_dict() for r in rs] for rs in shared.reasons]
    last = shared.limits.set_index("firm_id")["reasons"]
    assert last["NOT-A-FIRM"] == "unknown firm: not in firms" and "core enterprise" in last[core]
    assert "authorisation" in last[no_consent]


def test_the_decision_context_reads_the_snapshots_propagation_design_of_the_same_model(trained):
    """add_propagation keeps the model's design over the chain with the snapshot; the
    decision core's context takes it when the same model is given (not made a second
    time), makes its own for another model object, and both are the design itself."""
    import copy

    from scf_engine import policies
    from scf_engine.assemble import add_propagation, assemble
    from scf_engine.credit.decide import DecisionContext
    from scf_engine.ingest import load_dataset
    from scf_engine.pipelines.compare import load_models

    ds = load_dataset(trained["data"])
    models, _ = load_models(tracking.Store(trained["uri"]), "champion")
    T = ds.default_as_of
    data = assemble(ds, [T], with_labels=False)[T]
    add_propagation({T: data}, models["propagation"])
    made_by, design = data.propagation_design
    assert made_by is models["propagation"]
    fresh = models["propagation"].design(data.chain)[0]
    pd.testing.assert_frame_equal(design, fresh, check_exact=True)
    pols = policies.load_all()
    ctx = DecisionContext.build(data, models, pols, ds)
    assert ctx.propagation_design is design
    other = {**models, "propagation": copy.copy(models["propagation"])}
    own = DecisionContext.build(data, other, pols, ds).propagation_design
    assert own is not design
    pd.testing.assert_frame_equal(own, fresh, check_exact=True)
    # the PDs add_propagation wrote are predict_frame's on the chain
    want = models["propagation"].predict_frame(data.chain)["pd"].reindex(data.table.index)
    pd.testing.assert_series_equal(data.table["pd_propagation"], want, check_names=False, check_exact=True)


def test_consent_required_without_a_consents_file_is_one_line_naming_the_option(trained, tmp_path):
    data = trained["data"]
    r = invoke("score", data, "--batch", data / "batch.csv", "--out", tmp_path / "limits.csv",
               "--tracking-uri", trained["uri"], "--audit-log", tmp_path / "audit.jsonl")
    assert r.exit_code == 2 and "--consents" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "limits.csv").exists() and not (tmp_path / "audit.jsonl").exists()


def test_explain_answers_as_the_batch_would_and_records_an_access(trained, tmp_path):
    """scf explain uses the firm's real consent (no consent: the batch's decline reason),
    appends an access entry to the audit log, and opens no batch run."""
    data, home = trained["data"], trained["home"]
    store = tracking.Store(trained["uri"])
    runs_before = store.count_runs("score")
    lim = pd.read_csv(home / "score" / "limits.csv", dtype={"firm_id": str})
    firm = lim.loc[lim["pd"].notna(), "firm_id"].iloc[0]
    log = tmp_path / "audit.jsonl"
    r = invoke("explain", data, "--firm", firm, "--consents", data / "consents.csv", "--out", tmp_path / "x",
               "--tracking-uri", trained["uri"], "--audit-log", log)
    assert r.exit_code == 0, r.output
    row = lim.set_index("firm_id").loc[firm]
    assert f"PD {row['pd']:.4f}" in r.output and list((tmp_path / "x" / "memos").glob("*.html"))
    consents = pd.read_csv(data / "consents.csv", dtype=str)
    consents[consents["firm_id"] != firm].to_csv(tmp_path / "consents.csv", index=False)
    r = invoke("explain", data, "--firm", firm, "--consents", tmp_path / "consents.csv", "--out", tmp_path / "y",
               "--tracking-uri", trained["uri"], "--audit-log", log)
    assert r.exit_code == 0, r.output
    assert "no valid data-sharing authorisation" in r.output
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["action"] for e in entries] == ["explain", "explain"] and entries[0]["details"]["firms"] == [firm]
    assert store.count_runs("score") == runs_before
    assert invoke("audit", "verify", log).exit_code == 0


def test_promote_is_checked_before_any_work(trained, tmp_path):
    store = tracking.Store(trained["uri"])
    before = store.count_runs("compare")
    r = invoke("compare", "--tracking-uri", trained["uri"], "--promote", "hybird", "--out", tmp_path / "c")
    assert r.exit_code == 2 and "--promote 'hybird'" in r.output and "Traceback" not in r.output
    assert store.count_runs("compare") == before and not (tmp_path / "c").exists()


def test_promotion_tags_the_comparison_run_with_what_moved(trained):
    store = tracking.Store(trained["uri"])
    run = store.latest_run("compare", parent_only=False)
    moved = json.loads(run.data.tags["promoted"])
    assert moved == {k: store.model_version(k, "champion")["version"] for k in tracking.MODEL_KINDS}
    assert moved == {k: json.loads(run.data.params["versions"])[k] for k in tracking.MODEL_KINDS}


def test_promotion_plan_keeps_the_hybrid_with_its_propagation_model():
    from scf_engine.errors import RequestError
    from scf_engine.pipelines.promote import promote, promotion_plan

    assert promotion_plan(["decoupled"]) == (["decoupled"], [])
    kinds, notes = promotion_plan(["hybrid"])
    assert kinds == ["propagation", "hybrid"] and len(notes) == 1
    assert promotion_plan(["propagation"])[0] == ["propagation", "hybrid"]
    assert promotion_plan(["all"])[0] == list(tracking.MODEL_KINDS)
    with pytest.raises(RequestError, match="--promote"):
        promotion_plan(["champion"])

    class Registry:  # the one method promote() uses
        def __init__(self):
            self.calls = []

        def set_alias(self, kind, alias, version):
            self.calls.append((kind, alias, version))

    reg = Registry()
    versions = {"propagation": {"version": "3"}, "hybrid": {"version": "5"}, "decoupled": {"version": "4"}}
    assert promote(reg, versions, ["propagation", "hybrid"]) == {"propagation": "3", "hybrid": "5"}
    assert reg.calls == [("propagation", "champion", "3"), ("hybrid", "champion", "5")]


def test_scoring_refuses_a_score_scale_changed_since_training(trained, tmp_path, monkeypatch):
    from scf_engine import policies

    models = tmp_path / "models"
    shutil.copytree(policies.MODELS_DIR, models)
    text = (models / "score_scale.yaml").read_text().replace("points_to_double_odds: 7.5", "points_to_double_odds: 10")
    (models / "score_scale.yaml").write_text(text)
    monkeypatch.setenv("SCF_MODELS_DIR", str(models))
    data = trained["data"]
    r = invoke("score", data, "--batch", data / "batch.csv", "--consents", data / "consents.csv", "--out",
               tmp_path / "limits.csv", "--tracking-uri", trained["uri"], "--audit-log", tmp_path / "audit.jsonl")
    assert r.exit_code == 2 and "score_scale.yaml changed" in r.output and "points_to_double_odds" in r.output
    assert not (tmp_path / "limits.csv").exists()


def test_a_policy_typo_is_one_line_not_a_traceback(trained, tmp_path, monkeypatch):
    from scf_engine import policies

    models = tmp_path / "models"
    shutil.copytree(policies.MODELS_DIR, models)
    with open(models / "limit_policy.yaml", "a") as fh:
        fh.write("max_limt_cny: 5000000\n")
    monkeypatch.setenv("SCF_MODELS_DIR", str(models))
    data = trained["data"]
    r = invoke("score", data, "--batch", data / "batch.csv", "--consents", data / "consents.csv", "--out",
               tmp_path / "limits.csv", "--tracking-uri", trained["uri"])
    assert r.exit_code == 2 and "limit_policy.yaml: unknown key 'max_limt_cny'" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("value", ["2024-02-30", "tomorrow", ""])
def test_a_bad_as_of_is_one_line(trained, tmp_path, value):
    data = trained["data"]
    r = invoke("score", data, "--batch", data / "batch.csv", "--consents", data / "consents.csv", "--out",
               tmp_path / "limits.csv", "--tracking-uri", trained["uri"], "--as-of", value)
    assert r.exit_code == 2 and "--as-of" in r.output and "Traceback" not in r.output


# --- a record of every access (issue: authorisation and access records) -----------------------


def test_every_read_of_firm_data_is_on_the_chain_with_who_and_why(trained, tmp_path):
    home, data = trained["home"], trained["data"]
    entries = [json.loads(line) for line in (home / "audit.jsonl").read_text().splitlines()]
    by_action = {}
    for e in entries:  # the fixture's own entries come first; later tests append to the same log
        by_action.setdefault(e["action"], e)
    assert {"train", "compare", "score"} <= set(by_action)
    firms = pd.read_csv(data / "firms.csv", dtype=str)["firm_id"]
    from scf_engine.access import firms_digest

    for action in ("train", "compare"):
        d = by_action[action]["details"]
        assert by_action[action]["actor"] == "analyst.li" and d["purpose"] and d["command"] == action
        assert {k: d[k] for k in ("firms_count", "firms_sha256")} == firms_digest(firms)
        assert "firms.csv" in d["inputs"] and "firms" not in d  # a whole-dataset read names no ids
    score = by_action["score"]["details"]
    assert score["firms"] == pd.read_csv(data / "batch.csv", dtype=str)["firm_id"].tolist()
    log = tmp_path / "audit.jsonl"
    r = invoke("validate", data, "--out", tmp_path / "v", "--audit-log", log, "--actor", "ops.wang")
    assert r.exit_code in (0, 1), r.output
    e = json.loads(log.read_text().splitlines()[-1])
    assert e["action"] == "validate" and e["actor"] == "ops.wang" and e["details"]["firms_count"] == len(firms)


def test_audit_show_answers_who_read_a_firm_and_what_an_actor_read(trained, tmp_path, monkeypatch):
    home, data = trained["home"], trained["data"]
    log = home / "audit.jsonl"
    firm = pd.read_csv(data / "batch.csv", dtype=str)["firm_id"].iloc[0]
    monkeypatch.setenv("SCF_ACTOR", "officer.zhao")
    r = invoke("explain", data, "--firm", firm, "--consents", data / "consents.csv", "--out", tmp_path / "x",
               "--tracking-uri", trained["uri"], "--audit-log", log)
    assert r.exit_code == 0, r.output
    from scf_engine import access

    named = access.show(log, firm=firm)
    assert set(named["action"]) >= {"score", "explain"} and (named["match"] == "named").all()
    assert named.loc[named["action"] == "explain", "actor"].tolist() == ["officer.zhao"]
    with_data = access.show(log, firm=firm, dataset_firms=pd.read_csv(data / "firms.csv", dtype=str)["firm_id"])
    assert {"train", "compare"} <= set(with_data.loc[with_data["match"] == "dataset", "action"])
    assert access.show(log, firm="NEVER-REQUESTED-ANYWHERE").empty
    assert set(access.show(log, actor="analyst.li")["action"]) == {"train", "compare"}
    r = invoke("audit", "show", log, "--firm", firm, "--data", data)
    assert r.exit_code == 0 and "explain" in r.output and "train" in r.output
    r = invoke("audit", "show", log)
    assert r.exit_code == 2 and "--firm" in r.output


def test_limits_carry_the_jiangyin_grade_and_decline_serious_dishonesty(trained):
    """contract v1.1: jiangyin_grade / jiangyin_a / jiangyin_c beside each scored firm; a
    firm whose latest indicators say 严重失信 is not graded and is declined."""
    home, data = trained["home"], trained["data"]
    lim = pd.read_csv(home / "score" / "limits.csv", dtype={"firm_id": str, "jiangyin_grade": str})
    assert {"jiangyin_grade", "jiangyin_a", "jiangyin_c"} <= set(lim.columns)
    scored = lim["pd"].notna()
    assert set(lim.loc[scored, "jiangyin_grade"].dropna()) <= {"premium", "grade_1", "alternate"}
    assert (lim.loc[scored, "jiangyin_a"].between(0, 13)).all()
    rule = __import__("scf_engine.learners.jiangyin", fromlist=["policy_rule"]).policy_rule()
    ind = pd.read_csv(data / "indicators.csv", dtype=str).sort_values("as_of", kind="stable")
    bonus = ind[ind["indicator"] == "bonus"].drop_duplicates("firm_id", keep="last").set_index("firm_id")["grade"].astype(float)
    premium = lim["jiangyin_grade"] == "premium"
    stepped = lim["firm_id"].map(bonus).fillna(0) >= rule["bonus_step_up_points"]
    assert (lim.loc[premium & ~stepped, "jiangyin_a"] >= rule["grades"]["premium"]["min_a"]).all()
    assert (lim.loc[premium & stepped, "jiangyin_a"] >= rule["grades"]["grade_1"]["min_a"]).all()  # one step up
    assert (lim.loc[premium, "jiangyin_c"] == 0).all()
    latest = ind[ind["indicator"] == "dishonest"].drop_duplicates("firm_id", keep="last").set_index("firm_id")["grade"]
    flagged = lim["firm_id"].map(latest).eq("true")
    if flagged.any():
        assert (lim.loc[flagged, "decision"] == "decline").all()
        assert lim.loc[flagged, "reasons"].str.contains("严重失信").all() and lim.loc[flagged, "pd"].isna().all()
    memo = next((home / "score" / "memos").glob("*.html")).read_text(encoding="utf-8")
    assert "江阴指引评级" in memo and "Jiangyin credit grading guide" in memo


# --- authorisation on every path ------------------------------------------------------------------


def _policies_copy(tmp_path, monkeypatch, name, old, new):
    from scf_engine import policies

    models = tmp_path / "models"
    if not models.exists():
        shutil.copytree(policies.MODELS_DIR, models)
    text = (models / f"{name}.yaml").read_text()
    assert old in text
    (models / f"{name}.yaml").write_text(text.replace(old, new))
    monkeypatch.setenv("SCF_MODELS_DIR", str(models))


def test_a_whitelist_limits_the_batch_decline_or_review_by_policy(trained, tmp_path, monkeypatch):
    home, uri, data = trained["home"], trained["uri"], trained["data"]
    batch = pd.read_csv(data / "batch.csv", dtype=str).head(10)
    batch.to_csv(tmp_path / "batch.csv", index=False)
    on_list = batch["firm_id"].iloc[:5]
    pd.DataFrame({"firm_id": on_list, "list": "园区白名单"}).to_csv(tmp_path / "whitelist.csv", index=False)
    args = ["score", data, "--batch", tmp_path / "batch.csv", "--consents", data / "consents.csv", "--tracking-uri", uri,
            "--no-memos", "--whitelist", tmp_path / "whitelist.csv", "--audit-log", tmp_path / "audit.jsonl"]
    r = invoke(*args, "--out", tmp_path / "a" / "limits.csv")
    assert r.exit_code == 0, r.output
    lim = pd.read_csv(tmp_path / "a" / "limits.csv", dtype={"firm_id": str})
    off = ~lim["firm_id"].isin(on_list)
    assert (lim.loc[off, "decision"] == "decline").all() and lim.loc[off, "reasons"].str.contains("whitelist").all()
    assert lim.loc[off, "pd"].isna().all() and not lim.loc[~off, "reasons"].str.contains("whitelist").any()
    _policies_copy(tmp_path, monkeypatch, "limit_policy", "off_whitelist: decline", "off_whitelist: review")
    r = invoke(*args, "--out", tmp_path / "b" / "limits.csv")
    assert r.exit_code == 0, r.output
    lim = pd.read_csv(tmp_path / "b" / "limits.csv", dtype={"firm_id": str})
    scored_off = off & lim["pd"].notna()
    assert scored_off.any() and (lim.loc[scored_off, "decision"] != "approve").all()
    assert lim.loc[scored_off & (lim["decision"] == "review"), "decision_reasons"].str.contains("whitelist").all()



def test_list_picks_one_programme_of_a_whitelist_and_bad_rows_are_set_aside(trained, tmp_path, monkeypatch):
    """A bank keeps several programmes' lists in one whitelist.csv, told apart by the
    contract's ``list`` column, which was ignored: every row counted, so a chain's batch
    lent to the park's firms. ``--list`` picks one programme (its name in the reasons and
    the audit entry); without it every row counts, as before. A list the file lacks is
    one line, exit 2, nothing written. Bad rows (an empty id, a repeat, a firm the dataset
    lacks) stopped the run or passed silently: now they are set aside, counted and
    published beside the output, and the run goes on."""
    uri, data = trained["uri"], trained["data"]
    batch = pd.read_csv(data / "batch.csv", dtype=str).head(10)
    batch.to_csv(tmp_path / "batch.csv", index=False)
    ids = list(batch["firm_id"])
    rows = [(f, "chain-A") for f in ids[:4]] + [(f, "park-B") for f in ids[4:7]]
    rows += [("", "chain-A"), (ids[0], "chain-A"), ("91000000000000000X", "chain-A"), (ids[0], "park-B")]
    pd.DataFrame(rows, columns=["firm_id", "list"]).to_csv(tmp_path / "whitelist.csv", index=False)
    sha = hashlib.sha256((tmp_path / "whitelist.csv").read_bytes()).hexdigest()
    log = tmp_path / "audit.jsonl"
    args = ["score", data, "--batch", tmp_path / "batch.csv", "--consents", data / "consents.csv", "--tracking-uri", uri,
            "--no-memos", "--whitelist", tmp_path / "whitelist.csv", "--audit-log", log]
    r = invoke(*args, "--list", "chain-A", "--out", tmp_path / "a" / "limits.csv")
    assert r.exit_code == 0, r.output
    lim = pd.read_csv(tmp_path / "a" / "limits.csv", dtype={"firm_id": str})
    off = ~lim["firm_id"].isin(ids[:4])
    assert (lim.loc[off, "decision"] == "decline").all()
    assert (lim.loc[off, "reasons"] == "not on the programme's whitelist (名单制): list 'chain-A'").all()
    assert not lim.loc[~off, "reasons"].str.contains("whitelist").any()
    q = pd.read_csv(tmp_path / "a" / "quarantine.csv", dtype=str, keep_default_na=False)
    q = q[q["file"] == "whitelist.csv"]
    assert list(q["line"].astype(int)) == [9, 10, 11] and list(q["parties"]) == ["", "", ""]
    assert list(q["reason"]) == ["firm_id is empty", "firm_id repeated on list 'chain-A' (first on line 2)",
                                 "unknown firm: not in firms"]
    assert "whitelist.csv" in r.output  # counted in the run's summary: 11 read, 8 accepted, 3 set aside
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["details"]["whitelist"] == {"sha256": sha, "list": "chain-A"} and entry["details"]["inputs"]["whitelist"] == sha
    r = invoke(*args, "--out", tmp_path / "b" / "limits.csv")  # no --list: every row of every programme counts
    assert r.exit_code == 0, r.output
    lim = pd.read_csv(tmp_path / "b" / "limits.csv", dtype={"firm_id": str})
    off = ~lim["firm_id"].isin(ids[:7])
    assert (lim.loc[off, "reasons"] == "not on the programme's whitelist (名单制)").all()
    assert not lim.loc[~off, "reasons"].str.contains("whitelist").any()
    assert json.loads(log.read_text().splitlines()[-1])["details"]["whitelist"] == {"sha256": sha, "list": None}
    n = len(log.read_text().splitlines())
    for extra, said in ((["--list", "park-C"], "its lists: chain-A, park-B"), (["--list", " "], "no such list")):
        r = invoke(*args, *extra, "--out", tmp_path / "c" / "limits.csv")
        assert r.exit_code == 2 and said in r.output and "Traceback" not in r.output, r.output
    r = invoke(*[a for a in args if a not in ("--whitelist", tmp_path / "whitelist.csv")], "--list", "chain-A",
               "--out", tmp_path / "c" / "limits.csv")
    assert r.exit_code == 2 and "--whitelist" in r.output, r.output
    assert not (tmp_path / "c" / "limits.csv").exists() and len(log.read_text().splitlines()) == n
    r = invoke("explain", data, "--firm", ids[5], "--consents", data / "consents.csv", "--tracking-uri", uri,
               "--audit-log", log, "--whitelist", tmp_path / "whitelist.csv", "--list", "chain-A", "--out", tmp_path / "x")
    assert r.exit_code == 0 and "list 'chain-A'" in r.output and "decision decline" in r.output, r.output
    assert json.loads(log.read_text().splitlines()[-1])["details"]["whitelist"] == {"sha256": sha, "list": "chain-A"}
    assert (tmp_path / "x" / "quarantine.csv").is_file()
    _policies_copy(tmp_path, monkeypatch, "limit_policy", "off_whitelist: decline", "off_whitelist: review")
    r = invoke(*args, "--list", "park-B", "--out", tmp_path / "d" / "limits.csv")
    assert r.exit_code == 0, r.output
    lim = pd.read_csv(tmp_path / "d" / "limits.csv", dtype={"firm_id": str})
    reviewed = ~lim["firm_id"].isin(ids[4:7] + ids[:1]) & (lim["decision"] == "review")  # ids[0] is on both lists
    assert reviewed.any() and lim.loc[reviewed, "decision_reasons"].str.contains(
        "Not on the programme's whitelist (名单制), list 'park-B': manual review", regex=False).all()


def test_explain_with_the_whitelist_gives_the_whitelisted_batchs_decision(trained, tmp_path):
    """scf explain took no whitelist, so a credit officer saw an approval (and a memo)
    for a firm the programme's batch declined for being off its list. With --whitelist it
    gives the batch's decision, and the list's hash is in the audit entry."""
    home, uri, data = trained["home"], trained["uri"], trained["data"]
    batch = pd.read_csv(data / "batch.csv", dtype=str).head(10)
    batch.to_csv(tmp_path / "batch.csv", index=False)
    pd.DataFrame({"firm_id": batch["firm_id"].iloc[:5], "list": "园区白名单"}).to_csv(tmp_path / "whitelist.csv", index=False)
    log = tmp_path / "audit.jsonl"
    r = invoke("score", data, "--batch", tmp_path / "batch.csv", "--consents", data / "consents.csv", "--tracking-uri", uri,
               "--no-memos", "--whitelist", tmp_path / "whitelist.csv", "--audit-log", log, "--out", tmp_path / "a" / "limits.csv")
    assert r.exit_code == 0, r.output
    lim = pd.read_csv(tmp_path / "a" / "limits.csv", dtype={"firm_id": str}).set_index("firm_id")
    for firm in (batch["firm_id"].iloc[0], batch["firm_id"].iloc[7]):
        common = ("explain", data, "--firm", firm, "--consents", data / "consents.csv", "--tracking-uri", uri,
                  "--audit-log", log)
        r = invoke(*common, "--whitelist", tmp_path / "whitelist.csv", "--out", tmp_path / f"x-{firm}")
        assert r.exit_code == 0, r.output
        assert f"decision {lim.loc[firm, 'decision']}" in r.output
        entry = json.loads(log.read_text().splitlines()[-1])
        assert entry["details"]["inputs"]["whitelist"] == hashlib.sha256((tmp_path / "whitelist.csv").read_bytes()).hexdigest()
    assert lim.loc[batch["firm_id"].iloc[7], "decision"] == "decline"
    r = invoke(*common, "--out", tmp_path / "no-list")  # without the list the off-list firm is judged on its merits
    assert r.exit_code == 0, r.output
    assert "whitelist" not in r.output and "whitelist" not in json.loads(log.read_text().splitlines()[-1])["details"]["inputs"]

def test_training_follows_the_stated_data_use_rule(world_dir, tmp_path, monkeypatch):
    """data_use.yaml training: consent_at_snapshot -- no consents file is one line naming
    --consents; with one, a firm's rows are used only for dates its authorisation covered."""
    _policies_copy(tmp_path, monkeypatch, "data_use", "training: attested", "training: consent_at_snapshot")
    uri = f"sqlite:///{tmp_path / 'c.db'}"
    r = invoke("train", world_dir, "--tracking-uri", uri, "--out", tmp_path / "t0", "--audit-log", tmp_path / "a.jsonl")
    assert r.exit_code == 2 and "--consents" in r.output and "Traceback" not in r.output
    consents = pd.read_csv(world_dir / "consents.csv", dtype=str)
    firms = sorted(consents["firm_id"])
    dropped = set(firms[::3])  # a third never signed
    consents[~consents["firm_id"].isin(dropped)].to_csv(tmp_path / "consents.csv", index=False)
    r = invoke("train", world_dir, "--tracking-uri", uri, "--out", tmp_path / "t1", "--consents", tmp_path / "consents.csv",
               "--audit-log", tmp_path / "a.jsonl")
    assert r.exit_code == 0, r.output
    held = pd.read_parquet(tmp_path / "t1" / "evaluation" / "heldout_predictions.parquet")
    assert not set(held["firm_id"]) & dropped and len(held) > 0
    entry = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[-1])
    assert entry["details"]["training_data_rule"] == "consent_at_snapshot" and "consents" in entry["details"]["inputs"]


def test_precomputed_per_firm_table_and_request_step_give_the_full_cores_answers(trained):
    """scf serve precomputes every firm's request-independent part once and runs only the
    request step per call. Randomised batches (one firm or many; repeats, bad amounts,
    unknown, core and unconsented firms; amounts below and above the limit; whitelists,
    envelopes, a named chain core) decided both ways give the same frames, details,
    reasons, contributions and Jiangyin grades; the service's JSON records of the
    request step equal the frame's rows."""
    import random

    from scf_engine.credit.decide import BatchOptions, decide_rows, finalize, records
    from scf_engine.ingest.requests import requests_frame
    from scf_engine.pipelines.score import decide_loaded, decision_context, load_for_decisions, precompute_loaded
    from scf_engine.serve.state import plain_records

    data = trained["data"]
    loaded = load_for_decisions(data, consents=data / "consents.csv", tracking_uri=trained["uri"])
    ctx = decision_context(loaded)
    table = precompute_loaded(loaded, ctx)
    firms = pd.read_csv(data / "firms.csv", dtype=str)
    ids = firms["firm_id"].tolist() + ["NOT-A-FIRM", "91000000000000000X"]
    cores = firms.loc[firms["is_core"].str.lower() == "true", "firm_id"].tolist()
    consented = set(pd.read_csv(data / "consents.csv", dtype=str)["firm_id"])
    defaulted = set(pd.read_csv(data / "defaults.csv", dtype=str)["firm_id"])
    plain = firms[(firms["is_core"].str.lower() != "true") & (pd.to_datetime(firms["founded_on"]) < loaded.data.as_of)]
    unconsented = [f for f in plain["firm_id"] if f not in consented and f not in defaulted][:3]
    rng = random.Random(20)
    seen = {"decline": 0, "review": 0, "approve": 0, "requested": 0, "unknown": 0, "authorisation": 0}
    for trial in range(36):
        n = rng.choice([1, 1, 1, 2, 5, 30])
        pick = rng.sample(ids, n) + (rng.sample(ids, 1) * 2 if trial % 7 == 3 else [])
        if trial == 0:  # the kinds a random draw may miss: an unknown firm, firms without consent
            pick = ["NOT-A-FIRM"] + unconsented
        amounts = [rng.choice(["", "0", "-1", "lots", "50000", "800000", "3000000", "1e9"]) for _ in pick]
        req = requests_frame(pd.DataFrame({"firm_id": pick, "requested_amount": amounts}))
        options = [BatchOptions(), BatchOptions(whitelist=frozenset(rng.sample(ids, len(ids) // 2))),
                   BatchOptions(group_limit=2e6), BatchOptions(chain_core=rng.choice(cores))][trial % 4]
        try:
            full = decide_loaded(loaded, req, options)
        except ValueError as exc:  # a named core without a line: both paths refuse alike
            with pytest.raises(ValueError, match=str(exc)[:30]):
                decide_loaded(loaded, req, options, context=ctx, precomputed=table)
            continue
        fast = decide_loaded(loaded, req, options, context=ctx, precomputed=table)
        pd.testing.assert_frame_equal(full.limits, fast.limits)
        pd.testing.assert_frame_equal(full.limit_detail, fast.limit_detail)
        # an indicator's grade column is text (missing: NaN) or object (missing: None) after
        # the set it was computed on; the memo reads both as "not graded"
        pd.testing.assert_frame_equal(*[j.astype(object).where(j.notna(), None) for j in (full.jiangyin, fast.jiangyin)],
                                      check_index_type=False)
        for a, b in zip(full.reasons, fast.reasons):
            assert [r.text() for r in a] == [r.text() for r in b]
            for x, y in zip(a, b):
                pd.testing.assert_series_equal(pd.Series(x.to_dict(), dtype=object), pd.Series(y.to_dict(), dtype=object))
        assert full.contributions.keys() == fast.contributions.keys() and full.chain_core == fast.chain_core
        for kind in full.contributions:
            pd.testing.assert_frame_equal(full.contributions[kind], fast.contributions[kind])
        if all(f in table.index for f in req["firm_id"]):
            cols, _ = decide_rows([table], req["firm_id"].tolist(), req["requested_amount"].to_numpy(float),
                                  req["request_problem"].to_numpy(object), loaded.pols, options)
            assert records(cols) == plain_records(full.limits)
            lean = finalize([table], req, loaded.pols, options, basis=False)  # scf monitor's: no memo lines
            pd.testing.assert_frame_equal(full.limits, lean.limits)
            pd.testing.assert_frame_equal(full.limit_detail.drop(columns="limit_basis"),
                                          lean.limit_detail.drop(columns="limit_basis"))
            assert lean.limit_detail["limit_basis"].map(len).eq(0).all()
            # the memo's lines, on every scored row (a row the request step blocked has none either way)
            assert full.limit_detail.loc[full.scored, "limit_basis"].map(len).gt(0).all()
        lim = full.limits
        for d in ("decline", "review", "approve"):
            seen[d] += int((lim["decision"] == d).sum())
        seen["requested"] += int(lim["binding_caps"].str.contains("requested").sum())
        seen["unknown"] += int(lim["reasons"].str.contains("unknown firm").sum())
        seen["authorisation"] += int(lim["reasons"].str.contains("authorisation").sum())
    assert all(v > 0 for v in seen.values()), seen  # every kind of answer was compared


# --- no double financing across batches (issue 15) ----------------------------------------------


def test_pledged_financed_and_earlier_batches_receivables_never_back_a_limit(trained, tmp_path):
    """On a copy of the world with a pledge and a live financing added, a batch leaves
    both out (eligible amount down by exactly them, the memo says why); a second batch
    on the same snapshot the same day leaves out every receivable behind the first one's
    limits; re-running the first batch itself is not blocked by its own entry."""
    home, uri = trained["home"], trained["uri"]
    data = tmp_path / "data"
    shutil.copytree(trained["data"], data)
    before = pd.read_csv(home / "score" / "limits.csv", dtype={"firm_id": str})
    backed = before[(before["eligible_receivables_cny"] > 0) & (before["limit_cny"] > 0)]["firm_id"].tolist()
    assert len(backed) >= 3
    recv = pd.read_csv(data / "receivables.csv", dtype=str, keep_default_na=False)
    as_of = before["as_of"].iloc[0]
    firms = pd.read_csv(data / "firms.csv", dtype=str)
    good_cores = firms.loc[firms["core_rating"].isin(["AAA", "AA+", "AA", "AA-", "A+", "A"]), "firm_id"]
    cand = recv[(recv["paid_on"] == "") & (recv["confirmed_on"] != "") & (recv["due_on"] >= as_of)
                & recv["buyer_id"].isin(good_cores)]
    a, b = backed[0], backed[1]
    pledged = cand[cand["supplier_id"] == a].iloc[0]
    financed = cand[cand["supplier_id"] == b].iloc[0]
    recv["pledged_to"] = np.where(recv["receivable_id"] == pledged["receivable_id"], "BANK-OTHER", "")
    recv["pledged_on"] = np.where(recv["receivable_id"] == pledged["receivable_id"], pledged["confirmed_on"], "")
    recv.to_csv(data / "receivables.csv", index=False)
    pd.DataFrame([dict(financing_id="FN1", firm_id=b, receivable_id=financed["receivable_id"],
                       drawn_on=financed["confirmed_on"], amount=1000, maturity_on=financed["due_on"],
                       collection_account="COL1", repaid_on="", repaid_amount="")]).to_csv(data / "financings.csv", index=False)
    log = tmp_path / "audit.jsonl"
    batch = data / "batch.csv"

    def score(batch_file, out):
        r = invoke("score", data, "--batch", batch_file, "--consents", data / "consents.csv", "--out", out,
                   "--tracking-uri", uri, "--memo-formats", "md", "--audit-log", log)
        assert r.exit_code == 0, r.output
        return pd.read_csv(out, dtype={"firm_id": str}).set_index("firm_id")

    first = score(batch, tmp_path / "one" / "limits.csv")
    old = before.set_index("firm_id")
    assert first.loc[a, "eligible_receivables_cny"] == pytest.approx(old.loc[a, "eligible_receivables_cny"] - float(pledged["amount"]))
    assert first.loc[b, "eligible_receivables_cny"] == pytest.approx(old.loc[b, "eligible_receivables_cny"] - float(financed["amount"]))
    assert first.loc[a, "excluded_receivables"] == old.loc[a, "excluded_receivables"] + 1
    memo = next((tmp_path / "one" / "memos").glob(f"memo_{a}_*.md")).read_text()
    assert pledged["receivable_id"] in memo and "pledged to BANK-OTHER" in memo
    memo = next((tmp_path / "one" / "memos").glob(f"memo_{b}_*.md")).read_text()
    assert "already financed: financing FN1" in memo
    others = [f for f in first.index if f not in (a, b)]
    assert (first.loc[others, "eligible_receivables_cny"].fillna(0) == old.loc[others, "eligible_receivables_cny"].fillna(0)).all()
    entry = json.loads(log.read_text().splitlines()[-1])
    earmarked = {r for r, _ in entry["details"]["earmarked_receivables"]}
    assert pledged["receivable_id"] not in earmarked and financed["receivable_id"] not in earmarked

    # a second batch the same day, on the same snapshot: what backs the first one's limits is taken
    taken = first[(first["eligible_receivables_cny"] > 0) & (first["limit_cny"] > 0)].index[:3].tolist()
    assert len(taken) == 3
    pd.DataFrame({"firm_id": taken}).to_csv(tmp_path / "batch2.csv", index=False)
    second = score(tmp_path / "batch2.csv", tmp_path / "two" / "limits.csv")
    for f in taken:
        assert second.loc[f, "eligible_receivables_cny"] == 0 and second.loc[f, "receivable_part"] == 0
        assert second.loc[f, "excluded_receivables"] > first.loc[f, "excluded_receivables"]
    memo = next((tmp_path / "two" / "memos").glob(f"memo_{taken[2]}_*.md")).read_text()
    assert "earmarked by batch" in memo
    # one firm explained (as the service decides it) leaves them out too
    r = invoke("explain", data, "--firm", taken[0], "--consents", data / "consents.csv", "--out", tmp_path / "ex",
               "--tracking-uri", uri, "--audit-log", log)
    assert r.exit_code == 0, r.output
    assert "earmarked by batch" in next((tmp_path / "ex" / "memos").glob(f"memo_{taken[0]}_*.md")).read_text()
    # the first request again replaces its own limits: not blocked by its own entry, and the
    # second batch lent on none of these receivables, so the same amounts come back
    again = score(batch, tmp_path / "three" / "limits.csv")
    pd.testing.assert_series_equal(again["eligible_receivables_cny"], first["eligible_receivables_cny"])
    # the same request re-exported (rows reversed, BOM, CRLF, an extra column, amounts with a
    # thousands separator) is the same request: its batch id was the file's sha256, so its
    # own earmarks blocked it and every receivable part fell to 0 (rob4)
    rows = pd.read_csv(batch, dtype=str, keep_default_na=False).iloc[::-1]
    if "requested_amount" in rows:
        rows["requested_amount"] = [f"{float(v):,.2f}" if v else "" for v in rows["requested_amount"]]
    rows.insert(0, "export_no", "E1")
    rows.to_csv(tmp_path / "batch_again.csv", index=False, encoding="utf-8-sig", lineterminator="\r\n", quoting=1)
    reexported = score(tmp_path / "batch_again.csv", tmp_path / "four" / "limits.csv")
    pd.testing.assert_frame_equal(reexported.sort_index(), first.sort_index())


def test_a_bad_row_dated_after_the_as_of_does_not_change_a_decision_at_it(trained, tmp_path):
    """A record dated on or after T must never change an answer at T. A quarantined row
    counted as a data-quality issue of every firm it names whatever its date, so a bad
    flow booked a year after T (or a receivable pledged "in the future") turned an
    approval at T into a review. Issues now count at T only when known before T (the
    later of the row's own date and the broken date column's); one that cannot be
    placed in time still counts."""
    home, uri, data = trained["home"], trained["uri"], trained["data"]
    batch = pd.read_csv(data / "batch.csv", dtype=str)
    firms = pd.read_csv(data / "firms.csv", dtype=str)
    flows = pd.read_csv(data / "flows.csv", dtype=str, keep_default_na=False)
    last = pd.to_datetime(flows["booked_on"]).max()
    T = (last - pd.DateOffset(months=12)).replace(day=1)
    args = ("--batch", data / "batch.csv", "--consents", data / "consents.csv", "--as-of", str(T.date()), "--tracking-uri",
            uri, "--no-memos")
    r = invoke("score", data, *args, "--out", tmp_path / "clean" / "limits.csv", "--audit-log", tmp_path / "a.jsonl")
    assert r.exit_code == 0, r.output
    clean = pd.read_csv(tmp_path / "clean" / "limits.csv", dtype={"firm_id": str})
    approved = clean.loc[(clean["decision"] == "approve") & ~clean["firm_id"].isin(firms.loc[firms["is_core"] == "true", "firm_id"]),
                         "firm_id"].tolist()
    later, sooner = approved[0], approved[1]
    dirty = tmp_path / "dirty"
    shutil.copytree(data, dirty)
    bad = flows.iloc[[0, 0, 0]].copy()
    bad["txn_id"] = ["BAD-LATER", "BAD-SOONER", "BAD-UNDATED"]
    bad["amount"] = ["-5", "-5", "12"]
    bad["booked_on"] = [str((T + pd.DateOffset(months=6)).date()), str((T - pd.DateOffset(months=6)).date()), "someday"]
    bad["payer_id"] = [later, sooner, sooner]
    bad["payee_id"] = ["EXT-X", "EXT-X", "EXT-X"]
    pd.concat([flows, bad]).to_csv(dirty / "flows.csv", index=False)
    r = invoke("score", dirty, *args, "--out", tmp_path / "dirty-out" / "limits.csv", "--audit-log", tmp_path / "b.jsonl")
    assert r.exit_code == 0, r.output
    got = pd.read_csv(tmp_path / "dirty-out" / "limits.csv", dtype={"firm_id": str}).set_index("firm_id")
    want = clean.set_index("firm_id")
    assert got.loc[later, "decision"] == "approve"
    assert got.loc[later, "decision_reasons"] == want.loc[later, "decision_reasons"]
    assert got.loc[sooner, "decision"] == "review" and "2 data-quality issue(s)" in got.loc[sooner, "decision_reasons"]
    others = want.index.difference([sooner])
    pd.testing.assert_frame_equal(got.loc[others], want.loc[others])


@pytest.mark.parametrize("command", ["score", "features", "explain"])
def test_an_as_of_after_the_data_ends_is_one_line_and_exit_2(trained, tmp_path, command):
    """An as-of past the data's end: every window of the snapshot reached into time the
    data does not cover, so a year later every firm had 'no trade inflow in the last 12
    months' and a whole batch was declined for it, with exit 0 (``scf monitor`` already
    refused such a date). The day after the data's last record, the default, still works."""
    home, uri, data = trained["home"], trained["uri"], trained["data"]
    from scf_engine.ingest import load_dataset

    ds = load_dataset(data)
    late = str((ds.default_as_of + pd.DateOffset(years=1)).date())
    args = {"score": ("--batch", data / "batch.csv", "--consents", data / "consents.csv", "--out", tmp_path / "l.csv",
                      "--tracking-uri", uri, "--no-memos"),
            "features": ("--out", tmp_path / "f.parquet"),
            "explain": ("--firm", pd.read_csv(data / "batch.csv", dtype=str)["firm_id"].iloc[0], "--consents",
                        data / "consents.csv", "--out", tmp_path / "x", "--tracking-uri", uri)}[command]
    r = invoke(command, data, *args, "--as-of", late, "--audit-log", tmp_path / "a.jsonl")
    assert r.exit_code == 2 and "after the data ends" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "l.csv").exists() and not (tmp_path / "f.parquet").exists()
    r = invoke(command, data, *args, "--as-of", str(ds.default_as_of.date()), "--audit-log", tmp_path / "a.jsonl")
    assert r.exit_code == 0, r.output


def test_quarantined_rows_still_train_and_compare_writes_them_beside_its_report(small_world_dir, tmp_path):
    """A dataset with every kind of bad row the fault injector makes, plus two known bad
    flows (a duplicate txn_id, a negative amount), still trains, and the training run records how many rows were set
    aside. ``scf compare`` re-reads the training dataset and evaluates on what it
    accepted; the rows it set aside were written nowhere beside the comparison (only
    train's own folder had them). quarantine.csv is now written to compare's --out, its
    sha256 in the audit entry, and the counts printed. (One training for both: each was
    a training of its own.)"""
    with_bad_flows(small_world_dir, tmp_path / "dirty")
    manifest = write_faulty_copy(tmp_path / "dirty", tmp_path / "faulty", seed=1)  # its rows go after the two
    uri, log = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "audit.jsonl"
    r = invoke("train", tmp_path / "faulty", "--tracking-uri", uri, "--out", tmp_path / "train", "--audit-log", log)
    assert r.exit_code == 0, r.output
    assert tracking.Store(uri).latest_run("train").data.metrics["rows_quarantined"] == len(manifest) + 2
    out = tmp_path / "compare"
    r = invoke("compare", "--tracking-uri", uri, "--out", out, "--audit-log", log)
    assert r.exit_code == 0, r.output
    assert "quarantined" in r.output and str(out / "quarantine.csv") in r.output.replace("\n", "")
    q = pd.read_csv(out / "quarantine.csv", dtype=str)
    first = pd.read_csv(small_world_dir / "flows.csv", dtype=str, nrows=1)["txn_id"].iloc[0]
    found = set(zip(q["file"], q["column"], q["value"]))
    assert {("flows.csv", "txn_id", first), ("flows.csv", "amount", "-5")} <= found  # the two known bad flows
    assert len(q[["file", "line"]].drop_duplicates()) == len(manifest) + 2
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["action"] == "compare"
    assert entry["details"]["output"]["quarantine.csv"] == hashlib.sha256((out / "quarantine.csv").read_bytes()).hexdigest()


def test_a_dataset_without_a_core_enterprise_trains_compares_scores_and_monitors(small_world_dir, tmp_path):
    """A park or an association with no core enterprise (脱核 batch credit needs none):
    `scf train` stopped with a traceback (the propagation model fitted on zero rows, then
    the evaluation's empty tables). Now the propagation model has nothing to learn and
    scores no firm (its PD is empty, as the contract says for a model that could not
    score), the de-coupled and hybrid models train as always, and compare, score and
    monitor run end to end."""
    data = tmp_path / "data"
    shutil.copytree(small_world_dir, data)
    firms = pd.read_csv(data / "firms.csv", dtype=str, keep_default_na=False)
    assert (firms["is_core"] == "true").any()
    firms.assign(is_core="false", core_rating="").to_csv(data / "firms.csv", index=False)
    uri, log = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "audit.jsonl"
    common = ("--tracking-uri", uri, "--audit-log", log)
    r = invoke("train", data, "--out", tmp_path / "train", *common)
    assert r.exit_code == 0, r.output
    overall = pd.read_csv(tmp_path / "train" / "evaluation" / "overall.csv").set_index("model")
    assert overall.loc["pd_propagation", "n"] == 0 and overall.loc["pd_decoupled", "auc"] > 0.6
    r = invoke("compare", "--promote", "all", "--out", tmp_path / "cmp", *common)
    assert r.exit_code == 0, r.output
    r = invoke("score", data, "--batch", data / "batch.csv", "--consents", data / "consents.csv", "--as-of", "2024-07-01",
               "--out", tmp_path / "score" / "limits.csv", "--no-memos", *common)
    assert r.exit_code == 0, r.output
    limits = pd.read_csv(tmp_path / "score" / "limits.csv")
    assert limits["pd_propagation"].isna().all() and limits["pd"].notna().mean() > 0.8
    assert set(limits["decision"]) <= set(DECISIONS) and (limits["limit_cny"] > 0).any()
    r = invoke("monitor", data, "--portfolio", tmp_path / "score" / "limits.csv", "--as-of", "2024-10-01",
               "--out", tmp_path / "mon", "--consents", data / "consents.csv", *common)
    assert r.exit_code == 0, r.output
    assert pd.read_csv(tmp_path / "mon" / "portfolio.csv")["pd"].notna().any()
