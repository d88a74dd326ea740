"""Find, decode and read one contract file into an Arrow table.

Two ways in, one result:

* **Typed (fast path).** The file is parsed straight into the contract's types (dates,
  float amounts, booleans from the contract's spellings), the way ``pandas.read_csv``
  parses, so a clean file costs little more than a plain read. If any value in a typed
  column fails to parse (a malformed date, a thousands separator), the whole file is
  read again as text.
* **Text (exact path).** Every value is read as a string, so a malformed value becomes
  a quarantine row that shows its original spelling, never a silent NaN from a type guess.

Rows keep their record index ``_row``; :class:`LineMap` turns it into the line number in
the file (header = line 1) only for rows that are reported, so a clean file never pays
for it. Parquet rows are numbered 1.. in file order. A Parquet folder (``flows.parquet/``
of part files, as Spark and Hive write a table) is read with pyarrow.dataset, its parts in
sorted path order (:func:`scf_engine.hashing.part_files`), and a reported row is named by
its part file and its row (1..) within that part.

Encoding: the contract admits UTF-8 (with or without BOM) and GB18030. The CSV reader
checks UTF-8 as it reads; a file that is not valid UTF-8 is read as GB18030, and a file
that is neither is unreadable. Trying the two admitted encodings is exact, where a
statistical detector (charset-normalizer) can mislabel short or mostly-ASCII files.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scf_engine import policies
from scf_engine.contract import FALSE_SPELLINGS, FILES, TRUE_SPELLINGS, FileSpec
from scf_engine.errors import DatasetError
from scf_engine.hashing import part_files
from scf_engine.release import release_arrow

CHUNK = 1 << 24  # 16 MiB
csv.field_size_limit(sys.maxsize)  # a too-long field is the ingest policy's call (max_field_chars), not the csv module's


@dataclass
class LineMap:
    """Record index -> line number, computed only when a row must be reported.

    For a Parquet folder, ``parts`` holds each part file (its path from the dataset
    folder, e.g. ``flows.parquet/booked_month=2024-01/part-00000.parquet``) with its row
    count, in read order; a record's "line" is then its row (1..) within its part, and
    :meth:`files` names the part, so a bank can find the row in the file it wrote."""

    path: Path
    encoding: str
    n_records: int
    _exact: np.ndarray | None = None
    parts: tuple[tuple[str, int], ...] = ()

    def _part_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index of each row's part, and the record index of that part's first row."""
        ends = np.cumsum([n for _, n in self.parts], dtype=np.int64)
        k = np.searchsorted(ends, rows, side="right")  # a part with no rows is never chosen
        return k, (ends - [n for _, n in self.parts])[k]

    def lines(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self.parts:
            return rows - self._part_of(rows)[1] + 1
        if self.encoding == "parquet":
            return rows + 1
        if self._exact is None:
            self._exact = _record_lines(self.path, self.encoding, self.n_records)
        return self._exact[rows]

    def files(self, rows: np.ndarray) -> np.ndarray:
        """The file each record is in: the file's name, or for a folder the part file."""
        rows = np.asarray(rows, dtype=np.int64)
        if not self.parts:
            return np.full(len(rows), self.path.name, dtype=object)
        return np.array([name for name, _ in self.parts], dtype=object)[self._part_of(rows)[0]]

    def where(self, rows: np.ndarray) -> list[str]:
        """Where each record is, for a reason's text: ``line 7``, or ``row 7 of PART``."""
        lines = self.lines(rows)
        if not self.parts:
            return [f"line {ln}" for ln in lines]
        return [f"row {ln} of {f}" for ln, f in zip(lines, self.files(rows))]


@dataclass
class LoadedFile:
    """A contract file as read: ``table`` has the contract columns (typed, or all text),
    any extra columns as text, and ``_row``."""

    spec: FileSpec
    path: Path
    table: pa.Table
    typed: bool
    encoding: str  # "utf-8", "gb18030" or "parquet"
    line_map: LineMap
    malformed: list[tuple[int, str, str]] = field(default_factory=list)  # (line, text, reason)
    absent: tuple[str, ...] = ()  # optional contract columns the file did not have (added empty)
    n_rows: int | None = None  # the table's rows, once the table is let go (``table`` None)

    @property
    def n_read(self) -> int:
        return (self.table.num_rows if self.table is not None else self.n_rows) + len(self.malformed)


def read_file(path: Path, spec: FileSpec) -> LoadedFile:
    """Read ``path`` (a file, or a folder of Parquet parts); structural problems (empty,
    undecodable, missing column) raise DatasetError."""
    if path.is_file() and path.stat().st_size == 0:
        raise DatasetError(f"{path.name}: unreadable: the file is empty (no header)")
    if path.suffix == ".parquet":
        return _read_parquet(path, spec)
    return _read_csv(path, spec)


def _check_columns(path: Path, spec: FileSpec, names: list[str]) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise DatasetError(f"{path.name}: duplicate column name {n!r}")
        seen.add(n)
    missing = [c.name for c in spec.columns if c.required and c.name not in names]
    if missing:
        raise DatasetError(
            f"{path.name}: missing required column{'s' if len(missing) > 1 else ''} "
            + ", ".join(repr(m) for m in missing)
        )


# First or last byte that may start or end whitespace: ASCII space and controls \t-\r,
# or any non-ASCII byte (a multi-byte character may be a Unicode space such as U+3000).
_EDGE_BYTE = np.zeros(256, dtype=bool)
_EDGE_BYTE[[9, 10, 11, 12, 13, 32]] = True
_EDGE_BYTE[128:] = True


def _may_need_trim(col: pa.ChunkedArray) -> bool:
    """False when no value can start or end with whitespace, judged from the first and
    last byte of each value straight from the Arrow buffers. Trimming allocates a new
    copy of the column (about a second for 10 million ids, mostly page faults); ids and
    codes as banks export them seldom carry spaces, so the copy is usually skipped.

    An empty value has no bytes of its own: the lookup then reads a neighbour's byte (or
    the buffer's last one), which can only say "may need trim" when no trim is needed,
    never the reverse, and spares a mask of the non-empty values."""
    for chunk in col.chunks:
        if len(chunk) == 0:
            continue
        _, offsets, data = chunk.buffers()
        if data is None or data.size == 0:
            continue
        wide = pa.types.is_large_string(chunk.type)
        o = np.frombuffer(offsets, dtype=np.int64 if wide else np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
        d = np.frombuffer(data, dtype=np.uint8)
        if _EDGE_BYTE[d.take(o[:-1], mode="clip")].any() or _EDGE_BYTE[d.take(o[1:] - 1, mode="clip")].any():
            return True
    return False


def _absent(table: pa.Table, spec: FileSpec) -> tuple[str, ...]:
    """The contract columns ``table`` lacks (only optional ones get this far)."""
    return tuple(c.name for c in spec.columns if c.name not in table.column_names)


# Names the engine gives columns of its own: the record index, the rule mask, the parsed
# helpers (``__d_booked_on``) and every contract column of every file (the frames are
# joined with one another: a financings export's own ``buyer_id`` would shadow the one
# joined from receivables).
RESERVED_NAMES = frozenset({"_row", "_mask"} | {c.name for f in FILES for c in f.columns})


def _taken(name: str, spec: FileSpec) -> bool:
    """Whether an extra column's name is one the engine uses itself (see RESERVED_NAMES)."""
    return name not in spec.column_names and (name in RESERVED_NAMES or name.startswith("__"))


def _finish(table: pa.Table, spec: FileSpec, typed: bool) -> pa.Table:
    """Trim text columns, add absent optional contract columns (as empty) and the record
    index. Trimming here, vectorised, keeps every later rule free of per-row trims.

    An extra column is kept and ignored, as the contract says, unless its name is one the
    engine uses itself (``_row``, or ``firm_id`` in flows, ``buyer_id`` in financings):
    such a column is dropped here, ignored, because kept it would collide with the
    engine's own column of that name (a crash, or worse, a silently wrong join)."""
    taken = [n for n in table.column_names if _taken(n, spec)]
    if taken:
        table = table.drop_columns(taken)
    for i, (name, col) in enumerate(zip(table.column_names, table.columns)):
        if (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)) and _may_need_trim(col):
            table = table.set_column(i, name, pc.utf8_trim_whitespace(col))
    for c in spec.columns:
        if c.name not in table.column_names:
            if typed and c.kind in ("date", "amount", "bool"):
                typ = {"date": pa.date32(), "amount": pa.float64(), "bool": pa.bool_()}[c.kind]
                table = table.append_column(c.name, pa.nulls(table.num_rows, typ))
            else:
                table = table.append_column(c.name, pa.repeat(pa.scalar("", pa.string()), table.num_rows))
    return table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))


