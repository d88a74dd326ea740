"""Pictures and the HTML comparison report that people look at.

ROC, KS, calibration and lift plots (matplotlib), and one self-contained HTML report per
comparison: the headline table, bootstrap confidence intervals of the differences, segment
breakdowns and coverage, with the plots embedded. The HTML is a Jinja2 template so the
report's layout can change without touching the numbers.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from jinja2 import Environment
from sklearn.metrics import roc_curve

from scf_engine.evaluate import calibration_table, lift_table

plt.rcParams["font.sans-serif"] = ["WenQuanYi Micro Hei", "Noto Sans CJK SC", "DejaVu Sans"]
plt.rcParams["axes.unicode_minus"] = False
COLOURS = {"pd_propagation": "#1f77b4", "pd_decoupled": "#2ca02c", "pd_hybrid": "#d62728", "pd_jiangyin": "#7f7f7f",
           "true_pd": "#000000"}


def _valid(frame, col):
    ok = frame[col].notna()
    return frame.loc[ok, "label"].to_numpy(), frame.loc[ok, col].to_numpy()


def roc_figure(frame: pd.DataFrame, scores: list[str]):
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for s in scores:
        y, p = _valid(frame, s)
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=s, color=COLOURS.get(s), lw=1.6, ls="--" if s == "true_pd" else "-")
    ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (held-out snapshots)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def ks_figure(frame: pd.DataFrame, scores: list[str]):
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for s in scores:
        y, p = _valid(frame, s)
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, thr = roc_curve(y, p)
        share = np.linspace(0, 1, len(fpr))
        ax.plot(share, tpr - fpr, label=f"{s} (KS {np.max(tpr - fpr):.2f})", color=COLOURS.get(s))
    ax.set(xlabel="share of thresholds (riskiest first)", ylabel="TPR - FPR", title="KS separation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def calibration_figure(frame: pd.DataFrame, scores: list[str]):
    fig, ax = plt.subplots(figsize=(5.5, 5))
    hi = 0.0
    for s in scores:
        y, p = _valid(frame, s)
        t = calibration_table(y, p)
        ax.plot(t["mean_pd"], t["observed"], "o-", ms=3, label=s, color=COLOURS.get(s))
        hi = max(hi, t["mean_pd"].max(), t["observed"].max())
    ax.plot([0, hi], [0, hi], color="#bbbbbb", lw=0.8)
    ax.set(xlabel="mean predicted PD (decile)", ylabel="observed default rate", title="Calibration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def lift_figure(frame: pd.DataFrame, scores: list[str]):
    fig, ax = plt.subplots(figsize=(5.5, 5))
    width = 0.8 / max(len(scores), 1)
    for i, s in enumerate(scores):
        y, p = _valid(frame, s)
        t = lift_table(y, p)
        ax.bar(t["decile"] + (i - len(scores) / 2) * width, t["lift"], width=width, label=s, color=COLOURS.get(s))
    ax.axhline(1, color="#bbbbbb", lw=0.8)
    ax.set(xlabel="decile (1 = riskiest)", ylabel="lift", title="Lift by decile")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


FIGURES = {"roc": roc_figure, "ks": ks_figure, "calibration": calibration_figure, "lift": lift_figure}


def figures(frame: pd.DataFrame, scores: list[str]) -> dict:
    return {name: fn(frame, scores) for name, fn in FIGURES.items()}


def png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Model comparison {{ when }}</title>
<style>
body{font-family:"WenQuanYi Micro Hei","Noto Sans CJK SC",Arial,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f3f5f8}td:first-child,th:first-child{text-align:left}.grid img{width:48%;margin:.5%}
.note{color:#555;font-size:.9em}
</style></head><body>
<h1>Model comparison / 模型对比</h1>
<p class="note">Held-out snapshots: {{ test_dates }}. Dataset: {{ dataset }}. Generated {{ when }}.
{% if run_id %}MLflow run {{ run_id }}.{% endif %}</p>
<h2>Headline (rows each model could score)</h2>{{ overall }}
<p class="note">coverage = share of held-out rows the model scored; bayes_fraction = the model's Gini as a share of the
Gini of the simulator's true PD on the same rows (only where truth.csv exists).</p>
<h2>Differences with 95% bootstrap intervals (resampling firms)</h2>{{ boot }}
<h2>Curves</h2><div class="grid">{% for name, img in figs.items() %}<img alt="{{ name }}" src="data:image/png;base64,{{ img }}">{% endfor %}</div>
{% for name, table in segments.items() %}<h2>By {{ name }}: AUC (rows, defaults)</h2>{{ table }}{% endfor %}
<h2>Models</h2>{{ models }}
</body></html>"""


def segment_pivots(segments: pd.DataFrame) -> dict[str, str]:
    out = {}
    for seg, part in segments.groupby("segment"):
        pv = part.pivot_table(index="value", columns="model", values="auc")
        counts = part.groupby("value")[["n_rows"]].first().join(
            part[part["model"] == part["model"].iloc[0]].set_index("value")[["defaults"]])
        cov = part.pivot_table(index="value", columns="model", values="coverage").add_prefix("coverage ")
        out[seg] = pv.join(counts).join(cov).round(3).to_html(na_rep="-")
    return out


def comparison_html(evaluation: dict, frame: pd.DataFrame, scores: list[str], boot: pd.DataFrame, *,
                    test_dates, dataset: str, models: pd.DataFrame, run_id: str | None, path: Path) -> Path:
    figs = {name: png_b64(fig) for name, fig in figures(frame, scores + (["true_pd"] if "true_pd" in frame and frame["true_pd"].notna().any() else [])).items()}
    html = Environment(autoescape=False).from_string(TEMPLATE).render(
        when=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        test_dates=", ".join(str(pd.Timestamp(d).date()) for d in test_dates), dataset=dataset, run_id=run_id,
        overall=evaluation["overall"].round(4).to_html(index=False, na_rep="-"),
        boot=boot.round(4).to_html(index=False) if len(boot) else "<p>-</p>",
        figs=figs, segments=segment_pivots(evaluation["segments"]),
        models=models.to_html(index=False, na_rep="-"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
