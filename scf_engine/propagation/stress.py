"""Stress test: downgrade or default a core and see how every dependent firm moves.

Two views, reported side by side:

* **Model view** — the fitted propagation model re-run with the core's rating replaced
  (a downgrade, or default: PD 1 - 1e-6); the change in each firm's PD is the model's
  answer to "what if this core's credit were worse".
* **DebtRank** (Battiston et al. 2012, *Science Reports* 2:541) — distress ``h`` in
  [0, 1] spreads from the shocked core through exposures: a supplier is exposed to a
  buyer by its open receivables on it plus a quarter of a year's sales to it (what it
  stands to lose), relative to its equity (registered capital, or at least
  ``stress_equity_months`` of trade inflow). Impact ``L_ij = min(1, exposure_ij /
  equity_i)``; each node passes on its distress once; ``h_i`` is the share of its equity
  lost. Distributors are exposed to a supplier by their purchases from it in the same way.
"""

from __future__ import annotations

import copy

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scf_engine import policies
from scf_engine.contract import RATINGS
from scf_engine.graph import Chain

DEFAULT_PD = 1 - 1e-6


def _equity_months(value: float | None) -> float:
    """``stress_equity_months`` of ``models/propagation.yaml`` unless given."""
    return float(policies.load("propagation")["stress_equity_months"]) if value is None else float(value)


def debtrank(chain: Chain, shocked: dict[str, float], *, equity_months: float | None = None, max_rounds: int = 50) -> pd.Series:
    """Final distress ``h`` (share of equity lost, 0..1) of every firm after shocking the
    given firms (``{firm_id: initial distress}``)."""
    nodes, edges = chain.nodes, chain.edges
    ids = pd.Index(nodes.index)
    n = len(ids)
    equity = np.maximum(nodes["registered_capital"].fillna(0).to_numpy(),
                        _equity_months(equity_months) / 12 * nodes["trade_in_12m"].fillna(0).to_numpy())
    equity = np.where(equity > 0, equity, np.inf)
    s = ids.get_indexer(edges["supplier"])
    b = ids.get_indexer(edges["buyer"])
    # an edge to a firm that is not a node (a receivable registered before its buyer's
    # founded_on: the snapshot's firms are those founded before T) carries no distress,
    # as chain_roles leaves it out; its -1 position would have indexed the last firm
    ok = (s >= 0) & (b >= 0)
    s, b = s[ok], b[ok]
    up = (edges["open_amount"].to_numpy() + edges["recv_amount_12m"].to_numpy() / 4)[ok]  # supplier s exposed to buyer b
    down = (edges["trade_volume_12m"].to_numpy() / 4)[ok]  # buyer b exposed to supplier s
    rows = np.concatenate([s, b])
    cols = np.concatenate([b, s])
    expo = np.concatenate([up, down])
    L = sp.csr_matrix((np.minimum(1.0, expo / equity[rows]), (rows, cols)), shape=(n, n))
    h = np.zeros(n)
    for fid, h0 in shocked.items():
        h[ids.get_loc(fid)] = h0
    state = np.where(h > 0, 1, 0)  # 0 undistressed, 1 distressed (passes distress on), 2 inactive
    for _ in range(max_rounds):
        active = state == 1
        if not active.any():
            break
        dh = np.where(active, h, 0.0)
        h_new = np.minimum(1.0, h + L @ dh)
        state = np.where(active, 2, state)
        newly = (h_new > h) & (state == 0)
        state = np.where(newly, 1, state)
        h = h_new
    return pd.Series(h, index=ids, name="distress")


def stress_core(model, chain: Chain, core_id: str, *, to_rating: str | None = None,
                equity_months: float | None = None) -> pd.DataFrame:
    """PD before and after the core's downgrade (``to_rating``) or default (None), and
    DebtRank distress, for every non-core firm; sorted by PD change. ``model`` is never
    changed: a default is scored by a shallow copy whose master scale has a default grade."""
    before = model.predict_frame(chain)
    stressed_nodes = chain.nodes.copy()
    stressed = model
    if to_rating is None:
        scale = dict(model._scale())
        scale["_DEFAULT"] = DEFAULT_PD
        stressed_nodes.loc[core_id, "core_rating"] = "_DEFAULT"
        # a defaulted core pays and confirms nothing: every payable late and unconfirmed,
        # at least 90 days late. This is beyond anything seen in training: the model's
        # answer is an extrapolation, to be read as a direction and an order of size.
        for col in model.core_evidence:
            current = float(np.nan_to_num(chain.nodes.at[core_id, col]))
            stressed_nodes.loc[core_id, col] = 1.0 if col.endswith("_share") else max(90.0, float(model.core_worst_[col]), current)
        stressed = copy.copy(model)  # shares the fitted attributes (read only); its own master scale
        stressed.master_scale = scale
    elif to_rating not in RATINGS:
        raise ValueError(f"unknown rating {to_rating!r}")
    else:
        stressed_nodes.loc[core_id, "core_rating"] = to_rating
    after = stressed.predict_frame(Chain(chain.as_of, chain.edges, stressed_nodes))
    h0 = 1.0 if to_rating is None else _downgrade_shock(chain.nodes.loc[core_id, "core_rating"], to_rating, model)
    dist = debtrank(chain, {core_id: h0}, equity_months=equity_months)
    out = pd.DataFrame({
        "pd_before": before["pd"], "pd_after": after["pd"],
    })
    out["pd_change"] = out["pd_after"] - out["pd_before"]
    out = out.join(dist).join(chain.nodes[["name", "role", "upstream_tier", "downstream_tier"]])
    out["tied_to_core"] = chain.nodes["cores"].reindex(out.index).apply(lambda c: core_id in c if isinstance(c, tuple) else False)
    return out.sort_values("pd_change", ascending=False)


def _downgrade_shock(from_rating: str, to_rating: str, model) -> float:
    """Initial DebtRank distress of a downgrade: the rise in the core's PD as a share of
    the way to default."""
    scale = model._scale()
    p0, p1 = scale[from_rating], scale[to_rating]
    return float(np.clip((p1 - p0) / (1 - p0), 0.0, 1.0))


def plot_stress(result: pd.DataFrame, core_name: str, *, top: int = 20, ax=None):
    """Bar chart of the firms whose PD moves most, coloured by tier, with DebtRank distress."""
    top_rows = result.dropna(subset=["pd_change"]).head(top).iloc[::-1]
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, max(3, 0.3 * len(top_rows) + 1.5)))
    tier = top_rows["upstream_tier"].fillna(0)
    colours = np.where(top_rows["role"] == "downstream", "#2ca02c", np.where(tier == 1, "#d62728", np.where(tier == 2, "#ff7f0e", "#7f7f7f")))
    labels = [f"{n[:14]} (h={h:.2f})" for n, h in zip(top_rows["name"], top_rows["distress"])]
    ax.barh(labels, top_rows["pd_change"] * 100, color=colours)
    ax.set_xlabel("PD change, percentage points")
    ax.set_title(f"Stress: {core_name}\nfirms whose PD moves most (red tier 1, orange tier 2, green downstream)")
    ax.figure.tight_layout()
    return ax.figure