# --- Encoding --------------------------------------------------------------------------

ENCODINGS = ("utf-8", "gb18030")  # the contract's two; UTF-8 with or without a BOM


def text_encoding(data: bytes | Path) -> str | None:
    """The contract encoding ``data`` decodes in: ``"utf-8"`` (BOM or not), else
    ``"gb18030"``; None when it is neither. ``data`` is bytes, or a file's path, read in
    chunks so a large file is never held whole. Every UTF-8/GB18030 decision of the engine
    (headers, data files, batch and consent files) is made here."""
    for encoding in ENCODINGS:
        decoder = codecs.getincrementaldecoder(encoding)()
        try:
            if isinstance(data, (bytes, bytearray)):
                decoder.decode(data, final=True)
            else:
                with open(data, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        decoder.decode(chunk)
                    decoder.decode(b"", final=True)
            return encoding
        except UnicodeDecodeError:
            continue
    return None


def decode(raw: bytes) -> str | None:
    """``raw`` as text in the contract encoding it is in (a UTF-8 BOM dropped), or None."""
    encoding = text_encoding(raw)
    return None if encoding is None else raw.decode("utf-8-sig" if encoding == "utf-8" else encoding)


# --- CSV -------------------------------------------------------------------------------

def _header(path: Path) -> list[str]:
    with open(path, "rb") as fh:
        raw = fh.readline()
    line = decode(raw)
    if line is None:
        raise DatasetError(f"{path.name}: unreadable: the header is neither UTF-8 nor GB18030")
    names = next(csv.reader([line.strip("\r\n")]), [])
    if not names:
        raise DatasetError(f"{path.name}: unreadable: no header line")
    return [n.strip().lstrip("\ufeff") for n in names]


def _csv_encoding(path: Path) -> str:
    """``utf-8`` when the file decodes as UTF-8, else ``gb18030``; else unreadable."""
    encoding = text_encoding(path)
    if encoding is None:
        raise DatasetError(f"{path.name}: unreadable: neither UTF-8 nor GB18030 text")
    return encoding


def _pyarrow_csv(path, names, encoding, column_types, bad_rows, **convert):
    """Arrow's multi-threaded reader. Quoted newlines are rare and make chunking much
    slower, so a file is first read assuming none; if rows come out malformed, it is
    read again allowing them."""
    arrow_encoding = "utf8" if encoding == "utf-8" else encoding
    for newlines_in_values in (False, True):
        bad_rows.clear()
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(encoding=arrow_encoding, block_size=1 << 22, column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(
                invalid_row_handler=lambda row: bad_rows.append(row.text) or "skip",
                newlines_in_values=newlines_in_values,
            ),
            convert_options=pacsv.ConvertOptions(column_types=column_types, **convert),
        )
        if not bad_rows:
            break
    return table


def _read_csv(path: Path, spec: FileSpec) -> LoadedFile:
    """The file as Arrow reads it; when a row stops Arrow (a field longer than a read
    block, a broken character) or holds a field over ``ingest.yaml``'s
    ``max_field_chars``, the file is read again from a copy without those rows, each of
    them quarantined with its line: one row never refuses the whole file."""
    max_chars = int(policies.load("ingest")["max_field_chars"])
    names = _header(path)
    try:
        lf = _read_csv_plain(path, spec, names)
    except _RowStopsTheFile as exc:
        if "neither UTF-8 nor GB18030" in str(exc) or "straddl" in str(exc) or "UTF-8" in str(exc) \
                or _has_bad_row(path, max_chars):
            return _read_without_bad_rows(path, spec, names, max_chars)
        raise DatasetError(str(exc)) from None
    if _longest_text(lf.table) > max_chars:
        return _read_without_bad_rows(path, spec, names, max_chars)
    return lf


class _RowStopsTheFile(Exception):
    """Arrow cannot read the file because of what one row holds."""


def _longest_text(table: pa.Table) -> int:
    longest = 0
    for col in table.columns:
        if (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)) and len(col):
            m = pc.max(pc.utf8_length(col)).as_py()
            longest = max(longest, m or 0)
    return longest


