"""Turn a world's latent history into contract records: receivables, flows, defaults.

Every observable is a noisy emission of the latent health ``h`` (its level) and of its
deviation ``r = h - mu - age`` (its recent movement); none gives health away alone:

* sales move with ``r`` (so year-on-year tax, utilities and sales trends follow it) and
  with the season (Chinese New Year dip, year-end peak); the cash margin with ``h``;
* payroll, tax, social insurance, housing fund, utilities and loan interest are paid
  monthly, and are missed with a probability that rises as ``h`` falls; a missed payment
  is cured next month (paid double) with a probability that also falls with ``h``, so a
  prompt cure is weaker evidence than an open gap;
* weaker firms sell to fewer external customers, more unevenly, with more churn, and
  borrow from extra lenders under stress;
* receivables follow firm-to-firm sales: confirmed by the buyer with its own propensity
  (cores confirm most), less often as the buyer's health falls; paid late when the buyer
  is weak; partly paid when it is very weak; never paid once it has defaulted. Each paid
  receivable is a ``trade`` flow from buyer to supplier on its paid date;
* fabricated-trade rings pass money round the ring, a little less at each hop and a few
  days later each time, back within weeks; they bounce
  money back and forth, spike inflows at quarter ends, and register receivables on each
  other that are never confirmed or paid;
* after a default, activity decays and obligations are mostly skipped.

External counterparties are ``EXT-`` codes. Amounts are CNY rounded to cents.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from scf_engine.contract import PURPOSES
from scf_engine.numeric import sigmoid
from scf_engine.simulate.dynamics import Params
from scf_engine.simulate.stories import Story, story_of
from scf_engine.simulate.world import REGIONS, World

PURPOSE_CODE = {p: i for i, p in enumerate(PURPOSES)}
SEASON = np.array([1.0, 0.75, 1.05, 1.0, 1.0, 1.05, 0.98, 0.97, 1.03, 1.0, 1.02, 1.15])
ENERGY = {"C26": 0.06, "C30": 0.05, "C31": 0.07, "C33": 0.03, "C17": 0.03, "C22": 0.04,
          "F51": 0.004, "F52": 0.005, "I65": 0.004, "G54": 0.008, "E48": 0.01}
N_CUSTOMER_SLOTS, N_SUPPLIER_SLOTS, N_BANKS = 6, 4, 8

# External counterparties get int32 ids above the firm indices, one range per kind, so
# that tens of millions of flow rows carry 4-byte party ids until they are written.
EXT_KINDS = {  # kind: (prefix, stride of the second number)
    "customer": ("EXT-C", N_CUSTOMER_SLOTS * 64), "supplier": ("EXT-S", N_SUPPLIER_SLOTS * 64),
    "payroll": ("EXT-PAY", 1), "tax": ("EXT-TAX", 1), "social_insurance": ("EXT-SI", 1),
    "housing_fund": ("EXT-HF", 1), "grid": ("EXT-GRID", 1), "water": ("EXT-WATER", 1),
    "bank": ("EXT-BANK", 1), "lender": ("EXT-LEND", 1), "misc": ("EXT-MISC", 1), "dressing": ("EXT-CW", 1),
}


class Parties:
    """Party ids: firms are 0..n-1; each external kind owns a range above them."""

    def __init__(self, n_firms: int, firm_ids: np.ndarray):
        self.n = n_firms
        self.firm_ids = firm_ids
        sizes = {k: n_firms * stride for k, (_, stride) in EXT_KINDS.items()}
        sizes.update({k: 1000 for k in ("tax", "social_insurance", "housing_fund", "grid", "water", "bank", "lender")})
        self.kinds = list(EXT_KINDS)
        self.offsets = np.cumsum([n_firms] + [sizes[k] for k in self.kinds])[:-1]
        assert self.offsets[-1] + sizes[self.kinds[-1]] < 2**31

    def ext(self, kind: str, a, b=0) -> np.ndarray:
        k = self.kinds.index(kind)
        stride = EXT_KINDS[kind][1]
        return (self.offsets[k] + np.asarray(a, np.int64) * stride + np.asarray(b, np.int64)).astype(np.int32)

    def strings(self, codes: np.ndarray) -> np.ndarray:
        """Render ids (unique ones, typically) as firm USCCs or readable EXT- codes."""
        codes = np.asarray(codes, dtype=np.int64)
        out = np.empty(len(codes), dtype=object)
        firm = codes < self.n
        out[firm] = self.firm_ids[codes[firm]]
        k = np.searchsorted(self.offsets, codes[~firm], side="right") - 1
        rel = codes[~firm] - self.offsets[k]
        strides = np.array([EXT_KINDS[x][1] for x in self.kinds])[k]
        a, b = rel // strides, rel % strides
        out[~firm] = [
            f"{EXT_KINDS[self.kinds[kk]][0]}-{aa:06d}" + (f"-{bb:03d}" if EXT_KINDS[self.kinds[kk]][1] > 1 else "")
            for kk, aa, bb in zip(k, a, b)
        ]
        return out


EPOCH = np.datetime64("1970-01-01", "D")


class _Rows:
    """Accumulates flow rows as compact arrays (int32 day and parties, float64 amount)."""

    def __init__(self):
        self.parts = []

    def add(self, day, payer, payee, amount, purpose):
        n = len(day)
        if n == 0:
            return
        self.parts.append((
            (np.asarray(day, "datetime64[D]") - EPOCH).astype(np.int32),
            np.broadcast_to(np.asarray(payer, np.int32), (n,)).copy(),
            np.broadcast_to(np.asarray(payee, np.int32), (n,)).copy(),
            np.round(np.asarray(amount, np.float64), 2),
            np.full(n, PURPOSE_CODE[purpose], np.int8),
        ))

    def concat(self):
        """One array per column; parts are released column by column to bound memory."""
        cols = []
        for j in range(5):
            cols.append(np.concatenate([p[j] for p in self.parts]))
            self.parts = [tuple(None if i == j else x for i, x in enumerate(p)) for p in self.parts]
        self.parts = []
        return cols


def emit_records(world: World, *, progress=None) -> None:
    """Fill ``world.records`` with firms, receivables, flows, defaults (contract columns)."""
    cfg = world.config
    rng = np.random.default_rng([cfg.seed, 4])
    story = story_of(cfg.story)
    srng = np.random.default_rng([cfg.seed, 10])  # the story's own draws: the default story makes none
    f = world.firms
    p: Params = world.state["params"]
    n, M = len(f), cfg.n_months
    H = world.state["health"]
    dm = world.state["default_month"]
    month_days = world.months.to_numpy().astype("datetime64[D]")
    month_len = np.array([pd.Timestamp(m).days_in_month for m in world.months])
    end_day = month_days[-1] + month_len[-1] - 1  # last date of the history

    age = np.stack([p.age_effect(t) for t in range(M)], axis=1)
    r = H - p.mu[:, None] - age
    born = np.stack([p.born(t) for t in range(M)], axis=1)
    t_idx = np.arange(M)[None, :]
    since_default = np.where(dm[:, None] >= 0, t_idx - dm[:, None], -1)
    act = np.where(~born, 0.0, np.where(since_default < 0, 1.0,
                   np.where(since_default == 0, 0.7, 0.4 ** np.maximum(since_default, 0))))
    dead = since_default >= 0  # in or after the default month
    size = f["size"].to_numpy()
    growth = rng.normal(0.04, 0.08, size=n)
    season = _season(world, story, srng)
    sales = (size[:, None] * (1 + growth[:, None]) ** (t_idx / 12) * season
             * np.exp(story.sales_signal * np.clip(r, -4, 4) + 0.12 * rng.standard_normal((n, M))) * act)
    margin = np.clip(0.05 + 0.04 * H + 0.025 * rng.standard_normal((n, M)), -0.3, 0.3)
    region_idx = pd.Index(list(REGIONS)).get_indexer(f["region"])
    rows = _Rows()
    parties = Parties(n, f["firm_id"].to_numpy())

    def any_day(tt):
        """A random date within each given month."""
        return month_days[tt] + np.floor(rng.random(len(tt)) * month_len[tt]).astype(int)

    def recurring(mask, base_day, jitter, payer, payee, amount, purpose):
        ii, tt = np.nonzero(mask)
        d = month_days[tt] + np.clip(base_day + rng.integers(-jitter, jitter + 1, len(ii)), 0, month_len[tt] - 1)
        rows.add(d, payer[ii] if np.ndim(payer) else payer, payee[ii] if np.ndim(payee) else payee,
                 amount[ii, tt], purpose)

    habit = srng.random(n) < story.habitual_late_share if story.habitual_late_share else None

    def obligation(amount, miss_logit, cure_logit, payer, payee, base_day, purpose, active):
        """A monthly obligation that may be missed and then cured (paid double next month).
        Habitual late payers (the ``cyclical`` story) miss often and always cure."""
        p_miss, p_cure = sigmoid(miss_logit), sigmoid(cure_logit)
        if habit is not None:
            p_miss = np.where(habit[:, None], np.maximum(p_miss, story.habitual_miss), p_miss)
            p_cure = np.where(habit[:, None], 1.0, p_cure)
        miss = (rng.random((n, M)) < np.where(dead, 0.85, p_miss)) & active
        cure = miss & (rng.random((n, M)) < p_cure) & ~dead
        paid = np.where(active & ~miss, amount, 0.0)
        paid[:, 1:] += np.where(cure[:, :-1] & active[:, 1:], amount[:, :-1], 0.0)
        recurring(paid > 0, base_day, 3, payer, payee, paid, purpose)

    firm_ids = np.arange(n, dtype=np.int32)
    active = act > 0.05

    # --- receivables and the trade flows that settle them --------------------------
    links = world.links
    recv = _receivables(world, rng, sales, r, H, act, dm, month_days, month_len, end_day)
    paid = recv[recv["paid_on"].notna()]
    rows.add(paid["paid_on"].to_numpy().astype("datetime64[D]"), paid["buyer"].to_numpy(),
             paid["supplier"].to_numpy(), paid["paid_amount"].to_numpy(), "trade")
    if progress:
        progress("receivables")

    # --- external sales --------------------------------------------------------------
    firm_sales_share = _firm_sales_share(links, dm, n, M)
    ext_sales = sales * np.clip(1 - firm_sales_share, 0.05, 1)
    ii, tt = np.nonzero(ext_sales > 0)
    hh = H[ii, tt]
    n_cust = 1 + rng.binomial(3, sigmoid(0.5 + 1.2 * hh))
    churn = rng.random((n, N_CUSTOMER_SLOTS, M)) < sigmoid(-2.5 - 1.0 * H)[:, None, :]
    gen = np.cumsum(churn, axis=2)
    rep_i, rep_t = np.repeat(ii, n_cust), np.repeat(tt, n_cust)
    w = rng.gamma(np.repeat(0.3 + 3.0 * sigmoid(hh), n_cust))
    grp = np.repeat(np.arange(len(ii)), n_cust)
    w = w / np.bincount(grp, weights=w)[grp]
    slot = rng.integers(0, N_CUSTOMER_SLOTS, len(rep_i))
    cust = parties.ext("customer", rep_i, slot * 64 + np.minimum(gen[rep_i, slot, rep_t], 63))
    rows.add(any_day(rep_t), cust, rep_i, ext_sales[rep_i, rep_t] * w, "trade")

    # --- external purchases ----------------------------------------------------------
    payroll = size[:, None] * 0.12 * (1 + growth[:, None] / 2) ** (t_idx / 12) * np.exp(0.03 * rng.standard_normal((n, M))) * np.minimum(act, 1)
    firm_purchases = np.zeros((n, M))
    np.add.at(firm_purchases, (recv["buyer"].to_numpy(), recv["month"].to_numpy()), recv["amount"].to_numpy())
    costs = payroll * 1.42 + sales * 0.05
    ext_purch = np.maximum(0.05 * sales, sales * (1 - margin) - costs - firm_purchases)
    ii, tt = np.nonzero(ext_purch > 0)
    n_sup = 1 + rng.binomial(2, 0.5, len(ii))
    churn = rng.random((n, N_SUPPLIER_SLOTS, M)) < sigmoid(-3.0 - 0.6 * H)[:, None, :]
    gen = np.cumsum(churn, axis=2)
    rep_i, rep_t = np.repeat(ii, n_sup), np.repeat(tt, n_sup)
    w = rng.gamma(np.full(len(rep_i), 2.0))
    grp = np.repeat(np.arange(len(ii)), n_sup)
    w = w / np.bincount(grp, weights=w)[grp]
    slot = rng.integers(0, N_SUPPLIER_SLOTS, len(rep_i))
    rows.add(any_day(rep_t), rep_i, parties.ext("supplier", rep_i, slot * 64 + np.minimum(gen[rep_i, slot, rep_t], 63)), ext_purch[rep_i, rep_t] * w, "trade")
    if progress:
        progress("trade flows")

    # --- payroll, tax, social insurance, housing fund, utilities -----------------------
    # (the cyclical story dampens how much health shows in them: Hs, not H)
    Hs = H if story.obligation_signal == 1 else H.mean() + story.obligation_signal * (H - H.mean())
    obligation(payroll, -4.0 - 2.0 * Hs, 1.0 + Hs, firm_ids, parties.ext("payroll", firm_ids), 10, "payroll", active)
    prev_sales = np.concatenate([sales[:, :1], sales[:, :-1]], axis=1)
    prev_margin = np.concatenate([margin[:, :1], margin[:, :-1]], axis=1)
    tax = prev_sales * (0.03 + 0.3 * np.maximum(prev_margin, 0)) * np.exp(0.05 * rng.standard_normal((n, M)))
    obligation(tax, -3.7 - 1.9 * Hs, 0.8 + Hs, firm_ids, parties.ext("tax", region_idx), 15, "tax", active & (tax > 1))
    obligation(payroll * 0.3, -3.4 - 2.0 * Hs, 0.5 + Hs, firm_ids, parties.ext("social_insurance", region_idx), 18, "social_insurance", active)
    has_hf = rng.random(n) < sigmoid(0.2 + 1.0 * p.mu)
    obligation(payroll * 0.12, -3.1 - 1.6 * Hs, 0.5 + Hs, firm_ids, parties.ext("housing_fund", region_idx), 18, "housing_fund",
               active & has_hf[:, None])
    energy = f["industry"].map(ENERGY).fillna(0.015).to_numpy()
    power = size[:, None] * energy[:, None] * (sales / np.maximum(size[:, None], 1)) * np.exp(0.08 * rng.standard_normal((n, M)))
    obligation(power, -4.3 - 1.5 * Hs, 2.0 + Hs, firm_ids, parties.ext("grid", region_idx), 22, "utilities", active & (power > 10))
    water = power * 0.15 * np.exp(0.1 * rng.standard_normal((n, M)))
    water_month = (t_idx % 2 == 0) & active & (water > 10)
    obligation(water * 2, -4.3 - 1.5 * Hs, 2.0 + Hs, firm_ids, parties.ext("water", region_idx), 25, "utilities", water_month)
    if progress:
        progress("obligations")

    # --- bank loans and stress borrowing ---------------------------------------------------
    _loans(rows, parties, rng, n, M, size, H, r, born, dead, month_days, month_len, recurring, obligation, active)

    # --- other small flows ---------------------------------------------------------------
    other = (rng.random((n, M)) < 0.3) & active
    ii, tt = np.nonzero(other)
    amt = size[ii] * rng.uniform(0.002, 0.02, len(ii))
    inflow = rng.random(len(ii)) < 0.5
    misc = parties.ext("misc", ii)
    rows.add(any_day(tt), np.where(inflow, misc, ii), np.where(inflow, ii, misc), amt, "other")

    # --- fabricated trade ------------------------------------------------------------------
    ring_recv = _fabricated(world, rows, parties, rng, size, dm, born, month_days, month_len)

    # --- assemble ---------------------------------------------------------------------------
    day, payer, payee, amount, purpose = rows.concat()
    # a flow is on the platform once either firm party shares its account
    visible_from = np.append((f["flows_visible_from"].to_numpy().astype("datetime64[D]") - EPOCH).astype(np.int32),
                             np.int32(2**31 - 1))  # external parties never share
    payer_from = visible_from[np.where(payer < n, payer, n)]
    payee_from = visible_from[np.where(payee < n, payee, n)]
    keep = (day <= (end_day - EPOCH).astype(np.int32)) & (amount >= 0.01) & (day >= np.minimum(payer_from, payee_from))
    if story.gap_share:
        keep &= _outside_gaps(story, srng, n, month_days, day, payer, payee, payer_from, payee_from)
    del payer_from, payee_from
    order = np.lexsort((payer, day))
    order = order[keep[order]]
    del keep
    cols = {"booked_on": day, "payer": payer, "payee": payee, "amount": amount, "purpose": purpose}
    del day, payer, payee, amount, purpose
    for name in cols:  # reorder column by column, releasing each unsorted copy
        cols[name] = cols[name][order]
    world.records["flows_arrays"] = cols
    world.records["parties"] = parties
    if len(ring_recv):
        recv = pd.concat([recv, ring_recv], ignore_index=True)
    recv = recv.sort_values(["issued_on", "supplier"], kind="stable").reset_index(drop=True)
    world.records["receivables_frame"] = recv
    default_day = np.array([
        month_days[m] + rng.integers(0, month_len[m]) if m >= 0 else np.datetime64("NaT") for m in dm
    ], dtype="datetime64[D]")
    world.records["default_day"] = default_day


def _season(world: World, story: Story, srng) -> np.ndarray:
    """Monthly seasonal factors: one calendar for all (default, shape (1, M)), or the
    story's amplified calendar shifted by a few months per industry (shape (n, M))."""
    month0 = world.months.month.to_numpy() - 1
    if story.season_amplitude == 1 and not story.season_by_industry:
        return SEASON[month0][None, :]
    profile = np.clip(1 + story.season_amplitude * (SEASON - 1), 0.2, None)
    inds = pd.Index(sorted(world.firms["industry"].unique()))
    shift = srng.integers(0, 12, len(inds)) if story.season_by_industry else np.zeros(len(inds), int)
    firm_shift = shift[inds.get_indexer(world.firms["industry"])]
    return profile[(month0[None, :] + firm_shift[:, None]) % 12]


