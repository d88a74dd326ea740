"""SHAP pictures from the contributions of :func:`~scf_engine.explain.reasons.contributions`.

All pictures are drawn with matplotlib's Agg backend into PNG files (or PNG bytes when
``path`` is None), labelled with the catalogue's words (``lang="zh"`` for Chinese, with a
CJK font: WenQuanYi Micro Hei, ``apt-get install -y fonts-wqy-microhei``). Values are in
calibrated log-odds, the units the models decide in.

* :func:`summary_plot` - beeswarm (or bar) of the contributions over many firms;
* :func:`dependence_plot` - one feature's value against its contribution;
* :func:`waterfall_plot` - one firm, from the portfolio base to its own log-odds.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from scf_engine.catalogue import load_catalogue

EXPECTED = "expected_value"
FONTS = ["WenQuanYi Micro Hei", "Noto Sans CJK SC", "Noto Sans CJK JP", "DejaVu Sans"]
RC = {"font.sans-serif": FONTS, "font.family": "sans-serif", "axes.unicode_minus": False}
plt.rcParams.update(RC)


def _labels(features, labels=None, lang: str = "en") -> list[str]:
    """Display names: a mapping feature -> label, or the catalogue's label in ``lang``."""
    if isinstance(labels, dict):
        return [str(labels.get(f, f)) for f in features]
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(features):
            raise ValueError("labels must match the features one to one")
        return [str(x) for x in labels]
    cat = load_catalogue()
    return [cat.label(f, lang) for f in features]


def _features(contrib) -> list[str]:
    return [c for c in contrib.columns if c != EXPECTED]


def _explanation(contrib: pd.DataFrame, X: pd.DataFrame, labels=None, lang: str = "en"):
    import shap

    feats = _features(contrib)
    data = X.loc[contrib.index].reindex(columns=feats).to_numpy(dtype=float) if isinstance(X, pd.DataFrame) else \
        np.asarray(X, dtype=float)
    return shap.Explanation(values=contrib[feats].to_numpy(dtype=float),
                            base_values=contrib[EXPECTED].to_numpy(dtype=float) if EXPECTED in contrib else
                            np.zeros(len(contrib)),
                            data=data, feature_names=_labels(feats, labels, lang))


def _save(fig, path, dpi: int = 110, tight_layout: bool = True) -> Path | bytes:
    """Write a PNG (``bbox_inches="tight"``); PNG bytes when ``path`` is None."""
    if tight_layout:
        fig.tight_layout()
    if path is None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def summary_plot(contrib: pd.DataFrame, X: pd.DataFrame, path=None, *, kind: str = "beeswarm", max_display: int = 15,
                 labels=None, lang: str = "en", title: str | None = None):
    """Beeswarm (``kind="beeswarm"``) or mean |contribution| bar chart (``kind="bar"``)
    over the rows of ``contrib``; returns ``path`` (or PNG bytes when ``path`` is None)."""
    import shap

    exp = _explanation(contrib, X, labels, lang)
    with plt.rc_context(RC), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = plt.figure(figsize=(9, 0.42 * min(max_display, len(exp.feature_names)) + 1.8))
        ax = fig.add_subplot(111)
        if kind == "bar":
            shap.plots.bar(exp, max_display=max_display, ax=ax, show=False)
        elif kind == "beeswarm":
            shap.plots.beeswarm(exp, max_display=max_display, ax=ax, show=False, plot_size=None,
                                color_bar_label="特征值 feature value")
        else:
            raise ValueError(f"kind must be 'beeswarm' or 'bar', not {kind!r}")
        ax.set_xlabel("对违约对数几率的贡献 / contribution to log-odds of default")
        if title:
            ax.set_title(title)
        return _save(plt.gcf(), path)


def dependence_plot(contrib: pd.DataFrame, X: pd.DataFrame, feature: str, path=None, *, labels=None,
                    lang: str = "en", color: str | None = None):
    """One feature's value (x) against its contribution (y), optionally coloured by a
    second feature ``color``."""
    import shap

    exp = _explanation(contrib, X, labels, lang)
    feats = _features(contrib)
    if feature not in feats:
        raise KeyError(f"{feature} is not among the contributions")
    j = feats.index(feature)
    with plt.rc_context(RC), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        kw = {"color": exp[:, feats.index(color)]} if color else {}
        shap.plots.scatter(exp[:, j], ax=ax, show=False, ylabel="贡献 contribution (log-odds)", **kw)
        ax.set_xlabel(exp.feature_names[j])
        return _save(fig, path)


def waterfall_plot(contrib_row, X_row, path=None, labels=None, *, lang: str = "en", max_display: int = 10,
                   title: str | None = None, dpi: int = 110):
    """One firm: from the base (``expected_value``) to its calibrated log-odds, the largest
    contributions first. ``contrib_row``: a row of contributions (Series, or a one-row
    frame); ``X_row``: the firm's feature values; ``labels``: feature -> label (default:
    the catalogue's words in ``lang``)."""
    import shap

    if isinstance(contrib_row, pd.DataFrame):
        contrib_row = contrib_row.iloc[0]
    if isinstance(X_row, pd.DataFrame):
        X_row = X_row.iloc[0]
    feats = [c for c in contrib_row.index if c != EXPECTED]
    names = _labels(feats, labels, lang)
    data = pd.Series(X_row).reindex(feats).to_numpy(dtype=float)
    exp = shap.Explanation(values=contrib_row[feats].to_numpy(dtype=float),
                           base_values=float(contrib_row.get(EXPECTED, 0.0)), data=np.round(data, 4),
                           feature_names=names)
    with plt.rc_context(RC), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plt.figure(figsize=(9, 0.45 * max_display + 1.6))
        shap.plots.waterfall(exp, max_display=max_display, show=False)
        fig = plt.gcf()
        fig.set_size_inches(9, 0.45 * max_display + 1.6)
        if title:
            fig.axes[0].set_title(title)
        return _save(fig, path, dpi=dpi, tight_layout=False)  # the tight bounding box is enough: one draw less


__all__ = ["dependence_plot", "summary_plot", "waterfall_plot"]
