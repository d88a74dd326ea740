"""The contract's row rules as SQL predicates, checked in one DuckDB pass per file.

Each rule is ``(column, SQL condition that is TRUE when the row breaks it, reason)``.
Declarative rules keep the list readable against ``data-contract.md`` line by line,
and DuckDB checks tens of millions of rows on two cores in seconds (see
``bench/bench_ingest.py``). The unified social credit code check (GB 32100-2015) is the
one rule run in Python, through python-stdnum, on the distinct firm ids only.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from stdnum.cn import uscc

from scf_engine.contract import (
    EXTERNAL_PREFIX,
    FALSE_SPELLINGS,
    GRADED_INDICATORS,
    INDICATOR_GRADES,
    TRUE_SPELLINGS,
    Column,
    FileSpec,
)

DATE_RE = r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$"
NUMBER = r"\d+(\.\d+)?([eE][+-]?\d+)?"
AMOUNT_PLAIN_RE = rf"^[+-]?{NUMBER}$"
AMOUNT_GROUPED_RE = r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$"
# GB/T 4754-2017: section letter and the range of its 2-digit divisions.
INDUSTRY_SECTIONS = {
    "A": (1, 5), "B": (6, 12), "C": (13, 43), "D": (44, 46), "E": (47, 50),
    "F": (51, 52), "G": (53, 60), "H": (61, 62), "I": (63, 65), "J": (66, 69),
    "K": (70, 70), "L": (71, 72), "M": (73, 75), "N": (76, 79), "O": (80, 82),
    "P": (83, 83), "Q": (84, 85), "R": (86, 90), "S": (91, 96), "T": (97, 97),
}
# GB/T 2260 province-level codes (first two digits of a 6-digit division code).
PROVINCES = (
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36",
    "37", "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62",
    "63", "64", "65", "71", "81", "82",
)


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_list(values) -> str:
    return "(" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


def H(kind: str, col: str) -> str:
    """Name of a parsed helper column (see :func:`parse_sql`): d date, a amount, b bool,
    f is-an-accepted-firm, e empty."""
    return q(f"__{kind}_{col}")


def _parse_exprs(col: Column, typed: bool) -> list[str]:
    n, c = col.name, q(col.name)
    if typed and col.kind in ("date", "amount", "bool"):
        out = [f"({c} IS NULL) AS {H('e', n)}"]
        kind = {"date": "d", "amount": "a", "bool": "b"}[col.kind]
        return out + [f"{c} AS {H(kind, n)}"]
    out = [f"({c} = '') AS {H('e', n)}"]
    if col.kind == "date":
        out.append(f"(CASE WHEN regexp_full_match({c}, '{DATE_RE}') "
                   f"THEN try_strptime(left({c}, 10), '%Y-%m-%d')::DATE END) AS {H('d', n)}")
    elif col.kind == "amount":
        out.append(f"(CASE WHEN regexp_full_match({c}, '{AMOUNT_PLAIN_RE}') "
                   f"OR regexp_full_match({c}, '{AMOUNT_GROUPED_RE}') "
                   f"THEN TRY_CAST(replace({c}, ',', '') AS DOUBLE) END) AS {H('a', n)}")
    elif col.kind == "bool":
        out.append(f"(CASE WHEN lower({c}) IN {sql_list(TRUE_SPELLINGS)} THEN TRUE "
                   f"WHEN lower({c}) IN {sql_list(FALSE_SPELLINGS)} THEN FALSE END) AS {H('b', n)}")
    return out


def parse_sql(spec: FileSpec, *, table: str, typed: bool) -> str:
    """Every parse done once per row, as helper columns the rules read. Text is already
    trimmed, and the firm-membership helpers ``__f_*`` are already columns of ``table``
    (computed by a vectorised hash lookup before the query)."""
    exprs = ["*"] + [e for col in spec.columns for e in _parse_exprs(col, typed)]
    return f"SELECT {', '.join(exprs)} FROM {table}"


def column_rules(col: Column) -> list[tuple[str, str, str]]:
    """Rules that look at one value of ``col`` (over the helper columns)."""
    n, c = col.name, q(col.name)
    e = H("e", n)
    rules: list[tuple[str, str, str]] = []
    if not col.nullable:
        rules.append((n, e, f"{n} is empty"))
    if col.kind == "date":
        rules.append((n, f"NOT {e} AND {H('d', n)} IS NULL", f"{n} is not a date (YYYY-MM-DD)"))
    elif col.kind == "amount":
        a = H("a", n)
        rules.append((n, f"NOT {e} AND ({a} IS NULL OR NOT isfinite({a}))", f"{n} is not a number"))
        rules.append((n, f"isfinite({a}) AND abs({a} * 100 - round({a} * 100)) > 1e-3", f"{n} has more than 2 decimals"))
    elif col.kind == "bool":
        spellings = "/".join(TRUE_SPELLINGS + FALSE_SPELLINGS)
        rules.append((n, f"NOT {e} AND {H('b', n)} IS NULL", f"{n} is not a boolean ({spellings})"))
    elif col.kind == "vocab":
        rules.append((n, f"NOT {e} AND {c} NOT IN {sql_list(col.vocabulary)}",
                      f"{n} is not one of {', '.join(col.vocabulary)}"))
    elif col.kind == "industry":
        cond = " OR ".join(
            f"(left({c}, 1) = '{s}' AND TRY_CAST(substr({c}, 2) AS INTEGER) BETWEEN {lo} AND {hi})"
            for s, (lo, hi) in INDUSTRY_SECTIONS.items()
        )
        rules.append((n, f"NOT {e} AND NOT (regexp_full_match({c}, '^[A-T][0-9]{{2}}$') AND ({cond}))",
                      f"{n} is not a GB/T 4754 section letter + 2-digit division (e.g. C34)"))
    elif col.kind == "region":
        rules.append((n, f"NOT {e} AND NOT (regexp_full_match({c}, '^[0-9]{{6}}$') AND left({c}, 2) IN {sql_list(PROVINCES)})",
                      f"{n} is not a 6-digit administrative division code"))
    elif col.kind == "firm_ref":
        rules.append((n, f"NOT {e} AND NOT {H('f', n)}", f"{n} is not an accepted firm in firms"))
    elif col.kind == "receivable_ref":
        rules.append((n, f"NOT {e} AND NOT {H('f', n)}", f"{n} is not an accepted receivable in receivables"))
        rules.append((n, f"NOT {e} AND {H('f', n)} AND NOT {H('o', n)}",
                      f"{n} is a receivable of another supplier than firm_id"))
    elif col.kind == "party":
        rules.append((n, f"NOT {e} AND NOT {H('f', n)} AND NOT (starts_with({c}, '{EXTERNAL_PREFIX}') "
                         f"AND length({c}) > {len(EXTERNAL_PREFIX)})",
                      f"{n} is neither an accepted firm in firms nor an {EXTERNAL_PREFIX} counterparty code"))
    return rules


FUTURE_DATES = {"flows": ("booked_on",), "receivables": ("issued_on", "confirmed_on", "paid_on"),
                "defaults": ("default_on",)}
# v1.1 event dates checked against the same horizon, but not used to find it (a v1
# dataset's data end must not move): pledges, transfers, drawdowns and repayments.
FUTURE_ONLY_DATES = {"receivables": ("pledged_on", "transferred_on"), "financings": ("drawn_on", "repaid_on")}


def future_rules(spec: FileSpec) -> list[tuple[str, str, str]]:
    """An event dated after the data's end or today (``_last_date.horizon``, by the
    ``ingest.yaml`` policy) is in the future: quarantined, so it cannot move the as-of."""
    return [(n, f"{H('d', n)} > (SELECT horizon FROM _last_date)",
             f"{n} is in the future (after the data's end or today; ingest.yaml future_dates)")
            for n in FUTURE_DATES.get(spec.name, ()) + FUTURE_ONLY_DATES.get(spec.name, ())]


def row_rules(spec: FileSpec) -> list[tuple[str, str, str]]:
    """Rules across columns of one row (date order, signs, conditional requirements)."""
    return _row_rules(spec) + future_rules(spec)


def _row_rules(spec: FileSpec) -> list[tuple[str, str, str]]:
    d, a, e = (lambda n: H("d", n)), (lambda n: H("a", n)), (lambda n: H("e", n))
    if spec.name == "firms":
        core = H("b", "is_core")
        return [
            ("registered_capital", f"{a('registered_capital')} < 0", "registered_capital is negative"),
            ("core_rating", f"{core} AND {e('core_rating')}", "core_rating is required when is_core is true"),
            ("core_rating", f"{core} = FALSE AND NOT {e('core_rating')}", "core_rating must be empty when is_core is false"),
            ("founded_on", f"{d('founded_on')} > (SELECT last_date FROM _last_date)", "founded_on is after the last date in the dataset"),
        ]
    if spec.name == "receivables":
        return [
            ("buyer_id", f"NOT {e('buyer_id')} AND buyer_id = supplier_id", "buyer_id equals supplier_id"),
            ("amount", f"{a('amount')} <= 0", "amount must be > 0"),
            ("due_on", f"{d('due_on')} < {d('issued_on')}", "due_on is before issued_on"),
            ("confirmed_on", f"{d('confirmed_on')} < {d('issued_on')}", "confirmed_on is before issued_on"),
            ("paid_on", f"{d('paid_on')} < {d('issued_on')}", "paid_on is before issued_on"),
            *_settlement_rules("paid"),
            *_pair_rules("pledged", "a pledge"), *_pair_rules("transferred", "a transfer"),
        ]
    if spec.name == "financings":
        return [
            ("amount", f"{a('amount')} <= 0", "amount must be > 0"),
            ("maturity_on", f"{d('maturity_on')} < {d('drawn_on')}", "maturity_on is before drawn_on"),
            ("repaid_on", f"{d('repaid_on')} < {d('drawn_on')}", "repaid_on is before drawn_on (repaid before drawn)"),
            *_settlement_rules("repaid"),
        ]
    if spec.name == "indicators":
        graded = sql_list(GRADED_INDICATORS)
        bools = sql_list(TRUE_SPELLINGS + FALSE_SPELLINGS)
        return [
            ("grade", f"indicator IN {graded} AND NOT {e('grade')} AND grade NOT IN {sql_list(INDICATOR_GRADES)}",
             "grade must be A, B or C for a graded indicator"),
            ("grade", f"indicator = 'bonus' AND NOT {e('grade')} AND (TRY_CAST(grade AS DOUBLE) IS NULL "
                      f"OR TRY_CAST(grade AS DOUBLE) < 0)", "grade must be a number of points >= 0 for bonus"),
            ("grade", f"indicator = 'dishonest' AND NOT {e('grade')} AND lower(grade) NOT IN {bools}",
             "grade must be true or false for dishonest"),
            ("as_of", f"{d('as_of')} > (SELECT last_date FROM _last_date)", "as_of is after the last date in the dataset"),
        ]
    if spec.name == "flows":
        return [
            ("payee_id", f"NOT {e('payee_id')} AND payee_id = payer_id", "payee_id equals payer_id"),
            ("amount", f"{a('amount')} <= 0", "amount must be > 0"),
        ]
    return []


def _settlement_rules(prefix: str) -> list[tuple[str, str, str]]:
    """A settlement (``{prefix}_on``, ``{prefix}_amount``: a receivable paid, a financing
    repaid) comes whole and never negative: a date without an amount, or an amount without
    a date, is half a record the engine cannot read either way."""
    a, e = (lambda n: H("a", n)), (lambda n: H("e", n))
    on, amount = f"{prefix}_on", f"{prefix}_amount"
    return [
        (amount, f"{a(amount)} < 0", f"{amount} is negative"),
        (amount, f"NOT {e(on)} AND {e(amount)}", f"{on} is set but {amount} is empty"),
        (on, f"{e(on)} AND NOT {e(amount)}", f"{amount} is set but {on} is empty"),
    ]


def _pair_rules(prefix: str, what: str) -> list[tuple[str, str, str]]:
    """A registry record (``{prefix}_to``, ``{prefix}_on``) comes whole and not before the
    receivable was issued: a pledge dated before its receivable existed is a bad record,
    not a pledge the engine can trust either way."""
    d, e = (lambda n: H("d", n)), (lambda n: H("e", n))
    to, on = f"{prefix}_to", f"{prefix}_on"
    return [
        (on, f"{d(on)} < {d('issued_on')}", f"{on} is before issued_on ({what} before issue)"),
        (on, f"NOT {e(to)} AND {e(on)}", f"{to} is set but {on} is empty"),
        (to, f"{e(to)} AND NOT {e(on)}", f"{on} is set but {to} is empty"),
    ]


def all_rules(spec: FileSpec) -> list[tuple[str, str, str]]:
    return [r for col in spec.columns for r in column_rules(col)] + row_rules(spec)


def _mask_expr(spec: FileSpec) -> str:
    """``_mask``: bit k set when the row breaks rule k of :func:`all_rules`."""
    rules = all_rules(spec)
    assert len(rules) < 63
    return "(" + " + ".join(f"(CASE WHEN {cond} THEN {1 << k} ELSE 0 END)" for k, (_, cond, _) in enumerate(rules)) + ")::BIGINT"


def mask_sql(spec: FileSpec, *, parsed: str, extra_columns: list[str]) -> str:
    """Typed contract columns, extra columns, ``_row`` and ``_mask`` of every row: the text
    path, where the typed values are parsed here."""
    exprs = []
    for col in spec.columns:
        n = col.name
        if col.kind == "date":
            exprs.append(f"{H('d', n)} AS {q(n)}")
        elif col.kind == "amount":
            exprs.append(f"round({H('a', n)}, 2) AS {q(n)}")
        elif col.kind == "bool":
            exprs.append(f"{H('b', n)} AS {q(n)}")
        else:
            exprs.append(f"NULLIF({q(n)}, '') AS {q(n)}")
    exprs += [q(c) for c in extra_columns]
    exprs += ["_row", f"{_mask_expr(spec)} AS _mask"]
    return f"SELECT {', '.join(exprs)} FROM ({parsed})"


def flagged_sql(spec: FileSpec, *, parsed: str) -> str:
    """``_row`` and ``_mask`` of the rows that break a rule, and nothing else: the typed
    path, whose values are already typed, so DuckDB only has to judge them (and hands
    back a few rows instead of a copy of the file)."""
    return f"SELECT _row, {_mask_expr(spec)} AS _mask FROM ({parsed}) WHERE _mask <> 0"


USCC_SHAPE = "^[0-9A-Z]{18}$"
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # GB 32100-2015: no I, O, S, V, Z


def _uscc_validate(code: str) -> str:
    """``code`` if it is a GB 32100-2015 code, else python-stdnum's ValidationError.

    python-stdnum's ``uscc.validate`` wants digits in the first 8 characters, but the
    standard's first two (registering authority, entity type) are any character of the
    code's alphabet: a rural collective registered by agriculture (``N2...``), an
    "other" authority (``Y1...``). Those codes have valid check characters and are firms
    of the contract (village batch credit), so the structure is checked here: the two
    codes and the organisation code from the alphabet, the division code as 6 digits;
    the check character stays stdnum's."""
    if len(code) != 18:
        raise uscc.InvalidLength()
    if not code[2:8].isdigit() or any(c not in USCC_ALPHABET for c in code):
        raise uscc.InvalidFormat()
    if code[-1] != uscc.calc_check_digit(code[:17]):
        raise uscc.InvalidChecksum()
    return code


