"""``python -m bench [NAME ...]``: run the named benchmarks (all when none is named)."""

import importlib
import pkgutil
import sys
from pathlib import Path

names = sys.argv[1:] or sorted(
    m.name[len("bench_"):] for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_")
)
for name in names:
    importlib.import_module(f"bench.bench_{name}").main()
