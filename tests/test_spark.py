"""The catalogue on Spark: the same features, the same limits, from one definition.

One local Spark session for the module (``local[2]``, two shuffle partitions, no UI): a
session costs tens of seconds to start, a query on a few hundred firms well under one.
The features' DuckDB SQL reaches Spark only through sqlglot (scf_engine.spark.to_spark),
so these tests are what keeps the two engines in step.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from scf_engine.catalogue import load_catalogue
from scf_engine.cli import app
from scf_engine.spark import session, to_spark

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# a few hundred firms: one shuffle partition, no whole-stage code generation and no adaptive
# re-planning (each costs more than it saves at this size; results are the same)
TEST_CONF = {"spark.sql.shuffle.partitions": "1", "spark.default.parallelism": "2", "spark.sql.codegen.wholeStage": "false",
             "spark.sql.adaptive.enabled": "false"}


@pytest.fixture(scope="module")
def spark():
    s = session("local[2]", conf=TEST_CONF)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory):
    """A Spark Connect server on loopback (pyspark ships its jar and spark-submit), its
    Python workers on this interpreter; the URL a bank would pass as --spark-master."""
    import pyspark

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = Path(pyspark.__file__).parent
    log = tmp_path_factory.mktemp("connect") / "server.log"
    env = {**os.environ, "SPARK_HOME": str(home), "PYSPARK_PYTHON": sys.executable}
    cmd = [str(home / "bin" / "spark-submit"), "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
           "--master", "local[1]", "--driver-memory", "2g", "--conf", f"spark.connect.grpc.binding.port={port}",
           "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.shuffle.partitions=1", "spark-internal"]
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, f"Spark Connect server exited: {log.read_text()[-2000:]}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(1)
        else:
            raise AssertionError(f"Spark Connect server not listening after 180 s: {log.read_text()[-2000:]}")
        yield f"sc://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def world_dir(small_world_dir):
    return small_world_dir


def assert_same_features(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal to a relative 1e-9, NaN exactly where NaN, column by column."""
    assert list(a.columns) == list(b.columns) and list(a.index) == list(b.index)
    for c in a.columns:
        x, y = a[c].to_numpy(np.float64), b[c].to_numpy(np.float64)
        assert (np.isnan(x) == np.isnan(y)).all(), f"{c}: empty on one engine only"
        m = ~np.isnan(x)
        np.testing.assert_allclose(y[m], x[m], rtol=1e-9, atol=0, err_msg=c)


def test_every_catalogue_flow_feature_is_the_same_on_spark(world_dir, spark, tmp_path):
    """scf features on both engines: one row per firm, a column per catalogue flow feature,
    equal values; each run leaves an audit entry naming its engine."""
    log = tmp_path / "audit.jsonl"
    for engine in ("duckdb", "spark"):
        r = invoke("features", world_dir, "--engine", engine, "--out", tmp_path / f"{engine}.parquet", "--audit-log", log)
        assert r.exit_code == 0, r.output
    duck = pd.read_parquet(tmp_path / "duckdb.parquet").set_index("firm_id")
    on_spark = pd.read_parquet(tmp_path / "spark.parquet").set_index("firm_id")
    cat = load_catalogue()
    flow_kinds = [s.name for s in cat.specs if s.kind != "code" or s.function not in ("graph", "registry", "propagation")]
    assert list(duck.columns) == flow_kinds  # every flow feature of the catalogue, in its order
    firms = pd.read_csv(world_dir / "firms.csv", dtype=str)["firm_id"]
    assert sorted(duck.index) == sorted(firms)
    # nothing vacuous: every column the engines compute has values; the closed-loop
    # features (pandas over financings.csv, the same code on both engines) are empty on a
    # world without financings, which is what they must be there
    closed_loop = {x.name for x in cat.specs if x.kind == "code" and x.function == "closed_loop"}
    assert closed_loop and duck[sorted(closed_loop)].isna().all().all()
    assert (duck.drop(columns=sorted(closed_loop)).notna().sum() > 0).all()
    assert_same_features(duck, on_spark)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["details"]["engine"] for e in entries] == ["duckdb", f"spark {spark.conf.get('spark.master')}"]
    assert all(e["action"] == "features" and e["details"]["firms_count"] == len(firms) for e in entries)