def uscc_reason(value: str, column: str) -> str | None:
    """Why ``value`` is not a valid 18-character unified social credit code, or None."""
    s = value.strip()
    if not s:
        return None  # the "is empty" rule reports it
    if len(s) != 18:
        return f"{column} is not 18 characters (unified social credit code)"
    if not re.fullmatch(USCC_SHAPE, s):
        return f"{column} has characters outside 0-9 and A-Z (unified social credit code)"
    try:
        _uscc_validate(s)
    except uscc.InvalidChecksum:
        return f"{column} check character is wrong (GB 32100-2015)"
    except uscc.ValidationError:
        return f"{column} is not a valid unified social credit code"
    return None


def uscc_violations(ids: pa.ChunkedArray, column: str) -> pd.DataFrame:
    """``row, column, reason`` of every value of ``ids`` (trimmed text, one per row) that
    is not a valid unified social credit code; empty values are left to the "is empty"
    rule. The shape (18 characters of 0-9 and A-Z) is checked on the whole column at once,
    so the per-code check (:func:`_uscc_validate`: the standard's structure and the
    check character) sees only the distinct well-shaped codes."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    well_shaped = pc.match_substring_regex(ids, USCC_SHAPE)
    suspect = pc.invert(pc.or_(pc.equal(ids, ""), well_shaped))
    rows = np.flatnonzero(suspect.to_numpy(zero_copy_only=False))
    for code in pc.unique(pc.filter(ids, well_shaped)).to_pylist():
        try:
            _uscc_validate(code)
        except uscc.ValidationError:
            rows = np.append(rows, np.flatnonzero(pc.equal(ids, code).to_numpy(zero_copy_only=False)))
    rows = np.sort(rows)
    values = ids.take(pa.array(rows, pa.int64())).to_pylist()
    return pd.DataFrame({"row": rows, "column": column, "reason": [uscc_reason(v, column) for v in values]})

