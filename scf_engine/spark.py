"""The catalogue on Apache Spark: a session, and an engine that runs the DuckDB SQL as Spark SQL.

Why sqlglot and not Ibis: the catalogue (``models/features.yaml``) and
:mod:`scf_engine.features.flows` are already DuckDB SQL text that risk committees read and
the golden tests pin; sqlglot parses that text and writes Spark SQL, so the definitions
stay where they are and nothing is written twice. Ibis would have meant re-expressing
every feature in its expression API (a second copy until the SQL was deleted) and
re-validating the embedded path the demo's limits depend on.

What the dialect translation adds on top of sqlglot, each a DuckDB semantic Spark spells
differently (:func:`to_spark`):

* ``/`` is DuckDB's floating division (a quotient of decimals is a DOUBLE); Spark keeps
  decimal quotients as decimals with a few digits of scale, so both sides become DOUBLE;
* DuckDB ``ENUM`` casts (memory savers for ``purpose`` and ``dir``) become plain strings:
  ``TRY_CAST(x AS ENUM(...))`` is ``CASE WHEN x IN (...) THEN x END``;
* ``list_sum(list)`` (an order-fixed sum) is Spark's ``aggregate``;
* a stored table's ``ORDER BY`` (DuckDB reads it back in that order for one-thread sums)
  is dropped: Spark keeps no order, and its sums agree to far better than 1e-9.

The session (:func:`session`) runs with ANSI mode off, because DuckDB returns NULL for a
division by zero where ANSI Spark raises, and the catalogue relies on the NULL.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlglot
from sqlglot import exp

from scf_engine.duck import MONEY

MASTER_ENV = "SCF_SPARK_MASTER"
# where results come back through Parquet (a folder, or a URI pyarrow can read: hdfs://,
# s3://, file://); see SparkEngine.df
HANDOFF_ENV = "SCF_SPARK_HANDOFF"
# small-machine defaults: a handful of shuffle partitions (the default 200 makes a tiny
# world spend its time scheduling empty tasks), no web UI, DuckDB's NULL-on-zero division
DEFAULTS = {
    "spark.sql.shuffle.partitions": "8",
    "spark.default.parallelism": "8",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.ansi.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
}

# in local mode the driver JVM is the executor too: Spark's 1g default heap ran out on a
# 400-firm world (the Arrow collect then waited forever on a dead thread); an out-of-memory
# JVM now exits, so the command fails with an error instead of hanging
LOCAL_DEFAULTS = {
    "spark.driver.memory": "2g",
    "spark.driver.extraJavaOptions": "-XX:+ExitOnOutOfMemoryError",
}


def session(master: str | None = None, *, app_name: str = "scf-engine", conf: dict | None = None):
    """A Spark session: ``master`` (``local[*]``, ``spark://host:7077``, ``yarn``, ``k8s://...``),
    else ``$SCF_SPARK_MASTER``, else ``local[*]``; a ``sc://`` URL is a Spark Connect server.
    ``conf`` overrides :data:`DEFAULTS` (e.g. executor memory on a cluster)."""
    from pyspark.sql import SparkSession

    if master is None and not os.environ.get(MASTER_ENV) and not conf:
        active = SparkSession.getActiveSession()
        if active is not None:  # a caller's session (a notebook, a test module): use it as it is
            return active
    master = master or os.environ.get(MASTER_ENV) or "local[*]"
    if master.startswith("local"):
        # Python workers (mapInPandas) run this interpreter, not whatever python3 is first
        # on the PATH (which may lack pyarrow and the engine); on a cluster the executors'
        # Python must have scf-engine installed (README)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    builder = builder.remote(master) if master.startswith("sc://") else builder.master(master)
    local = {} if not master.startswith("local") else LOCAL_DEFAULTS
    for k, v in {**DEFAULTS, **local, **(conf or {})}.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    if not master.startswith("sc://"):
        spark.sparkContext.setLogLevel("ERROR")
    return spark


def _double(node: exp.Expression) -> exp.Expression:
    return exp.Cast(this=node, to=exp.DataType.build("DOUBLE"))


def _distinct_count(node: exp.Expression) -> exp.Expression | None:
    """``count(DISTINCT x) [FILTER (WHERE c)]`` as ``size(collect_set(CASE WHEN c THEN x END))``:
    the same count (both skip NULLs), but Spark plans several distinct counts in one
    query by repeating every input row once per count (an Expand), where a set per group
    is one pass. Only the one-argument form outside a window is rewritten."""
    inner, cond = node, None
    if isinstance(node, exp.Filter):
        inner, cond = node.this, node.expression.this
    if not (isinstance(inner, exp.Count) and isinstance(inner.this, exp.Distinct)):
        return None
    if len(inner.this.expressions) != 1 or isinstance(node.parent, exp.Window):
        return None
    value = inner.this.expressions[0].copy()
    if cond is not None:
        value = exp.Case(ifs=[exp.If(this=cond.copy(), true=value)])
    return exp.func("size", exp.func("collect_set", value))


def _rewrite(node: exp.Expression) -> exp.Expression:
    """One node of the DuckDB tree in Spark's terms (see the module docstring)."""
    if isinstance(node, (exp.Cast, exp.TryCast)) and node.to.this == exp.DataType.Type.ENUM:
        labels = node.to.expressions
        if isinstance(node.this, exp.Literal):
            return node.this
        return exp.Case(ifs=[exp.If(this=exp.In(this=node.this.copy(), expressions=[l.copy() for l in labels]),
                                    true=node.this.copy())])
    if isinstance(node, exp.Div) and not getattr(node, "_scf_done", False):
        out = exp.Div(this=_double(node.this), expression=_double(node.expression))
        out._scf_done = True
        return out
    distinct = _distinct_count(node)
    if distinct is not None:
        return distinct
    if isinstance(node, exp.Order) and isinstance(node.parent, (exp.Sum, exp.Avg)):
        # sum(x ORDER BY y): DuckDB's order for a sum of doubles to give the same bits on
        # any plan; Spark has no ordered aggregates (its sums were never in a set order)
        return node.this
    if isinstance(node, exp.Anonymous) and node.name.lower() == "list_sum":
        arr = node.expressions[0].sql(dialect="spark")
        return sqlglot.parse_one(f"AGGREGATE({arr}, CAST(0 AS DOUBLE), (acc, v) -> acc + v)", read="spark")
    return node


@lru_cache(maxsize=256)
def to_spark(sql: str, *, stored: bool = False) -> str:
    """DuckDB SQL as Spark SQL. ``stored``: the query fills a table, so a top-level
    ORDER BY is dropped (see the module docstring)."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    if stored and tree.args.get("order") is not None:
        tree.set("order", None)
    tree = tree.transform(_rewrite)
    return tree.sql(dialect="spark")


def _local(spark) -> bool:
    """A classic session on a ``local`` master: its executors write where this process
    reads. A Spark Connect session is never taken for local, even if its server's master
    is (the server may be another machine: its temp folder is not ours)."""
    if type(spark).__module__.startswith("pyspark.sql.connect"):
        return False
    try:
        return str(spark.conf.get("spark.master")).startswith("local")
    except Exception:
        return False


def _through_parquet(df, handoff: str) -> pd.DataFrame:
    """Write ``df`` under ``handoff`` from the executors, read it back here, remove it."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    if "://" in handoff:
        fs, root = pafs.FileSystem.from_uri(handoff)
    else:
        fs, root = pafs.LocalFileSystem(), os.path.abspath(handoff)
    folder = f"{root.rstrip('/')}/scf-spark-{uuid.uuid4().hex}"
    target = folder if "://" not in handoff else f"{handoff.rstrip('/')}/{folder.rsplit('/', 1)[1]}"
    try:
        df.write.parquet(target)
        parts = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(folder))
                       if i.type == pafs.FileType.File and i.base_name.endswith(".parquet"))
        frames = [pq.read_table(p, filesystem=fs) for p in parts]
        table = pa.concat_tables(frames) if frames else None
        if table is None:  # Spark wrote no part file: an empty result with the query's columns
            return pd.DataFrame({f.name: pd.Series(dtype=object) for f in df.schema.fields})
        return table.to_pandas()
    finally:
        fs.delete_dir_contents(folder, missing_dir_ok=True)
        try:
            fs.delete_dir(folder)
        except OSError:
            pass