def test_the_dialect_rules_keep_duckdb_meaning():
    """Division is DuckDB's (a double even between decimals), ENUM casts are strings, an
    order-fixed list sum is Spark's aggregate; a stored table keeps no ORDER BY; a distinct
    count is the size of a set; a sum's ORDER BY goes, a window's stays."""
    sql = to_spark("SELECT sum(a) / nullif(sum(b), 0) AS r, TRY_CAST(p AS ENUM('x', 'y')) AS e, "
                   "list_sum(list_sort(list(v))) AS s FROM t")
    assert "CAST(SUM(a) AS DOUBLE) / CAST(NULLIF(SUM(b), 0) AS DOUBLE)" in sql
    assert "CASE WHEN p IN ('x', 'y') THEN p END" in sql and "ENUM" not in sql
    assert "AGGREGATE(" in sql and "LIST_SUM" not in sql
    assert "ORDER BY" not in to_spark("SELECT * FROM p ORDER BY firm_id, k", stored=True)
    # a distinct count is a set's size (no row-repeating Expand), its filter inside the set
    distinct = to_spark("SELECT count(DISTINCT c) FILTER (WHERE k < 3) AS a, count(DISTINCT c) AS b FROM t GROUP BY f")
    assert "SIZE(COLLECT_SET(CASE WHEN k < 3 THEN c END)) AS a" in distinct and "SIZE(COLLECT_SET(c)) AS b" in distinct
    # a sum's order (DuckDB's, for the same bits on any plan) has no Spark form: dropped there;
    # a window's order is kept
    ordered = to_spark("SELECT f, sum(a * b ORDER BY c, d) FILTER (WHERE b IS NOT NULL) AS s, "
                       "lead(a) OVER (PARTITION BY f ORDER BY k) AS n FROM t GROUP BY f")
    assert "SUM(a * b) FILTER(WHERE NOT b IS NULL) AS s" in ordered and "OVER (PARTITION BY f ORDER BY k" in ordered


def test_results_come_back_through_parquet_in_the_query_order(spark, tmp_path):
    """A local session hands results over through Parquet files the executors write (not
    the driver's Arrow collect, whose heap was the wall at 100M flow rows): rows across
    several part files keep the ORDER BY, an empty result keeps its columns, the folder
    is left empty, and the values equal the Arrow collect's."""
    from scf_engine.spark import SparkEngine

    assert SparkEngine(spark).handoff is not None  # local master: on by default
    eng = SparkEngine(spark, handoff=str(tmp_path))
    eng.register("_nums", pd.DataFrame({"id": np.arange(20000, dtype=np.int64)}))
    sql = "SELECT id, id % 7 AS g, CAST(id AS DECIMAL(18,2)) / 3 AS q FROM _nums ORDER BY g DESC, id"
    spark.conf.set("spark.sql.shuffle.partitions", "4")  # the sort's output in several part files
    try:
        got = eng.df(sql)
        want = SparkEngine(spark, handoff=None).df(sql)  # the Arrow collect, for comparison
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", TEST_CONF["spark.sql.shuffle.partitions"])
    pd.testing.assert_frame_equal(got, want)
    assert list(got["g"].iloc[[0, -1]]) == [6, 0] and got["id"].is_unique and len(got) == 20000
    assert got.groupby("g", sort=False)["id"].apply(lambda s: s.is_monotonic_increasing).all()
    empty = eng.df("SELECT id, id * 2 AS twice FROM _nums WHERE id > 100000")
    assert list(empty.columns) == ["id", "twice"] and len(empty) == 0
    eng.unregister("_nums")
    assert list(tmp_path.iterdir()) == []


def test_unknown_engine_is_one_line(world_dir, tmp_path):
    r = invoke("features", world_dir, "--engine", "hive", "--out", tmp_path / "f.parquet")
    assert r.exit_code == 2 and "--engine 'hive'" in r.output and "Traceback" not in r.output