def _read_without_bad_rows(path: Path, spec: FileSpec, names: list[str], max_chars: int) -> LoadedFile:
    """Read a copy of ``path`` in which each row with a broken character or a field over
    ``max_chars`` is replaced by as many empty lines as it had (so every other row keeps
    its line number), and report those rows as malformed."""
    encoding = _majority_encoding(path)
    fd, tmp_name = tempfile.mkstemp(prefix="scf-clean-", suffix=".csv")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            dropped = _copy_good_rows(path, out, encoding, max_chars)
        try:
            lf = _read_csv_plain(tmp, spec, names)
        except _RowStopsTheFile as exc:
            raise DatasetError(str(exc).replace(tmp.name, path.name)) from None
        n = lf.table.num_rows
        lf.line_map._exact = lf.line_map.lines(np.arange(n)) if n else np.array([], np.int64)
        lf.line_map.path = path
        lf.path = path
        lf.malformed = sorted(lf.malformed + dropped)
        return lf
    finally:
        tmp.unlink(missing_ok=True)


def _has_bad_row(path: Path, max_chars: int) -> bool:
    """Whether some row has a broken character or a field over ``max_chars``."""
    encoding = _majority_encoding(path)
    return bool(_copy_good_rows(path, io.BytesIO(), encoding, max_chars))


