"""Exports for analysts (GraphML, Parquet edge and node lists) and the chain picture.

GraphML opens in Gephi, yEd and networkx; the Parquet lists open in pandas, DuckDB, Spark.
The chain picture (matplotlib) lays one core's chain out by tier - suppliers to the left
(tier 2, tier 1), the core in the middle, distributors to the right - coloured by role or
by risk, and is reused by the notebooks and the credit memo.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import pandas as pd

from scf_engine.graph.build import Chain

ROLE_COLOURS = {"core": "#1f3b73", "upstream": "#d62728", "downstream": "#2ca02c", "unattached": "#7f7f7f"}
plt.rcParams["font.sans-serif"] = ["WenQuanYi Micro Hei", "Noto Sans CJK SC", "DejaVu Sans"]


def _scalar_attrs(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object or str(out[c].dtype) == "str":
            out[c] = out[c].map(lambda v: ";".join(map(str, v)) if isinstance(v, tuple) else ("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)))
        elif np.issubdtype(out[c].dtype, np.datetime64):
            out[c] = out[c].dt.strftime("%Y-%m-%d").fillna("")
        elif out[c].dtype == bool:
            out[c] = out[c].astype(bool)
        else:
            out[c] = out[c].astype(float)
    return out


def export_chain(chain: Chain, folder: Path | str) -> dict[str, Path]:
    """Write ``graph.graphml``, ``edges.parquet`` and ``nodes.parquet``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nodes = _scalar_attrs(chain.nodes)
    edges = _scalar_attrs(chain.edges)
    g = nx.DiGraph(as_of=str(chain.as_of.date()))
    for fid, attrs in nodes.iterrows():
        g.add_node(fid, **{k: v for k, v in attrs.items() if not (isinstance(v, float) and np.isnan(v))})
    for row in edges.to_dict("records"):
        s, b = row.pop("supplier"), row.pop("buyer")
        g.add_edge(s, b, **{k: v for k, v in row.items() if not (isinstance(v, float) and np.isnan(v))})
    paths = {"graphml": folder / "graph.graphml", "edges": folder / "edges.parquet", "nodes": folder / "nodes.parquet"}
    nx.write_graphml(g, paths["graphml"])
    edges.to_parquet(paths["edges"], index=False)
    nodes.reset_index().to_parquet(paths["nodes"], index=False)
    return paths


def chain_layout(chain: Chain, core_id: str, *, max_nodes: int = 120) -> tuple[nx.DiGraph, dict]:
    """The core's chain as a DiGraph and tier-layered positions (largest partners first)."""
    nodes = chain.nodes
    members = nodes.index[nodes["cores"].apply(lambda c: core_id in c if isinstance(c, tuple) else False)]
    members = members.union([core_id])
    e = chain.edges[chain.edges["supplier"].isin(members) & chain.edges["buyer"].isin(members)]
    volume = (pd.concat([e.groupby("supplier")["recv_amount_12m"].sum(), e.groupby("buyer")["trade_volume_12m"].sum()])
              .groupby(level=0).sum())
    if len(members) > max_nodes:
        keep = volume.drop(core_id, errors="ignore").sort_values(ascending=False).index[: max_nodes - 1]
        members = pd.Index(keep).union([core_id])
        e = e[e["supplier"].isin(members) & e["buyer"].isin(members)]
    g = nx.DiGraph()
    g.add_nodes_from(members)
    g.add_edges_from(zip(e["supplier"], e["buyer"]))
    x = {}
    for fid in members:
        if fid == core_id:
            x[fid] = 0.0
        elif pd.notna(nodes.at[fid, "upstream_tier"]):
            x[fid] = -float(nodes.at[fid, "upstream_tier"])
        elif pd.notna(nodes.at[fid, "downstream_tier"]):
            x[fid] = float(nodes.at[fid, "downstream_tier"])
        else:
            x[fid] = 0.5
    pos = {}
    for col in sorted(set(x.values())):
        ids = sorted([f for f in members if x[f] == col], key=lambda f: -volume.get(f, 0.0))
        ys = np.linspace(1, -1, len(ids)) if len(ids) > 1 else [0.0]
        for f, y in zip(ids, ys):
            pos[f] = (col, y)
    return g, pos


def plot_chain(chain: Chain, core_id: str, *, risk: pd.Series | None = None, highlight: str | None = None,
               ax=None, max_nodes: int = 120, title: str | None = None):
    """One core's chain by tier; node colour by role, or by ``risk`` (PD) when given."""
    g, pos = chain_layout(chain, core_id, max_nodes=max_nodes)
    if ax is None:
        fig, ax = plt.subplots(figsize=(10, 7))
    nodes = list(g.nodes)
    if risk is not None:
        vals = risk.reindex(nodes).to_numpy(dtype=float)
        colours = plt.cm.RdYlGn_r(np.clip(np.nan_to_num(vals, nan=0.0) / max(np.nanmax(vals) if np.isfinite(vals).any() else 1, 1e-6), 0, 1))
        colours[[n == core_id for n in nodes]] = matplotlib.colors.to_rgba(ROLE_COLOURS["core"])
    else:
        colours = [ROLE_COLOURS.get(chain.nodes.at[n, "role"], "#7f7f7f") for n in nodes]
    sizes = [400 if n == core_id else (250 if n == highlight else 60) for n in nodes]
    nx.draw_networkx_edges(g, pos, ax=ax, alpha=0.25, arrows=False, width=0.6)
    nx.draw_networkx_nodes(g, pos, nodelist=nodes, node_color=colours, node_size=sizes, ax=ax, linewidths=0.5,
                           edgecolors=["black" if n == highlight else "white" for n in nodes])
    ax.text(pos[core_id][0], pos[core_id][1] + 0.08, str(chain.nodes.at[core_id, "name"])[:12], ha="center", fontsize=9)
    ticks = sorted({p[0] for p in pos.values()})
    ax.set_xticks(ticks)
    ax.set_xticklabels([("core" if t == 0 else f"tier {int(-t)}" if t < 0 else ("other" if t == 0.5 else f"downstream {int(t)}")) for t in ticks])
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"Chain of {chain.nodes.at[core_id, 'name']} at {chain.as_of.date()}"
                 + (" (colour = PD)" if risk is not None else " (red upstream, green downstream)"))
    ax.figure.tight_layout()
    return ax.figure