def _outside_gaps(story: Story, srng, n, month_days, day, payer, payee, payer_from, payee_from) -> np.ndarray:
    """Whether each flow reaches the platform when some firms have months missing (the
    ``shock`` story): a flow is seen if a firm party shares its account and is not in a
    missing month."""
    M = len(month_days)
    gap = (srng.random(n) < story.gap_share)[:, None] & (srng.random((n, M)) < story.gap_months)
    gap = np.vstack([gap, np.zeros((1, M), bool)])  # row n: external parties (never share anyway)
    m = np.searchsorted((month_days - EPOCH).astype(np.int32), day, side="right") - 1
    m = np.clip(m, 0, M - 1)
    seen_payer = (day >= payer_from) & ~gap[np.where(payer < n, payer, n), m]
    seen_payee = (day >= payee_from) & ~gap[np.where(payee < n, payee, n), m]
    return seen_payer | seen_payee


def _firm_sales_share(links, dm, n, M):
    """Share of each supplier's sales going to firm buyers, month by month (0 once the
    buyer has defaulted: that demand is gone)."""
    share = np.zeros((n, M))
    up = links[links["sales_share"] > 0]
    t = np.arange(M)[None, :]
    buyer_dead = (dm[up["buyer"].to_numpy()][:, None] >= 0) & (t >= dm[up["buyer"].to_numpy()][:, None])
    contrib = up["sales_share"].to_numpy()[:, None] * ~buyer_dead
    np.add.at(share, up["supplier"].to_numpy(), contrib)
    return share


