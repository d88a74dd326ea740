"""Where the catalogue's SQL runs: the embedded DuckDB, or Spark (:mod:`scf_engine.spark`).

The flow features are written once, as DuckDB SQL (``models/features.yaml`` and
:mod:`scf_engine.features.flows`). An engine is the small surface those statements need:

* ``register(name, frame, money=..., row_number=None)``: a pandas frame as a view, money
  columns as exact ``DECIMAL(18,2)`` (see :mod:`scf_engine.duck`), and optionally a
  1-based row number in delivery order (``_i``: the flow's identity for the authenticity
  search, the same on every engine);
* ``create(name, sql, shared=False)``: materialise a query as a table later queries read
  (``shared``: also by :meth:`DuckDBEngine.df_in_parts`' cursors);
* ``df(sql)``: a query's result as pandas (money back as float64);
* ``df_in_parts(sql, table, key, bounds)``: an aggregate per ``key`` of a shared table
  whose doubles must come out the same every run, as if under ``deterministic()``;
  ``aggregate_in_parts(exprs, table, key, bounds)``: the same for ``SELECT key, exprs
  GROUP BY key`` (DuckDB runs a wide select list as several narrower statements);
* ``drop(*names)``, ``deterministic()`` (the one-thread block for aggregates of doubles),
  ``close()``.

:class:`DuckDBEngine` runs the text as it is. :class:`scf_engine.spark.SparkEngine`
transpiles the same text to Spark SQL with sqlglot, so there is no second copy of a
definition to keep in step; ``tests/test_spark.py`` checks every catalogue feature agrees.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import duckdb
import numpy as np
import pandas as pd

from scf_engine.duck import connect, money_view, one_thread, register_money, unregister
from scf_engine.errors import RequestError

ENGINES = ("duckdb", "spark")


def key_bounds(keys, parts: int) -> list[str]:
    """The cut points splitting the distinct keys ``keys`` into ``parts`` ranges of
    (nearly) even size, as :meth:`DuckDBEngine.df_in_parts` takes them (none where there
    are fewer keys than parts): cut by the keys themselves, not by the machine's cores,
    so a range holds the same firms, and its doubles come out the same, on any machine."""
    keys = np.sort(np.asarray(keys, dtype=object).astype(str))
    return [str(keys[len(keys) * j // parts]) for j in range(1, parts)] if len(keys) >= parts else []


def key_range(key: str, lo: str | None, hi: str | None) -> tuple[str, dict]:
    """The filter ``lo <= key < hi`` (an open side where None) and its parameters."""
    where = " AND ".join([f"{key} >= $lo"] * (lo is not None) + [f"{key} < $hi"] * (hi is not None)) or "true"
    return where, {k: v for k, v in (("lo", lo), ("hi", hi)) if v is not None}


class DuckDBEngine:
    """The embedded engine: one DuckDB connection (the caller's, or a new one it closes).

    ``tables``: name -> Parquet path (a file, a folder or a glob) read instead of the
    frame the caller registers under that name, as :class:`scf_engine.spark.SparkEngine`
    reads a lake's table: DuckDB streams it and spills to disk, so flows too large for
    pandas in memory still reach the features. For ``flows`` the file must carry the
    ``_i`` row number of delivery order (the flow's identity for the ring search)."""

    dialect = "duckdb"

    def __init__(self, con: duckdb.DuckDBPyConnection | None = None, *, tables: dict | None = None):
        self.own = con is None
        self.con = con or connect()
        self.tables = dict(tables or {})

    def register(self, name: str, frame: pd.DataFrame, *, money=(), row_number: str | None = None) -> None:
        if name in self.tables:
            source = "read_parquet('{}')".format(str(self.tables[name]).replace("'", "''"))
            money_view(self.con, name, source, self.con.sql(f"SELECT * FROM {source} LIMIT 0").columns, money=money)
        elif money or row_number:
            register_money(self.con, name, frame, money=money, row_number=row_number)
        else:
            self.con.register(name, frame)

    def create(self, name: str, sql: str, *, shared: bool = False) -> None:
        """``shared``: a table of the database, not of this connection (a temporary table
        is seen by its own connection only), so :meth:`df_in_parts`' cursors read it."""
        self.con.execute(f"CREATE OR REPLACE {'' if shared else 'TEMP '}TABLE {name} AS {sql}")

    def df(self, sql: str) -> pd.DataFrame:
        return self.con.sql(sql).df()

    # A per-key aggregate of many columns runs as statements of at most this many
    # aggregates each, joined on the key (:meth:`aggregate_in_parts`): DuckDB's hash
    # aggregate slows with the width of its per-group state, and the panel's 50
    # aggregates (~150 states) over 2.4 million firm-months at 100,000 firms took 4.1-6.4 s
    # on one thread as one statement, 2.2-2.6 s as eight (the same bits: each key's rows
    # are read in the same order by each statement)
    AGGREGATES_PER_STATEMENT = 7

    def df_in_parts(self, sql: str, table: str, key: str, bounds) -> pd.DataFrame:
        """``sql`` (a query reading ``{rows}``, aggregating per ``key``) over the rows of
        the shared ``table`` (:meth:`create`) split by ``key`` at ``bounds`` (sorted
        values), the parts at once, each on one thread (a cursor of its own), the rows
        of all parts together.

        Why: an aggregate of doubles must run on one thread to give the same bits every
        run (:meth:`deterministic`), and the panel's ~150 aggregates per firm took a
        quarter of a snapshot's SQL on one core of two. A key's rows all fall in one
        part and are read there in the table's order, on one thread, so each key's
        answer is what one thread gives it over those rows; the split points are the
        caller's (from the data, not the machine), so the answers do not depend on the
        number of cores."""
        return self._in_parts([sql], table, key, bounds)

    def aggregate_in_parts(self, exprs, table: str, key: str, bounds) -> pd.DataFrame:
        """``SELECT key, exprs... FROM table GROUP BY key`` as :meth:`df_in_parts` runs a
        query (ranges of keys at once, each on one thread), the select list cut into
        statements of ``AGGREGATES_PER_STATEMENT`` expressions, each part's statements
        one after the other on its thread, joined on the key: the same rows and bits as
        the one statement (``exprs``: ``expression AS name`` each)."""
        exprs = list(exprs)
        m = max(1, -(-len(exprs) // self.AGGREGATES_PER_STATEMENT))  # statements, of even sizes
        cuts = [len(exprs) * j // m for j in range(m + 1)]
        sqls = [f"SELECT {', '.join([key, *exprs[a:b]])} FROM {{rows}} GROUP BY {key}" for a, b in zip(cuts, cuts[1:])]
        return self._in_parts(sqls, table, key, bounds)

    def _in_parts(self, sqls: list, table: str, key: str, bounds) -> pd.DataFrame:
        """Each part's rows: the queries ``sqls`` (each reading ``{rows}``, one row per
        ``key``) over the part, their columns side by side in the first's row order."""
        parts = [(None if i == 0 else bounds[i - 1], None if i == len(bounds) else bounds[i])
                 for i in range(len(bounds) + 1)]

        def part(cur, lo, hi) -> pd.DataFrame:
            where, params = key_range(key, lo, hi)
            rows = f"(SELECT * FROM {table} WHERE {where})"
            frames = [cur.execute(sql.replace("{rows}", rows), params).df() for sql in sqls]
            if len(frames) == 1:
                return frames[0]
            first = frames[0].set_index(key)
            return pd.concat([first, *(f.set_index(key).reindex(first.index) for f in frames[1:])],
                             axis=1).reset_index()

        with self.deterministic():
            if len(parts) == 1:
                return part(self.con, None, None)
            cursors = []  # opened here, each used by one worker only
            try:
                for _ in parts:
                    cursors.append(self.con.cursor())
                with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="scf-sql-part") as pool:
                    frames = list(pool.map(lambda c, b: part(c, *b), cursors, parts))
            finally:
                for cur in cursors:
                    cur.close()
        return pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)  # an empty part adds no rows

    def drop(self, *names: str) -> None:
        for n in names:
            self.con.execute(f"DROP TABLE IF EXISTS {n}")

    def unregister(self, name: str) -> None:
        unregister(self.con, name)

    @contextmanager
    def deterministic(self):
        with one_thread(self.con):
            yield self

    def close(self) -> None:
        if self.own:
            self.con.close()


def feature_engine(engine: str, spark_master: str | None = None):
    """The engine the catalogue's SQL runs on: ``None`` for the embedded DuckDB (the
    feature code opens its own connection), a :class:`~scf_engine.spark.SparkEngine` on
    a session at ``spark_master`` (default ``$SCF_SPARK_MASTER``, else ``local[*]``)."""
    if engine not in ENGINES:
        raise RequestError(f"--engine {engine!r}: must be one of {', '.join(ENGINES)}")
    if engine == "duckdb":
        if spark_master:
            raise RequestError("--spark-master is for --engine spark")
        return None
    try:
        from scf_engine.spark import MASTER_ENV, SparkEngine, session
    except ImportError as exc:
        raise RequestError(f"--engine spark needs pyspark installed ({exc}); pip install 'scf-engine[spark]'") from None
    return SparkEngine(session(spark_master), master=spark_master or os.environ.get(MASTER_ENV))


def engine_label(eng) -> str:
    """What ran the features, for a batch's MLflow run and audit entry: ``duckdb``, or
    ``spark`` and the session's master (``local[*]``, ``spark://...``, ``yarn``)."""
    if eng is None or getattr(eng, "dialect", "duckdb") == "duckdb":
        return "duckdb"
    master = getattr(eng, "master", None)
    if not master:
        try:
            master = eng.spark.conf.get("spark.master")
        except Exception:  # a Spark Connect session may not expose it
            master = None
    if master and master.startswith("sc://"):
        master = master.split("/;", 1)[0]  # a Connect URL's parameters may carry a token: not for the records
    return f"spark {master}" if master else "spark"


__all__ = ["DuckDBEngine", "ENGINES", "engine_label", "feature_engine"]