def test_a_batch_scored_on_spark_gives_the_same_limits(world_dir, spark, connect_url, tmp_path):
    """scf score --engine spark (features on Spark, LightGBM and SHAP per partition with
    mapInPandas, then the decision core) writes the limits.csv of scf score, byte for byte,
    and records its batch as every batch is (memos, MLflow run, audit entry), with the
    engine named on both records: run through a Spark Connect URL, as a cluster offers it,
    where the models and their SHAP reasons run in the server's Python workers. On the
    classic local session, the per-partition models give the decision core's PDs and
    contributions exactly (the classic session's features are compared column by column
    by test_every_catalogue_flow_feature_is_the_same_on_spark; a whole classic batch
    computed them a second time, ~40-60 s of the suite, for nothing more)."""
    from scf_engine.learners.predict import has_flows
    from scf_engine.pipelines.score import load_for_decisions
    from scf_engine.pipelines.score_spark import spark_model_outputs

    uri, log = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "audit.jsonl"
    for args in (("train", world_dir, "--out", tmp_path / "train"), ("compare", "--promote", "all", "--out", tmp_path / "cmp")):
        r = invoke(*args, "--tracking-uri", uri, "--audit-log", log)
        assert r.exit_code == 0, r.output
    common = ("--batch", world_dir / "batch.csv", "--consents", world_dir / "consents.csv", "--tracking-uri", uri,
              "--audit-log", log, "--memo-formats", "md")
    r = invoke("score", world_dir, *common, "--out", tmp_path / "duck" / "limits.csv")
    assert r.exit_code == 0, r.output
    duck = (tmp_path / "duck" / "limits.csv").read_bytes()
    limits = pd.read_csv(tmp_path / "duck" / "limits.csv", dtype={"firm_id": str})
    assert limits["pd"].notna().sum() >= 10 and limits["reasons"].str.len().gt(0).sum() >= 10  # real decisions

    # the classic session: each partition's models answer as the models themselves
    loaded = load_for_decisions(world_dir, consents=world_dir / "consents.csv", tracking_uri=uri)
    ids = pd.read_csv(world_dir / "batch.csv", dtype=str)["firm_id"]
    got = spark_model_outputs(spark, loaded.models, loaded.data.table, ids, partitions=3)
    rows = loaded.data.table.loc[loaded.data.table.index.intersection(pd.Index(ids.unique()))]
    flows = has_flows(rows).to_numpy()
    assert flows.sum() >= 10 and sorted(got.pds.index) == sorted(rows.index)
    for kind, mask in (("decoupled", flows), ("hybrid", np.ones(len(rows), bool))):
        model, x = loaded.models[kind], rows.loc[mask, loaded.models[kind].features_].astype("float64")
        np.testing.assert_array_equal(got.pds.loc[x.index, f"pd_{kind}"].to_numpy(), model.predict_pd(x))
        np.testing.assert_array_equal(got.contributions[kind].loc[x.index].to_numpy(), model.contributions(x).to_numpy())
    assert got.pds.loc[rows.index[~flows], "pd_decoupled"].isna().all()

    # the whole batch through a Spark Connect URL, in its own process (a classic session
    # is open in this one)
    r = subprocess.run([sys.executable, "-m", "scf_engine.cli", "score", str(world_dir), *map(str, common),
                        "--out", str(tmp_path / "connect" / "limits.csv"), "--engine", "spark", "--spark-master", connect_url],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "connect" / "limits.csv").read_bytes() == duck
    memos = sorted(p.name for p in (tmp_path / "connect" / "memos").iterdir())
    assert memos and memos == sorted(p.name for p in (tmp_path / "duck" / "memos").iterdir())
    # the features came back through Connect itself (no hand-off folder is assumed: the
    # server's disk is not ours), and the records name the URL
    scored = [json.loads(line) for line in log.read_text().splitlines() if json.loads(line)["action"] == "score"]
    assert len(scored) == 2 and scored[0]["details"]["output"]["limits.csv"] == scored[1]["details"]["output"]["limits.csv"]
    assert [e["details"]["engine"] for e in scored] == ["duckdb", f"spark {connect_url}"]
    import mlflow
    assert mlflow.MlflowClient(uri).get_run(scored[1]["details"]["mlflow_run_id"]).data.params["feature_engine"] == \
        f"spark {connect_url}"
