"""Write a copy of a dataset with contract violations of every kind injected.

Each fault is a new row (a mutated copy of a real one, with fresh ids so that nothing
else refers to it) inserted at a random position, so the manifest ``faults.csv`` lists
exactly the rows that must be quarantined: ``file, line, column, reason`` (``reason``
is a fragment of the quarantine reason). The copy is written as GB18030 CSV with a few
*accepted* variants a real export carries (thousands separators, timestamps, 是/否
booleans, an extra column), so the same copy also tests that leniency.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from scf_engine.contract import FILES, INDICATOR_NAMES, locate, make_uscc

# (file, column, bad value or callable(row) -> row, reason fragment)
FIRM_FAULTS = [
    ("firm_id", "CHECK", "check character is wrong"),
    ("firm_id", "SHORT", "is not 18 characters"),
    ("firm_id", "LOWER", "outside 0-9 and A-Z"),
    ("name", "", "name is empty"),
    ("industry", "Z99", "industry is not"),
    ("industry", "C99", "industry is not"),
    ("region", "990000", "region is not"),
    ("region", "12345", "region is not"),
    ("founded_on", "2024/13/01", "founded_on is not a date"),
    ("founded_on", "2099-01-01", "founded_on is after the last date"),
    ("registered_capital", "-100", "registered_capital is negative"),
    ("registered_capital", "1.234", "more than 2 decimals"),
    ("registered_capital", "ten", "registered_capital is not a number"),
    ("is_core", "maybe", "is_core is not a boolean"),
    ("core_rating", "CORE_NO_RATING", "core_rating is required"),
    ("core_rating", "NONCORE_RATING", "core_rating must be empty"),
    ("core_rating", "AAAA", "core_rating is not one of"),
    ("firm_id", "DUPLICATE", "duplicate firm_id"),
]
RECEIVABLE_FAULTS = [
    ("receivable_id", "", "receivable_id is empty"),
    ("receivable_id", "DUPLICATE", "duplicate receivable_id"),
    ("supplier_id", "UNKNOWN", "supplier_id is not an accepted firm"),
    ("buyer_id", "UNKNOWN", "buyer_id is not an accepted firm"),
    ("buyer_id", "SAME", "buyer_id equals supplier_id"),
    ("amount", "0", "amount must be > 0"),
    ("amount", "-5.00", "amount must be > 0"),
    ("amount", "abc", "amount is not a number"),
    ("amount", "12.345", "more than 2 decimals"),
    ("amount", "1,23,4.00", "amount is not a number"),
    ("issued_on", "2024-02-30", "issued_on is not a date"),
    ("due_on", "BEFORE_ISSUED", "due_on is before issued_on"),
    ("confirmed_on", "BEFORE_ISSUED", "confirmed_on is before issued_on"),
    ("paid_on", "BEFORE_ISSUED", "paid_on is before issued_on"),
    ("paid_amount", "-1", "paid_amount is negative"),
    ("paid_amount", "NO_AMOUNT", "paid_on is set but paid_amount is empty"),
    ("paid_on", "NO_DATE", "paid_amount is set but paid_on is empty"),
]
FLOW_FAULTS = [
    ("txn_id", "", "txn_id is empty"),
    ("txn_id", "DUPLICATE", "duplicate txn_id"),
    ("booked_on", "31/12/2024", "booked_on is not a date"),
    ("payer_id", "UNKNOWN", "payer_id is neither"),
    ("payee_id", "UNKNOWN", "payee_id is neither"),
    ("payee_id", "SAME", "payee_id equals payer_id"),
    ("amount", "0", "amount must be > 0"),
    ("amount", "", "amount is empty"),
    ("amount", "1.001", "more than 2 decimals"),
    ("purpose", "gift", "purpose is not one of"),
    ("*", "MALFORMED", "fields, expected"),
]
DEFAULT_FAULTS = [
    ("firm_id", "UNKNOWN", "firm_id is not an accepted firm"),
    ("firm_id", "DUPLICATE", "duplicate firm_id"),
    ("default_on", "soon", "default_on is not a date"),
]
INDICATOR_FAULTS = [  # contract v1.1
    ("firm_id", "UNKNOWN", "firm_id is not an accepted firm in firms"),
    ("as_of", "2024-02-30", "as_of is not a date (YYYY-MM-DD)"),
    ("indicator", "size", "indicator is not one of " + ", ".join(INDICATOR_NAMES[:2])),
    ("grade", "GRADE_D", "grade must be A, B or C for a graded indicator"),
    ("grade", "BONUS_WORDS", "grade must be a number of points >= 0 for bonus"),
    ("grade", "FLAG_MAYBE", "grade must be true or false for dishonest"),
]

FAULTS = {"firms": FIRM_FAULTS, "receivables": RECEIVABLE_FAULTS, "flows": FLOW_FAULTS, "defaults": DEFAULT_FAULTS,
          "indicators": INDICATOR_FAULTS}
UNKNOWN_FIRM = "91110000000000000X"  # well-formed id of a firm that is not in firms


def _read_text(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
        for c in df.columns:
            if c.endswith("_on"):
                df[c] = pd.to_datetime(df[c]).dt.strftime("%Y-%m-%d")
            elif pd.api.types.is_float_dtype(df[c]):
                df[c] = df[c].map(lambda x: "" if pd.isna(x) else f"{x:.2f}")
        return df.astype(object).where(df.notna(), "").astype(str)
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")


def _mutate(file: str, row: dict, column: str, value: str, rng, tag: str, firms: pd.DataFrame) -> dict:
    row = dict(row)
    key = {"firms": "firm_id", "receivables": "receivable_id", "flows": "txn_id", "defaults": "firm_id",
           "indicators": "firm_id"}[file]
    if file in ("receivables", "flows"):
        row[key] = f"FAULT-{tag}"
    if file == "firms":
        # a fresh valid-looking firm id that nothing refers to
        row["firm_id"] = make_uscc("110101", int(rng.integers(10_000_000, 99_999_999)))
        row["is_core"], row["core_rating"] = "false", ""
    if value == "DUPLICATE":
        return row  # caller sets the duplicated key
    if value == "UNKNOWN":
        row[column] = UNKNOWN_FIRM
    elif value == "SAME":
        other = "supplier_id" if column == "buyer_id" else "payer_id"
        row[column] = row[other]
    elif value == "BEFORE_ISSUED":
        row["issued_on"] = "2023-06-15"
        row[column] = "2023-06-01"
        if column == "paid_on":
            row["paid_amount"] = row["amount"]
    elif value == "NO_AMOUNT":
        row["paid_on"], row["paid_amount"] = row["due_on"], ""
    elif value == "NO_DATE":
        row["paid_on"], row["paid_amount"] = "", row["amount"]
    elif value == "CHECK":
        fid = row["firm_id"]
        alphabet = "0123456789ABCDEFGHJKLMNPQRTUWXY"
        row["firm_id"] = fid[:-1] + alphabet[(alphabet.index(fid[-1]) + 1) % len(alphabet)]
    elif value == "SHORT":
        row["firm_id"] = row["firm_id"][:-1]
    elif value == "LOWER":
        row["firm_id"] = row["firm_id"][:-1] + "a"
    elif value == "CORE_NO_RATING":
        row["is_core"], row["core_rating"] = "true", ""
    elif value == "NONCORE_RATING":
        row["is_core"], row["core_rating"] = "false", "AA"
    elif value == "AAAA":
        row["is_core"], row["core_rating"] = "true", "AAAA"
    elif value == "MALFORMED":
        pass
    elif value in ("GRADE_D", "BONUS_WORDS", "FLAG_MAYBE"):
        row["indicator"], row["grade"] = {"GRADE_D": ("premises", "D"), "BONUS_WORDS": ("bonus", "lots"),
                                          "FLAG_MAYBE": ("dishonest", "maybe")}[value]
    else:
        row[column] = value
    if file == "defaults" and column != "firm_id":
        row["firm_id"] = row["firm_id"]
    return row


def write_faulty_copy(src: Path | str, dst: Path | str, *, seed: int = 0) -> pd.DataFrame:
    """Copy the dataset at ``src`` to ``dst`` with faults injected; returns the manifest."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = {spec.name: _read_text(locate(src, spec)) for spec in FILES if locate(src, spec) is not None}
    firms = frames["firms"]
    noncore_ids = firms.loc[firms["is_core"].str.lower() == "false", "firm_id"].tolist()
    manifest = []
    for name, df in frames.items():
        faults = list(FAULTS[name])
        if name == "defaults":  # defaults need firms that have not defaulted
            free = [f for f in noncore_ids if f not in set(df["firm_id"])]
        base_rows = df.sample(n=len(faults), random_state=seed, replace=len(df) < len(faults)).to_dict("records") if len(df) else []
        injected = []
        for k, ((column, value, reason), row) in enumerate(zip(faults, base_rows)):
            tag = f"{name[:3].upper()}{k:03d}"
            new = _mutate(name, row, column, value, rng, tag, firms)
            if name == "defaults" and value != "UNKNOWN":
                new["firm_id"] = free[k]
            if value == "DUPLICATE":
                key = {"firms": "firm_id", "receivables": "receivable_id", "flows": "txn_id", "defaults": "firm_id"}[name]
                new[key] = df[key].iloc[0]
            injected.append((new, column, reason, value == "MALFORMED"))
        # accepted variants on real rows: thousands separators, timestamps, 是/否, spaces
        df = df.copy()
        if name in ("receivables", "flows"):
            big = df["amount"].astype(float) >= 1000
            idx = df.index[big][:50]
            df.loc[idx, "amount"] = df.loc[idx, "amount"].astype(float).map(lambda x: f"{x:,.2f}")
            date_col = "issued_on" if name == "receivables" else "booked_on"
            idx = df.index[:50]
            df.loc[idx, date_col] = df.loc[idx, date_col] + " 09:30:00"
        if name == "firms":
            df["is_core"] = df["is_core"].str.lower().map({"true": "是", "false": "否"})
            df["source_system"] = "CORE-BANKING"  # an extra column: kept and ignored
            injected = [(dict(r, source_system="CORE-BANKING"), c, why, m) for r, c, why, m in injected]
        positions = np.sort(rng.choice(len(df) + 1, size=len(injected), replace=True))
        out_rows = df.to_dict("records")
        lines = []
        offset = 0
        for (new, column, reason, malformed), pos in zip(injected, positions):
            out_rows.insert(pos + offset, ("MALFORMED", new) if malformed else new)
            lines.append((pos + offset, column, reason))
            offset += 1
        path = dst / f"{name}.csv"
        cols = list(df.columns)
        with open(path, "w", encoding="gb18030", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for r in out_rows:
                if isinstance(r, tuple):
                    w.writerow([r[1][c] for c in cols] + ["EXTRA"])
                else:
                    w.writerow([r[c] for c in cols])
        for idx, column, reason in lines:
            manifest.append({"file": f"{name}.csv", "line": idx + 2, "column": column, "reason": reason})
    for extra in ("truth.csv", "truth_firms.csv", "world.json"):
        if (src / extra).exists():
            (dst / extra).write_bytes((src / extra).read_bytes())
    out = pd.DataFrame(manifest)
    out.to_csv(dst / "faults.csv", index=False)
    return out
