"""scf-engine: supply-chain finance credit risk, core-enterprise propagation and de-coupled.

Importing the package makes Arrow allocate from the C library's ``malloc`` instead of
pyarrow's default mimalloc, unless the user chose a pool with the
``ARROW_DEFAULT_MEMORY_POOL`` environment variable. In a fresh process mimalloc spent
most of a large read decommitting and re-faulting pages: reading the 10-million-row flows
benchmark file took 4.2 s with mimalloc (3.7 s of it system time) and 1.3 s with the
system allocator; reading it as Parquet 2.3 s against 0.9 s (``bench/bench_ingest.py``,
pyarrow 25 on 2 cores; apache/arrow#40301 reports the same kind of behaviour).
"""

import os

import pyarrow as _pa

__version__ = "0.1.0"

if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    _pa.set_memory_pool(_pa.system_memory_pool())
