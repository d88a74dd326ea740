"""Memo pictures as small inline SVG, drawn without matplotlib.

A batch of 10,000 memos cannot afford a matplotlib figure per firm (about 0.65 CPU-seconds
for the two pictures, bench/bench_explain.py). Both pictures are simple enough to write
directly: the SHAP waterfall is a column of bars, and the chain neighbourhood reuses one
tier layout per core (computed once per batch) with only the highlighted firm changing.
SVG stays sharp in print, WeasyPrint renders it into the PDF, and it is text, so it costs
a few kilobytes.
"""

from __future__ import annotations

import math
from html import escape

import numpy as np
import pandas as pd

ROLE_FILL = {"core": "#1f3b73", "upstream": "#d62728", "downstream": "#2ca02c", "unattached": "#7f7f7f"}
FONT = 'font-family="WenQuanYi Micro Hei, Noto Sans CJK SC, Arial, sans-serif"'


def _risk_colour(p: float, hi: float) -> str:
    """Green (safe) to red (risky) on PD relative to ``hi``."""
    if p is None or not np.isfinite(p):
        return "#bbbbbb"
    t = min(max(p / hi, 0.0), 1.0) if hi > 0 else 0.0
    r, g = int(40 + 200 * t), int(170 - 120 * t)
    return f"#{r:02x}{g:02x}40"


def waterfall_svg(contributions, values, labels: dict[str, str], *, top: int = 10, width: int = 680) -> str:
    """Bars from the expected value to the firm's calibrated log-odds: the ``top`` largest
    contributions, the rest summed, each labelled ``label = value``. ``contributions`` and
    ``values`` are mappings by feature name (Series or dicts; ``expected_value`` is the
    base)."""
    items = {k: float(v) for k, v in dict(contributions).items()}
    base = items.pop("expected_value", 0.0)
    names = list(items)
    c = np.fromiter(items.values(), dtype=float, count=len(names))
    order = np.argsort(-np.abs(c), kind="stable")
    shown = [names[k] for k in order[:top]]
    rest = float(c[order[top:]].sum()) if len(order) > top else 0.0
    rows = [(f"{labels.get(f, f)} = {_fmt(values.get(f))}", items[f]) for f in shown]
    if len(order) > top:
        rows.append((f"{len(order) - top} other features", rest))
    total = base + float(c.sum())
    row_h, left, right, top_pad = 22, 300, 90, 34
    height = top_pad + row_h * (len(rows) + 1) + 20
    xs = np.cumsum([base] + [v for _, v in rows])
    lo, hi = float(min(xs.min(), base, total)), float(max(xs.max(), base, total))
    span = (hi - lo) or 1.0

    def x(v):
        return left + (v - lo) / span * (width - left - right)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT} font-size="11">',
             f'<text x="{left}" y="14" fill="#333">expected log-odds {base:.3f} → firm {total:.3f} '
             f'(PD {1 / (1 + math.exp(-total)):.2%})</text>',
             f'<line x1="{x(base):.1f}" y1="{top_pad - 8}" x2="{x(base):.1f}" y2="{height - 14}" stroke="#999" stroke-dasharray="3,3"/>']
    cur = base
    for k, (label, v) in enumerate(rows):
        y = top_pad + k * row_h
        a, b = x(cur), x(cur + v)
        colour = "#d62728" if v > 0 else "#1f77b4"
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" fill="#222">{escape(label[:60])}</text>')
        parts.append(f'<rect x="{min(a, b):.1f}" y="{y + 3}" width="{max(abs(b - a), 1):.1f}" height="{row_h - 6}" fill="{colour}"/>')
        parts.append(f'<text x="{max(a, b) + 4:.1f}" y="{y + 14}" fill="{colour}">{v:+.3f}</text>')
        cur += v
    y = top_pad + len(rows) * row_h
    parts.append(f'<line x1="{x(total):.1f}" y1="{y}" x2="{x(total):.1f}" y2="{y + row_h}" stroke="#000" stroke-width="2"/>')
    parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" font-weight="bold">calibrated log-odds</text>')
    parts.append("</svg>")
    return "".join(parts)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    v = float(v)
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


