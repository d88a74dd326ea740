"""Who exists in a simulated world and who trades with whom.

Entities: core enterprises with external ratings; tier-1 suppliers selling to cores;
tier-2 suppliers selling to tier-1 suppliers; downstream distributors buying from
cores; unattached SMEs selling mostly to external customers (some to each other);
rings of related firms that fabricate trade. Each firm gets an industry (GB/T 4754),
a region (6-digit division code), possibly a batch group (park, association, village),
a Chinese name and a valid unified social credit code.

The trade network is a list of *sales links* ``supplier -> buyer`` with the share of the
supplier's sales going to that buyer (``sales_share``) and, for distributors, the share of
the buyer's purchases coming from that supplier (``purchase_share``). Links point up the
chain (tier-2 -> tier-1 -> core -> distributor), so the network is acyclic apart from the
fabricated rings, which live in a separate table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from scf_engine.contract import make_uscc
from scf_engine.simulate.stories import story_of

ROLES = ("core", "tier1", "tier2", "downstream", "unattached")

# county-level divisions (GB/T 2260) and their short names
REGIONS = {
    "320281": "江阴", "440705": "新会", "440306": "宝安", "330782": "义乌", "370211": "黄岛",
    "420106": "武昌", "320583": "昆山", "441900": "东莞", "350583": "南安", "510116": "双流",
    "330282": "慈溪", "410181": "巩义",
}
CORE_INDUSTRIES = ("C36", "C38", "C39", "C34", "C26", "C13")
INDUSTRIES_BY_ROLE = {
    "tier1": ("C33", "C29", "C39", "C38", "C34", "C36"),
    "tier2": ("C33", "C30", "C17", "C22", "C29", "C31"),
    "downstream": ("F51", "F52", "G54"),
    "unattached": ("C13", "C18", "C21", "C33", "E48", "F51", "F52", "G54", "I65", "C41"),
}
INDUSTRY_WORDS = {
    "C13": "食品", "C17": "纺织", "C18": "服饰", "C21": "家具", "C22": "纸业", "C26": "化工",
    "C29": "塑胶", "C30": "建材", "C31": "钢材", "C33": "五金", "C34": "机械", "C36": "汽车零部件",
    "C38": "电气", "C39": "电子", "C41": "工艺品", "E48": "建筑工程", "F51": "贸易", "F52": "商贸",
    "G54": "物流", "I65": "信息技术",
}
NAME_WORDS = (
    "恒达", "鑫源", "华盛", "宏泰", "永兴", "长城", "金桥", "瑞丰", "嘉和", "德润", "天成", "东方",
    "富通", "联创", "中联", "海通", "锦华", "鼎盛", "广源", "新宇", "安泰", "凯瑞", "振华", "力拓",
    "宝丰", "信诚", "合力", "顺达", "隆昌", "博远", "明辉", "启航", "盛世", "万通", "精工", "国泰",
)
RATING_CHOICES = ("AAA", "AA+", "AA", "AA-", "A+", "A", "A-")
# latent health of a core by rating: higher is healthier (see dynamics.py)
CORE_MU = {"AAA": 5.0, "AA+": 4.6, "AA": 4.2, "AA-": 3.9, "A+": 3.6, "A": 3.3, "A-": 3.0}


@dataclass
class WorldConfig:
    """Knobs of the generative story; defaults give the default world (10,000 firms);
    the shipped sample is the same story with 2,000 firms."""

    n_firms: int = 10000
    seed: int = 42
    start: str = "2022-01-01"
    n_months: int = 48
    core_share: float = 0.004
    role_shares: tuple[float, float, float, float] = (0.32, 0.18, 0.18, 0.32)  # tier1, tier2, downstream, unattached
    young_share: float = 0.15  # non-core firms founded during the history
    # share of firms whose fund flows reach the platform only from a later date, by role:
    # chain suppliers often authorise sharing when they join a bank's chain programme
    late_sharing: tuple[float, float, float, float] = (0.4, 0.15, 0.1, 0.05)  # tier1, tier2, downstream, unattached
    ring_share: float = 0.03  # firms doing fabricated trade
    distressed_cores: int = 1
    mc_paths: int = 0  # Monte Carlo paths for truth; 0 = chosen by size
    # After-lending scenario (off by default, so every existing world stays the same; drawn
    # from its own random stream): from scenario_month (default 60% into the history) a
    # share of non-core firms starts to deteriorate, and some healthy cores decline as the
    # distressed ones do (a core downgraded mid-year); missed payments are cured as always.
    deteriorating_share: float = 0.0
    downgraded_cores: int = 0
    scenario_month: int = -1
    # The generative mechanism (scf_engine.simulate.stories): "default", "cyclical" or
    # "shock". Other stories draw from their own random stream: default worlds are unchanged.
    story: str = "default"
    # Closed-loop scenario (contract v1.1, simulate/closed_loop.py; off by default, its own
    # random stream): financings.csv, accounts on flows, pledge/transfer records, with
    # planted double pledges, diversions, misused drawdowns and borrowing to repay.
    closed_loop: bool = False
    financed_share: float = 0.3  # of the receivables confirmed by cores
    double_pledge_share: float = 0.05  # of confirmed receivables pledged elsewhere (and 0.4x that transferred)
    misuse_share: float = 0.05  # of financings, for each planted kind (diversion, core, circle, borrow)


@dataclass
class World:
    config: WorldConfig
    firms: pd.DataFrame  # one row per firm, with simulator-only columns (role, mu, ...)
    links: pd.DataFrame  # supplier, buyer, sales_share, purchase_share (firm indices)
    rings: pd.DataFrame  # ring id, member firm indices in ring order
    months: pd.DatetimeIndex  # month starts
    state: dict = field(default_factory=dict)  # latent paths, filled by dynamics
    records: dict = field(default_factory=dict)  # contract tables, filled by emit


def build_world(cfg: WorldConfig) -> World:
    rng = np.random.default_rng([cfg.seed, 1])
    n = cfg.n_firms
    n_core = max(3, int(round(cfg.core_share * n)))
    n_rest = n - n_core
    shares = np.asarray(cfg.role_shares) / sum(cfg.role_shares)
    counts = np.floor(shares * n_rest).astype(int)
    counts[-1] += n_rest - counts.sum()
    roles = np.array(["core"] * n_core + sum(([r] * c for r, c in zip(ROLES[1:], counts)), []))
    months = pd.date_range(cfg.start, periods=cfg.n_months, freq="MS")
    start = months[0]

    firms = pd.DataFrame({"idx": np.arange(n), "role": roles})
    core_idx = np.flatnonzero(roles == "core")
    regions = np.array(list(REGIONS))

    # cores: ratings, industries, regions, sizes
    core_rating = rng.choice(RATING_CHOICES, size=n_core, p=[0.1, 0.15, 0.25, 0.2, 0.15, 0.1, 0.05])
    core_region = rng.choice(regions, size=n_core, replace=n_core > len(regions))
    core_industry = np.resize(rng.permutation(CORE_INDUSTRIES), n_core)
    chain_weight = rng.dirichlet(np.full(n_core, 2.0))  # how many suppliers each core has

    firms["primary_core"] = -1
    firms.loc[core_idx, "primary_core"] = core_idx
    firms["industry"] = ""
    firms["region"] = ""
    firms.loc[core_idx, "industry"] = core_industry
    firms.loc[core_idx, "region"] = core_region
    firms["core_rating"] = ""
    firms.loc[core_idx, "core_rating"] = core_rating

    links = []  # (supplier, buyer, sales_share, purchase_share)
    # tier-1 suppliers
    t1 = np.flatnonzero(roles == "tier1")
    t1_core = rng.choice(core_idx, size=len(t1), p=chain_weight)
    t1_dep = rng.beta(4.0, 2.2, size=len(t1))  # share of sales going to cores
    second = rng.random(len(t1)) < 0.15
    for i, c, d, two in zip(t1, t1_core, t1_dep, second):
        if two and n_core > 1:
            c2 = rng.choice(core_idx[core_idx != c])
            links += [(i, c, 0.75 * d, 0.0), (i, c2, 0.25 * d, 0.0)]
        else:
            links.append((i, c, d, 0.0))
    firms.loc[t1, "primary_core"] = t1_core

    # tier-2 suppliers sell to tier-1 suppliers of one chain
    t2 = np.flatnonzero(roles == "tier2")
    t2_core = rng.choice(core_idx, size=len(t2), p=chain_weight)
    t2_dep = rng.beta(3.0, 2.5, size=len(t2))
    for i, c, d in zip(t2, t2_core, t2_dep):
        pool = t1[t1_core == c]
        if len(pool) == 0:
            pool = t1
        k = min(len(pool), rng.integers(1, 4))
        buyers = rng.choice(pool, size=k, replace=False)
        split = rng.dirichlet(np.full(k, 2.0)) * d
        links += [(i, b, s, 0.0) for b, s in zip(buyers, split)]
    firms.loc[t2, "primary_core"] = t2_core

    # downstream distributors buy from cores
    ds = np.flatnonzero(roles == "downstream")
    ds_core = rng.choice(core_idx, size=len(ds), p=chain_weight)
    ds_dep = rng.beta(5.0, 2.0, size=len(ds))  # share of purchases from cores
    for i, c, p in zip(ds, ds_core, ds_dep):
        if rng.random() < 0.1 and n_core > 1:
            c2 = rng.choice(core_idx[core_idx != c])
            links += [(c, i, 0.0, 0.8 * p), (c2, i, 0.0, 0.2 * p)]
        else:
            links.append((c, i, 0.0, p))
    firms.loc[ds, "primary_core"] = ds_core

    # unattached SMEs: some sell a small share to other SMEs (later index only: acyclic)
    un = np.flatnonzero(roles == "unattached")
    buyers_pool = np.concatenate([un, ds])
    for i in un:
        if rng.random() < 0.35:
            cands = buyers_pool[buyers_pool > i]
            if len(cands):
                b = rng.choice(cands)
                links.append((i, b, rng.uniform(0.05, 0.3), 0.0))

    links = pd.DataFrame(links, columns=["supplier", "buyer", "sales_share", "purchase_share"])
    links = links.groupby(["supplier", "buyer"], as_index=False).sum()

    # industries and regions of non-cores: chain firms cluster in their core's region
    for role in ("tier1", "tier2", "downstream", "unattached"):
        idx = np.flatnonzero(roles == role)
        firms.loc[idx, "industry"] = rng.choice(INDUSTRIES_BY_ROLE[role], size=len(idx))
        pc = firms.loc[idx, "primary_core"].to_numpy()
        own = rng.choice(regions, size=len(idx))
        near = np.where(pc >= 0, firms["region"].to_numpy()[np.maximum(pc, 0)], own)
        firms.loc[idx, "region"] = np.where(rng.random(len(idx)) < 0.7, near, own)

    # founding dates: young firms are founded during the history (not in its last 6 months)
    years_old = rng.gamma(2.0, 4.0, size=n) + 1.0
    founded = start - pd.to_timedelta(np.round(years_old * 365.25), unit="D")
    young = (roles != "core") & (rng.random(n) < cfg.young_share)
    # young firms are more often tight tier-1 suppliers: a core's new partners
    young |= (roles == "tier1") & (rng.random(n) < cfg.young_share * 0.6)
    young_month = rng.integers(0, max(1, cfg.n_months - 6), size=n)
    young_day = rng.integers(0, 28, size=n)
    founded = np.where(
        young, months[young_month] + pd.to_timedelta(young_day, unit="D"), founded
    )
    firms["founded_on"] = pd.to_datetime(founded).normalize()
    firms["young"] = young

    # fund-flow sharing: the platform sees a firm's account only once the firm has
    # authorised it; for some firms that happens during the history (the registry, a
    # national system, sees everything from the start)
    late_p = pd.Series(roles).map(dict(zip(ROLES[1:], cfg.late_sharing))).fillna(0.0).to_numpy()
    late_p = np.where(roles == "core", 0.0, np.minimum(1.0, late_p + story_of(cfg.story).late_sharing_add))
    late = rng.random(n) < late_p
    share_month = rng.integers(12, max(13, cfg.n_months - 2), size=n)
    firms["flows_visible_from"] = np.where(late, months[np.minimum(share_month, cfg.n_months - 1)], months[0])
    firms["flows_visible_from"] = pd.to_datetime(firms["flows_visible_from"])

    # size: monthly revenue in CNY
    size = np.exp(rng.normal(np.log(8e5), 0.9, size=n))
    size[core_idx] = np.exp(rng.normal(np.log(4e8), 0.5, size=n_core))
    firms["size"] = size
    firms["registered_capital"] = np.round(size * 12 * rng.uniform(0.05, 0.3, size=n), -4).clip(1e5)

    # fabricated-trade rings among unattached and tier-2 firms
    ring_pool = np.flatnonzero(np.isin(roles, ("unattached", "tier2")) & ~young)
    n_ring_firms = int(round(cfg.ring_share * n_rest))
    ring_members = rng.choice(ring_pool, size=min(n_ring_firms, len(ring_pool)), replace=False)
    rings = []
    pos, rid = 0, 0
    while pos + 3 <= len(ring_members):
        k = 3 if len(ring_members) - pos < 8 else int(rng.integers(3, 5))
        for order, m in enumerate(ring_members[pos:pos + k]):
            rings.append((rid, order, m))
        pos += k
        rid += 1
    rings = pd.DataFrame(rings, columns=["ring", "order", "firm"])
    firms["fabricated"] = firms["idx"].isin(rings["firm"])
    # ring members share a region (related firms)
    for _, g in rings.groupby("ring"):
        firms.loc[g["firm"], "region"] = firms.loc[g["firm"].iloc[0], "region"]

    # batch groups: parks (chain firms), associations (by industry), villages (micro firms)
    group = np.full(n, "", dtype=object)
    r = rng.random(n)
    reg = firms["region"].to_numpy()
    ind = firms["industry"].to_numpy()
    park_no = rng.integers(1, 3, size=n)
    for i in range(n):
        if roles[i] == "core":
            continue
        if roles[i] in ("tier1", "tier2") and r[i] < 0.6:
            group[i] = f"PARK-{reg[i]}-{park_no[i]:02d}"
        elif roles[i] == "downstream" and r[i] < 0.4:
            group[i] = f"ASSOC-{ind[i]}-{reg[i]}"
        elif roles[i] == "unattached" and r[i] < 0.5:
            group[i] = f"VILLAGE-{reg[i]}-{park_no[i]:02d}" if size[i] < 6e5 else f"ASSOC-{ind[i]}-{reg[i]}"
    firms["batch_group"] = group

    # identity: USCC and name
    serial = rng.choice(np.arange(10_000_000, 99_999_999), size=n, replace=False)
    firms["firm_id"] = [make_uscc(rg, s) for rg, s in zip(firms["region"], serial)]
    w1 = rng.choice(NAME_WORDS, size=n)
    names = []
    seen = set()
    for i in range(n):
        base = f"{REGIONS[firms.at[i, 'region']]}{w1[i]}{INDUSTRY_WORDS[firms.at[i, 'industry']]}"
        if roles[i] == "core":
            base = f"{REGIONS[firms.at[i, 'region']]}{w1[i]}{INDUSTRY_WORDS[firms.at[i, 'industry']]}集团"
        name = base
        k = 2
        while name in seen:
            name = f"{base}{k}"
            k += 1
        seen.add(name)
        names.append(name + ("股份有限公司" if roles[i] == "core" else "有限公司"))
    firms["name"] = names
    firms["is_core"] = roles == "core"

    # distressed cores: the ones whose health will decline during the history
    # (weighted by chain size, so the decline has suppliers to reach)
    distressed = rng.choice(core_idx, size=min(cfg.distressed_cores, n_core), replace=False, p=chain_weight)
    firms["distressed_core"] = firms["idx"].isin(distressed)
    if cfg.deteriorating_share > 0 or cfg.downgraded_cores > 0:
        add_scenario(cfg, firms)
    return World(cfg, firms, links, rings, months)


def add_scenario(cfg: WorldConfig, firms: pd.DataFrame) -> None:
    """Mark the firms of the after-lending scenario (columns ``deteriorates``,
    ``downgraded_core``), drawn from a stream of their own: the world's other draws are
    untouched."""
    rng = np.random.default_rng([cfg.seed, 9])
    core = firms["is_core"].to_numpy()
    plain = np.flatnonzero(~core)
    k = int(round(cfg.deteriorating_share * len(plain)))
    firms["deteriorates"] = firms["idx"].isin(rng.choice(plain, size=min(k, len(plain)), replace=False))
    healthy = np.flatnonzero(core & ~firms["distressed_core"].to_numpy())
    firms["downgraded_core"] = firms["idx"].isin(rng.choice(healthy, size=min(cfg.downgraded_cores, len(healthy)),
                                                            replace=False))