def _receivables(world, rng, sales, r, H, act, dm, month_days, month_len, end_day):
    f = world.firms
    links = world.links
    n, M = sales.shape
    is_core = f["is_core"].to_numpy()
    propensity = np.where(is_core, rng.uniform(0.75, 0.95, n), rng.uniform(0.05, 0.35, n))
    s = links["supplier"].to_numpy()
    b = links["buyer"].to_numpy()
    # monthly amount: sales-share links follow the supplier's sales; purchase-share links
    # (core -> distributor) follow the distributor's purchases
    amount = np.where(
        links["sales_share"].to_numpy()[:, None] > 0,
        sales[s] * links["sales_share"].to_numpy()[:, None],
        sales[b] * 0.8 * links["purchase_share"].to_numpy()[:, None],
    ) * np.exp(0.1 * rng.standard_normal((len(links), M)))
    t = np.arange(M)[None, :]
    buyer_live = (act[b] > 0) & ((dm[b][:, None] < 0) | (t < dm[b][:, None]))
    supplier_live = (act[s] > 0.05)
    amount = np.where(buyer_live & supplier_live, amount, 0.0)
    li, tt = np.nonzero(amount > 100)
    sup, buy = s[li], b[li]
    amt = np.round(amount[li, tt], 2)
    issued = month_days[tt] + np.floor(rng.random(len(li)) * month_len[tt]).astype(int)
    terms = np.where(is_core[buy], rng.choice([60, 90], len(li)), rng.choice([30, 45, 60], len(li)))
    due = issued + terms
    rb, hb = r[buy, tt], H[buy, tt]
    hs = H[sup, tt]
    # a buyer confirms less when it is weakening, and less for a weak supplier (disputed
    # deliveries: contract performance shows on the registry)
    p_conf = propensity[buy] * sigmoid(2.5 + 1.5 * rb) / sigmoid(2.5) * sigmoid(1.5 + 1.2 * hs) / sigmoid(1.5)
    confirmed = rng.random(len(li)) < p_conf
    conf_on = issued + 1 + np.minimum(rng.geometric(0.2, len(li)), 30)
    late = rng.random(len(li)) < sigmoid(-1.0 - 0.7 * hb)
    delay = np.where(late, 1 + rng.exponential(10 + 15 * np.maximum(0, 1 - hb)), -rng.integers(0, 6, len(li)))
    paid_on = due + np.round(delay).astype(int)
    paid_on = np.maximum(paid_on, issued)
    partial = (hb < -1) & (rng.random(len(li)) < 0.3)
    # deductions for defects and returns, more often from a weak supplier
    deduction = rng.random(len(li)) < sigmoid(-3.0 - 1.3 * hs)
    paid_amt = np.round(np.where(partial, amt * rng.uniform(0.5, 0.95, len(li)),
                                 np.where(deduction, amt * rng.uniform(0.85, 0.98, len(li)), amt)), 2)
    # the buyer never pays once it has defaulted
    buyer_default_day = np.where(dm[buy] >= 0, month_days[np.maximum(dm[buy], 0)] + 14, np.datetime64("2200-01-01"))
    unpaid = (paid_on >= buyer_default_day) | (paid_on > end_day)
    return pd.DataFrame({
        "supplier": sup, "buyer": buy, "month": tt, "amount": amt,
        "issued_on": issued, "due_on": due,
        "confirmed_on": np.where(confirmed & (conf_on <= end_day), conf_on, np.datetime64("NaT")),
        "paid_on": np.where(unpaid, np.datetime64("NaT"), paid_on),
        "paid_amount": np.where(unpaid, np.nan, paid_amt),
    }).assign(issued_on=lambda d: d["issued_on"].astype("datetime64[s]"),
              due_on=lambda d: d["due_on"].astype("datetime64[s]"),
              confirmed_on=lambda d: d["confirmed_on"].astype("datetime64[s]"),
              paid_on=lambda d: d["paid_on"].astype("datetime64[s]"))