class ChainPictures:
    """Neighbourhood pictures for many firms of one chain: one layout per core, reused."""

    def __init__(self, chain, risk: pd.Series | None = None, *, max_nodes: int = 300):
        self.chain = chain
        self.risk = risk
        self.max_nodes = max_nodes
        self._layouts: dict[str, tuple] = {}
        self._drawn: dict[tuple, tuple] = {}
        finite = risk.dropna() if risk is not None else pd.Series(dtype=float)
        self.hi = float(finite.quantile(0.95)) if len(finite) else 0.0

    def _layout(self, core_id: str):
        if core_id not in self._layouts:
            from scf_engine.graph.export import chain_layout

            g, pos = chain_layout(self.chain, core_id, max_nodes=self.max_nodes)
            self._layouts[core_id] = (list(g.edges), pos)
        return self._layouts[core_id]

    def svg(self, firm_id: str, *, width: int = 680, height: int = 380) -> str | None:
        """The firm's first core's chain with the firm ringed; None for a firm tied to no core."""
        nodes = self.chain.nodes
        cores = nodes.at[firm_id, "cores"] if firm_id in nodes.index else ()
        if not isinstance(cores, tuple) or not cores:
            return None
        core_id = cores[0]
        edges, pos = self._layout(core_id)
        if firm_id in pos:  # the usual case: the picture without the ring is shared by the chain
            key = (core_id, width, height)
            if key not in self._drawn:
                self._drawn[key] = self._draw(core_id, edges, pos, width, height)
            px, head, tail = self._drawn[key]
        else:  # a small partner left out of a big chain: put it at its tier's foot
            n = nodes.loc[firm_id]
            col = -float(n["upstream_tier"]) if pd.notna(n["upstream_tier"]) else float(n.get("downstream_tier") or 0.5)
            pos = {**pos, firm_id: (col, -1.08)}
            px, head, tail = self._draw(core_id, edges, pos, width, height)
        fx, fy = px(pos[firm_id])
        ring = [f'<circle cx="{fx:.1f}" cy="{fy:.1f}" r="8" fill="none" stroke="#000" stroke-width="2"/>',
                f'<text x="{fx + 11:.1f}" y="{fy + 4:.1f}" font-weight="bold">{escape(str(nodes.at[firm_id, "name"])[:16])}</text>']
        return "".join(head + ring + tail)

    def _draw(self, core_id: str, edges, pos: dict, width: int, height: int):
        """(position -> pixel, SVG parts under the ring, SVG parts over it) for one chain."""
        nodes = self.chain.nodes
        xs = [p[0] for p in pos.values()]
        lo, hi = min(xs), max(xs)
        pad = 40

        def px(p):
            x = pad + (p[0] - lo) / ((hi - lo) or 1) * (width - 2 * pad)
            y = height / 2 - p[1] * (height / 2 - pad)
            return x, y

        head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT} font-size="10">']
        for a, b in edges:
            if a in pos and b in pos:
                (x1, y1), (x2, y2) = px(pos[a]), px(pos[b])
                head.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#999" stroke-opacity="0.35" stroke-width="0.6"/>')
        ids = [f for f in pos if f != core_id]
        if self.risk is not None:
            fills = [_risk_colour(p, self.hi) for p in self.risk.reindex(ids).to_numpy(dtype=float)]
        else:
            fills = [ROLE_FILL.get(r, "#7f7f7f") for r in nodes["role"].reindex(ids)]
        for f, fill in zip(ids, fills):
            x, y = px(pos[f])
            head.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.2" fill="{fill}"/>')
        cx, cy = px(pos[core_id])
        head.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="11" fill="{ROLE_FILL["core"]}"/>')
        head.append(f'<text x="{cx:.1f}" y="{cy - 15:.1f}" text-anchor="middle">{escape(str(nodes.at[core_id, "name"])[:16])}</text>')
        tail = []
        for col in sorted({p[0] for p in pos.values()}):
            x, _ = px((col, 0))
            label = "core" if col == 0 else (f"tier {int(-col)}" if col < 0 else ("other" if col == 0.5 else f"downstream {int(col)}"))
            tail.append(f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle" fill="#555">{label}</text>')
        legend = "colour = PD (green safe, red risky)" if self.risk is not None else "red upstream, green downstream"
        tail.append(f'<text x="{pad}" y="14" fill="#555">{escape(legend)}; ring = this firm</text></svg>')
        return px, head, tail