def _majority_encoding(path: Path) -> str:
    """The contract encoding most rows decode in (a file with one broken character is
    neither UTF-8 nor GB18030 as a whole)."""
    ok = {e: 0 for e in ENCODINGS}
    for _, raw, _ in _raw_records(path):
        for e in ENCODINGS:
            try:
                raw.decode(e)
                ok[e] += 1
            except UnicodeDecodeError:
                pass
    return max(ENCODINGS, key=lambda e: ok[e])  # ties: UTF-8 (listed first)


def _raw_records(path: Path):
    """``(first line, bytes, physical lines)`` of each record after the header, split on
    newlines outside quotes (a ``"`` byte never occurs inside a multi-byte character in
    UTF-8 or GB18030)."""
    with open(path, "rb") as fh:
        fh.readline()
        line_no, start, buf, quotes = 1, 0, [], 0
        for line in fh:
            line_no += 1
            if not buf:
                start = line_no
            buf.append(line)
            quotes += line.count(b'"')
            if quotes % 2 == 0:
                yield start, b"".join(buf), len(buf)
                buf, quotes = [], 0
        if buf:
            yield start, b"".join(buf), len(buf)


def _copy_good_rows(path: Path, out, encoding: str, max_chars: int) -> list[tuple[int, str, str]]:
    """Copy the header and every readable row of ``path`` to ``out``; blank out the rest
    and return ``(line, text, reason)`` for each."""
    with open(path, "rb") as fh:
        out.write(fh.readline())
    dropped = []
    for start, raw, n_lines in _raw_records(path):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            dropped.append((start, raw[:200].decode(encoding, errors="replace").rstrip("\r\n"),
                            f"broken character: byte {exc.start + 1} of the row is not valid {encoding}"))
            out.write(b"\n" * n_lines)
            continue
        longest = max((len(f) for rec in csv.reader(io.StringIO(text)) for f in rec), default=0)
        if longest > max_chars:
            dropped.append((start, text[:200], f"a field is {longest:,} characters long "
                                               f"(more than ingest.yaml max_field_chars {max_chars:,})"))
            out.write(b"\n" * n_lines)
            continue
        out.write(raw)
    return dropped


