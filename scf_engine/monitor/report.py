"""The monitoring report (贷后监测报告): one self-contained HTML page people look at.

Grade migration from the batch to the last as-of as a heat map, score PSI over time,
alerts by level and by signal, and the worst firms linked to their batch memos; headings
in Chinese and English. No JavaScript and no external resource (inline CSS and SVG), so
it opens the same in a browser, a mail client or a bank's document store.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

GRADES = ["premium", "grade_1", "alternate"]
GRADE_LABEL = {"premium": "高级 Premium", "grade_1": "一级 Grade 1", "alternate": "备选 Alternate"}
LEVEL_COLOUR = {"red": "#d62728", "amber": "#ff9f0e", "green": "#2ca02c"}
CSS = """body{font-family:'Noto Sans CJK SC','Noto Sans',sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td.l{text-align:left}h2{border-bottom:2px solid #444;padding-bottom:2px}"""


def _e(v) -> str:
    return html.escape(str(v))


def migration(port: pd.DataFrame) -> str:
    """Grade at the batch (rows) against the grade at the last as-of (columns), coloured
    by the share of the row's firms: the heat map of grade migration."""
    last = port[port["as_of"] == port["as_of"].max()]
    m = pd.crosstab(last["grade_at_batch"], last["grade"].fillna("not scored")).reindex(index=GRADES, fill_value=0)
    cols = [g for g in GRADES + ["not scored"] if g in m.columns or g in GRADES]
    m = m.reindex(columns=cols, fill_value=0)
    head = "".join(f"<th>{_e(GRADE_LABEL.get(c, '未评分 ' + c))}</th>" for c in cols)
    rows = []
    for g, r in m.iterrows():
        total = max(int(r.sum()), 1)
        cells = "".join(f"<td style='background:rgba(31,119,180,{0.1 + 0.8 * v / total:.2f})'>{int(v)}</td>" for v in r)
        rows.append(f"<tr><th>{_e(GRADE_LABEL[g])}</th>{cells}</tr>")
    return f"<table><tr><th>批次评级 at batch \\ 当前 now</th>{head}</tr>{''.join(rows)}</table>"


def psi_chart(drift: pd.DataFrame | None, policy) -> str:
    """Score PSI per as-of as an inline SVG line, with the policy's amber and red lines."""
    s = drift[drift["kind"] == "psi"].reset_index(drop=True) if drift is not None else pd.DataFrame()
    if s.empty:
        return "<p>未测量 Not measured: the champion was trained before drift references were saved.</p>"
    w, h, pad = 700, 220, 40
    top = max(float(s["value"].max()), float(policy["psi_red"])) * 1.15 or 1.0
    x = lambda i: pad + (w - 2 * pad) * (i / max(len(s) - 1, 1))  # noqa: E731
    y = lambda v: h - pad - (h - 2 * pad) * (v / top)  # noqa: E731
    pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(s["value"]))
    lines = "".join(f"<line x1='{pad}' x2='{w - pad}' y1='{y(float(policy[k])):.1f}' y2='{y(float(policy[k])):.1f}' "
                    f"stroke='{c}' stroke-dasharray='4'/>" for k, c in (("psi_amber", "#ff9f0e"), ("psi_red", "#d62728")))
    labels = "".join(f"<text x='{x(i):.1f}' y='{h - 12}' font-size='10' text-anchor='middle'>{_e(d)}</text>"
                     for i, d in enumerate(s["as_of"]))
    dots = "".join(f"<circle cx='{x(i):.1f}' cy='{y(v):.1f}' r='3'/><text x='{x(i):.1f}' y='{y(v) - 8:.1f}' "
                   f"font-size='11' text-anchor='middle'>{v:.3f}</text>" for i, v in enumerate(s["value"]))
    lines += "".join(f"<text x='{w - pad + 4}' y='{y(float(policy[k])) + 4:.1f}' font-size='10' fill='{c}'>{k}</text>"
                     for k, c in (("psi_amber", "#ff9f0e"), ("psi_red", "#d62728")))
    return (f"<svg width='{w}' height='{h}' xmlns='http://www.w3.org/2000/svg'>{lines}"
            f"<polyline fill='none' stroke='#1f77b4' stroke-width='2' points='{pts}'/>{dots}{labels}</svg>")


def alert_tables(alerts: pd.DataFrame) -> str:
    if alerts.empty:
        return "<p>无预警 No alerts.</p>"
    by_level = alerts.groupby(["as_of", "level"]).size().unstack(fill_value=0)
    by_level = by_level.reindex(columns=[c for c in ("red", "amber", "green") if c in by_level.columns])
    t1 = "<table><tr><th>日期 As of</th>" + "".join(f"<th style='color:{LEVEL_COLOUR[c]}'>{c}</th>" for c in by_level.columns)
    t1 += "</tr>" + "".join(f"<tr><th>{_e(d)}</th>" + "".join(f"<td>{int(v)}</td>" for v in r) + "</tr>"
                            for d, r in by_level.iterrows()) + "</table>"
    sig = alerts.groupby(["signal", "label_zh", "label_en", "level"]).size().rename("n").reset_index()
    t2 = "<table><tr><th>信号 Signal</th><th>中文</th><th>English</th><th>级别 Level</th><th>次数 Count</th></tr>"
    t2 += "".join(f"<tr><td class='l'>{_e(r.signal)}</td><td class='l'>{_e(r.label_zh)}</td><td class='l'>{_e(r.label_en)}"
                  f"</td><td style='color:{LEVEL_COLOUR.get(r.level, '#222')}'>{_e(r.level)}</td><td>{r.n}</td></tr>"
                  for r in sig.sort_values("n", ascending=False).itertuples()) + "</table>"
    return t1 + t2


def worst_firms(port: pd.DataFrame, memo_dir: Path | None, out_dir: Path, n: int = 15) -> str:
    """The firms at red (then amber) at the last as-of, highest PD first, each linked to
    its batch memo when the batch wrote one."""
    last = port[port["as_of"] == port["as_of"].max()].copy()
    last["r"] = last["level"].map({"red": 0, "amber": 1, "green": 2})
    last = last.sort_values(["r", "pd"], ascending=[True, False]).head(n)
    memos = {}
    if memo_dir is not None and memo_dir.is_dir():
        for p in memo_dir.glob("*.html"):
            memos.setdefault(next((f for f in last["firm_id"] if f in p.name), None), p)
    rows = []
    for r in last.itertuples():
        link = memos.get(r.firm_id)
        fid = (f"<a href='{_e(os.path.relpath(link, out_dir))}'>{_e(r.firm_id)}</a>" if link else _e(r.firm_id))
        rows.append(f"<tr><td class='l'>{fid}</td><td style='color:{LEVEL_COLOUR[r.level]}'>{r.level}</td>"
                    f"<td>{r.pd:.2%}</td><td>{r.pd_at_batch:.2%}</td><td>{_e(r.action)}</td>"
                    f"<td>{r.limit_at_batch:,.0f}</td><td>{r.limit_now:,.0f}</td><td class='l'>{_e(r.reasons)[:160]}</td></tr>")
    return ("<table><tr><th>企业 Firm</th><th>级别 Level</th><th>PD</th><th>批次 PD at batch</th><th>处置 Action</th>"
            "<th>原额度 Limit at batch</th><th>现额度 Limit now</th><th>原因 Reasons</th></tr>" + "".join(rows) + "</table>")


def vintage_table(drift: pd.DataFrame | None) -> str:
    """Expected against observed default rate per batch vintage at each as-of."""
    if drift is None:
        return "<p>无 None.</p>"
    v = drift[drift["kind"].isin(["expected_default_rate", "observed_default_rate"])]
    if v.empty:
        return "<p>无 None.</p>"
    w = v.pivot_table(index=["variable", "as_of", "baseline"], columns="kind", values="value", aggfunc="first")
    lv = v[v["kind"] == "observed_default_rate"].set_index(["variable", "as_of", "baseline"])["level"]
    rows = "".join(f"<tr><td>{_e(k[0])}</td><td>{_e(k[1])}</td><td class='l'>{_e(k[2])}</td>"
                   f"<td>{r['expected_default_rate']:.2%}</td><td style='color:{LEVEL_COLOUR[lv[k]]}'>"
                   f"{r['observed_default_rate']:.2%}</td></tr>" for k, r in w.iterrows())
    return ("<table><tr><th>批次 Vintage</th><th>日期 As of</th><th>成熟度 Maturity</th><th>预期违约率 Expected</th>"
            f"<th>实际违约率 Observed</th></tr>{rows}</table>")


def repaired_firms(port: pd.DataFrame) -> str:
    """Firms whose credit was repaired (信用修复) at the last as-of, with why."""
    last = port[port["as_of"] == port["as_of"].max()]
    fix = last[last["reasons"].fillna("").str.startswith("repaired")]
    if fix.empty:
        return "<p>无 None.</p>"
    rows = "".join(f"<tr><td class='l'>{_e(r.firm_id)}</td><td>{_e(r.grade)}</td><td>{r.pd:.2%}</td>"
                   f"<td class='l'>{_e(r.reasons.split('; ')[0])}</td></tr>" for r in fix.itertuples())
    return f"<table><tr><th>企业 Firm</th><th>评级 Grade</th><th>PD</th><th>修复 Repair</th></tr>{rows}</table>"


def render_report(port, alerts, drift, policy, *, memo_dir: Path | None, out_dir: Path) -> str:
    dates = sorted(port["as_of"].unique())
    return (f"<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'><title>贷后监测报告 Monitoring report"
            f"</title><style>{CSS}</style></head><body><h1>贷后监测报告 Portfolio monitoring report</h1>"
            f"<p>{port['firm_id'].nunique()} 户 firms, {len(dates)} 个监测日 as-of dates: {_e(dates[0])} … {_e(dates[-1])}</p>"
            f"<h2>评级迁移 Grade migration</h2>{migration(port)}"
            f"<h2>评分稳定性 Score PSI over time</h2>{psi_chart(drift, policy['drift'])}"
            f"<h2>预警 Alerts by level and signal</h2>{alert_tables(alerts)}"
            f"<h2>重点关注企业 Worst firms</h2>{worst_firms(port, memo_dir, out_dir)}"
            f"<h2>信用修复 Credit repaired</h2>{repaired_firms(port)}"
            f"<h2>分批次预期与实际违约率 Expected against observed default rate by vintage</h2>{vintage_table(drift)}"
            "</body></html>")


__all__ = ["render_report"]
