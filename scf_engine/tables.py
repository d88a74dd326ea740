"""Every report CSV the engine writes goes through here, so none can carry a formula.

Credit officers open ``limits.csv`` and ``quarantine.csv`` in Excel, and a firm id or a
name taken from a bank's export may start with ``=``, ``+``, ``-`` or ``@``: Excel (and
LibreOffice, Google Sheets) would run ``=HYPERLINK(...)`` or ``+cmd|' /C calc'!A0`` as a
formula. OWASP's rule for CSV injection is applied to every text cell: a cell that starts
with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading ``'`` (which the
spreadsheet shows as text and hides). Numbers are untouched: numeric columns are never
looked at, and a text cell that *is* a plain number (``-100``, ``+1.5e3``) is a number to
a spreadsheet, not a formula, so it stays as written.

Dataset files (what ``scf simulate`` and ``scf import`` write) are data the engine reads
back, not reports: they are written as is, since a prefix would change the data.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc

from scf_engine.membership import arrow_text

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# a cell starting a formula, for Arrow's regex (RE2): the characters in a class, those
# that mean something inside one escaped (RE2 takes any punctuation escaped)
_FORMULA_REGEX = "^[" + "".join("\\" + c if c in "]\\^-" else c for c in FORMULA_START) + "]"
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def neutralise_cell(value):
    """``value`` with a leading ``'`` when it is text that a spreadsheet would read as a
    formula; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def neutralise(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells cannot be read as formulas; numeric, boolean and
    date columns are not touched (their values cannot start a formula)."""
    out = df.copy()
    for c in out.columns:
        col = out[c]
        if col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
            if _any_text(col, _FORMULA_REGEX, lambda v: v.startswith(FORMULA_START)):
                out[c] = col.astype(object).map(neutralise_cell)
    return out


def csv_bytes(df: pd.DataFrame) -> bytes:
    """The neutralised CSV of ``df`` as UTF-8 bytes (what is hashed is what is written).

    Python's csv writer quotes a field only for the characters of its line terminator,
    so with ``\n`` a bare carriage return went out unquoted and a reader (Excel, pandas)
    broke the row there: ``'\r+1+1`` became a row starting ``+1+1``, a formula again.
    When a text cell holds ``\r``, the file is written with ``\r\n`` (every field with
    a CR or LF quoted) and the row ends, outside quotes, turned back into ``\n``."""
    out = neutralise(df)
    if not _has_cr(out):
        return out.to_csv(index=False, lineterminator="\n").encode("utf-8")
    parts = out.to_csv(index=False, lineterminator="\r\n").split('"')
    parts[::2] = [p.replace("\r\n", "\n") for p in parts[::2]]  # even parts lie outside quotes ("" toggles twice)
    return '"'.join(parts).encode("utf-8")


def _has_cr(df: pd.DataFrame) -> bool:
    return any(_any_text(df[c], "\r", lambda v: "\r" in v)
               for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c].dtype)) or \
        any(isinstance(c, str) and "\r" in c for c in df.columns)


def _any_text(col: pd.Series, regex: str, test) -> bool:
    """Whether a text cell of ``col`` matches ``regex`` (``test`` of the cell, for a
    column not held as Arrow text). An Arrow column is asked in one pass of Arrow's regex
    match instead of a Python call per cell (the cells of ``portfolio.csv`` at 100,000
    firms over 12 dates were ~1 s of a pass's record), with the same answer."""
    held = arrow_text(col)
    if held is not None:
        return bool(pc.any(pc.match_substring_regex(held, regex)).as_py())
    return bool(col.astype(object).map(lambda v: isinstance(v, str) and test(v)).any())


def write_csv(df: pd.DataFrame, path: Path | str) -> Path:
    """Write ``df`` as a neutralised UTF-8 CSV at ``path`` (folder created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(csv_bytes(df))
    return path


__all__ = ["FORMULA_START", "neutralise_cell", "neutralise", "csv_bytes", "write_csv"]