def _read_csv_plain(path: Path, spec: FileSpec, names: list[str]) -> LoadedFile:
    _check_columns(path, spec, names)
    kinds = {c.name: c.kind for c in spec.columns}
    typed_types = {
        n: {"date": pa.timestamp("s"), "amount": pa.float64(), "bool": pa.bool_()}.get(kinds.get(n), pa.string())
        for n in names
    }
    # Arrow's ISO-8601 parser (its default) rejects impossible dates such as 2015-02-29,
    # where its strptime parsers roll them over; any time part is dropped afterwards.
    typed_options = dict(
        null_values=[""],  # one null vocabulary on both paths: only empty is empty (N/A, NULL, NaN are quarantined)
        strings_can_be_null=False,
        true_values=sorted({v for s in TRUE_SPELLINGS for v in (s, s.upper(), s.capitalize())}),
        false_values=sorted({v for s in FALSE_SPELLINGS for v in (s, s.upper(), s.capitalize())}),
    )
    text_options = dict(strings_can_be_null=False, quoted_strings_can_be_null=False)
    encoding = "utf-8"
    bad_rows: list[str] = []

    def attempt(types, options):
        nonlocal encoding
        bad_rows.clear()
        try:
            return _pyarrow_csv(path, names, encoding, types, bad_rows, **options)
        except pa.ArrowInvalid as exc:
            if encoding != "utf-8" or "utf8" not in str(exc).lower():
                raise
        if _mostly_utf8(path):  # UTF-8 with a broken character or a cut-off end: its rows, not GB18030
            raise _RowStopsTheFile(f"{path.name}: invalid UTF-8 in some rows")
        encoding = _csv_encoding(path)  # not UTF-8: GB18030 or unreadable
        bad_rows.clear()
        return _pyarrow_csv(path, names, encoding, types, bad_rows, **options)

    typed = True
    try:
        try:
            table = attempt(typed_types, typed_options)
        except pa.ArrowInvalid as exc:  # a value that does not parse: the exact path, all text
            if _stops_the_file(exc):
                raise
            typed = False
            table = attempt({n: pa.string() for n in names}, text_options)
    except pa.ArrowInvalid as exc:  # maybe one row (a cut-off last line): the caller looks for it
        raise _RowStopsTheFile(f"{path.name}: unreadable CSV: {str(exc).splitlines()[0]}") from None
    except DatasetError as exc:
        if "neither UTF-8 nor GB18030" in str(exc):  # a broken character somewhere: find its row
            raise _RowStopsTheFile(str(exc)) from None
        raise
    if typed and _has_nan(table, spec):  # "NaN"/"inf" parse as floats: the text path quarantines them as written
        typed, table = False, attempt({n: pa.string() for n in names}, text_options)
    if typed:
        table = _typed_dates(table, spec)
    line_map = LineMap(path, encoding, table.num_rows)
    malformed = _malformed_rows(path, encoding, bad_rows) if bad_rows else []
    return LoadedFile(spec, path, _finish(table, spec, typed), typed, encoding, line_map, malformed,
                      _absent(table, spec))


def _mostly_utf8(path: Path) -> bool:
    """A file that is not valid UTF-8 only here and there (a truncated multi-byte
    character, a stray byte): fewer invalid sequences than one per ten non-ASCII bytes.
    GB18030 text read as UTF-8 fails on nearly every character. One C-speed pass."""
    bad = non_ascii = 0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            bad += decoder.decode(chunk).count("\ufffd")
            non_ascii += len(chunk) - len(chunk.translate(None, bytes(range(128, 256))))
        bad += decoder.decode(b"", final=True).count("\ufffd")
    return bad * 10 < non_ascii


def _stops_the_file(exc: Exception) -> bool:
    """An Arrow error caused by one row (a field longer than a read block, invalid
    UTF-8), not by the file's structure."""
    text = str(exc).lower()
    return "straddl" in text or "utf8" in text or "utf-8" in text


def _has_nan(table: pa.Table, spec: FileSpec) -> bool:
    """Whether a typed amount column holds NaN or infinity (spelled NaN, nan, inf in the
    file): not a number to the contract, to be reported with its spelling."""
    for c in spec.columns:
        if c.kind == "amount" and c.name in table.column_names:
            col = table[c.name]
            if pc.any(pc.invert(pc.is_finite(col))).as_py():
                return True
    return False


