"""Explanations: additive contributions, reasons grouped by family, exact path and core
decompositions of the propagation model, and non-empty pictures."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from scf_engine.catalogue import load_catalogue
from scf_engine.explain import (additivity_error, contributions, core_decomposition, format_reasons,
                                path_context, path_decomposition, path_rows, reason_codes)
from scf_engine.explain.reasons import Reason
from scf_engine.graph import Chain
from scf_engine.propagation.transmission import transmission


@pytest.fixture(scope="session")
def trained(explain_world):
    return explain_world


# --- contributions ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["native", "treeshap", "shap_internal"])
def test_contributions_are_additive_for_every_row(trained, method):
    dec, te = trained["dec"], trained["te"]
    c = contributions(dec, te, method=method)
    assert list(c.columns) == list(dec.features_) + ["expected_value"]
    assert c.index.equals(te.index)
    err = additivity_error(c, dec, te)
    assert len(err) == len(te) and np.all(err < 1e-6), f"{method}: worst additivity error {err.max():.2e}"
    total = c["expected_value"] + c.drop(columns="expected_value").sum(axis=1)
    np.testing.assert_allclose(total.to_numpy(), dec.decision_function(te), atol=1e-6, rtol=0)


def test_the_routes_agree(trained):
    dec, te = trained["dec"], trained["te"]
    a = contributions(dec, te, "native")
    for method in ("treeshap", "shap_internal"):  # shap_internal: an independent implementation
        b = contributions(dec, te, method)
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), atol=1e-6, rtol=0, err_msg=method)
    with pytest.raises(ValueError):
        contributions(dec, te, "kernel")


# --- reasons --------------------------------------------------------------------------------------
def _payroll_case():
    """Four payroll features push risk up a little each; tax pushes up more than any one of
    them but less than their sum; a safe history pulls down."""
    cat = load_catalogue()
    feats = cat.model_features("decoupled")
    c = pd.DataFrame(0.0, index=["f1"], columns=feats + ["expected_value"])
    c.loc["f1", ["payroll_missed_12m", "payroll_open_gap", "payroll_cured_12m", "payroll_trend_3v12"]] = [0.30, 0.20, 0.10, 0.05]
    c.loc["f1", "tax_missed_12m"] = 0.50
    c.loc["f1", "firm_age_years"] = -0.40
    c.loc["f1", "history_months"] = -0.05
    c.loc["f1", "social_insurance_missed_12m"] = 0.12
    c.loc["f1", "expected_value"] = -3.0
    X = pd.DataFrame(np.nan, index=["f1"], columns=feats)
    X.loc["f1", ["payroll_missed_12m", "payroll_open_gap", "payroll_cured_12m", "payroll_trend_3v12"]] = [5, 3, 2, -0.6]
    X.loc["f1", ["tax_missed_12m", "firm_age_years", "history_months", "social_insurance_missed_12m"]] = [6, 12.5, 24, 4]
    X["industry"] = "C34"
    ref = pd.DataFrame({"industry": ["C34"] * 3 + ["G51"] * 2, "social_insurance_missed_12m": [0, 0, 1, 7, 9],
                        "payroll_missed_12m": [0, 1, 2, 8, 8], "tax_missed_12m": [0, 0, 0, 5, 5],
                        "firm_age_years": [5.0, 8.0, 10.0, 1.0, 2.0]})
    return c, X, ref, feats


def test_reasons_group_payroll_features_into_one_reason():
    c, X, ref, feats = _payroll_case()
    reasons = reason_codes(c, X, feats, reference=ref, top=5)["f1"]
    families = [r.family for r in reasons]
    assert families == ["payroll", "tax", "history", "social_insurance"], families
    assert families.count("payroll") == 1
    payroll = reasons[0]
    assert payroll.contribution == pytest.approx(0.65)  # the family's sum, above tax's 0.50
    assert payroll.feature == "payroll_missed_12m"  # its strongest feature names it
    assert payroll.label_en == load_catalogue()["payroll_missed_12m"].label_en
    assert payroll.label_zh == load_catalogue()["payroll_missed_12m"].label_zh
    assert payroll.direction == "raises risk" and payroll.value == 5 and payroll.industry_median == 1
    history = reasons[2]
    assert history.direction == "lowers risk" and history.contribution == pytest.approx(-0.45)
    assert history.feature == "firm_age_years" and history.industry_median == 8.0


def test_format_reasons_wording():
    c, X, ref, feats = _payroll_case()
    reasons = reason_codes(c, X, feats, reference=ref)["f1"]
    text = format_reasons(reasons)
    parts = text.split("; ")
    assert parts[0] == "Months without payroll, last 12 = 5 (industry median 1): raises risk"
    assert parts[3] == "Months without social insurance, last 12 = 4 (industry median 0): raises risk"
    assert "Years in business = 12.5 (industry median 8): lowers risk" in text
    zh = format_reasons(reasons, lang="zh")
    assert zh.startswith("近12个月未发工资月数 = 5（行业中位数 1）：推高风险")
    # the dict form (as stored) formats the same
    assert format_reasons([r.to_dict() for r in reasons]) == text
    # without peers there is no median
    bare = reason_codes(c, X, feats, top=1)["f1"]
    assert format_reasons(bare) == "Months without payroll, last 12 = 5: raises risk"


def test_reasons_on_a_trained_model(trained):
    dec, te, tr = trained["dec"], trained["te"].head(100), trained["tr"]
    c = contributions(dec, te)
    rc = reason_codes(c, te, dec.features_, reference=tr, top=5)
    cat = load_catalogue()
    assert rc.index.equals(te.index)
    for i, reasons in rc.items():
        assert 0 < len(reasons) <= 5
        fams = [r.family for r in reasons]
        assert len(set(fams)) == len(fams)
        mags = [abs(r.contribution) for r in reasons]
        assert mags == sorted(mags, reverse=True)
        for r in reasons:
            members = [f for f in dec.features_ if cat[f].family == r.family]
            assert r.contribution == pytest.approx(c.loc[i, members].sum(), abs=1e-12)
            assert (r.direction == "raises risk") == (r.contribution > 0)
            assert r.label_en == cat[r.feature].label_en
        assert ";" not in "".join(r.text() for r in reasons)
        assert isinstance(reasons[0], Reason)


# --- propagation decompositions --------------------------------------------------------------------
def test_core_and_path_decompositions_sum_to_the_propagated_log_odds(trained):
    prop = trained["prop"]
    chain = trained["chain"]
    frame = prop.predict_frame(chain)
    tr = transmission(chain)
    covered = frame.index[frame["covered"]]
    # every tier present, and the firms with the most paths
    nodes = chain.nodes.loc[covered]
    picks = list(nodes.groupby(["role", "upstream_tier"], dropna=False).head(3).index)
    picks += list(frame.loc[covered, "propagated_log_odds"].nlargest(3).index)
    assert len(picks) >= 6
    shared = path_context(prop, chain, tr=tr, frame=frame)  # what batch memos reuse across firms
    n_multi = 0
    for fid in dict.fromkeys(picks):
        total = frame.at[fid, "propagated_log_odds"]
        cd = core_decomposition(prop, chain, fid, tr=tr, frame=frame)
        assert abs(cd["contribution"].sum() - total) < 1e-9
        assert np.allclose(cd["contribution"], cd["gain"] * cd["core_credit"])
        pdp = path_decomposition(prop, chain, fid, max_len=4, tr=tr, frame=frame)
        assert abs(pdp["contribution"].sum() - total) < 1e-9
        assert pdp["kind"].iloc[-1] == "remainder" and (pdp["kind"] == "remainder").sum() == 1
        rows = path_rows(prop, chain, fid, max_len=4, context=shared)
        assert rows.attrs == pdp.attrs
        assert pd.DataFrame(list(rows), columns=pdp.columns).equals(pdp)
        paths = pdp[pdp["kind"] == "path"]
        n_multi += int((paths["length"] > 1).sum())
        for r in paths.itertuples():
            assert r.path[0] == fid and r.path[-1] == r.core_id and len(r.path) == r.length + 1
            assert len(set(r.path)) == len(r.path)  # simple
            assert r.weight == pytest.approx(np.prod([h["weight"] for h in r.hops]))
            assert r.contribution == pytest.approx(prop.decay_ ** r.length * r.weight * r.core_credit)
            for h in r.hops:  # every hop is backed by trade: confirmed receivables or trade paid
                assert h["confirmed_receivables_cny"] > 0 or h["trade_paid_cny"] > 0
        # the one-hop paths are exactly the direct term decay * W_UC[i] . core_credit
        i = tr.other_ids.get_loc(fid)
        cc = prop.core_credit(chain, tr).reindex(tr.core_ids).to_numpy()
        direct = prop.decay_ * (tr.W_UC[i].toarray().ravel() @ cc)
        assert paths.loc[paths["length"] == 1, "contribution"].sum() == pytest.approx(direct, abs=1e-12)
    assert n_multi > 0, "no multi-hop path was exercised"


def test_uncovered_firm_has_no_decomposition(trained):
    prop = trained["prop"]
    chain = trained["chain"]
    frame = prop.predict_frame(chain)
    fid = frame.index[~frame["covered"]][0]
    cd = core_decomposition(prop, chain, fid, frame=frame)
    assert cd.empty and cd.attrs["covered"] is False
    core = chain.nodes.index[chain.nodes["is_core"]][0]
    with pytest.raises(ValueError):
        core_decomposition(prop, chain, core, frame=frame)


def _dag_chain(prop) -> Chain:
    """Core K; A sells to K; B and C sell to A; C also sells to K; D sells to B. Only
    confirmed receivables, no trade paid: no loops, so all credit runs along simple paths."""
    ids = ["K", "A", "B", "C", "D"]
    nodes = pd.DataFrame(index=pd.Index(ids, name="firm_id"))
    nodes["name"] = ["核心K", "甲", "乙", "丙", "丁"]
    nodes["is_core"] = [True, False, False, False, False]
    nodes["core_rating"] = ["BBB", None, None, None, None]
    nodes["role"] = ["core", "upstream", "upstream", "upstream", "upstream"]
    nodes["trade_in_12m"] = 100.0
    nodes["trade_out_12m"] = 0.0
    for k, name in enumerate(prop.core_evidence):
        nodes[name] = [0.3 + 0.2 * k, np.nan, np.nan, np.nan, np.nan]
    for name in prop.standalone_evidence:
        if name not in nodes:
            nodes[name] = np.nan
    edges = pd.DataFrame({"supplier": ["A", "B", "C", "C", "D"], "buyer": ["K", "A", "A", "K", "B"],
                          "confirmed_amount_12m": [60.0, 50.0, 30.0, 20.0, 80.0]})
    edges["recv_amount_12m"] = edges["confirmed_amount_12m"]
    edges["trade_volume_12m"] = 0.0
    return Chain(pd.Timestamp("2024-01-01"), edges, nodes)


def test_paths_of_a_loop_free_chain_are_exact(trained):
    prop = trained["prop"]
    chain = _dag_chain(prop)
    frame = prop.predict_frame(chain)
    cc = prop.core_credit(chain)["K"]
    d = prop.decay_
    assert cc != 0
    expected = {"A": d * 0.6 * cc, "B": d ** 2 * 0.5 * 0.6 * cc, "C": d * 0.2 * cc + d ** 2 * 0.3 * 0.6 * cc,
                "D": d ** 3 * 0.8 * 0.5 * 0.6 * cc}
    for fid, value in expected.items():
        assert frame.at[fid, "propagated_log_odds"] == pytest.approx(value, rel=1e-12)
        p = path_decomposition(prop, chain, fid, max_len=4, frame=frame)
        assert abs(p["contribution"].iloc[-1]) < 1e-12  # nothing left for loops
        assert abs(p["contribution"].sum() - value) < 1e-12
    c = path_decomposition(prop, chain, "C", max_len=4, frame=frame)
    assert [tuple(x) for x in c.loc[c["kind"] == "path", "path"]] in ([("C", "K"), ("C", "A", "K")], [("C", "A", "K"), ("C", "K")])
    hop = c.loc[c["length"] == 2, "hops"].iloc[0][0]
    assert hop == {"from": "C", "to": "A", "confirmed_receivables_cny": 30.0, "trade_paid_cny": 0.0, "weight": pytest.approx(0.3)}
    # too short a path budget leaves D's credit in the remainder
    short = path_decomposition(prop, chain, "D", max_len=2, frame=frame)
    assert list(short["kind"]) == ["remainder"]
    assert short["contribution"].iloc[0] == pytest.approx(expected["D"], rel=1e-12)


# --- plots ----------------------------------------------------------------------------------------------
def _assert_png(data: bytes, min_std: float = 5.0):
    from PIL import Image

    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    img = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=float)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > min_std, "picture is blank"


def test_plots_make_non_empty_pngs(trained, tmp_path):
    from scf_engine.explain.plots import dependence_plot, summary_plot, waterfall_plot

    dec, te = trained["dec"], trained["te"]
    c = contributions(dec, te)
    outs = [
        summary_plot(c, te, tmp_path / "beeswarm.png"),
        summary_plot(c, te, tmp_path / "bar.png", kind="bar", lang="zh"),
        dependence_plot(c, te, "payroll_missed_12m", tmp_path / "dependence.png"),
        waterfall_plot(c.iloc[0], te.iloc[0], tmp_path / "waterfall.png"),
        waterfall_plot(c.iloc[[1]], te.iloc[[1]], tmp_path / "waterfall_zh.png", None, lang="zh"),
    ]
    for p in outs:
        assert p.is_file()
        _assert_png(p.read_bytes())
    png = waterfall_plot(c.iloc[2], te.iloc[2], None, {f: f for f in dec.features_})
    _assert_png(png)
