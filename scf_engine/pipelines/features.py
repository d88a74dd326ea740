"""``scf features``: load -> compute the catalogue's flow features -> record.

* **load**: the dataset (bad rows quarantined as for every command), the as-of date;
* **compute**: :func:`scf_engine.features.flow_features` on the snapshot at T, on the
  embedded DuckDB or on Spark (:mod:`scf_engine.spark`): the same SQL, transpiled;
* **record**: ``features.parquet`` (``firm_id`` + one column per catalogue flow feature,
  one row per firm), written beside and renamed into place, and an entry in the audit log
  (a whole-dataset read, like ``validate`` and ``train``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from scf_engine import access
from scf_engine.errors import OutputError
from scf_engine.features import flow_features
from scf_engine.ingest.load import load_or_report
from scf_engine.ingest.quarantine import publish_beside
from scf_engine.pipelines.score import check_as_of, check_writable, parse_as_of
from scf_engine.sqlengine import engine_label, feature_engine

@dataclass
class FeaturesResult:
    features: pd.DataFrame  # firm_id + one column per flow feature
    out_path: Path
    engine: str
    as_of: pd.Timestamp
    seconds: float
    audit_entry: dict
    report: object = None  # the dataset's QuarantineReport: rows set aside, counts per file


def quarantine_path(out: Path) -> Path:
    """The quarantine report of a features run: beside its Parquet file and named after
    it (``features.quarantine.csv``). The output is one file, by default in the working
    folder, where a plain quarantine.csv may be another command's: a clean features run
    removes its own earlier report, never that."""
    return Path(out).with_name(f"{Path(out).stem}.quarantine.csv")


def features(data_dir: Path | str, out: Path | str, *, as_of=None, engine: str = "duckdb", spark_master: str | None = None,
             audit_log: Path | str | None = None, actor: str | None = None, progress=None) -> FeaturesResult:
    """Every flow feature of the catalogue at ``as_of`` for every firm of the dataset."""
    say = progress or (lambda *a, **k: None)
    out, audit_log = Path(out), access.log_path(audit_log)
    T = parse_as_of(as_of)
    check_writable(out, audit_log)
    eng = feature_engine(engine, spark_master)
    ds = load_or_report(data_dir, quarantine_path(out), progress=say)
    T = check_as_of(T, ds, say)
    say(f"flow features on {engine}")
    started = time.perf_counter()
    table = flow_features(ds.as_of(T), engine=eng).rename_axis("firm_id").reset_index()
    seconds = time.perf_counter() - started
    digest = _write_parquet(table, out)
    output = {out.name: digest, **publish_beside(ds.report, out.parent, quarantine_path(out).name)}
    entry = access.record(audit_log, actor, "features", "flow features of a dataset (feature catalogue)",
                          ds.firms["firm_id"], inputs=ds.fingerprints, as_of=str(T.date()), engine=engine_label(eng),
                          output=output)
    return FeaturesResult(table, out, engine, T, seconds, entry, ds.report)


def _write_parquet(table: pd.DataFrame, out: Path) -> str:
    """Write beside ``out`` and rename into place (a reader never sees half a file);
    returns the sha256 of the bytes written."""
    fd, tmp = tempfile.mkstemp(prefix=".scf-features-", suffix=".parquet", dir=out.parent)
    os.close(fd)
    try:
        table.to_parquet(tmp, index=False)
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        os.replace(tmp, out)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"--out {out}: cannot write the features ({exc.strerror or exc})") from None
    return digest


__all__ = ["features", "FeaturesResult"]
