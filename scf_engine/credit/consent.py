"""Data-use authorisation (授权): is a firm's consent valid on the scoring date?

Flow data from the fund-flow sharing platform and other data touching trade secrets may
be queried and used only with the firm's authorisation (domain notes, Jiangyin data
rules). A bank that keeps its authorisations may hand the engine an optional
``consents.csv``:

=============  =================================================================
``firm_id``    the firm that signed
``granted_on`` first day the authorisation is valid (``YYYY-MM-DD``)
``expires_on`` last day it is valid (``YYYY-MM-DD``); empty means open-ended
=============  =================================================================

A firm may have several rows (renewals); the best one counts, in the order ``ok`` >
``not_yet_valid`` (a renewal signed, starting later) > ``expired`` > ``missing``. Extra
columns are ignored. A file the engine cannot trust (missing column, a date that is not
a date, an expiry before the grant) stops the run with a one-line
:class:`~scf_engine.ingest.reading.DatasetError`, never a silent "no consent" that would
send every firm to review.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from scf_engine.ingest.reading import DatasetError, decode

COLUMNS = ("firm_id", "granted_on", "expires_on")
STATUSES = ("ok", "missing", "expired", "not_yet_valid")
_RANK = {"ok": 3, "not_yet_valid": 2, "expired": 1, "missing": 0}
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[ T]\d{2}:\d{2}:\d{2})?$")


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
        raise DatasetError(f"{path.name}: empty file, expected columns {', '.join(COLUMNS)}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{path.name}: missing column(s) {', '.join(missing)}")
    df = df[list(COLUMNS)].reset_index(drop=True)
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


def consent_status(firm_ids: Iterable[str], consents: pd.DataFrame | None, as_of) -> pd.Series:
    """Per firm (Series indexed by firm_id, in the order given): ``ok`` when an
    authorisation covers ``as_of`` (``granted_on <= as_of <= expires_on``), else
    ``not_yet_valid`` / ``expired`` / ``missing``. ``consents=None`` (no file) makes
    every firm ``missing``; the limit policy decides what that means."""
    ids = pd.Index([str(f) for f in firm_ids], name="firm_id")
    if consents is None or consents.empty:
        return pd.Series("missing", index=ids, name="consent_status", dtype=object)
    t = pd.Timestamp(as_of).normalize()
    c = consents
    granted = pd.to_datetime(c["granted_on"])
    expires = pd.to_datetime(c["expires_on"])
    status = np.where(granted > t, "not_yet_valid",
                      np.where(expires.notna() & (expires < t), "expired", "ok"))
    rank = pd.Series([_RANK[s] for s in status], index=c["firm_id"].astype(str).to_numpy())
    best = rank.groupby(level=0).max()
    by_rank = {v: k for k, v in _RANK.items()}
    out = best.reindex(ids).fillna(_RANK["missing"]).astype(int).map(by_rank)
    out.index.name = "firm_id"
    return out.rename("consent_status").astype(object)


def consent_ok(status: pd.Series) -> pd.Series:
    """The ``consent_ok`` column the limit policy reads: True only for ``ok``."""
    return (status == "ok").rename("consent_ok")