class SparkEngine:
    """The catalogue's statements on a Spark session (see :mod:`scf_engine.sqlengine`).

    ``tables``: name -> Parquet path read instead of the frame the caller registers under
    that name (a lake's partitioned table; for ``flows`` it must carry the ``_i`` row
    number of delivery order). Pandas frames travel to Spark through Arrow.

    ``handoff``: a folder (or a URI pyarrow reads: ``hdfs://``, ``s3://``) that the
    executors write each result to and this process reads back (:meth:`df`); ``None``:
    none, results come back through Spark's Arrow collect; ``"auto"`` (default):
    ``$SCF_SPARK_HANDOFF``, else the temp folder on a ``local`` master, else none. ``master``: the master or Spark Connect URL
    the session was opened on, for the records (:func:`scf_engine.sqlengine.engine_label`)."""

    dialect = "spark"

    def __init__(self, spark, *, tables: dict | None = None, handoff: str | None = "auto", master: str | None = None):
        self.spark = spark
        self.master = master  # what the session was asked for (a Spark Connect session cannot say)
        self.tables = dict(tables or {})
        self.cached: dict = {}
        if handoff == "auto":
            handoff = os.environ.get(HANDOFF_ENV) or (tempfile.gettempdir() if _local(spark) else None)
        self.handoff = handoff

    def register(self, name: str, frame: pd.DataFrame, *, money=(), row_number: str | None = None) -> None:
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        if name in self.tables:
            df = self.spark.read.parquet(str(self.tables[name]))
        else:
            frame = frame.reset_index(drop=True)
            if row_number:
                frame = frame.assign(**{row_number: np.arange(1, len(frame) + 1, dtype=np.int64)})
            df = self.spark.createDataFrame(frame)
        for f in df.schema.fields:  # the contract's dates are dates; money exact, as in DuckDB
            if isinstance(f.dataType, (T.TimestampType, T.TimestampNTZType)):
                df = df.withColumn(f.name, F.to_date(F.col(f.name)))
            elif f.name in money:
                df = df.withColumn(f.name, F.col(f.name).cast(MONEY))
        if name not in self.tables:
            # a frame from pandas is a local relation embedded in every plan that reads it:
            # each query (and each analysis, on Spark Connect) converted its rows again, and
            # the cache compared whole relations when matching plans. Checkpointed once, the
            # view is a scan of blocks the executors hold. Through Connect (400-firm world,
            # local server) flow_features took 62 s, then 43 s in a warm session; with the
            # checkpoint 32 s and 17 s; a `count(*)` over 200,000 pandas rows, 0.5 s against
            # 0.11 s. The rows are the driver's own (it built the frame), so a lost executor
            # fails the query rather than changing a result. (No local relation is left for
            # Catalyst's ConvertToLocalRelation to evaluate row by row either: leaving that
            # rule out had cut flow_features on a classic session from 30-48 s to 21-35 s;
            # with the checkpoint it made no difference, 33-35 s and 15-16 s either way.)
            df = df.localCheckpoint()
        df.createOrReplaceTempView(name)

    def create(self, name: str, sql: str, *, shared: bool = False) -> None:
        """``shared``: as :meth:`scf_engine.sqlengine.DuckDBEngine.create` takes it (every
        view of the session is seen by every query here)."""
        self.drop(name)
        df = self.spark.sql(to_spark(sql, stored=True)).persist()
        df.createOrReplaceTempView(name)
        self.cached[name] = df

    def df(self, sql: str) -> pd.DataFrame:
        """The query's rows as a pandas frame, in the query's order.

        Written by the executors to Parquet under :attr:`handoff` and read back with
        pyarrow, rather than collected: Spark's ``toPandas`` gathers every Arrow batch in the
        driver JVM's heap before Python sees one, and at 100 million flow rows the
        12-month trade legs the ring search reads did not fit a 9 GB heap
        (``collectAsArrowToPython``; bench/bench_spark.py). Part files are numbered in the
        sorted order of the partitions and pyarrow reads a folder's files in path order, so
        an ORDER BY holds."""
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        df = self.spark.sql(to_spark(sql))
        df = df.select([F.col(f.name).cast("double") if isinstance(f.dataType, T.DecimalType) else F.col(f.name)
                        for f in df.schema.fields])
        out = df.toPandas() if self.handoff is None else _through_parquet(df, self.handoff)
        # Spark Connect puts its query metrics in attrs, which pandas then writes into a
        # Parquet file's metadata as JSON (and cannot: `scf features --out` failed)
        out.attrs.clear()
        return out

    def drop(self, *names: str) -> None:
        """Unpersist every named table first, then drop the views: on Spark Connect a
        DataFrame is a plan the server re-analyses, so unpersisting ``_parties`` after the
        view ``_trade`` it reads was dropped failed (TABLE_OR_VIEW_NOT_FOUND)."""
        for n in names:
            cached = self.cached.pop(n, None)
            if cached is not None:
                cached.unpersist()
        for n in names:
            self.spark.catalog.dropTempView(n)

    def unregister(self, name: str) -> None:
        self.spark.catalog.dropTempView(name)

    def df_in_parts(self, sql: str, table: str, key: str, bounds) -> pd.DataFrame:
        """The query over the whole table (:meth:`scf_engine.sqlengine.DuckDBEngine.df_in_parts`
        splits it to use more cores at one thread each; Spark's aggregates are its own)."""
        return self.df(sql.replace("{rows}", table))

    def aggregate_in_parts(self, exprs, table: str, key: str, bounds) -> pd.DataFrame:
        """One statement (:meth:`scf_engine.sqlengine.DuckDBEngine.aggregate_in_parts`
        cuts a wide select list for DuckDB's hash aggregate; Spark's is its own)."""
        return self.df(f"SELECT {', '.join([key, *exprs])} FROM {table} GROUP BY {key}")

    @contextmanager
    def deterministic(self):
        yield self

    def close(self) -> None:
        for n in list(self.cached):
            self.drop(n)


__all__ = ["session", "to_spark", "SparkEngine", "DEFAULTS", "MASTER_ENV", "HANDOFF_ENV"]