def _has_bom(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(3) == codecs.BOM_UTF8


def _typed_dates(table: pa.Table, spec: FileSpec) -> pa.Table:
    """Timestamps truncated to dates (the contract accepts a time and drops it)."""
    for c in spec.columns:
        if c.kind == "date" and c.name in table.column_names:
            i = table.column_names.index(c.name)
            table = table.set_column(i, c.name, pc.cast(pc.floor_temporal(table[c.name], unit="day"), pa.date32()))
    return table


def _record_lines(path: Path, encoding: str, n_records: int) -> np.ndarray:
    """Line number of each well-formed record, in order.

    When the file has one physical line per record (the usual case) record k is on line
    k + 2. Otherwise (quoted newlines, blank lines, malformed rows) a csv-module pass
    finds each record's first line, skipping what the Arrow reader skipped.
    """
    newlines, last = 0, b""
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            newlines += chunk.count(b"\n")
            last = chunk[-1:]
    physical = newlines + (0 if last == b"\n" else 1)
    if physical == n_records + 1:
        return np.arange(2, n_records + 2, dtype=np.int64)
    lines = [start for start, record, width in _records(path, encoding) if len(record) == width]
    if len(lines) != n_records:  # the two parsers disagree: fall back to record order
        return np.arange(2, n_records + 2, dtype=np.int64)
    return np.asarray(lines, dtype=np.int64)


def _records(path: Path, encoding: str):
    """(first line, fields, header width) of every non-blank record, via the csv module,
    which follows quoted newlines exactly."""
    with open(path, encoding="utf-8-sig" if encoding == "utf-8" else encoding, newline="") as fh:
        reader = csv.reader(fh)
        width = len(next(reader))
        prev_end = reader.line_num
        for record in reader:
            start, prev_end = prev_end + 1, reader.line_num
            if record and record != [""]:
                yield start, record, width


def _malformed_rows(path: Path, encoding: str, bad_texts: list[str]) -> list[tuple[int, str, str]]:
    """Line, text and reason of each row the Arrow reader skipped for its field count."""
    out = [(start, ",".join(record)[:200], f"has {len(record)} fields, expected {width}")
           for start, record, width in _records(path, encoding) if len(record) != width]
    return out


# --- Parquet ---------------------------------------------------------------------------

def _read_parquet(path: Path, spec: FileSpec) -> LoadedFile:
    if path.is_dir():
        table, parts = _read_parquet_folder(path)
    else:
        try:
            table, parts = pq.read_table(path), ()
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DatasetError(f"{path.name}: unreadable Parquet: {str(exc).splitlines()[0]}") from None
    release_arrow()  # the reader's pages (~0.75 GB for 43M flows), before the casts
    names = [n.strip() for n in table.column_names]
    table = table.rename_columns(names)
    _check_columns(path, spec, names)
    kinds = {c.name: c.kind for c in spec.columns}
    typed_cols, typed = {}, True
    for name, col in zip(names, table.columns):
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        kind = kinds.get(name)
        try:
            if kind == "date":
                if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                    col = pc.strptime(pc.utf8_slice_codeunits(col, 0, 10), format="%Y-%m-%d", unit="s")
                elif pa.types.is_timestamp(col.type) and col.type.tz:
                    # a zoned timestamp's date is the one on its own clock (2024-06-15 00:00
                    # Asia/Shanghai is 06-14 16:00 UTC): a cast alone would date it by UTC
                    col = pc.local_timestamp(col)
                col = pc.cast(pc.cast(col, pa.timestamp("s")) if not pa.types.is_date(col.type) else col, pa.date32())
            elif kind == "amount":
                col = pc.cast(col, pa.float64())
            elif kind == "bool":
                if not pa.types.is_boolean(col.type):
                    low = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(col, pa.string())))
                    is_true = pc.is_in(low, pa.array(TRUE_SPELLINGS))
                    is_false = pc.is_in(low, pa.array(FALSE_SPELLINGS))
                    if not pc.all(pc.or_(is_true, is_false)).as_py():
                        raise ValueError("unparsed boolean")
                    col = is_true
            else:  # text columns (and extra columns) as strings, nulls as ''
                # large_string (64-bit offsets): the type pandas' ``str`` holds, so the
                # frame the load hands back shares these buffers instead of copying
                # every text column's offsets while the table is alive (1.4 GB of the
                # load's peak for 43 million flows: bench/bench_monitor.py)
                col = pc.fill_null(pc.cast(col, pa.large_string()), "")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            typed = False
            break
        typed_cols[name] = col
    if not typed:  # exact path: render every value as the text a CSV export would hold
        typed_cols = {name: _as_text(col) for name, col in zip(names, table.columns)}
    out = pa.table(typed_cols)
    return LoadedFile(spec, path, _finish(out, spec, typed), typed, "parquet",
                      LineMap(path, "parquet", out.num_rows, parts=parts), absent=_absent(out, spec))


