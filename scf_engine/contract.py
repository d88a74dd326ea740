"""The data contract (v1.1) in code: the one place its file names, columns, vocabularies
and exit codes live.

``../shared/data-contract.md`` is the text a bank reads; this module is what the engine
reads. Everything that checks, writes or simulates data imports its names from here, so a
change to the contract is a change to one file. Nothing in here imports the rest of the
engine: ingest, simulate and dataset all sit on top of it, so helpers that more than one
of them needs (minting a valid firm id, finding a contract file in a folder) live here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from stdnum.cn import uscc

from scf_engine.errors import DatasetError  # raised by locate; the one error base lives in errors.py

CONTRACT_VERSION = "1.1"


class ExitCode(IntEnum):
    """Exit codes of ``scf validate`` and of every command that loads a dataset."""

    OK = 0  # nothing was quarantined
    QUARANTINED = 1  # rows were quarantined, the rest is usable
    UNUSABLE = 2  # missing file or column, unreadable file, nothing left to score


@dataclass(frozen=True)
class Column:
    """One column of a contract file.

    ``kind`` drives parsing and the basic rule checks: ``id`` (non-empty string),
    ``uscc`` (unified social credit code), ``firm_ref`` (must name an accepted firm),
    ``party`` (a firm or an ``EXT-`` code), ``text``, ``date``, ``amount``, ``bool``,
    ``vocab`` (one of ``vocabulary``), ``industry``, ``region``.
    """

    name: str
    kind: str
    required: bool = True  # the column must be present in the file
    nullable: bool = False  # an empty value is allowed
    vocabulary: tuple[str, ...] = ()
    # v1.1 optional columns: kept in the loaded frame only when the file has them, so a v1
    # dataset loads into exactly the frames it always did (and scores exactly as before)
    only_when_present: bool = False


@dataclass(frozen=True)
class FileSpec:
    name: str  # stem, e.g. "flows"
    columns: tuple[Column, ...]
    key: str | None  # unique key column, if any
    required: bool = True  # the file must be present in a dataset

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def base_column_names(self) -> tuple[str, ...]:
        """The columns a file has without its v1.1 additions (what a v1 writer writes)."""
        return tuple(c.name for c in self.columns if not c.only_when_present)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


RATINGS: tuple[str, ...] = (
    "AAA", "AA+", "AA", "AA-", "A+", "A", "A-", "BBB+", "BBB", "BBB-",
    "BB+", "BB", "BB-", "B+", "B", "B-", "CCC", "CC", "C",
)

PURPOSES: tuple[str, ...] = (
    "trade", "payroll", "tax", "social_insurance", "housing_fund", "utilities",
    "loan_drawdown", "loan_repayment", "other",
)

TRUE_SPELLINGS = ("true", "1", "是")
FALSE_SPELLINGS = ("false", "0", "否")

EXTERNAL_PREFIX = "EXT-"

FIRMS = FileSpec(
    "firms",
    (
        Column("firm_id", "uscc"),
        Column("name", "text"),
        Column("industry", "industry"),
        Column("region", "region"),
        Column("founded_on", "date"),
        Column("registered_capital", "amount"),
        Column("is_core", "bool"),
        Column("core_rating", "vocab", nullable=True, vocabulary=RATINGS),
        Column("batch_group", "text", required=False, nullable=True),
    ),
    key="firm_id",
)

RECEIVABLES = FileSpec(
    "receivables",
    (
        Column("receivable_id", "id"),
        Column("supplier_id", "firm_ref"),
        Column("buyer_id", "firm_ref"),
        Column("amount", "amount"),
        Column("issued_on", "date"),
        Column("due_on", "date"),
        Column("confirmed_on", "date", nullable=True),
        Column("paid_on", "date", nullable=True),
        Column("paid_amount", "amount", nullable=True),
        # v1.1: the registry's pledge (质押) and transfer (转让) records
        Column("pledged_to", "text", required=False, nullable=True, only_when_present=True),
        Column("pledged_on", "date", required=False, nullable=True, only_when_present=True),
        Column("transferred_to", "text", required=False, nullable=True, only_when_present=True),
        Column("transferred_on", "date", required=False, nullable=True, only_when_present=True),
    ),
    key="receivable_id",
)

FLOWS = FileSpec(
    "flows",
    (
        Column("txn_id", "id"),
        Column("booked_on", "date"),
        Column("payer_id", "party"),
        Column("payee_id", "party"),
        Column("amount", "amount"),
        Column("purpose", "vocab", vocabulary=PURPOSES),
        # v1.1: the accounts the money left and reached (closed-loop checks)
        Column("payer_account", "text", required=False, nullable=True, only_when_present=True),
        Column("payee_account", "text", required=False, nullable=True, only_when_present=True),
    ),
    key="txn_id",
)

DEFAULTS = FileSpec(
    "defaults",
    (
        Column("firm_id", "firm_ref"),
        Column("default_on", "date"),
    ),
    key="firm_id",
    required=False,  # for training and evaluation only
)

# v1.1: externally sourced grading indicators (the Jiangyin guide's indicators the flows
# cannot give), filled by the bank from the credit platform. ``grade`` is A/B/C for the
# graded ones, points for ``bonus`` (加分项), true/false for ``dishonest`` (严重失信).
GRADED_INDICATORS: tuple[str, ...] = (
    "premises", "legal_rep_credit", "environment", "public_credit", "industrial_policy", "other_rating",
)
INDICATOR_NAMES: tuple[str, ...] = GRADED_INDICATORS + ("bonus", "dishonest")
INDICATOR_GRADES: tuple[str, ...] = ("A", "B", "C")

INDICATORS = FileSpec(
    "indicators",
    (
        Column("firm_id", "firm_ref"),
        Column("as_of", "date"),
        Column("indicator", "vocab", vocabulary=INDICATOR_NAMES),
        Column("grade", "text"),
    ),
    key=None,
    required=False,
)

# v1.1: the financings the bank granted (a drawdown on a receivable, or on a flow-based
# line when ``receivable_id`` is empty), for "no double financing" and the closed loop of
# funds (资金闭环管理): the receivable's payment must reach ``collection_account``.
FINANCINGS = FileSpec(
    "financings",
    (
        Column("financing_id", "id"),
        Column("firm_id", "firm_ref"),
        Column("receivable_id", "receivable_ref", nullable=True),
        Column("drawn_on", "date"),
        Column("amount", "amount"),
        Column("maturity_on", "date"),
        Column("collection_account", "id"),
        Column("repaid_on", "date", nullable=True),
        Column("repaid_amount", "amount", nullable=True),
    ),
    key="financing_id",
    required=False,
)

FILES: tuple[FileSpec, ...] = (FIRMS, RECEIVABLES, FLOWS, DEFAULTS, INDICATORS, FINANCINGS)
FILE_EXTENSIONS = (".csv", ".parquet")


def locate(folder: Path, spec: FileSpec) -> Path | None:
    """The path of ``spec``'s file in ``folder`` (CSV or Parquet), or None if absent.

    ``NAME.parquet`` may be a folder of part files, as Spark's ``df.write.parquet`` and
    Hive write a table (hive partitions allowed): banks keep flows in such lakes, and a
    table that size is never exported to one file. A CSV is always one file."""
    found = [p for ext in FILE_EXTENSIONS
             if (p := folder / f"{spec.name}{ext}").is_file() or (ext == ".parquet" and p.is_dir())]
    if len(found) > 1:
        raise DatasetError(f"{folder}: both {found[0].name} and {found[1].name} are present; keep one")
    return found[0] if found else None


# Batch request and result.
BATCH_COLUMNS = ("firm_id", "requested_amount")
LIMITS_COLUMNS = (
    "firm_id", "as_of", "pd", "score", "grade", "limit_cny", "decision", "reasons",
    "pd_propagation", "pd_decoupled", "eligible_receivables_cny", "excluded_receivables",
)
GRADES = ("premium", "grade_1", "alternate")
DECISIONS = ("approve", "review", "decline")
# The contract fixes the grade boundaries on the 0..100 score (Jiangyin guide tiers).
GRADE_FLOORS = {"premium": 90.0, "grade_1": 75.0, "alternate": 0.0}

# Labels: a firm is bad at T when T <= default_on < T + LABEL_HORIZON_DAYS.
LABEL_HORIZON_DAYS = 365

# Amounts are CNY yuan with at most this many decimals; loaded as float64 rounded to it.
AMOUNT_DECIMALS = 2


def grade_for_score(score: float) -> str:
    """The contract's three tiers for a 0..100 score (higher is safer)."""
    if score != score:  # NaN: an unscored firm has no grade
        raise ValueError("no grade for a missing score")
    if score >= GRADE_FLOORS["premium"]:
        return "premium"
    if score >= GRADE_FLOORS["grade_1"]:
        return "grade_1"
    return "alternate"


# Firm ids are unified social credit codes (GB 32100).

def org_code_check(code8: str) -> str:
    """GB 11714 organisation code check character for an 8-character body."""
    weights = (3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(c, 36) * w for c, w in zip(code8, weights))
    c9 = 11 - total % 11
    return "X" if c9 == 10 else "0" if c9 == 11 else str(c9)


def make_uscc(region: str, serial: int) -> str:
    """A valid 18-character unified social credit code: 9 (market regulator), 1 (enterprise),
    the region, a GB 11714 organisation code, and the GB 32100 check character."""
    body8 = f"{serial:08d}"
    partial = "91" + region + body8 + org_code_check(body8)
    return partial + uscc.calc_check_digit(partial)
