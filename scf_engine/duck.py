"""One way to open DuckDB: in memory, insertion order kept, no progress bar.

The progress bar is switched off in the connection's config: setting it afterwards fails
inside Jupyter kernels without ipywidgets (DuckDB then insists on a widget)."""

from __future__ import annotations

import duckdb


def connect() -> duckdb.DuckDBPyConnection:
    config = {"enable_progress_bar": False, "preserve_insertion_order": True}
    try:
        return duckdb.connect(config=config)
    except duckdb.Error:  # pragma: no cover - older DuckDB without these config keys
        return duckdb.connect()
