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

import warnings

import duckdb

CONFIG = {"preserve_insertion_order": True, "allocator_background_threads": True}


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory connection with :data:`CONFIG`. A DuckDB that refuses one of its keys
    still gives a connection, with a warning naming the refusal: the settings change
    speed and memory, not results, and a silent fallback once hid that DuckDB 2 refused
    a key (the progress bar), so every connection ran without any of them."""
    try:
        con = duckdb.connect(config=CONFIG)
    except duckdb.Error as exc:
        warnings.warn(f"DuckDB refused the connection settings {sorted(CONFIG)} ({str(exc).splitlines()[0]}); "
                      "running with its defaults: slower and larger, same results", RuntimeWarning, stacklevel=2)
        con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
    except duckdb.Error:  # pragma: no cover - see the module docstring
        pass
    return con
