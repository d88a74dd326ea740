"""Ingest: read a dataset folder exactly as the data contract says, returning a
:class:`~scf_engine.dataset.Dataset`.

* :mod:`~scf_engine.ingest.reading`: decode (UTF-8 or GB18030) and read one contract file
  (CSV or Parquet) into an Arrow table;
* :mod:`~scf_engine.ingest.rules`: the contract's rule checks as DuckDB SQL;
* :mod:`~scf_engine.ingest.quarantine`: the report of rows set aside;
* :mod:`~scf_engine.ingest.load`: :func:`load_dataset`, the files checked in order;
* :mod:`~scf_engine.ingest.mapping`: a foreign export turned into a contract folder.
"""

from scf_engine.errors import DatasetError
from scf_engine.ingest.load import fingerprint, load_dataset, read_files
from scf_engine.ingest.quarantine import QuarantineReport

__all__ = ["DatasetError", "QuarantineReport", "load_dataset", "read_files", "fingerprint"]
