"""The analyst notebooks run top to bottom on the sample data, reading from MLflow, so they
never rot. Outputs are not committed."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from typer.testing import CliRunner

from scf_engine.cli import app

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    home = tmp_path_factory.mktemp("nb")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    old = os.getcwd()
    os.chdir(home)
    try:
        runner = CliRunner()
        r = runner.invoke(app, ["train", str(SAMPLE), "--tracking-uri", uri, "--out", str(home / "train")])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["compare", "--tracking-uri", uri, "--promote", "all", "--out", str(home / "compare")])
        assert r.exit_code == 0, r.output
    finally:
        os.chdir(old)
    return uri


@pytest.mark.parametrize("name", ["01_train_and_compare.ipynb", "02_explain_a_firm.ipynb"])
def test_notebook_runs_on_the_sample(store, name, monkeypatch):
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("SCF_DATA", str(SAMPLE))
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2
