"""scf train --tune: a budgeted search on time-ordered, firm-disjoint folds, each trial a child run."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from scf_engine import policies, tracking
from scf_engine.cli import app
from scf_engine.errors import PolicyError
from scf_engine.learners.tune import time_folds
from scf_engine.simulate import WorldConfig, simulate, write_dataset

runner = CliRunner()


def test_folds_are_time_ordered_and_firm_disjoint():
    dates = pd.to_datetime(["2023-01-01", "2023-04-01", "2023-07-01", "2023-10-01"])
    as_of = np.repeat(dates, 50)
    firms = np.tile([f"F{i}" for i in range(50)], 4)
    folds = time_folds(as_of, firms, 3, seed=1)
    assert len(folds) == 3
    for k, (train, valid) in enumerate(folds):
        assert (as_of[valid] == dates[-1 - k]).all()
        assert as_of[train].max() < dates[-1 - k]
        assert not set(firms[train]) & set(firms[valid])
    # each fold validates on its own group of firms
    assert not set(firms[folds[0][1]]) & set(firms[folds[1][1]])


def test_a_bad_search_space_is_refused(tmp_path):
    data = yaml.safe_load((policies.policy_dir() / "lightgbm.yaml").read_text())
    data["tuning"]["space"]["num_leaves"] = [63, 7, "int"]
    with pytest.raises(PolicyError, match="tuning.space.num_leaves"):
        policies.validate("lightgbm", data)


def test_tune_searches_logs_each_trial_and_trains_with_the_best(tmp_path, monkeypatch):
    models = tmp_path / "models"
    shutil.copytree(policies.policy_dir(), models)
    data = yaml.safe_load((models / "lightgbm.yaml").read_text())
    data["tuning"].update(n_trials=3, timeout_s=600)
    (models / "lightgbm.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("SCF_MODELS_DIR", str(models))
    world = write_dataset(simulate(WorldConfig(n_firms=400, seed=7, n_months=36)), tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = runner.invoke(app, ["train", str(world), "--tune", "--tracking-uri", uri, "--out", str(tmp_path / "train")])
    assert r.exit_code == 0, r.output
    store = tracking.Store(uri)
    exp = store.client.get_experiment_by_name(tracking.EXPERIMENTS["train"])
    trials = store.client.search_runs([exp.experiment_id], "tags.scf_role = 'tuning_trial'")
    for kind in ("decoupled", "hybrid"):
        mine = [t for t in trials if t.data.tags["model_kind"] == kind]
        assert len(mine) == 3
        [best] = [t for t in mine if t.data.tags["best"] == "true"]
        assert best.data.metrics["mean_fold_auc"] == max(t.data.metrics["mean_fold_auc"] for t in mine), \
            [(t.data.metrics, t.data.tags) for t in mine]
        model, _ = store.load_model(kind, "challenger")
        assert model.params["num_leaves"] == int(best.data.params["num_leaves"])
        assert np.isclose(model.params["learning_rate"], float(best.data.params["learning_rate"]))
