"""Shared fixtures: small simulated worlds written once per test session.

Worlds are small (hundreds of firms) so the whole suite stays fast on two cores; the
tests that need statistical power use the ``medium_world`` fixture.
"""

from __future__ import annotations

import os

# OpenMP threads (LightGBM's) wait passively in the test run: its two xdist workers share 2
# cores, and libgomp's default spinning between parallel regions makes spinning and working
# threads take turns. Measured with one core busy, fitting a 3,000-firm hybrid model took
# 1.6-1.8 s passive against 2.9-3.2 s spinning (and 4-17 s for fits during another suite);
# on an idle machine passive waiting is the slower one (2.2 s against 0.9 s), so the
# package itself leaves libgomp's default. Before anything loads lightgbm; the same model
# either way (LightGBM's answers do not depend on its thread count here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# and one OpenMP thread where the engine does not name a count (predictions, SHAP; the
# fits keep lightgbm.yaml's num_threads): with two workers on two cores a second thread
# only waits for a core. Whole suite, same hour, same machine: 780 s wall, 1,529
# worker-seconds and 1,159 user CPU-seconds by default; 753 s, 1,461 and 1,099 with one
# thread. Every answer is the same (the golden demo limits included).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The suite's `mlflow server`s (real ones, on loopback) run without MLflow 3's job runner:
# a second process importing MLflow at every start, for jobs no test submits (a start
# took 7.5-9.5 s without it against 10-11 s with it, on a quiet machine).
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
# DuckDB on one thread per worker too ($SCF_DUCKDB_THREADS; results do not depend on it):
# test_pipelines and test_reliability run side by side, as the two workers run them,
# took 243/246 s and 229/230 s (two runs) with DuckDB's default threads, 232 s and 221 s
# with one.
os.environ.setdefault("SCF_DUCKDB_THREADS", "1")

from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from scf_engine.simulate import WorldConfig, simulate, write_dataset  # noqa: E402

