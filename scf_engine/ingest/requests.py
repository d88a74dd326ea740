"""The requests that come beside a dataset: the batch to score, the consents, the whitelist.

``batch.csv``: ``firm_id`` (required) and ``requested_amount`` (optional, CNY). A row
the engine cannot honour (empty id, a repeat, an amount that is not a number >= 0) is not
dropped: it keeps its line and the problem, and becomes a decline row with that reason.

``consents.csv``: ``firm_id, granted_on, expires_on`` (see :mod:`scf_engine.credit.consent`
for what a status means). A file the engine cannot trust stops the run with one line.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scf_engine.errors import DatasetError, RequestError
from scf_engine.hashing import file_sha256
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


def request_digest(requests: pd.DataFrame) -> str:
    """SHA-256 of what a batch asks for, not of the file that carried it: its
    ``(firm_id, requested_amount)`` pairs, amounts in cents, sorted. A batch's identity
    (``batch_id``: a re-run of the same request replaces its own earmarks instead of being
    blocked by them) must not change when the same rows come in another order, another
    encoding, with CRLF line ends, thousands separators or an export's extra columns;
    the file's own bytes stay in the audit entry's input hashes."""
    cents = requests["requested_amount"].map(lambda v: "" if pd.isna(v) else str(int(round(float(v) * 100))))
    lines = sorted(f"{f}\t{c}" for f, c in zip(requests["firm_id"].astype(str), cents))
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


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



@dataclass(frozen=True)
class Whitelist:
    """``whitelist.csv`` (contract v1.1) read, and the programme picked from it.

    A bank runs several programmes (a core's chain, an industrial park, an association),
    each with its own list (白名单), and keeps them in one file told apart by the optional
    ``list`` column. ``list_name`` picks one programme's rows (``--list``); None counts
    every row, as before ``--list`` existed, so a file of one list scores as it always did.

    Bad rows follow the contract's bad-input rule, not a stop: an empty ``firm_id``, a
    firm repeated on the same list, and (once :meth:`checked` against the dataset) a firm
    the dataset does not hold are set aside with their line and reason, and the rest of
    the list is used. ``rows``: every data row (``firm_id``, ``list``, ``line``,
    ``problem``: "" when accepted)."""

    file: str  # the file's name, as quarantine rows and messages name it
    sha256: str  # of the file read: which list answered, for the audit log
    list_name: str | None  # the programme picked (``--list``); None: every row counts
    rows: pd.DataFrame

    @property
    def firms(self) -> frozenset:
        """The accepted firm ids of the picked programme (every accepted row when none is picked)."""
        ok = self.rows["problem"] == ""
        if self.list_name is not None:
            ok &= self.rows["list"] == self.list_name
        return frozenset(self.rows.loc[ok, "firm_id"])

    def checked(self, known_firms) -> "Whitelist":
        """The same list with the rows naming a firm outside ``known_firms`` (the dataset's
        firm ids) set aside: a list meant for another dataset, or a firm not yet on the
        data platform, is reported, not silently kept. Refuses (one line) a picked
        programme that is left with no firm: every request would be declined off-list."""
        rows = self.rows.copy()
        unknown = (rows["problem"] == "") & ~rows["firm_id"].isin(set(map(str, known_firms)))
        rows.loc[unknown, "problem"] = "unknown firm: not in firms"
        out = Whitelist(self.file, self.sha256, self.list_name, rows)
        if not out.firms:
            which = f"list {self.list_name!r}" if self.list_name is not None else "the whitelist"
            raise DatasetError(f"{self.file}: {which} holds no firm of the dataset ({len(rows)} row(s) read, "
                               f"{int((rows['problem'] != '').sum())} set aside): every request would be declined off-list")
        return out

    def violations(self) -> pd.DataFrame:
        """The rows set aside, as quarantine rows (``line, column, value, reason``). They
        name no party: a bad row of the list is not a data-quality issue of the firm."""
        bad = self.rows[self.rows["problem"] != ""]
        return pd.DataFrame({"line": bad["line"].to_numpy(), "column": "firm_id", "value": bad["firm_id"].to_numpy(),
                             "reason": bad["problem"].to_numpy(), "parties": ""})


def read_whitelist(path: Path | str, list_name: str | None = None) -> Whitelist:
    """``whitelist.csv``: ``firm_id`` and an optional ``list`` naming each row's programme;
    ``list_name`` picks one. A missing file or ``firm_id`` column, or a ``list_name`` the
    file does not hold, stops the run with one line; bad rows are set aside (see
    :class:`Whitelist`)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path.name}: no such file ({path})")
    digest = file_sha256(path)
    header, rows, lines = read_small_csv(path)
    if "firm_id" not in header:
        raise DatasetError(f"{path.name}: missing required column 'firm_id'")
    ids = [r[header.index("firm_id")].strip() for r in rows]
    lists = [r[header.index("list")].strip() for r in rows] if "list" in header else [""] * len(rows)
    frame = pd.DataFrame({"firm_id": pd.Series(ids, dtype=object), "list": pd.Series(lists, dtype=object),
                          "line": pd.Series(lines, dtype="int64")})
    if list_name is not None:
        list_name = list_name.strip()
        names = sorted(set(lists) - {""})
        if "list" not in header:
            raise RequestError(f"--list {list_name!r}: {path.name} has no 'list' column (it is one list: leave --list out)")
        if list_name not in names:
            raise RequestError(f"--list {list_name!r}: no such list in {path.name} (its lists: {', '.join(names) or 'none named'})")
    problem = pd.Series("", index=frame.index, dtype=object)
    first = frame.groupby(["list", "firm_id"])["line"].transform("min")
    repeated = (frame["line"] > first) & (frame["firm_id"] != "")
    on = [f" on list {v!r}" if v else "" for v in frame.loc[repeated, "list"]]
    problem[repeated] = [f"firm_id repeated{w} (first on line {f})" for w, f in zip(on, first[repeated])]
    problem[frame["firm_id"] == ""] = "firm_id is empty"
    return Whitelist(path.name, digest, list_name, frame.assign(problem=problem))


__all__ = ["read_batch", "requests_frame", "read_consents", "read_whitelist", "Whitelist", "CONSENT_COLUMNS"]
