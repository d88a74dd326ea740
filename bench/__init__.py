"""Benchmarks: speed and memory targets, measured against a named baseline in the same run.

Run all with ``python -m bench`` (or ``make bench``), one with ``python -m bench NAME``.
Each prints a table and writes it to ``out/bench/NAME.csv``. Benchmarks are kept out of
the test suite: they take minutes and need quiet machines.
"""
