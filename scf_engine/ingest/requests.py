"""The requests that come beside a dataset: the batch to score and the consents.

``batch.csv``: ``firm_id`` (required) and ``requested_amount`` (optional, CNY). A row
the engine cannot honour (empty id, a repeat, an amount that is not a number >= 0) is not
dropped: it keeps its line and the problem, and becomes a decline row with that reason.

``consents.csv``: ``firm_id, granted_on, expires_on`` (see :mod:`scf_engine.credit.consent`
for what a status means). A file the engine cannot trust stops the run with one line.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from scf_engine.errors import DatasetError
from scf_engine.ingest.reading import decode, read_small_csv

CONSENT_COLUMNS = ("firm_id", "granted_on", "expires_on")
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[ T]\d{2}:\d{2}:\d{2})?$")


def read_batch(path: Path | str) -> pd.DataFrame:
    """``firm_id``, ``requested_amount`` (NaN where not given or not usable), ``_line`` and
    ``request_problem`` (empty where the row is fine); structural problems raise
    :class:`DatasetError`."""
    path = Path(path)
    header, rows, lines = read_small_csv(path)
    if "firm_id" not in header:
        raise DatasetError(f"{path.name}: missing required column 'firm_id'")
    df = pd.DataFrame(rows, columns=header)
    df["_line"] = lines
    if df.empty:
        raise DatasetError(f"{path.name}: nothing to score: the batch has no rows")
    return requests_frame(df)


def requests_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Check request rows given as text (``firm_id``, optional ``requested_amount``,
    ``_line``): the per-row problems of :func:`read_batch`, for any caller."""
    df = df.copy()
    if "_line" not in df:
        df["_line"] = np.arange(2, len(df) + 2)
    df["firm_id"] = df["firm_id"].astype(str).str.strip()
    problem = pd.Series("", index=df.index, dtype=object)
    raw = df["requested_amount"].astype(str).str.strip() if "requested_amount" in df else pd.Series("", index=df.index)
    amount = pd.to_numeric(raw.str.replace(",", "", regex=False).replace("", np.nan), errors="coerce")
    bad = raw.ne("") & (amount.isna() | (amount < 0))
    problem[bad] = [f"requested_amount {v!r} is not a number >= 0" for v in raw[bad]]
    problem[df["firm_id"] == ""] = "firm_id is empty"
    first = df.groupby("firm_id")["_line"].transform("min")
    dup = (df["_line"] > first) & (df["firm_id"] != "")
    problem[dup] = [f"firm_id repeated in the batch (first on line {f})" for f in first[dup]]
    df["requested_amount"] = amount.where(~bad)
    df["request_problem"] = problem
    return df


def _decode(path: Path) -> str:
    text = decode(path.read_bytes())  # the contract's two encodings
    if text is None:
        raise DatasetError(f"{path.name}: not UTF-8 or GB18030 text")
    return text


def _parse_dates(values: pd.Series, column: str, path: Path, *, allow_empty: bool) -> pd.Series:
    """ISO dates (a ``YYYY-MM-DD HH:MM:SS`` timestamp is truncated to its date, as in
    the data contract); raise on the first value that is not one."""
    text = values.fillna("").astype(str).str.strip()
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    for i, v in text.items():
        if v == "":
            if allow_empty:
                continue
            raise DatasetError(f"{path.name}: line {i + 2}: {column} is empty")
        m = _DATE.match(v)
        try:
            if not m:
                raise ValueError
            out[i] = pd.Timestamp(m.group(1))
        except ValueError:
            raise DatasetError(f"{path.name}: line {i + 2}: {column} {v!r} is not a date (YYYY-MM-DD)") from None
    return out


def read_consents(path: str | Path) -> pd.DataFrame:
    """``consents.csv`` as a frame ``firm_id, granted_on, expires_on`` (dates as
    Timestamps, ``expires_on`` NaT when open-ended). Line numbers in errors count the
    header as line 1."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path.name}: no such file ({path})")
    try:
        df = pd.read_csv(io.StringIO(_decode(path)), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as exc:
        raise DatasetError(f"{path.name}: not a readable CSV: {str(exc).splitlines()[0]}") from None
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path.name}: empty file, expected columns {', '.join(CONSENT_COLUMNS)}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in CONSENT_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{path.name}: missing column(s) {', '.join(missing)}")
    df = df[list(CONSENT_COLUMNS)].reset_index(drop=True)
    df["firm_id"] = df["firm_id"].str.strip()
    empty = df.index[df["firm_id"] == ""]
    if len(empty):
        raise DatasetError(f"{path.name}: line {empty[0] + 2}: firm_id is empty")
    df["granted_on"] = _parse_dates(df["granted_on"], "granted_on", path, allow_empty=False)
    df["expires_on"] = _parse_dates(df["expires_on"], "expires_on", path, allow_empty=True)
    bad = df.index[df["expires_on"].notna() & (df["expires_on"] < df["granted_on"])]
    if len(bad):
        i = bad[0]
        raise DatasetError(f"{path.name}: line {i + 2}: expires_on {df.at[i, 'expires_on'].date()} is before "
                           f"granted_on {df.at[i, 'granted_on'].date()}")
    return df



def read_whitelist(path: Path | str) -> frozenset:
    """``whitelist.csv`` (contract v1.1): ``firm_id`` and an optional ``list`` naming the
    programme; the firm ids it holds. An empty id or a file without ``firm_id`` stops the
    run with one line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path.name}: no such file ({path})")
    header, rows, lines = read_small_csv(path)
    if "firm_id" not in header:
        raise DatasetError(f"{path.name}: missing required column 'firm_id'")
    k = header.index("firm_id")
    ids = [r[k].strip() for r in rows]
    empty = [ln for v, ln in zip(ids, lines) if not v]
    if empty:
        raise DatasetError(f"{path.name}: line {empty[0]}: firm_id is empty")
    return frozenset(ids)


__all__ = ["read_batch", "requests_frame", "read_consents", "read_whitelist", "CONSENT_COLUMNS"]
