"""One way to open DuckDB: in memory, insertion order kept, no progress bar, memory given
back to the system as soon as it is freed.

``allocator_background_threads`` lets DuckDB's jemalloc purge freed pages in the
background. Without it, memory freed by dropping a big intermediate table can stay in
the process while the pandas work after the SQL runs on top of it (flow features for 20
million flows: bench/bench_features.py).

Money enters SQL as ``DECIMAL(18,2)`` (:func:`register_money`): DuckDB aggregates on
every core, and a sum of doubles depends on the order in which threads combine their
partial sums, so the same flows gave features that differed in the last bits from one
run to the next whenever the machine was busy (enough to move a limit by a rounding
step). Amounts are whole cents by the contract, so decimal sums are exact and the order
no longer matters; results come back to pandas as float64. The few aggregates of doubles
that remain (a slope, a standard deviation over a firm's months) run on one thread
(:func:`one_thread`): they read the small firm-month panel, not the flows.

``$SCF_DUCKDB_MEMORY_LIMIT`` (e.g. ``8GB``) caps what DuckDB holds before it spills to
disk; its default, 80% of the machine's memory, leaves nothing for the pandas work after
the SQL when the flows are large (100M flows read from Parquet took the whole 24 GB of the
benchmark machine: bench/bench_spark.py).

``$SCF_DUCKDB_THREADS`` (e.g. ``1``) sets DuckDB's worker threads; its default is every
core it sees, which in a container with a CPU quota is the host's cores, not the quota.
Results do not depend on it (exact decimal sums; doubles on one thread, above).

The progress bar is a session setting (DuckDB 2 refuses it in the connection's config);
inside a Jupyter kernel without ipywidgets setting it may fail, and then it stays on.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import duckdb

CONFIG = {"preserve_insertion_order": True, "allocator_background_threads": True}
MEMORY_ENV = "SCF_DUCKDB_MEMORY_LIMIT"
THREADS_ENV = "SCF_DUCKDB_THREADS"
ENV_SETTINGS = {"memory_limit": MEMORY_ENV, "threads": THREADS_ENV}  # DuckDB setting: the variable that sets it


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory connection with :data:`CONFIG`. A DuckDB that refuses one of its keys
    still gives a connection, with a warning naming the refusal: the settings change
    speed and memory, not results, and a silent fallback once hid that DuckDB 2 refused
    a key (the progress bar), so every connection ran without any of them."""
    config = {**CONFIG, **{key: os.environ[env] for key, env in ENV_SETTINGS.items() if os.environ.get(env)}}
    try:
        con = duckdb.connect(config=config)
    except duckdb.Error as exc:
        warnings.warn(f"DuckDB refused the connection settings {sorted(config)} ({str(exc).splitlines()[0]}); "
                      "running with its defaults: slower and larger, same results", RuntimeWarning, stacklevel=2)
        con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
    except duckdb.Error:  # pragma: no cover - see the module docstring
        pass
    return con


MONEY = "DECIMAL(18,2)"  # whole cents up to 10^16 yuan; sums widen to DECIMAL(38,2)


def register_money(con: duckdb.DuckDBPyConnection, name: str, frame, money=("amount", "paid_amount"),
                   row_number: str | None = None) -> None:
    """Register ``frame`` as the view ``name`` with its money columns as exact decimals
    (see the module docstring); other columns as they are. ``row_number``: also a column
    of that name numbering the rows 1.. in the frame's order (insertion order is kept)."""
    raw = _raw_frame(name)
    con.register(raw, frame)
    money_view(con, name, raw, frame.columns, money=money, row_number=row_number)


def _raw_frame(name: str) -> str:
    """The name :func:`register_money` registers the frame itself under."""
    return f"_{name}_frame"


def unregister(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Take back what was registered as ``name``: a plain registered frame, or the view of
    :func:`register_money` with the frame behind it (either name may be absent)."""
    con.unregister(name)
    con.execute(f"DROP VIEW IF EXISTS {name}")
    con.unregister(_raw_frame(name))


def money_view(con: duckdb.DuckDBPyConnection, name: str, source: str, columns, money=("amount", "paid_amount"),
               row_number: str | None = None) -> None:
    """The view ``name`` over the relation ``source`` (a registered frame, or
    ``read_parquet(...)``), whose ``columns`` are given, with the money columns among
    them as exact decimals and optionally the 1-based ``row_number`` column."""
    cols = [c for c in money if c in columns]
    replace = f" REPLACE ({', '.join(f'CAST({c} AS {MONEY}) AS {c}' for c in cols)})" if cols else ""
    numbered = f"row_number() OVER () AS {row_number}, " if row_number else ""
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {numbered}*{replace} FROM {source}")


@contextmanager
def one_thread(con: duckdb.DuckDBPyConnection):
    """Run the enclosed queries on one thread (aggregates of doubles give the same bits
    every time), then restore the connection's setting."""
    before = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    con.execute("SET threads = 1")
    try:
        yield con
    finally:
        con.execute(f"SET threads = {int(before)}")
