"""Column mappings: get someone else's export into the data contract.

Why: real exports never arrive in the contract's layout. A registry export names its
columns ``invoiceNumber`` and ``SettledDate``, writes dates as ``1/15/2013``, keys its
debtors by an internal customer number instead of a unified social credit code, and
leaves out what it takes for granted (who the creditor is, the firms table). Rather than
a converter per export, one small YAML file describes one export, and
:func:`import_export` turns the export into a contract dataset folder that
:func:`scf_engine.ingest.load_dataset` reads like any other.

The importer only *renames, reformats and fills in*. It checks none of the contract's
rules: those live in one place, the loader, which quarantines a bad row with its line
number and reason.

Mapping format (one YAML file per foreign export)::

    produces: receivables        # the contract file the export becomes: receivables or flows
    source:                      # optional: how to read the export
      encoding: utf-8-sig        #   default utf-8-sig (UTF-8, BOM or not)
      delimiter: ","             #   default ","
    columns:                     # contract column -> where its value comes from
      receivable_id: {column: invoiceNumber}
      supplier_id: {const: "ACME ledger", firm: true}
      buyer_id: {column: customerID, firm: true}
      issued_on: {column: InvoiceDate, date: "%m/%d/%Y"}
      txn_id: {row_number: 1}
      booked_on: {column: time, days_after: "2017-01-01"}
      amount: {column: value, round: 2}
      purpose: {const: trade}
    firms:                       # the firms table, synthesised for the parties that appear
      namespace: acme-ar         # part of the firm-id hash: the same key in two exports
                                 #   gets different ids unless the namespace is shared
      region: "320281"           # 6-digit division code: in the firm id and in ``region``
      industry: F51
      registered_capital: 0
      founded_days_before_first_seen: 365
      name: "{key}"              # optional; ``{key}`` is the party's source key

A column entry has exactly one *source*: ``column`` (a source column), ``const`` (the
same text on every row) or ``row_number`` (the record number, counting from the given
start). It may add one *transform*:

``date: FORMAT``
    a ``strptime`` format (``%m/%d/%Y``); written as ISO ``YYYY-MM-DD``.
``days_after: YYYY-MM-DD``
    the value is a whole number of days after that date (simulator time steps).
``round: N``
    the value is a number, written rounded to N decimals.
``firm: true``
    the value is a party key (customer number, account id); it is replaced by a unified
    social credit code derived from it (:func:`firm_ids`) and the party gets a row in
    ``firms.csv``. Required on ``firm_ref`` columns (``supplier_id``, ``buyer_id``); on a
    flow's ``payer_id``/``payee_id`` it may be left off for ``EXT-`` counterparty codes.

There is no "keep as string" transform because none is needed: every source value is read
as text and written back as text unless a transform says otherwise, so ``0000611365``
keeps its leading zeros. A contract column the mapping leaves out is written empty; that
is an error for a required, non-nullable column.

Rows that cannot be mapped are kept, never dropped and never fatal: the output has one row
per source record, in source order, so the loader's quarantine names the source's own line
number (for a source with one line per record). A value a transform cannot read (a date
in another format, a fractional day offset, text in a number) is written as
``unmapped:<original text>``, which no contract rule accepts, so the loader quarantines
the row and shows the original spelling; an empty value stays empty (fine for nullable
columns, quarantined otherwise). What does raise ``ValueError`` is a problem with the
mapping or the file as a whole: a malformed mapping, a source column it names that the
export lacks, a CSV the parser cannot split into records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from scf_engine.contract import FILE_EXTENSIONS, FIRMS, FLOWS, RECEIVABLES, FileSpec, make_uscc

__all__ = ["ColumnRule", "FirmsRule", "Mapping", "UNMAPPED", "firm_ids", "import_export", "load_mapping"]

UNMAPPED = "unmapped:"  # prefix of a value a transform could not read; no contract rule accepts it
PRODUCIBLE = {spec.name: spec for spec in (RECEIVABLES, FLOWS)}
SOURCES = ("column", "const", "row_number")
TRANSFORMS = ("date", "days_after", "round", "firm")
FIRM_KINDS = ("firm_ref", "party")
SERIALS = 10**8  # make_uscc takes an 8-digit serial (the organisation-code body)


@dataclass(frozen=True)
class ColumnRule:
    """Where one contract column's values come from (one source, at most one transform)."""

    target: str
    column: str | None = None
    const: str | None = None
    row_number: int | None = None
    date: str | None = None
    days_after: dt.date | None = None
    round: int | None = None
    firm: bool = False


