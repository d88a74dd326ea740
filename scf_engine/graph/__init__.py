"""The transaction graph of cores, upstream and downstream firms at an as-of date.

``build_chain(snapshot)`` is the one entry point: it aggregates the snapshot's
receivables and trade flows into an edge table, derives roles and tiers from the graph,
and computes per-firm graph and registry features. Exports and the chain picture live in
:mod:`.export`.
"""

from __future__ import annotations

from scf_engine import policies
from scf_engine.dataset import Snapshot
from scf_engine.duck import connect
from scf_engine.graph.build import Chain, build_edges
from scf_engine.graph.features import graph_features, registry_features
from scf_engine.graph.roles import chain_roles

__all__ = ["Chain", "build_chain", "chain_roles"]


def build_chain(snapshot: Snapshot, *, con=None, max_tier: int | None = None, transfers=None) -> Chain:
    """The chain at the snapshot's as-of date. ``max_tier``: the longest supply path (in
    tiers) that ties a firm to a core (default: ``max_tier`` of ``models/propagation.yaml``,
    the risk committee's reach of core credit). ``transfers``: a monitoring pass's trade
    transfers, the trade side of the edges summed from them (:func:`build_edges`: the
    same chain)."""
    if max_tier is None:
        max_tier = int(policies.load("propagation")["max_tier"])
    own = con is None
    con = con or connect()
    edges, totals = build_edges(snapshot, con=con, transfers=transfers)
    if own:
        con.close()
    firms = snapshot.firms.set_index("firm_id")
    nodes = firms[["name", "industry", "region", "founded_on", "registered_capital", "is_core", "core_rating",
                   "batch_group", "defaulted"]].copy()
    nodes = nodes.join(totals, how="left").fillna({"trade_in_12m": 0.0, "trade_out_12m": 0.0})
    roles = chain_roles(nodes.index, nodes["is_core"].to_numpy(), edges, max_tier=max_tier)
    nodes = nodes.join(roles)
    chain = Chain(snapshot.as_of, edges, nodes)
    feats = graph_features(nodes, edges)
    nodes = nodes.join(feats.drop(columns=[c for c in feats.columns if c in nodes.columns]))
    nodes = nodes.join(registry_features(nodes, edges, snapshot.as_of))
    chain.nodes = nodes
    return chain