# Third-party samples live beside the checkout (../shared/external-data), never copied in;
# SCF_EXTERNAL_DATA points elsewhere (a clone made in another folder). Missing: the tests fail.
EXTERNAL = Path(os.environ.get("SCF_EXTERNAL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "external-data")

# How the two xdist workers share the suite (``make test``: ``-n 2 --dist loadscope
# --no-loadscope-reorder``): a module at a time, so the tests sharing an expensive
# module-scoped fixture (a world trained, compared and scored; a Spark session and a
# Spark Connect server) run on one worker. Handed out test by test (``--dist load``), both
# workers built them: the reliability, monitor and pipelines worlds were each trained
# twice, and two Spark JVMs ran at once on two cores. (``--dist loadgroup`` with
# ``xdist_group`` marks would group finer, but with pytest 9.2 xdist 3.8 no longer sees
# the marks: pytest-dev/pytest-xdist#1386.) The longest modules go first (seconds of one
# worker on a busy 2-core machine), so the other worker works through the rest meanwhile.
LONGEST_FIRST = (  # worker-seconds in a whole-suite run on 2 cores (d71d4ef, one OpenMP thread: 753 s wall)
    "test_pipelines",  # 285 s: a trained, compared and scored world, and many trainings
    "test_reliability",  # 265 s: tracking servers killed mid-run
    "test_spark",  # 265 s before its frames were checkpointed (alone: 196 -> 150 s)
    "test_monitor",  # 175 s
    "test_packaging",  # 108 s: the wheel's demo run, then the notebooks on its store
    "test_serve",  # 94 s
    "test_recalibrate",  # 63 s
)


def pytest_collection_modifyitems(config, items):
    """The modules of :data:`LONGEST_FIRST` moved ahead of the rest, in its order (a
    stable sort: within a module, the file's order; the rest in collection order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def module_rank(item) -> int:
        module = getattr(item, "module", None)
        return rank.get(module.__name__.rsplit(".", 1)[-1], len(rank)) if module else len(rank)

    items.sort(key=module_rank)


@pytest.fixture(scope="session", autouse=True)
def audit_log_outside_the_checkout(tmp_path_factory):
    """Every command records its reads of firm data in the audit log (default
    audit/audit.jsonl in the working directory); the suite's go to a temporary file."""
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    old = os.environ.get("SCF_AUDIT_LOG")
    os.environ["SCF_AUDIT_LOG"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SCF_AUDIT_LOG", None)
    else:
        os.environ["SCF_AUDIT_LOG"] = old


@pytest.fixture(scope="session")
def small_world_dir(tmp_path_factory) -> Path:
    """400 firms, 36 months, CSV."""
    world = simulate(WorldConfig(n_firms=400, seed=7, n_months=36))
    return write_dataset(world, tmp_path_factory.mktemp("small") / "data", fmt="csv")


@pytest.fixture(scope="session")
def medium_world(tmp_path_factory):
    """1,500 firms, 48 months: enough defaults for statistical checks."""
    world = simulate(WorldConfig(n_firms=1500, seed=11))
    path = write_dataset(world, tmp_path_factory.mktemp("medium") / "data", fmt="compact")
    return world, path


@pytest.fixture(scope="session")
def explain_world(tmp_path_factory) -> dict:
    """600 firms, 36 months: a fitted propagation model and a de-coupled LightGBM, with
    the chain at the held-out date (shared by the explanation and memo tests)."""
    from scf_engine.assemble import assemble, split_dates
    from scf_engine.ingest import load_dataset
    from scf_engine.pipelines import fit_propagation_and_decoupled

    path = write_dataset(simulate(WorldConfig(n_firms=600, seed=3, n_months=36)),
                         tmp_path_factory.mktemp("explain_world") / "data")
    ds = load_dataset(path)
    dates = ds.snapshot_dates()
    data = assemble(ds, dates)
    train, test = split_dates(dates, n_test=1)
    prop, dec, tr, te = fit_propagation_and_decoupled(data, train, test)
    return {"as_of": test[0], "chain": data[test[0]].chain, "prop": prop, "dec": dec, "tr": tr,
            "te": te[te.history_months.notna()], "quarantine": ds.report}


def assert_policy_rejects(tmp_path: Path, name: str, line: str, bad_values, match: str) -> Path:
    """A copy of the policy files under ``tmp_path`` where ``name``.yaml's ``line`` (``key:
    value``, as shipped) set to each of ``bad_values`` makes ``policies.load`` refuse the
    file, naming ``match``; returns the copy's folder (the file restored as shipped)."""
    import shutil

    from scf_engine import policies
    from scf_engine.errors import PolicyError

    models = tmp_path / "models"
    shutil.copytree(policies.MODELS_DIR, models)
    path = models / f"{name}.yaml"
    text = path.read_text()
    assert f"{line}\n" in text
    key = line.split(":")[0]
    for bad in bad_values:
        path.write_text(text.replace(f"{line}\n", f"{key}: {bad}\n"))
        with pytest.raises(PolicyError, match=match):
            policies.load(name, models)
    path.write_text(text)
    return models


def write_csv(folder: Path, name: str, rows: list[dict] | pd.DataFrame, encoding: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    path = folder / f"{name}.csv"
    df.to_csv(path, index=False, encoding=encoding)
    return path


def with_bad_flows(data: Path, dirty: Path, duplicate: bool = True) -> int:
    """A copy of the dataset folder ``data`` at ``dirty`` with bad flow rows appended: a
    copy of the first flow (a duplicate txn_id) when ``duplicate``, then a flow with a
    negative amount (txn_id BAD-AMOUNT); returns the number of good flow rows, so the bad
    rows sit on lines n + 2 (and n + 3) of flows.csv."""
    import shutil

    shutil.copytree(data, dirty)
    flows = pd.read_csv(dirty / "flows.csv", dtype=str, keep_default_na=False)
    negative = flows.iloc[[1]].assign(txn_id="BAD-AMOUNT", amount="-5")
    bad = pd.concat([flows.iloc[[0]], negative]) if duplicate else negative
    pd.concat([flows, bad]).to_csv(dirty / "flows.csv", index=False)
    return len(flows)