@dataclass(frozen=True)
class FirmsRule:
    """How to synthesise the firms table for the parties an export names."""

    namespace: str
    region: str
    industry: str
    registered_capital: str
    founded_days_before_first_seen: int
    name: str = "{key}"


@dataclass(frozen=True)
class Mapping:
    produces: FileSpec
    columns: dict[str, ColumnRule]
    firms: FirmsRule
    encoding: str = "utf-8-sig"
    delimiter: str = ","

    @property
    def source_columns(self) -> list[str]:
        return [r.column for r in self.columns.values() if r.column is not None]


# --- reading a mapping -------------------------------------------------------------------

def load_mapping(path: Path | str) -> Mapping:
    """Read and check a mapping file; a malformed mapping raises a one-line ValueError."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path.name}: cannot read the mapping ({exc.strerror or exc}: {path})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path.name}: the mapping is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path.name}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path.name}: a mapping is a YAML mapping with produces, columns and firms")
    _no_unknown_keys(path, "the mapping", doc, ("produces", "source", "columns", "firms"))
    produces = doc.get("produces")
    if produces not in PRODUCIBLE:
        raise ValueError(f"{path.name}: produces must be one of {', '.join(PRODUCIBLE)}, not {produces!r}")
    spec = PRODUCIBLE[produces]
    source = doc.get("source") or {}
    _no_unknown_keys(path, "source", source, ("encoding", "delimiter"))
    columns = _column_rules(path, spec, doc.get("columns") or {})
    return Mapping(
        produces=spec,
        columns=columns,
        firms=_firms_rule(path, doc.get("firms")),
        encoding=str(source.get("encoding", "utf-8-sig")),
        delimiter=str(source.get("delimiter", ",")),
    )


def _no_unknown_keys(path: Path, where: str, entry, allowed: tuple[str, ...]) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{path.name}: {where} must be a YAML mapping, not {entry!r}")
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise ValueError(f"{path.name}: {where} has unknown key(s) {', '.join(map(str, unknown))}; "
                         f"allowed: {', '.join(allowed)}")


def _column_rules(path: Path, spec: FileSpec, entries: dict) -> dict[str, ColumnRule]:
    unknown = sorted(set(entries) - set(spec.column_names))
    if unknown:
        raise ValueError(f"{path.name}: {', '.join(unknown)} is not a column of {spec.name}")
    rules = {name: _column_rule(path, spec, name, entry) for name, entry in entries.items()}
    for col in spec.columns:
        if col.required and not col.nullable and col.name not in rules:
            raise ValueError(f"{path.name}: no value for {spec.name}.{col.name}, which the contract requires")
        if col.kind == "firm_ref" and col.name in rules and not rules[col.name].firm:
            raise ValueError(f"{path.name}: {col.name} names a firm, so its entry needs firm: true")
    return rules


def _column_rule(path: Path, spec: FileSpec, name: str, entry) -> ColumnRule:
    where = f"columns.{name}"
    _no_unknown_keys(path, where, entry, SOURCES + TRANSFORMS)
    sources = [k for k in SOURCES if k in entry]
    transforms = [k for k in TRANSFORMS if k in entry and entry[k] not in (None, False)]
    if len(sources) != 1:
        raise ValueError(f"{path.name}: {where} needs exactly one of {', '.join(SOURCES)}")
    if len(transforms) > 1:
        raise ValueError(f"{path.name}: {where} has more than one transform ({', '.join(transforms)})")
    kind = spec.column(name).kind
    needs = {"date": ("date",), "days_after": ("date",), "round": ("amount",), "firm": FIRM_KINDS}
    for t in transforms:
        if kind not in needs[t]:
            raise ValueError(f"{path.name}: {where}: {t} does not apply to a {kind} column")
    try:
        days_after = dt.date.fromisoformat(str(entry["days_after"])) if "days_after" in transforms else None
    except ValueError:
        raise ValueError(f"{path.name}: {where}: days_after must be a YYYY-MM-DD date") from None
    return ColumnRule(
        target=name,
        column=str(entry["column"]) if "column" in entry else None,
        const=None if "const" not in entry else "" if entry["const"] is None else str(entry["const"]),
        row_number=int(entry["row_number"]) if "row_number" in entry else None,
        date=str(entry["date"]) if "date" in transforms else None,
        days_after=days_after,
        round=int(entry["round"]) if "round" in transforms else None,
        firm="firm" in transforms,
    )


def _firms_rule(path: Path, entry) -> FirmsRule:
    keys = ("namespace", "region", "industry", "registered_capital", "founded_days_before_first_seen", "name")
    _no_unknown_keys(path, "firms", entry, keys)
    missing = [k for k in keys[:-1] if k not in entry]
    if missing:
        raise ValueError(f"{path.name}: firms needs {', '.join(missing)}")
    region = str(entry["region"])
    if not (len(region) == 6 and region.isdigit()):
        raise ValueError(f"{path.name}: firms.region must be a 6-digit division code (quote it in YAML)")
    name = str(entry.get("name", "{key}"))
    try:
        name.format(key="K")
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"{path.name}: firms.name may use only {{key}}, not {name!r}") from None
    return FirmsRule(
        namespace=str(entry["namespace"]), region=region, industry=str(entry["industry"]),
        registered_capital=str(entry["registered_capital"]),
        founded_days_before_first_seen=int(entry["founded_days_before_first_seen"]),
        name=name,
    )


# --- firm ids ----------------------------------------------------------------------------

def _serial(namespace: str, key: str, attempt: int) -> int:
    text = f"{namespace}\x1f{key}" + (f"\x1f{attempt}" if attempt else "")
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % SERIALS


def firm_ids(keys, *, namespace: str, region: str) -> dict[str, str]:
    """A unified social credit code for each distinct non-empty party key.

    The serial is a SHA-256 hash of ``namespace`` and the key (never Python's ``hash``,
    which changes from run to run), so the same key gets the same id on every machine.
    There are only 10^8 serials, so among 20,000 keys a clash or two is likely: keys are
    taken in sorted order and a key whose serial is taken is rehashed with a counter. A
    key's id therefore changes only if a key sorting before it clashes with it.
    """
    out: dict[str, str] = {}
    taken: set[int] = set()
    for key in sorted({str(k) for k in keys if str(k) != ""}):
        attempt = 0
        while (serial := _serial(namespace, key, attempt)) in taken:
            attempt += 1
        taken.add(serial)
        out[key] = make_uscc(region, serial)
    return out


# --- mapping an export -------------------------------------------------------------------

def import_export(source_csv: Path | str, mapping_yaml: Path | str, out_dir: Path | str) -> dict[str, Path]:
    """Write the contract dataset an export describes into ``out_dir``.

    Writes ``firms.csv``, the file the mapping produces, and the other of
    ``receivables.csv``/``flows.csv`` with just its header (the contract requires both).
    Returns ``{file stem: path}``. Rows that cannot be mapped are kept for the loader to
    quarantine (see the module docstring); problems with the mapping or the file as a
    whole raise a one-line ValueError.
    """
    source_csv, out_dir = Path(source_csv), Path(out_dir)
    mapping = load_mapping(mapping_yaml)
    raw = _read_source(source_csv, mapping)
    source = {name: _source_values(raw, rule) for name, rule in mapping.columns.items()}
    ids = firm_ids(
        pd.concat([source[n].str.strip() for n, r in mapping.columns.items() if r.firm] or [pd.Series([], dtype=str)]),
        namespace=mapping.firms.namespace, region=mapping.firms.region,
    )
    table = pd.DataFrame(index=raw.index)
    for col in mapping.produces.columns:
        rule = mapping.columns.get(col.name)
        table[col.name] = "" if rule is None else _transform(source[col.name], rule, ids)
    firms = _firms_table(table, source, mapping, ids)
    return _write(out_dir, mapping.produces, table, firms)


def _read_source(path: Path, mapping: Mapping) -> pd.DataFrame:
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=mapping.encoding,
                          sep=mapping.delimiter, skip_blank_lines=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path.name}: unreadable export: {str(exc).strip().splitlines()[-1]}") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path.name}: unreadable export: the file is empty (no header)") from None
    except LookupError:
        raise ValueError(f"{path.name}: the mapping's source encoding {mapping.encoding!r} is not an encoding") from None
    except OSError as exc:
        raise ValueError(f"{path.name}: cannot read the export ({exc.strerror or exc}: {path})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in dict.fromkeys(mapping.source_columns) if c not in raw.columns]
    if missing:
        raise ValueError(f"{path.name}: the mapping names column(s) the export lacks: {', '.join(missing)}")
    return raw.fillna("")  # a short record's missing fields


def _source_values(raw: pd.DataFrame, rule: ColumnRule) -> pd.Series:
    if rule.column is not None:
        return raw[rule.column].astype(str)
    if rule.row_number is not None:
        return pd.Series(np.arange(len(raw)) + rule.row_number, index=raw.index).astype(str)
    return pd.Series(rule.const, index=raw.index, dtype=object)


def _transform(values: pd.Series, rule: ColumnRule, ids: dict[str, str]) -> pd.Series:
    if rule.firm:
        return values.str.strip().map(lambda k: ids.get(k, ""))
    if rule.date is not None:
        parsed = pd.to_datetime(values.str.strip(), format=rule.date, errors="coerce")
        return _iso_or_unmapped(values, parsed)
    if rule.days_after is not None:
        days = pd.to_numeric(values.str.strip(), errors="coerce")
        whole = days.where(days == np.floor(days))
        parsed = pd.Timestamp(rule.days_after) + pd.to_timedelta(whole, unit="D")
        return _iso_or_unmapped(values, parsed)
    if rule.round is not None:
        number = pd.to_numeric(values.str.strip().str.replace(",", "", regex=False), errors="coerce")
        text = number.round(rule.round).map(lambda x: f"{x:.{rule.round}f}")
        return _or_unmapped(values, text, number.notna() & np.isfinite(number))
    return values


def _iso_or_unmapped(values: pd.Series, parsed: pd.Series) -> pd.Series:
    return _or_unmapped(values, parsed.dt.strftime("%Y-%m-%d"), parsed.notna())


def _or_unmapped(values: pd.Series, mapped: pd.Series, ok: pd.Series) -> pd.Series:
    """``mapped`` where the transform read the value; empty stays empty; else marked."""
    empty = values.str.strip() == ""
    return pd.Series(np.where(ok, mapped, np.where(empty, "", UNMAPPED + values)), index=values.index, dtype=object)


def _firms_table(table: pd.DataFrame, source: dict[str, pd.Series], mapping: Mapping, ids: dict[str, str]) -> pd.DataFrame:
    """One row per party: founded ``founded_days_before_first_seen`` days before the
    earliest date on any row that names it (the export's earliest date for a party whose
    rows have no readable date). ``source`` holds each mapped column's untransformed values."""
    rule = mapping.firms
    dates = [c.name for c in mapping.produces.columns if c.kind == "date"]
    first = pd.concat([pd.to_datetime(table[c], format="%Y-%m-%d", errors="coerce") for c in dates], axis=1).min(axis=1)
    seen = pd.concat([
        pd.DataFrame({"key": source[n].str.strip(), "first": first})
        for n, r in mapping.columns.items() if r.firm
    ] or [pd.DataFrame({"key": pd.Series([], dtype=str), "first": pd.Series([], dtype="datetime64[ns]")})])
    seen = seen[seen["key"] != ""]
    earliest = seen.groupby("key")["first"].min()
    fallback = first.min()
    if earliest.isna().any() and pd.isna(fallback):
        raise ValueError("no row of the export has a readable date, so founded_on cannot be set for its parties")
    founded = earliest.fillna(fallback) - pd.Timedelta(days=rule.founded_days_before_first_seen)
    keys_sorted = sorted(ids)
    return pd.DataFrame({
        "firm_id": [ids[k] for k in keys_sorted],
        "name": [rule.name.format(key=k) for k in keys_sorted],
        "industry": rule.industry,
        "region": rule.region,
        "founded_on": founded.reindex(keys_sorted).dt.strftime("%Y-%m-%d").to_numpy(),
        "registered_capital": rule.registered_capital,
        "is_core": "false",
        "core_rating": "",
        "batch_group": "",
    }, columns=list(FIRMS.column_names))


def _write(out_dir: Path, produced: FileSpec, table: pd.DataFrame, firms: pd.DataFrame) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = {"firms": firms, produced.name: table}
    for spec in PRODUCIBLE.values():  # the contract requires both; the other one is empty
        frames.setdefault(spec.name, pd.DataFrame(columns=list(spec.base_column_names)))
    paths = {}
    for name, frame in frames.items():
        twins = [out_dir / f"{name}{ext}" for ext in FILE_EXTENSIONS if ext != ".csv"]
        clash = [p.name for p in twins if p.exists()]
        if clash:
            raise ValueError(f"{out_dir}: {clash[0]} is already there; write into an empty folder")
        paths[name] = out_dir / f"{name}.csv"
        frame.to_csv(paths[name], index=False, encoding="utf-8", lineterminator="\n")
    return paths