def _loans(rows, parties, rng, n, M, size, H, r, born, dead, month_days, month_len, recurring, obligation, active):
    has_loan = rng.random(n) < 0.7
    bank = parties.ext("bank", rng.integers(0, N_BANKS, n))
    principal = np.round(size * rng.uniform(1, 3, n), -4)
    first_born = np.where(born.any(axis=1), born.argmax(axis=1), M)
    start = np.minimum(first_born + rng.integers(0, 12, n), M)
    t = np.arange(M)[None, :]
    since = t - start[:, None]
    on_loan = has_loan[:, None] & (since >= 0) & active
    anniversary = on_loan & (since % 12 == 0)
    # drawdown at start and at each anniversary (rollover), principal repaid just before
    ii, tt = np.nonzero(anniversary & ~dead)
    amt = principal[ii] * np.exp(0.1 * np.clip(r[ii, tt], -3, 3))
    d = month_days[tt] + 3
    rows.add(d, bank[ii], ii, np.round(amt, -3), "loan_drawdown")
    rollover = anniversary & (since > 0)
    ii, tt = np.nonzero(rollover & ~dead)
    rows.add(month_days[tt] + 1, ii, bank[ii], principal[ii], "loan_repayment")
    interest = np.where(on_loan, principal[:, None] * 0.0045, 0.0)
    obligation(interest, -4.0 - 1.8 * H, 0.5 + H, np.arange(n), bank, 20, "loan_repayment", on_loan & (interest > 0))
    # stress borrowing from other lenders, repaid three months later if still alive
    stress = (rng.random((n, M)) < sigmoid(-3.3 - 1.6 * H)) & active & ~dead
    ii, tt = np.nonzero(stress)
    lender = parties.ext("lender", rng.integers(0, 40, len(ii)))
    amt = np.round(size[ii] * rng.uniform(0.2, 0.8, len(ii)), -4)
    days = month_days[tt] + np.floor(rng.random(len(ii)) * month_len[tt]).astype(int)
    rows.add(days, lender, ii, amt, "loan_drawdown")
    back = tt + 3
    ok = back < M
    ok &= ~dead[ii, np.minimum(back, M - 1)]
    rows.add(days[ok] + 91, ii[ok], lender[ok], amt[ok] * 1.02, "loan_repayment")


