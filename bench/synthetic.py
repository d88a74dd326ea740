"""Big contract-shaped data for the scale benchmarks (graph, features), made fast.

This is *not* the world simulator (:mod:`scf_engine.simulate`): that one draws latent
firm dynamics, Monte Carlo default truth and per-firm flow stories, and would take far
too long for 20 million flow rows. The scale benchmarks need the *shape* of the data,
not a credit story, so everything here is numpy-vectorised:

* firms: ~0.4% cores, then tier-1 suppliers (sell to 1-3 cores and a little to each
  other), tier-2 suppliers (sell to tier-1 suppliers of one chain and to each other),
  distributors (buy from 1-2 cores and from each other), unattached SMEs (sell to
  each other and to distributors), and a few rings of firms passing near-equal amounts
  round a loop; valid USCC firm ids (:func:`scf_engine.contract.make_uscc`);
* receivables on the chain links, in proportion to link size: confirmed mostly when the
  buyer is a core, paid around the due date (some buyers late, a few not at all);
* flows over 24 months: the paid receivables as firm-to-firm trade, some unregistered
  firm-to-firm trade, monthly payroll / tax / social insurance / housing fund /
  utilities / loan service to ``EXT-`` parties (with missed months), loans, and trade
  with external customers and suppliers filling the rest (most rows are *not*
  firm-to-firm, as in real account statements).

Records end the day before ``AS_OF`` so the whole world is visible at ``AS_OF``; a world
is written once to ``out/bench/synthetic/`` as Parquet and read back by every run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path("out/bench/synthetic")
START = np.datetime64("2022-01-01", "D")
AS_OF = pd.Timestamp("2024-01-01")
N_DAYS = int((np.datetime64("2024-01-01", "D") - START).astype(int))  # 730: 24 months
N_MONTHS = 24
REGIONS = ("320281", "440705", "440306", "330782", "370211", "420106", "320583", "441900", "350583", "510116",
           "330282", "410181")
INDUSTRIES = {
    "core": ("C36", "C38", "C39", "C34", "C26", "C13"),
    "tier1": ("C33", "C29", "C39", "C38", "C34", "C36"),
    "tier2": ("C33", "C30", "C17", "C22", "C29", "C31"),
    "downstream": ("F51", "F52", "G54"),
    "unattached": ("C13", "C18", "C21", "C33", "E48", "F51", "F52", "G54", "I65", "C41"),
}
RATINGS = ("AAA", "AA+", "AA", "AA-", "A+", "A", "A-")
ROLE_SHARES = {"tier1": 0.32, "tier2": 0.18, "downstream": 0.18, "unattached": 0.32}
N_CUSTOMERS, N_SUPPLIERS = 8, 5  # external customer / supplier slots per firm
PURPOSES = ("trade", "payroll", "tax", "social_insurance", "housing_fund", "utilities", "loan_drawdown",
            "loan_repayment", "other")
P = {p: i for i, p in enumerate(PURPOSES)}


# --- firms and links -----------------------------------------------------------------------
def firm_ids(n: int) -> np.ndarray:
    """``n`` valid USCCs (cached: 100k ``make_uscc`` calls take a second or two)."""
    path = ROOT / f"ids_{n}.npy"
    if path.exists():
        return np.load(path, allow_pickle=False)
    from scf_engine.contract import make_uscc

    ids = np.array([make_uscc(REGIONS[i % len(REGIONS)], 10_000_000 + i) for i in range(n)])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, ids)
    return ids


def _pick_within(rng, groups_of_pool: np.ndarray, pool: np.ndarray, group: np.ndarray) -> np.ndarray:
    """For each entry of ``group``, a random member of ``pool`` with the same group
    (any member of ``pool`` where the group has none)."""
    order = np.argsort(groups_of_pool, kind="stable")
    sorted_pool, sorted_groups = pool[order], groups_of_pool[order]
    n_groups = max(int(group.max(initial=0)), int(groups_of_pool.max(initial=0))) + 1
    start = np.searchsorted(sorted_groups, np.arange(n_groups))
    count = np.bincount(sorted_groups, minlength=n_groups)
    c = count[group]
    pick = np.where(c > 0, start[group] + np.floor(rng.random(len(group)) * np.maximum(c, 1)).astype(np.int64),
                    rng.integers(0, len(pool), len(group)))
    return sorted_pool[pick]


def make_links(n_firms: int, n_cores: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(role per firm, primary core per firm (-1 unattached), links ``supplier, buyer,
    size, registered, ring``): firm indices, cores first; ``size`` = yearly sales on the
    link (CNY); ``registered`` = the link's sales go through the receivables registry."""
    rng = np.random.default_rng([seed, 1])
    n_rest = n_firms - n_cores
    counts = {r: int(s * n_rest) for r, s in ROLE_SHARES.items()}
    counts["unattached"] += n_rest - sum(counts.values())
    role = np.array(["core"] * n_cores + [r for r, c in counts.items() for _ in range(c)])
    idx = {r: np.flatnonzero(role == r) for r in ("core", "tier1", "tier2", "downstream", "unattached")}
    core_w = rng.lognormal(0, 1.0, n_cores)
    core_w /= core_w.sum()
    primary = np.full(n_firms, -1, np.int64)
    primary[idx["core"]] = idx["core"]
    for r in ("tier1", "tier2", "downstream"):
        primary[idx[r]] = rng.choice(n_cores, size=len(idx[r]), p=core_w)

    parts = []  # (supplier, buyer, log-mean size, log-sd, registered share)

    def add(s, b, mu, sd, reg):
        parts.append((np.asarray(s, np.int64), np.asarray(b, np.int64), mu, sd, reg))

    t1, t2, ds, un = idx["tier1"], idx["tier2"], idx["downstream"], idx["unattached"]
    # tier 1 -> its core, and 30% / 10% a second / third core
    add(t1, primary[t1], 16.3, 1.0, 0.95)
    for p_extra in (0.3, 0.1):
        m = t1[rng.random(len(t1)) < p_extra]
        add(m, rng.choice(n_cores, size=len(m), p=core_w), 15.3, 1.0, 0.95)
    # tier 1 -> another tier 1 of the same chain (15%)
    m = t1[rng.random(len(t1)) < 0.15]
    add(m, _pick_within(rng, primary[t1], t1, primary[m]), 14.5, 1.0, 0.7)
    # tier 2 -> 1 + Poisson(2) tier-1 suppliers of its chain
    k = 1 + rng.poisson(2.0, len(t2))
    s = np.repeat(t2, k)
    add(s, _pick_within(rng, primary[t1], t1, primary[s]), 14.8, 1.0, 0.8)
    # tier 2 -> tier 2 of the same chain (deeper tiers, 25%)
    m = t2[rng.random(len(t2)) < 0.25]
    add(m, _pick_within(rng, primary[t2], t2, primary[m]), 14.0, 1.0, 0.6)
    # core -> distributor, 20% a second core; distributor -> distributor, Poisson(0.6)
    add(primary[ds], ds, 16.0, 1.0, 0.9)
    m = ds[rng.random(len(ds)) < 0.2]
    add(rng.choice(n_cores, size=len(m), p=core_w), m, 15.0, 1.0, 0.9)
    k = rng.poisson(0.6, len(ds))
    b = np.repeat(ds, k)
    add(_pick_within(rng, primary[ds], ds, primary[b]), b, 14.0, 1.0, 0.5)
    # unattached SMEs sell to Poisson(1.2) SMEs or distributors, anywhere
    k = rng.poisson(1.2, len(un))
    s = np.repeat(un, k)
    pool = np.concatenate([un, ds])
    add(s, pool[rng.integers(0, len(pool), len(s))], 13.8, 1.2, 0.3)

    sup = np.concatenate([p[0] for p in parts])
    buy = np.concatenate([p[1] for p in parts])
    size = np.concatenate([rng.lognormal(p[2], p[3], len(p[0])) for p in parts])
    reg = np.concatenate([rng.random(len(p[0])) < p[4] for p in parts])
    links = pd.DataFrame({"supplier": sup, "buyer": buy, "size": size, "registered": reg, "ring": False})
    links = links[links["supplier"] != links["buyer"]]
    links = links.groupby(["supplier", "buyer"], as_index=False).agg(size=("size", "sum"), registered=("registered", "max"),
                                                                    ring=("ring", "max"))
    # rings of 3-5 unattached firms passing near-equal amounts round (0.5% of firms)
    n_ring_firms = int(0.005 * n_firms)
    members = rng.choice(un, size=n_ring_firms, replace=False)
    sizes = rng.integers(3, 6, n_ring_firms // 3)
    sizes = sizes[np.cumsum(sizes) <= n_ring_firms]
    ring_id = np.repeat(np.arange(len(sizes)), sizes)
    members = members[: len(ring_id)]
    start = np.r_[0, np.cumsum(sizes)[:-1]]
    pos = np.arange(len(ring_id)) - start[ring_id]
    nxt = members[start[ring_id] + (pos + 1) % sizes[ring_id]]
    rings = pd.DataFrame({"supplier": members, "buyer": nxt, "size": 0.0, "registered": False, "ring": True,
                          "ring_id": ring_id})
    links = pd.concat([links.assign(ring_id=-1), rings], ignore_index=True)
    links = links.drop_duplicates(["supplier", "buyer"]).reset_index(drop=True)
    return role, primary, links


def _firms_frame(rng, ids: np.ndarray, role: np.ndarray) -> pd.DataFrame:
    n = len(ids)
    is_core = role == "core"
    industry = np.empty(n, dtype=object)
    for r, choices in INDUSTRIES.items():
        m = role == r
        industry[m] = np.asarray(choices)[rng.integers(0, len(choices), m.sum())]
    years = rng.gamma(2.0, 4.0, n) + 1.0
    founded = (START - np.round(years * 365.25).astype(np.int64)).astype("datetime64[s]")
    rating = np.where(is_core, np.asarray(RATINGS)[rng.integers(0, len(RATINGS), n)], None)
    batch = np.where(rng.random(n) < 0.1, np.char.add("PARK-320281-0", rng.integers(1, 5, n).astype(str)), None)
    return pd.DataFrame({
        "firm_id": pd.array(ids, dtype="str"), "name": pd.array(np.char.add("合成企业", np.arange(n).astype(str)), dtype="str"),
        "industry": pd.array(industry, dtype="str"), "region": pd.array(np.asarray(REGIONS)[np.arange(n) % len(REGIONS)], dtype="str"),
        "founded_on": founded,
        "registered_capital": np.round(np.where(is_core, rng.lognormal(20, 0.8, n), rng.lognormal(15, 1.2, n)), 2),
        "is_core": is_core, "core_rating": pd.array(rating, dtype="str"), "batch_group": pd.array(batch, dtype="str"),
        "defaulted": (~is_core) & (rng.random(n) < 0.02),
    })


# --- the world -------------------------------------------------------------------------------
def _ids(prefix: str, a: np.ndarray, width_a: int, b: np.ndarray | None = None, width_b: int = 3) -> pa.Array:
    parts = [prefix, pc.utf8_lpad(pc.cast(pa.array(a), pa.string()), width=width_a, padding="0")]
    if b is not None:
        parts += [pc.utf8_lpad(pc.cast(pa.array(b), pa.string()), width=width_b, padding="0")]
    return pc.binary_join_element_wise(*parts, "-")


class _Parties:
    """int32 party codes: firms 0..n-1, then one block per external kind."""

    def __init__(self, n: int):
        self.n = n
        self.blocks = {"C": n * N_CUSTOMERS, "S": n * N_SUPPLIERS, "PAY": n, "TAX": 12, "SI": 12, "HF": 12,
                       "GRID": 12, "WATER": 12, "BANK": 8, "MISC": 1000}
        self.offset = dict(zip(self.blocks, np.cumsum([n] + list(self.blocks.values()))[:-1]))

    def code(self, kind: str, i) -> np.ndarray:
        return (self.offset[kind] + np.asarray(i, np.int64)).astype(np.int32)

    def names(self, firm_ids: np.ndarray) -> pa.Array:
        chunks = [pa.array(firm_ids, pa.string())]
        for kind, size in self.blocks.items():
            i = np.arange(size)
            if kind == "C":
                chunks.append(_ids("EXT-C", i // N_CUSTOMERS, 6, i % N_CUSTOMERS))
            elif kind == "S":
                chunks.append(_ids("EXT-S", i // N_SUPPLIERS, 6, i % N_SUPPLIERS))
            else:
                chunks.append(_ids(f"EXT-{kind}", i, 6))
        return pa.concat_arrays([c.cast(pa.string()) for c in chunks])


def _receivables(rng, links: pd.DataFrame, is_core: np.ndarray, n_recv: int):
    reg = links[links["registered"] & ~links["ring"]]
    weight = np.sqrt(reg["size"].to_numpy())
    per_link = rng.multinomial(n_recv, weight / weight.sum())
    li = np.repeat(np.arange(len(reg)), per_link)
    sup = reg["supplier"].to_numpy()[li]
    buy = reg["buyer"].to_numpy()[li]
    amount = np.round(reg["size"].to_numpy()[li] * 2 / np.maximum(per_link[li], 1) * rng.lognormal(0, 0.3, n_recv), 2)
    issued = rng.integers(0, N_DAYS, n_recv)
    due = issued + np.array([30, 60, 90, 120, 180])[rng.integers(0, 5, n_recv)]
    n = len(is_core)
    # buyers: cores confirm most receivables (10% of cores refuse), others less often
    confirm_p = np.where(is_core, np.where(rng.random(n) < 0.1, 0.15, 0.85), 0.4)
    late_mean = np.where(rng.random(n) < 0.15, rng.uniform(10, 60, n), -2.0)
    unpaid_p = np.where(rng.random(n) < 0.03, 0.5, 0.01)
    confirmed = rng.random(n_recv) < confirm_p[buy]
    confirmed_on = issued + rng.integers(0, 15, n_recv)
    confirmed_on = np.where(confirmed & (confirmed_on < N_DAYS), confirmed_on, -1)
    paid_on = due + np.round(rng.normal(late_mean[buy], 6.0)).astype(np.int64)
    paid_on = np.maximum(paid_on, issued + 1)
    paid = (rng.random(n_recv) >= unpaid_p[buy]) & (paid_on < N_DAYS)
    paid_on = np.where(paid, paid_on, -1)
    paid_amount = np.where(paid, np.round(amount * np.where(rng.random(n_recv) < 0.05, rng.uniform(0.7, 1, n_recv), 1), 2),
                           np.nan)
    return sup, buy, amount, issued, due, confirmed_on, paid_on, paid_amount


def _days(d: np.ndarray) -> pa.Array:
    """Day offsets from START (-1 = empty) as a timestamp[s] column."""
    d = np.asarray(d, np.int64)
    ts = ((START - np.datetime64("1970-01-01", "D")).astype(np.int64) + d) * 86400
    return pa.array(ts, pa.timestamp("s"), mask=d < 0)


def world(n_firms: int = 100_000, n_cores: int = 400, n_receivables: int = 2_000_000, n_flows: int = 20_000_000,
          seed: int = 0) -> Path:
    """Write (once) and return the folder of a world: firms / receivables / flows .parquet."""
    folder = ROOT / f"world_{n_firms}_{n_receivables}_{n_flows}_{seed}"
    if (folder / "meta.json").exists():
        return folder
    from scf_engine.simulate.emit import sequential_ids

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2])
    ids = firm_ids(n_firms)
    role, primary, links = make_links(n_firms, n_cores, seed)
    is_core = role == "core"
    firms = _firms_frame(rng, ids, role)
    firms.to_parquet(folder / "firms.parquet", index=False)

    sup, buy, amount, issued, due, conf_on, paid_on, paid_amount = _receivables(rng, links, is_core, n_receivables)
    pq.write_table(pa.table({
        "receivable_id": sequential_ids("R", n_receivables, 10),
        "supplier_id": pa.array(ids[sup], pa.string()), "buyer_id": pa.array(ids[buy], pa.string()),
        "amount": amount, "issued_on": _days(issued), "due_on": _days(due), "confirmed_on": _days(conf_on),
        "paid_on": _days(paid_on), "paid_amount": pa.array(paid_amount, mask=np.isnan(paid_amount)),
    }), folder / "receivables.parquet", compression="zstd")

    parties = _Parties(n_firms)
    cols = {k: [] for k in ("day", "payer", "payee", "amount", "purpose")}

    def add(day, payer, payee, amt, purpose):
        n = len(day)
        cols["day"].append(np.asarray(day, np.int32))
        cols["payer"].append(np.broadcast_to(np.asarray(payer, np.int32), (n,)))
        cols["payee"].append(np.broadcast_to(np.asarray(payee, np.int32), (n,)))
        cols["amount"].append(np.round(np.asarray(amt, np.float64), 2))
        cols["purpose"].append(np.full(n, P[purpose], np.int8))

    # 1. paid receivables: the buyer pays the supplier
    m = paid_on >= 0
    add(paid_on[m], buy[m], sup[m], paid_amount[m], "trade")
    # 2. unregistered firm-to-firm trade on links, in proportion to size
    unreg = links[~links["ring"]]
    w = unreg["size"].to_numpy() * np.where(unreg["registered"], 0.15, 1.0)
    n_link = int(0.05 * n_flows)
    li = rng.choice(len(unreg), size=n_link, p=w / w.sum())
    sz = unreg["size"].to_numpy()[li]
    add(rng.integers(0, N_DAYS, n_link), unreg["buyer"].to_numpy()[li], unreg["supplier"].to_numpy()[li],
        sz / 24 * rng.lognormal(0, 0.5, n_link), "trade")
    # 3. rings: 12 rounds a year of one amount (+-1%) passed round the loop within days
    rings = links[links["ring"]]
    rounds = 24
    r_sup = np.repeat(rings["supplier"].to_numpy(), rounds)
    r_buy = np.repeat(rings["buyer"].to_numpy(), rounds)
    r_id = np.repeat(rings["ring_id"].to_numpy(), rounds)
    r_round = np.tile(np.arange(rounds), len(rings))
    base = rng.lognormal(13, 0.7, (int(r_id.max(initial=0)) + 1, rounds))[r_id, r_round]
    add(r_round * 30 + rng.integers(0, 10, len(r_id)), r_buy, r_sup, base * rng.uniform(0.99, 1.01, len(r_id)), "trade")

    # 4. obligations on the firm-month grid: from the firm's first shared month on
    first_month = np.where(rng.random(n_firms) < 0.7, 0, rng.integers(1, 19, n_firms))
    distressed = rng.random(n_firms) < 0.05
    fm_firm = np.repeat(np.arange(n_firms), N_MONTHS - first_month)
    fm_month = _months_from(first_month)
    month_start = (np.datetime64("2022-01", "M") + fm_month).astype("datetime64[D]")
    month_day = (month_start - START).astype(np.int64)
    late_stage = distressed[fm_firm] & (fm_month >= N_MONTHS - 6)
    region = fm_firm % len(REGIONS)
    scale = rng.lognormal(0, 1.0, n_firms) * np.where(is_core, 30, 1)
    n_grid = len(fm_firm)

    def present(p, p_late=None):
        q = np.full(n_grid, p) if p_late is None else np.where(late_stage, p_late, p)
        return rng.random(n_grid) < q

    m = present(0.97, 0.5)
    add(month_day[m] + rng.integers(8, 13, m.sum()), fm_firm[m], parties.code("PAY", fm_firm[m]),
        9e4 * scale[fm_firm[m]] * rng.lognormal(0, 0.05, m.sum()), "payroll")
    m = present(0.93, 0.6)
    add(month_day[m] + rng.integers(12, 18, m.sum()), fm_firm[m], parties.code("TAX", region[m]),
        3.5e4 * scale[fm_firm[m]] * rng.lognormal(0, 0.3, m.sum()), "tax")
    m = present(0.93, 0.6)
    add(month_day[m] + rng.integers(12, 18, m.sum()), fm_firm[m], parties.code("SI", region[m]),
        3e4 * scale[fm_firm[m]] * rng.lognormal(0, 0.05, m.sum()), "social_insurance")
    m = present(0.95, 0.7) & (fm_firm % 2 == 0)
    add(month_day[m] + rng.integers(12, 18, m.sum()), fm_firm[m], parties.code("HF", region[m]),
        1.2e4 * scale[fm_firm[m]] * rng.lognormal(0, 0.05, m.sum()), "housing_fund")
    m = present(0.95, 0.8)
    add(month_day[m] + rng.integers(0, 28, m.sum()), fm_firm[m], parties.code("GRID", region[m]),
        7e3 * scale[fm_firm[m]] * rng.lognormal(0, 0.3, m.sum()), "utilities")
    borrower = rng.random(n_firms) < 0.35
    m = present(0.97, 0.6) & borrower[fm_firm]
    bank = fm_firm % 8
    add(month_day[m] + rng.integers(18, 22, m.sum()), fm_firm[m], parties.code("BANK", bank[m]),
        9e3 * scale[fm_firm[m]], "loan_repayment")
    m = borrower[fm_firm] & (rng.random(n_grid) < 1 / 6)
    add(month_day[m] + rng.integers(0, 28, m.sum()), parties.code("BANK", bank[m]), fm_firm[m],
        np.round(6e5 * scale[fm_firm[m]], -4), "loan_drawdown")

    # 5. other and external trade fill the rest: 5% other, then 60% in / 40% out
    used = sum(len(d) for d in cols["day"])
    rest = n_flows - used
    assert rest > 0, f"obligations alone exceed {n_flows:,} flows"
    activity = rng.lognormal(0, 1.0, n_firms) * np.where(is_core, 20, 1) * (N_MONTHS - first_month)
    f = rng.choice(n_firms, size=rest, p=activity / activity.sum())
    day = first_month[f] * 30 + np.floor(rng.random(rest) * (N_DAYS - first_month[f] * 30)).astype(np.int64)
    day = np.minimum(day, N_DAYS - 1)
    kind = rng.random(rest)
    other, inflow = kind < 0.05, kind >= 0.05 + 0.95 * 0.4
    outflow = ~other & ~inflow
    amt = rng.lognormal(11.5, 1.3, rest) * np.sqrt(scale[f])
    amt = np.where(rng.random(rest) < 0.03, np.maximum(np.round(amt, -4), 10_000), amt)
    misc = parties.code("MISC", rng.integers(0, 1000, rest))
    cust = parties.code("C", f.astype(np.int64) * N_CUSTOMERS + np.minimum(rng.geometric(0.35, rest) - 1, N_CUSTOMERS - 1))
    supp = parties.code("S", f.astype(np.int64) * N_SUPPLIERS + np.minimum(rng.geometric(0.4, rest) - 1, N_SUPPLIERS - 1))
    add(day[other], f[other], misc[other], amt[other] / 5, "other")
    add(day[inflow], cust[inflow], f[inflow], amt[inflow], "trade")
    add(day[outflow], f[outflow], supp[outflow], amt[outflow] * 0.8, "trade")

    day = np.concatenate(cols.pop("day"))
    order = np.argsort(day, kind="stable")
    day = day[order]
    names = parties.names(ids)
    # in chunks: one Arrow string array of 100M ids is past the 2 GB a utf8 array holds
    step = 10_000_000
    table = {"txn_id": pa.chunked_array([sequential_ids("T", min(step, len(day) - s), 10, first=s + 1)
                                         for s in range(0, len(day), step)]),
             "booked_on": _days(day)}
    del day
    for c in ("payer", "payee"):
        table[f"{c}_id"] = names.take(pa.array(np.concatenate(cols.pop(c))[order]))
    table["amount"] = pa.array(np.concatenate(cols.pop("amount"))[order])
    table["purpose"] = pa.array(np.asarray(PURPOSES, dtype=object)[np.concatenate(cols.pop("purpose"))[order]], pa.string())
    flows = pa.table(table)
    assert flows.num_rows == n_flows
    pq.write_table(flows, folder / "flows.parquet", compression="zstd", row_group_size=1_000_000)
    firm_set = pa.array(ids, pa.string())
    f2f = pc.sum(pc.and_(pc.is_in(flows["payer_id"], firm_set), pc.is_in(flows["payee_id"], firm_set))).as_py()
    meta = {"firms": n_firms, "cores": n_cores, "links": len(links), "receivables": n_receivables, "flows": n_flows,
            "firm_to_firm_flows": f2f, "as_of": str(AS_OF.date()),
            "purposes": pd.Series(np.asarray(flows["purpose"])).value_counts().to_dict()}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return folder


def _months_from(first_month: np.ndarray) -> np.ndarray:
    """Month numbers first..N_MONTHS-1 for each firm, concatenated in firm order."""
    lengths = N_MONTHS - first_month
    ends = np.cumsum(lengths)
    pos = np.arange(ends[-1]) - np.repeat(ends - lengths, lengths)
    return np.repeat(first_month, lengths) + pos


def load_snapshot(folder: Path | str, firm_ids_subset=None, *, flows: bool = True):
    """The world as a :class:`~scf_engine.dataset.Snapshot` at ``AS_OF`` (all records are
    before it). With ``firm_ids_subset``: only those firms, the flows touching them and
    the receivables between them. ``flows=False``: an empty flows frame of the same
    columns and types (the caller's engine reads the flows from Parquet itself)."""
    from scf_engine.dataset import Snapshot

    folder = Path(folder)
    firms = pd.read_parquet(folder / "firms.parquet")
    recv = pd.read_parquet(folder / "receivables.parquet")
    if not flows:
        flows = pq.read_schema(folder / "flows.parquet").empty_table().to_pandas()
    elif firm_ids_subset is None:
        flows = pd.read_parquet(folder / "flows.parquet")
    else:
        keep = pa.array(list(firm_ids_subset), pa.string())
        t = pq.read_table(folder / "flows.parquet")
        t = t.filter(pc.or_(pc.is_in(t["payer_id"], keep), pc.is_in(t["payee_id"], keep)))
        flows = t.to_pandas()
        firms = firms[firms["firm_id"].isin(firm_ids_subset)].reset_index(drop=True)
        recv = recv[recv["supplier_id"].isin(firm_ids_subset) & recv["buyer_id"].isin(firm_ids_subset)].reset_index(drop=True)
    for df, cols in ((firms, ["founded_on"]), (recv, ["issued_on", "due_on", "confirmed_on", "paid_on"]),
                     (flows, ["booked_on"])):
        for c in cols:  # Parquet has no seconds unit; the engine's frames are datetime64[s]
            df[c] = df[c].astype("datetime64[s]")
    return Snapshot(AS_OF, firms, recv, flows)


# --- a Chain straight from links (propagation at sizes the world does not reach) -------------
def chain_from_links(n_firms: int, n_cores: int, seed: int = 0):
    """A :class:`~scf_engine.graph.Chain` with the edge and node columns propagation reads,
    made from :func:`make_links` without going through flows (for big propagation runs).
    Roles come from the engine's own :func:`~scf_engine.graph.chain_roles`."""
    from scf_engine.graph import Chain, chain_roles

    rng = np.random.default_rng([seed, 3])
    role, _, links = make_links(n_firms, n_cores, seed)
    ids = firm_ids(n_firms)
    is_core = role == "core"
    size = np.where(links["ring"], rng.lognormal(13, 0.7, len(links)) * 12, links["size"].to_numpy())
    reg = links["registered"].to_numpy()
    recv = np.where(reg, np.round(size * rng.lognormal(0, 0.2, len(links)), 2), 0.0)
    buyer = links["buyer"].to_numpy()
    confirm_p = np.where(is_core, np.where(rng.random(n_firms) < 0.1, 0.15, 0.85), 0.4)
    confirmed = np.round(recv * np.clip(rng.normal(confirm_p[buyer], 0.1), 0, 1), 2)
    trade = np.where(rng.random(len(links)) < 0.95, np.round(size * rng.uniform(0.8, 1.0, len(links)), 2), 0.0)
    edges = pd.DataFrame({
        "supplier": pd.array(ids[links["supplier"].to_numpy()], dtype="str"), "buyer": pd.array(ids[buyer], dtype="str"),
        "recv_amount_12m": recv, "confirmed_amount_12m": confirmed, "trade_volume_12m": trade,
    }).sort_values(["supplier", "buyer"]).reset_index(drop=True)
    ext_in = rng.lognormal(14, 1.2, n_firms)
    ext_out = rng.lognormal(13.5, 1.2, n_firms)
    nodes = pd.DataFrame({"is_core": is_core}, index=pd.Index(ids, name="firm_id", dtype="str"))
    nodes["trade_in_12m"] = edges.groupby("supplier")["trade_volume_12m"].sum().reindex(nodes.index).fillna(0).to_numpy() + ext_in
    nodes["trade_out_12m"] = edges.groupby("buyer")["trade_volume_12m"].sum().reindex(nodes.index).fillna(0).to_numpy() + ext_out
    nodes = nodes.join(chain_roles(nodes.index, is_core, edges, max_tier=6))
    return Chain(AS_OF, edges, nodes)
