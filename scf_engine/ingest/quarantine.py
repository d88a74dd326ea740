"""The quarantine report: what was read, accepted and set aside, and why.

The invariant ``read == accepted + quarantined`` holds per file by construction
(:meth:`QuarantineReport.add_file` refuses counts that break it), so nothing is lost
silently. A row that breaks several rules is one quarantined row with several reasons.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from scf_engine.errors import OutputError
from scf_engine.tables import csv_bytes, write_csv

QUARANTINE_COLUMNS = ["file", "line", "column", "value", "reason", "parties"]


@dataclass
class FileCounts:
    file: str
    read: int
    accepted: int
    quarantined: int


@dataclass
class QuarantineReport:
    counts: list[FileCounts] = field(default_factory=list)
    rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=QUARANTINE_COLUMNS))
    # when each row's problem was known, position by position with ``rows`` (NaT: not
    # placeable in time): the later of the row's own date and the broken date column's
    dated: pd.Series = field(default_factory=lambda: pd.Series(dtype="datetime64[ns]"))

    def add_file(self, file: str, read: int, accepted: int, violations: pd.DataFrame) -> None:
        """``violations``: one row per broken rule, with ``line`` and, where the rows come
        from several part files (a Parquet folder), ``file`` naming each row's part; a row
        is then (file, line), since each part numbers its rows from 1."""
        where = ["file", "line"] if "file" in violations else ["line"]
        quarantined = len(violations[where].drop_duplicates()) if len(violations) else 0
        if read != accepted + quarantined:
            raise AssertionError(
                f"{file}: read {read} != accepted {accepted} + quarantined {quarantined}"
            )
        self.counts.append(FileCounts(file, read, accepted, quarantined))
        if len(violations):
            v = violations if "file" in violations else violations.assign(file=file)
            if "parties" not in v:
                v["parties"] = ""
            dated = (pd.to_datetime(v["dated"], errors="coerce") if "dated" in v
                     else pd.Series(pd.NaT, index=v.index)).astype("datetime64[ns]").reset_index(drop=True)
            v = v[QUARANTINE_COLUMNS]
            v["value"] = v["value"].astype(str).str.slice(0, 200)
            self.rows = v if self.rows.empty else pd.concat([self.rows, v], ignore_index=True)
            self.dated = dated if self.dated.empty else pd.concat([self.dated, dated], ignore_index=True)

    def with_file(self, file: str, read: int, accepted: int, violations: pd.DataFrame) -> "QuarantineReport":
        """A copy with one more file's counts and rows (:meth:`add_file`), this one
        unchanged: a request input checked against the dataset (the whitelist) is
        reported with it, but its rows must not become the dataset's data-quality record."""
        out = QuarantineReport(list(self.counts), self.rows, self.dated)
        out.add_file(file, read, accepted, violations)
        return out

    @property
    def n_quarantined(self) -> int:
        return sum(c.quarantined for c in self.counts)

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([c.__dict__ for c in self.counts], columns=["file", "read", "accepted", "quarantined"])

    def top_reasons(self, n: int = 10) -> pd.DataFrame:
        if self.rows.empty:
            return pd.DataFrame(columns=["file", "reason", "rows"])
        return (
            self.rows.groupby(["file", "reason"]).size().rename("rows").reset_index()
            .sort_values("rows", ascending=False).head(n).reset_index(drop=True)
        )

    def rows_touching(self, firm_id: str, before=None) -> pd.DataFrame:
        """Quarantine rows that name this firm in any party column (memo data-quality notes);
        ``before``: only those known before that as-of, as :meth:`touching_counts` counts them."""
        if self.rows.empty:
            return self.rows
        hit = self._party_lists().apply(lambda ps: firm_id in ps).to_numpy(dtype=bool, copy=True)
        if before is not None:
            hit &= self._known_before(before)
        return self.rows[hit]

    def _known_before(self, before) -> np.ndarray:
        """Per row: its problem was known before ``before``, or cannot be placed in time."""
        dated = self.dated.reindex(range(len(self.rows))).to_numpy()
        return pd.isna(dated) | (dated < pd.Timestamp(before).to_datetime64())

    def touching_counts(self, before=None) -> pd.Series:
        """How many quarantine rows name each firm (``len(rows_touching(f))`` for every
        firm at once, by firm_id): one pass instead of one scan per firm. ``before``: only
        the rows whose problem was known before that as-of date (or cannot be placed in
        time): a record dated on or after the as-of never changes a decision at it."""
        if self.rows.empty:
            return pd.Series(dtype="int64")
        parties = self._party_lists()
        if before is not None:
            parties = parties[self._known_before(before)]
            if parties.empty:
                return pd.Series(dtype="int64")
        return parties.map(set).explode().value_counts()

    def _party_lists(self) -> pd.Series:
        return self.rows["parties"].fillna("").astype(str).str.split(";")

    def sorted_rows(self) -> pd.DataFrame:
        return self.rows.sort_values(["file", "line"], kind="stable") if len(self.rows) else self.rows

    def write(self, path: Path) -> Path:
        """The report at ``path``; a link there (``scf score`` publishes its quarantine.csv
        as a link into its audited output) is replaced, never written through."""
        path = Path(path)
        if path.is_symlink():
            path.unlink()
        return write_csv(self.sorted_rows(), path)  # values as the bank wrote them, neutralised for spreadsheets


QUARANTINE = "quarantine.csv"  # beside an output, when its run set rows aside


def staged_files(report: QuarantineReport | None) -> dict[str, bytes]:
    """``{"quarantine.csv": bytes}`` when ``report`` set rows aside, else ``{}``: the
    file a published output carries beside it (``scf score``, ``scf monitor``), the bytes
    staged being the bytes hashed into its audit entry."""
    if report is None or not report.n_quarantined:
        return {}
    return {QUARANTINE: csv_bytes(report.sorted_rows())}


def publish_beside(report: QuarantineReport, folder: Path, name: str = QUARANTINE) -> dict:
    """The contract: the rows a run set aside go to a quarantine file beside its output,
    on success too (only a failed run wrote it). ``{"quarantine.csv": sha256}`` for the
    audit entry when rows were set aside; when none were, a quarantine.csv left there by
    an earlier run is removed, so the file beside an output always describes that output's
    run (as ``scf score`` publishes it). The report replaces a link, never writes through it.
    ``name``: a command whose output is one file in a folder it does not own names the
    report after that file (``features.quarantine.csv``), so it never removes another
    command's quarantine.csv there."""
    path = Path(folder) / name
    if not report.n_quarantined:
        if path.is_symlink() or path.is_file():
            try:
                path.unlink()
            except OSError as exc:
                raise OutputError(f"{path}: cannot remove the earlier run's quarantine report "
                                  f"({exc.strerror or exc})") from None
        return {}
    try:
        report.write(path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the quarantine report ({exc.strerror or exc})") from None
    return {name: hashlib.sha256(path.read_bytes()).hexdigest()}

