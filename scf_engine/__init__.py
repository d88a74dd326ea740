"""scf-engine: supply-chain finance credit risk, core-enterprise propagation and de-coupled.

Importing the package makes Arrow allocate from the C library's ``malloc`` instead of
pyarrow's default mimalloc, unless the user chose a pool with the
``ARROW_DEFAULT_MEMORY_POOL`` environment variable. In a fresh process mimalloc spent
most of a large read decommitting and re-faulting pages: reading the 10-million-row flows
benchmark file took 4.2 s with mimalloc (3.7 s of it system time) and 1.3 s with the
system allocator; reading it as Parquet 2.3 s against 0.9 s (``bench/bench_ingest.py``,
pyarrow 25 on 2 cores; apache/arrow#40301 reports the same kind of behaviour).

It also asks OpenMP's threads (LightGBM's) to wait passively, unless the user set
``OMP_WAIT_POLICY``. By default a thread that finishes its part of a parallel region
spins on its core until the next one starts; when another process holds the other core
(the test suite's two workers, a second job on a shared server) the spinning threads
and the working ones take turns: fitting the hybrid model of a 700-firm world took 17.2 s
wall (7.5 CPU s) on two threads against 1.8 s on one, and 1.7 s on two threads waiting
passively, with the same model (LightGBM's answers do not depend on its thread count
here: ``deterministic`` and column-wise histograms). It must be set before LightGBM's
OpenMP runtime starts, so here, before any module imports lightgbm.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pyarrow as _pa  # noqa: E402  (after the OpenMP setting)

__version__ = "0.1.0"

if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    _pa.set_memory_pool(_pa.system_memory_pool())
