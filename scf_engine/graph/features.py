"""Per-firm features of the chain and of the receivables registry.

Graph features (networkx algorithms as plain functions over the DiGraph, scipy where a
whole-graph matrix operation is the natural form):
dependence on cores, number of cores, tiers, buyer and supplier concentration, PageRank,
and membership in a closed trading loop (a strongly connected component of three or
more firms in the 12-month trade-flow graph).

Registry evidence (standalone, per firm): as a creditor, how much of what it sold was
confirmed, how much of what fell due was paid late or not at all, how late, how much of
what is open is overdue; as a debtor, how late it pays its own suppliers; how long it has
been on the registry.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import scipy as sp


def _hhi(edges: pd.DataFrame, by: str, key: str, weight: str) -> pd.Series:
    e = edges[edges[weight] > 0]
    share = e[weight] / e.groupby(by)[weight].transform("sum")
    return (share**2).groupby(e[by]).sum()


def graph_features(nodes: pd.DataFrame, edges: pd.DataFrame) -> pd.DataFrame:
    """``core_dependence, core_supply_share, n_cores, upstream_tier, downstream_tier,
    buyer_hhi, supplier_hhi, pagerank, in_trade_cycle`` per firm (index of ``nodes``)."""
    out = pd.DataFrame(index=nodes.index)
    is_core = nodes["is_core"]
    core_ids = set(nodes.index[is_core])
    from_core = edges[edges["buyer"].isin(core_ids)].groupby("supplier")["trade_volume_12m"].sum()
    out["core_dependence"] = (from_core.reindex(out.index).fillna(0) / nodes["trade_in_12m"].replace(0, np.nan)).clip(0, 1)
    out.loc[nodes["trade_in_12m"].isna() | (nodes["trade_in_12m"] == 0), "core_dependence"] = 0.0
    to_core = edges[edges["supplier"].isin(core_ids)].groupby("buyer")["trade_volume_12m"].sum()
    out["core_supply_share"] = (to_core.reindex(out.index).fillna(0) / nodes["trade_out_12m"].replace(0, np.nan)).clip(0, 1).fillna(0.0)
    out["n_cores"] = nodes["n_cores"]
    out["upstream_tier"] = nodes["upstream_tier"]
    out["downstream_tier"] = nodes["downstream_tier"]
    out["buyer_hhi"] = _hhi(edges, "supplier", "buyer", "recv_amount_12m").reindex(out.index)
    out["supplier_hhi"] = _hhi(edges, "buyer", "supplier", "recv_amount_12m").reindex(out.index)
    weight = edges["trade_volume_12m"] + edges["recv_amount_12m"]
    # the graphs are built from Python lists: iterating Arrow text (pandas 3's str columns)
    # makes a scalar per value, ~0.5 s of a 100,000-firm chain (scf monitor builds 13 a pass)
    supplier, buyer = edges["supplier"].tolist(), edges["buyer"].tolist()
    pr = pagerank(nodes.index, supplier, buyer, weight.to_numpy(dtype=float)) if len(edges) else pd.Series(dtype=float)
    out["pagerank"] = pr.reindex(out.index).fillna(1.0 / max(len(out), 1))
    traded = (edges["trade_count_12m"] > 0).to_numpy(dtype=bool, na_value=False)
    # money flows buyer -> supplier; a loop in either direction is the same loop
    on_cycles = np.flatnonzero(traded)[may_lie_on_cycle(edges["buyer"].to_numpy()[traded],
                                                        edges["supplier"].to_numpy()[traded])]
    trade = nx.DiGraph()
    trade.add_edges_from((buyer[i], supplier[i]) for i in on_cycles.tolist())
    loop = {n for comp in nx.strongly_connected_components(trade) if len(comp) >= 3 for n in comp}
    out["in_trade_cycle"] = out.index.isin(loop).astype(float)
    return out


def pagerank(nodes, tail, head, weight, alpha: float = 0.85, max_iter: int = 100, tol: float = 1.0e-6) -> pd.Series:
    """PageRank of the weighted directed graph on ``nodes`` (labels) and the edges
    ``tail[i] -> head[i]`` of weight ``weight[i]`` (a label found only on an edge is a node
    too, after ``nodes``, in order of first appearance; of a repeated edge the last weight
    counts), as a Series over those nodes: the same numbers, bit for bit, as
    ``nx.pagerank`` over the ``nx.DiGraph`` built from them.

    Why not networkx: its PageRank already is this scipy power iteration
    (``networkx.algorithms.link_analysis.pagerank_alg._pagerank_scipy``, networkx 3.x), and
    at 100,000 firms building the DiGraph in Python and reading it back into a sparse
    matrix took ~0.75 of the chain's ~0.9 s of graph features, in a thread that holds the
    GIL (``scf monitor`` builds 13 chains a pass). The matrix is built here from the edge
    arrays; every step after it is networkx's, in its order (the row sums over the
    canonical CSR, the same division and products, the dangling mass summed by Python's
    ``sum`` as networkx does), so the iterations and their stopping point are the same."""
    nodes = pd.Index(nodes)
    ends = pd.Index(np.column_stack([np.asarray(tail, dtype=object), np.asarray(head, dtype=object)]).ravel())
    pos = nodes.get_indexer(ends)
    nodelist = nodes
    if (pos < 0).any():
        nodelist = nodes.append(pd.Index(pd.unique(ends[pos < 0])))
        pos = nodelist.get_indexer(ends)
    n = len(nodelist)
    if n == 0:
        return pd.Series(dtype=float)
    pos = pos.reshape(-1, 2)
    w = np.asarray(weight, dtype=float)
    last = ~pd.DataFrame(pos).duplicated(keep="last").to_numpy()  # a DiGraph keeps a repeated edge's last weight
    A = sp.sparse.coo_array((w[last], (pos[last, 0], pos[last, 1])), shape=(n, n), dtype=float).asformat("csr")
    S = A.sum(axis=1)
    S[S != 0] = 1.0 / S[S != 0]
    Q = sp.sparse.dia_array((S.T, 0), shape=A.shape).tocsr()
    A = Q @ A
    x = np.repeat(1.0 / n, n)
    p = np.repeat(1.0 / n, n)
    is_dangling = np.where(S == 0)[0]
    for _ in range(max_iter):
        xlast = x
        x = alpha * (x @ A + sum(x[is_dangling]) * p) + (1 - alpha) * p
        if np.absolute(x - xlast).sum() < n * tol:
            return pd.Series(x, index=nodelist)
    raise nx.PowerIterationFailedConvergence(max_iter)


def may_lie_on_cycle(tail, head) -> np.ndarray:
    """Which edges ``tail -> head`` (arrays of node labels) may lie on a directed cycle:
    what is left after taking away, again and again, every node that no remaining edge
    enters or none leaves (such a node lies on no cycle, nor do its edges). The strongly
    connected components of two or more nodes are those of the edges left, exactly.

    Why: a supply chain's trade graph is nearly a tree of tiers around its cores (at
    100,000 firms ~89,000 trade edges, of which a few hundred close a loop), and
    networkx walked every one of them in Python to find the loops (building the graph
    and its components ~1 s of each chain, built 13 times a monitoring pass); the
    trimming is a few passes of numpy over the edges."""
    codes, _ = pd.factorize(np.concatenate([np.asarray(tail, dtype=object), np.asarray(head, dtype=object)]),
                            use_na_sentinel=False)
    t, h = codes[:len(tail)], codes[len(tail):]
    n = int(codes.max(initial=-1)) + 1
    alive = np.ones(len(t), dtype=bool)
    while True:
        ok = (np.bincount(h[alive], minlength=n) > 0) & (np.bincount(t[alive], minlength=n) > 0)
        keep = alive & ok[t] & ok[h]
        if keep.sum() == alive.sum():
            return keep
        alive = keep


def registry_features(nodes: pd.DataFrame, edges: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Standalone registry evidence per firm (index of ``nodes``); empty where the firm has
    nothing on the registry."""
    out = pd.DataFrame(index=nodes.index)
    s = edges.groupby("supplier")
    b = edges.groupby("buyer")
    # each side's sums in one grouping, put in the firms' order once: a reindex of the
    # 100,000 firm names per ratio was most of this function (the chain is built 13 times a
    # monitoring pass); a column's group sums and a ratio's values are the same either way
    sums = ["confirmed_amount_12m", "recv_amount_12m", "late_amount_12m", "due_amount_12m", "overdue_open",
            "open_amount", "late_day_amount_12m", "paid_amount_12m", "shortfall_12m"]
    sup, buy = (side[sums].sum().reindex(out.index) for side in (s, b))

    def ratio(side, num, den):
        return side[num] / side[den].where(side[den] > 0)

    out["recv_confirmed_share"] = ratio(sup, "confirmed_amount_12m", "recv_amount_12m")
    out["recv_late_share"] = ratio(sup, "late_amount_12m", "due_amount_12m")
    out["recv_overdue_open_share"] = ratio(sup, "overdue_open", "open_amount")
    out["recv_days_late"] = ratio(sup, "late_day_amount_12m", "paid_amount_12m")
    out["recv_shortfall_share"] = ratio(sup, "shortfall_12m", "paid_amount_12m")
    out["payables_late_share"] = ratio(buy, "late_amount_12m", "due_amount_12m")
    out["payables_unconfirmed_share"] = 1 - ratio(buy, "confirmed_amount_12m", "recv_amount_12m")
    out["payables_days_late"] = ratio(buy, "late_day_amount_12m", "paid_amount_12m")
    first = pd.concat([s["first_seen"].min(), b["first_seen"].min()]).groupby(level=0).min()
    months = (as_of - pd.to_datetime(first)).dt.days / 30.44
    out["registry_months"] = months.reindex(out.index)
    return out