def _read_parquet_folder(path: Path) -> tuple[pa.Table, tuple[tuple[str, int], ...]]:
    """A folder of Parquet part files as one table, with (part, rows) in read order.

    pyarrow.dataset reads it; the parts are given in :func:`part_files` order (sorted
    paths, Spark's ``_SUCCESS``/``.crc``/``_committed_*`` left out), so row numbers are
    stable and the fingerprint hashes exactly the files read. Hive partition values come
    back as text (never inferred as numbers: an account ``00123`` keeps its zeros), so a
    partition column is an extra text column, or a contract column parsed like any other.
    Every part's schema is inspected and unified: a column only later parts carry is kept,
    and parts that disagree on a column's type make the folder unreadable."""
    rels, base = part_files(path), path.resolve()  # absolute paths: what LocalFileSystem takes
    if not rels:
        raise DatasetError(f"{path.name}: unreadable: the folder holds no Parquet part file")
    partitioning = pads.partitioning(pa.schema([(k, pa.string()) for k in _partition_keys(path, rels)]), flavor="hive")
    try:
        factory = pads.FileSystemDatasetFactory(
            pafs.LocalFileSystem(), [str(base / r) for r in rels], pads.ParquetFileFormat(),
            pads.FileSystemFactoryOptions(partition_base_dir=str(base), partitioning=partitioning))
        dataset = factory.finish(factory.inspect(fragments=None))
        fragments = list(dataset.get_fragments())
        counts = [f.metadata.num_rows for f in fragments]
        table = dataset.to_table()  # fragments in order, each part's rows in order
    except Exception as exc:  # a part that is not Parquet, or parts whose schemas clash
        raise DatasetError(f"{path.name}: unreadable Parquet: {_first_bad_part(path, rels) or str(exc).splitlines()[0]}") from None
    if [f.path for f in fragments] != [str(base / r) for r in rels] or sum(counts) != table.num_rows:
        raise AssertionError(f"{path}: pyarrow did not read the parts in the order given")  # row numbers would lie
    return table, tuple((f"{path.name}/{rel}", n) for rel, n in zip(rels, counts))


def _partition_keys(path: Path, rels: list[str]) -> list[str]:
    """The hive partition keys (``key=value`` folder names), the same for every part, as
    Spark and Hive write them; parts at different partition levels are a broken table."""
    keys = {tuple(d.split("=", 1)[0] for d in rel.split("/")[:-1] if "=" in d) for rel in rels}
    if len(keys) > 1:
        shown = " vs ".join("/".join(k) or "(none)" for k in sorted(keys))
        raise DatasetError(f"{path.name}: unreadable: part files under different partition folders ({shown})")
    return list(keys.pop())


def _first_bad_part(path: Path, rels: list[str]) -> str | None:
    """``PART: why`` for the first part whose Parquet footer cannot be read, if any."""
    for rel in rels:
        try:
            pq.read_metadata(path / rel)
        except Exception as exc:
            return f"{path.name}/{rel}: {str(exc).splitlines()[0]}"
    return None


def _as_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A typed Parquet column as text; nulls become ''."""
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        col = col.cast(pa.float64())
    elif pa.types.is_timestamp(t):
        col = pc.strftime(col, format="%Y-%m-%d %H:%M:%S")
    elif pa.types.is_date(t):
        col = pc.strftime(col, format="%Y-%m-%d")
    elif pa.types.is_boolean(t):
        col = pc.if_else(col, "true", "false")
    return pc.fill_null(col.cast(pa.string()), "")


def read_small_csv(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """A small auxiliary CSV (batch, consents): header, rows as text, line numbers."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    encoding = "utf-8-sig" if _has_bom(path) else _csv_encoding(path)
    with open(path, encoding=encoding, newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip().lstrip("\ufeff") for h in next(reader)]
        except StopIteration:
            raise DatasetError(f"{path.name}: unreadable: the file is empty (no header)") from None
        rows, lines = [], []
        prev_end = reader.line_num
        for record in reader:
            start, prev_end = prev_end + 1, reader.line_num
            if not record or record == [""]:
                continue
            rows.append((record + [""] * len(header))[: len(header)])
            lines.append(start)
    return header, rows, lines