def _fabricated(world, rows, parties, rng, size, dm, born, month_days, month_len):
    rings = world.rings
    M = world.config.n_months
    recv = []
    for _, g in rings.groupby("ring"):
        members = g.sort_values("order")["firm"].to_numpy()
        k = len(members)
        for t in range(M):
            live = born[members, t].all() and all(dm[m] < 0 or dm[m] > t for m in members)
            if not live:
                continue
            if rng.random() < 0.6:  # money passed round the ring (资金空转)
                x = np.round(size[members].mean() * rng.uniform(0.5, 2.0), -4)
                d = month_days[t] + rng.integers(0, max(1, month_len[t] - 8))
                # each hop 0.5-3% smaller (a fee, a thin margin) and 1-10 days after the one
                # before: back with the first member within weeks
                amt = x * np.cumprod(np.r_[1.0, 1 - rng.uniform(0.005, 0.03, k - 1)])
                day = d + np.r_[0, np.cumsum(rng.integers(1, 11, k - 1))]
                for hop in range(k):
                    rows.add([day[hop]], members[hop], members[(hop + 1) % k], [np.round(amt[hop], 2)], "trade")
                if rng.random() < 0.5:  # a receivable on the next member, never confirmed or paid
                    recv.append((members[0], members[1], t, x, d))
            for m in members:
                if rng.random() < 0.3:  # round trip to a ring partner
                    other = members[(list(members).index(m) + 1) % k]
                    y = np.round(size[m] * rng.uniform(0.3, 1.0), -4)
                    d = month_days[t] + rng.integers(0, max(1, month_len[t] - 6))
                    rows.add([d], m, other, [y], "trade")
                    rows.add([d + rng.integers(1, 6)], other, m, [y * rng.uniform(0.98, 1.0)], "trade")
            if (t % 3 == 2):  # quarter-end window dressing
                for m in members:
                    d = month_days[t] + month_len[t] - 1 - rng.integers(0, 3)
                    rows.add([d], parties.ext("dressing", m), m, [np.round(size[m] * rng.uniform(0.3, 0.8), -4)], "trade")
    if not recv:
        return pd.DataFrame()
    sup, buy, tt, amt, d = map(np.asarray, zip(*recv))
    d = d.astype("datetime64[D]")
    return pd.DataFrame({
        "supplier": sup, "buyer": buy, "month": tt, "amount": amt,
        "issued_on": d.astype("datetime64[s]"), "due_on": (d + 60).astype("datetime64[s]"),
        "confirmed_on": pd.NaT, "paid_on": pd.NaT, "paid_amount": np.nan,
    }).astype({"confirmed_on": "datetime64[s]", "paid_on": "datetime64[s]"})


def sequential_ids(prefix: str, n: int, width: int, first: int = 1) -> pa.Array:
    """``prefix`` + zero-padded numbers first..first+n-1, built vectorised in Arrow."""
    nums = pc.cast(pa.array(np.arange(first, first + n, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(nums, width=width, padding="0"), "")
