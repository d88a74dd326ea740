"""One way to open DuckDB: in memory, insertion order kept, no progress bar, memory given
back to the system as soon as it is freed.

``allocator_background_threads`` lets DuckDB's jemalloc purge freed pages in the
background. Without it, memory freed by dropping a big intermediate table can stay in
the process while the pandas work after the SQL runs on top of it (flow features for 20
million flows: bench/bench_features.py).

The progress bar is a session setting (DuckDB 2 refuses it in the connection's config);
inside a Jupyter kernel without ipywidgets setting it may fail, and then it stays on.
"""

from __future__ import annotations

import duckdb

CONFIG = {"preserve_insertion_order": True, "allocator_background_threads": True}


def connect() -> duckdb.DuckDBPyConnection:
    try:
        con = duckdb.connect(config=CONFIG)
    except duckdb.Error:  # pragma: no cover - a DuckDB without one of these keys
        con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
    except duckdb.Error:  # pragma: no cover - see the module docstring
        pass
    return con
