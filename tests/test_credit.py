"""Credit: score scale, final PD, limits and decisions, group envelopes, consent.

Hand-made frames only (no simulator), so every number can be checked by hand. The
limit tests use a policy written out below rather than ``models/limit_policy.yaml``, so
a committee's change to the shipped values does not break them; the shipped files get
their own load-and-calibration test.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scf_engine import policies
from scf_engine.contract import GRADE_FLOORS, GRADES
from scf_engine.credit import (
    ScoreScale, allocate_envelope, apply_limits, consent_ok, consent_status, core_lines,
    eligible_receivables, final_pd,
)
from scf_engine.credit.envelope import trim_expected_loss, water_fill
from scf_engine.graph.build import Chain
from scf_engine.ingest.requests import read_consents
from scf_engine.errors import DatasetError
from scf_engine.policies import PolicyError

# ----------------------------------------------------------------------------- score scale


@pytest.fixture(scope="module")
def shipped_scale() -> ScoreScale:
    return ScoreScale.from_policy(policies.load("score_scale"))


def test_shipped_policies_load_and_pass_their_schemas():
    for name in ("score_scale", "final_pd", "limit_policy", "master_scale"):
        p = policies.load(name)
        assert len(p.sha256) == 64
    lp = policies.load("limit_policy")
    ms = policies.load("master_scale")
    assert lp["buyer_rating_floor"] in ms["ratings"]
    assert set(lp["flow_share_by_grade"]) == set(GRADES)
    # safer grades lend a larger share of their inflow
    s = lp["flow_share_by_grade"]
    assert s["premium"] >= s["grade_1"] >= s["alternate"] > 0


def test_shipped_scale_puts_grade_floors_on_round_pds(shipped_scale):
    # premium floor 90 <-> PD 0.5%, grade_1 floor 75 <-> PD about 2%
    assert shipped_scale.pd_for_score(GRADE_FLOORS["premium"]) == pytest.approx(0.005, rel=1e-9)
    assert shipped_scale.pd_for_score(GRADE_FLOORS["grade_1"]) == pytest.approx(0.02, abs=0.0005)
    assert shipped_scale.score(0.005) == 90.0
    assert list(shipped_scale.grade([0.004, 0.005, 0.0051, 0.0195, 0.0200, 0.30])) == [
        "premium", "premium", "grade_1", "grade_1", "alternate", "alternate"]
    # the PD decline threshold of the shipped limit policy sits inside the alternate band
    assert shipped_scale.score(policies.load("limit_policy")["pd_decline_above"]) < GRADE_FLOORS["grade_1"]


def test_score_is_monotone_and_clipped(shipped_scale):
    p = np.concatenate([[0.0, 1e-6], np.logspace(-4, -0.01, 400), [1.0]])
    s = shipped_scale.score(p)
    assert np.all(np.diff(s) <= 0)  # higher PD never scores higher
    inside = (s > 0) & (s < 100)
    assert inside.sum() > 200 and np.all(np.diff(s[inside]) < 0)  # strictly inside the clip range
    assert s[0] == 100 and s[-1] == 0 and s.min() >= 0 and s.max() <= 100
    grades = shipped_scale.grade(p)
    order = {"premium": 0, "grade_1": 1, "alternate": 2}
    assert all(order[a] <= order[b] for a, b in zip(grades, grades[1:]))


def test_nan_pd_gives_no_score_and_no_grade(shipped_scale):
    s = shipped_scale.score([np.nan, 0.01])
    assert np.isnan(s[0]) and not np.isnan(s[1])
    assert list(shipped_scale.grade([np.nan, 0.01])) == [None, "grade_1"]
    with pytest.raises(ValueError):
        shipped_scale.score([1.2])


def test_round_trip_score_pd_score():
    exact = ScoreScale(base_score=90, base_odds=199, points_to_double_odds=7.5, decimals=None)
    p = np.logspace(np.log10(0.0025), np.log10(0.9), 200)  # inside the unclipped range
    assert np.allclose(exact.pd_for_score(exact.score(p)), p, rtol=1e-10)
    s = np.linspace(0.5, 99.5, 199)
    assert np.allclose(exact.score(exact.pd_for_score(s)), s, atol=1e-9)
    # with the shipped 2 decimals the PD comes back within the rounding of the score
    rounded = ScoreScale(base_score=90, base_odds=199, points_to_double_odds=7.5, decimals=2)
    back = rounded.pd_for_score(rounded.score(p))
    assert np.allclose(back, p, rtol=0.005 / rounded.factor * 1.01)
    # and a score survives the round trip exactly
    assert np.array_equal(rounded.score(rounded.pd_for_score(rounded.score(p))), rounded.score(p))


def test_scale_saved_with_policy_hash_and_reloaded_scores_identically(tmp_path, shipped_scale):
    policy = policies.load("score_scale")
    assert shipped_scale.policy_sha256 == policy.sha256
    path = shipped_scale.save(tmp_path / "score_scale.json")
    again = ScoreScale.load(path, current=policy)
    p = np.logspace(-4, -0.05, 50)
    assert np.array_equal(again.score(p), shipped_scale.score(p))
    assert again.policy_sha256 == policy.sha256


def test_reload_refuses_a_changed_policy_or_an_altered_file(tmp_path, shipped_scale):
    path = shipped_scale.save(tmp_path / "s.json")
    changed = dict(policies.load("score_scale").data, points_to_double_odds=20)
    with pytest.raises(PolicyError, match="points_to_double_odds"):
        ScoreScale.load(path, current=changed)
    text = path.read_text().replace('"base_odds": 199', '"base_odds": 50')
    assert text != path.read_text()
    path.write_text(text)
    with pytest.raises(PolicyError, match="altered"):
        ScoreScale.load(path)


def test_bad_scale_parameters_refused():
    with pytest.raises(PolicyError):
        ScoreScale.from_policy({"base_score": 90, "base_odds": -1, "points_to_double_odds": 7.5})


# -------------------------------------------------------------------------------- final PD

CHAMPION = {"method": "champion", "fallback": ["hybrid", "decoupled", "propagation"]}
BLEND = {"method": "blend", "weights": {"hybrid": 0.5, "decoupled": 0.3, "propagation": 0.2}}


def _model_frame() -> pd.DataFrame:
    nan = np.nan
    return pd.DataFrame({
        "pd_hybrid": [0.01, nan, nan, nan, 0.02],
        "pd_decoupled": [0.02, 0.03, nan, nan, nan],
        "pd_propagation": [0.04, 0.05, 0.06, nan, 0.08],
    }, index=list("abcde"))


def _logit(p):
    return math.log(p / (1 - p))


def _expit(z):
    return 1 / (1 + math.exp(-z))


def test_champion_falls_back_in_policy_order():
    out = final_pd(_model_frame(), CHAMPION)
    assert out["pd"].iloc[:3].tolist() == [0.01, 0.03, 0.06]
    assert np.isnan(out.loc["d", "pd"]) and out.loc["d", "pd_source"] == ""
    assert out["pd_source"].tolist() == ["hybrid", "decoupled", "propagation", "", "hybrid"]
    # another order is another champion
    out2 = final_pd(_model_frame(), {"method": "champion", "fallback": ["propagation", "hybrid"]})
    assert out2["pd_source"].tolist() == ["propagation", "propagation", "propagation", "", "propagation"]


def test_blend_is_log_odds_with_weights_renormalised_over_available_models():
    out = final_pd(_model_frame(), BLEND)
    full = _expit((0.5 * _logit(0.01) + 0.3 * _logit(0.02) + 0.2 * _logit(0.04)) / 1.0)
    assert out.loc["a", "pd"] == pytest.approx(full, rel=1e-12)
    # hybrid missing: decoupled and propagation share 0.3 : 0.2
    two = _expit((0.3 * _logit(0.03) + 0.2 * _logit(0.05)) / 0.5)
    assert out.loc["b", "pd"] == pytest.approx(two, rel=1e-12)
    assert out.loc["c", "pd"] == 0.06  # one model: its own PD
    assert np.isnan(out.loc["d", "pd"])
    assert out["pd_source"].tolist() == ["hybrid+decoupled+propagation", "decoupled+propagation",
                                         "propagation", "", "hybrid+propagation"]
    # the blend lies between the models it blends
    assert 0.01 < out.loc["a", "pd"] < 0.04


def test_blend_zero_weight_and_missing_column():
    frame = _model_frame().drop(columns="pd_hybrid")
    out = final_pd(frame, {"method": "blend", "weights": {"hybrid": 1.0, "decoupled": 1.0, "propagation": 0.0}})
    assert out.loc["a", "pd"] == 0.02 and out.loc["a", "pd_source"] == "decoupled"
    assert np.isnan(out.loc["c", "pd"])  # propagation has weight 0: not used
    champ = final_pd(frame, CHAMPION)
    assert champ.loc["a", "pd_source"] == "decoupled"


def test_final_pd_policy_and_input_checks():
    with pytest.raises(PolicyError):
        final_pd(_model_frame(), {"method": "vote"})
    with pytest.raises(PolicyError):
        final_pd(_model_frame(), {"method": "champion", "fallback": ["hybrid", "oracle"]})
    with pytest.raises(PolicyError):
        final_pd(_model_frame(), {"method": "blend", "weights": {"hybrid": -1}})
    bad = _model_frame().assign(pd_hybrid=[1.5, np.nan, np.nan, np.nan, np.nan])
    with pytest.raises(ValueError, match="pd_hybrid"):
        final_pd(bad, CHAMPION)
    assert policies.load("final_pd")["method"] in ("champion", "blend")
    shipped = final_pd(_model_frame(), policies.load("final_pd"))
    assert shipped["pd"].notna().sum() == 4


# ---------------------------------------------------------------------------------- limits

POLICY = {
    "flow_share_by_grade": {"premium": 0.30, "grade_1": 0.20, "alternate": 0.10},
    "advance_rate": 0.80,
    "buyer_rating_floor": "A",
    "pd_decline_above": 0.10,
    "lgd": 0.50,
    "max_expected_loss_cny": 100_000,
    "max_limit_cny": 5_000_000,
    "round_to_cny": 10_000,
    "core_line_share_of_core_payments": 0.30,
    "round_trip_review_above": 0.10,
    "require_consent": True,
    "expected_loss_budget_share": 0.02,
    "envelope_weight": "uncapped_limit",
}


def firm(firm_id, pd_, grade, trade_in, recv=0.0, **kw):
    row = dict(firm_id=firm_id, pd=pd_, grade=grade, trade_in_12m=trade_in, eligible_receivables=recv,
               requested_amount=np.nan, core_id=np.nan, cycle_share_12m=0.0, round_trip_share_12m=0.0,
               in_trade_cycle=0.0, dq_issues=0, consent_ok=True)
    row.update(kw)
    return row


def limits_frame() -> pd.DataFrame:
    rows = [
        # requested binds: 0.3 * 10m + 0.8 * 1m = 3.8m, asked for 2m
        firm("REQ", 0.004, "premium", 10e6, 1e6, requested_amount=2e6),
        # max_limit binds: 0.3 * 20m = 6m > 5m
        firm("MAX", 0.004, "premium", 20e6),
        # expected loss binds: 0.2 * 22m = 4.4m; 100k / (0.05 * 0.5) = 4m
        firm("EL", 0.05, "grade_1", 22e6),
        # rounding only: 0.2 * 1,234,567 = 246,913.4 -> 240,000
        firm("PLAIN", 0.01, "grade_1", 1_234_567),
        firm("PDHIGH", 0.20, "alternate", 5e6),
        firm("NOPD", np.nan, None, 5e6),
        firm("NOFLOW", 0.01, "grade_1", 0.0, 0.0),
        firm("ALT", 0.08, "alternate", 1e6),
        firm("CYCLE", 0.01, "grade_1", 1e6, cycle_share_12m=0.05),
        firm("RTRIP", 0.01, "grade_1", 1e6, round_trip_share_12m=0.20),
        firm("RTRIPLOW", 0.01, "grade_1", 1e6, round_trip_share_12m=0.05),
        firm("LOOP", 0.01, "grade_1", 1e6, in_trade_cycle=1.0),
        firm("DQ", 0.01, "grade_1", 1e6, dq_issues=2),
        firm("NOCONSENT", 0.01, "grade_1", 1e6, consent_ok=False),
        # one core's chain, line 3m: 2m + 1m + 2.3m = 5.3m before the core cap
        firm("C1", 0.01, "grade_1", 10e6, core_id="CORE1"),
        firm("C2", 0.01, "grade_1", 5e6, core_id="CORE1"),
        firm("C3", 0.004, "premium", 5e6, 1e6, core_id="CORE1"),
        firm("C4", 0.20, "alternate", 50e6, core_id="CORE1"),  # declined: uses none of the line
        firm("D1", 0.01, "grade_1", 1e6, core_id="CORE2"),  # within its core's line
    ]
    return pd.DataFrame(rows)


LINES = {"CORE1": 3e6, "CORE2": 5e6}


@pytest.fixture(scope="module")
def limited() -> pd.DataFrame:
    return apply_limits(limits_frame(), POLICY, core_line=LINES).set_index("firm_id")


def test_limit_components(limited):
    r = limited.loc["REQ"]
    assert r["flow_part"] == pytest.approx(3e6) and r["receivable_part"] == pytest.approx(0.8e6)
    assert r["uncapped_limit"] == pytest.approx(3.8e6)
    assert limited.loc["PLAIN", "limit_cny"] == 240_000 and limited.loc["PLAIN", "binding_caps"] == []
    assert limited.loc["PLAIN", "decision"] == "approve"


@pytest.mark.parametrize("firm_id, cap, limit", [
    ("REQ", "requested", 2_000_000),
    ("MAX", "max_limit", 5_000_000),
    ("EL", "expected_loss", 4_000_000),
])
def test_each_individual_cap_binds(limited, firm_id, cap, limit):
    r = limited.loc[firm_id]
    assert r["binding_caps"] == [cap]
    assert r["limit_cny"] == limit
    assert r["decision"] == "approve"
    assert any("Capped by" in line for line in r["limit_basis"])


def test_expected_loss_budget_holds_for_every_firm(limited):
    frame = limits_frame().set_index("firm_id")
    el = frame["pd"].fillna(0) * POLICY["lgd"] * limited["limit_cny"]
    assert (el <= POLICY["max_expected_loss_cny"] + 1e-6).all()
    assert (limited["limit_cny"] <= POLICY["max_limit_cny"]).all()
    assert (limited["limit_cny"] % POLICY["round_to_cny"] == 0).all()


def test_core_line_scales_suppliers_pro_rata(limited):
    chain = limited.loc[["C1", "C2", "C3", "C4"]]
    assert chain.loc[["C1", "C2", "C3"], "limit_cny"].sum() <= LINES["CORE1"]
    for f in ("C1", "C2", "C3"):
        assert chain.loc[f, "binding_caps"] == ["core_line"]
    k = 3e6 / 5.3e6
    assert chain.loc["C1", "limit_cny"] == math.floor(2e6 * k / 1e4) * 1e4  # 1,130,000
    assert chain.loc["C2", "limit_cny"] == math.floor(1e6 * k / 1e4) * 1e4  # 560,000
    assert chain.loc["C3", "limit_cny"] == math.floor(2.3e6 * k / 1e4) * 1e4  # 1,300,000
    assert chain.loc["C4", "decision"] == "decline" and chain.loc["C4", "limit_cny"] == 0
    assert limited.loc["D1", "binding_caps"] == [] and limited.loc["D1", "limit_cny"] == 200_000


def test_core_line_is_order_independent():
    frame = limits_frame()
    a = apply_limits(frame, POLICY, core_line=LINES).set_index("firm_id").sort_index()
    b = apply_limits(frame.sample(frac=1, random_state=3), POLICY, core_line=LINES).set_index("firm_id").sort_index()
    pd.testing.assert_series_equal(a["limit_cny"], b["limit_cny"])


def test_core_line_needed_for_a_core_chain():
    with pytest.raises(ValueError, match="CORE1"):
        apply_limits(limits_frame(), POLICY, core_line={"CORE2": 1e6})


def test_several_caps_bind_in_order():
    frame = pd.DataFrame([firm("X", 0.05, "grade_1", 40e6, requested_amount=7e6)])
    r = apply_limits(frame, POLICY).iloc[0]
    # 8m uncapped -> requested 7m -> max 5m -> expected loss 4m
    assert r["binding_caps"] == ["requested", "max_limit", "expected_loss"]
    assert r["limit_cny"] == 4_000_000


@pytest.mark.parametrize("firm_id, needle", [
    ("PDHIGH", "above the decline threshold"),
    ("NOPD", "No model could score"),
    ("NOFLOW", "no amount to lend"),
])
def test_decline_paths(limited, firm_id, needle):
    r = limited.loc[firm_id]
    assert r["decision"] == "decline" and r["limit_cny"] == 0
    assert any(needle in s for s in r["decision_reasons"])


@pytest.mark.parametrize("firm_id, needle", [
    ("ALT", "alternate"),
    ("CYCLE", "trade money moved on rings"),
    ("RTRIP", "came back"),
    ("LOOP", "closed loop"),
    ("DQ", "data-quality"),
    ("NOCONSENT", "authorisation"),
])
def test_review_paths(limited, firm_id, needle):
    r = limited.loc[firm_id]
    assert r["decision"] == "review"
    assert r["limit_cny"] > 0  # a review keeps its proposed limit
    assert len(r["decision_reasons"]) == 1 and needle in r["decision_reasons"][0]


def test_round_trip_below_threshold_is_approved(limited):
    assert limited.loc["RTRIPLOW", "decision"] == "approve"


def test_a_silent_account_goes_to_review_from_the_policys_month():
    """A firm whose own account stopped reporting shows no missed payment (misses count
    reported months only): months_since_reported sends it to review from
    silent_account_review_months on; one quiet month, a firm that never reported (NaN) or a
    policy without the key leave it alone."""
    frame = pd.DataFrame([firm(f"S{m}", 0.01, "grade_1", 1e6, months_since_reported=m) for m in (0, 1, 2, 5)]
                         + [firm("NEVER", 0.01, "grade_1", 1e6, months_since_reported=np.nan)])
    r = apply_limits(frame, dict(POLICY, silent_account_review_months=2)).set_index("firm_id")
    assert r["decision"].to_dict() == {"S0": "approve", "S1": "approve", "S2": "review", "S5": "review", "NEVER": "approve"}
    assert r.loc["S5", "decision_reasons"] == [r.loc["S5", "decision_reasons"][0]]
    assert "reported no flows for the last 5 months" in r.loc["S5", "decision_reasons"][0]
    assert r.loc["S5", "limit_cny"] == r.loc["S0", "limit_cny"] > 0  # a review keeps its proposed limit
    assert set(apply_limits(frame, POLICY)["decision"]) == {"approve"}


def test_the_silent_account_month_must_be_a_whole_number(tmp_path):
    from tests.conftest import assert_policy_rejects

    assert_policy_rejects(tmp_path, "limit_policy", "silent_account_review_months: 2", ("0", "1.5", "true"),
                          "silent_account_review_months")


def test_every_decision_occurs_and_is_in_the_vocabulary(limited):
    assert set(limited["decision"]) == {"approve", "review", "decline"}
    assert all(isinstance(r, list) and r for r in limited["decision_reasons"])
    assert all(isinstance(b, list) and b for b in limited["limit_basis"])


def test_limits_without_the_memo_lines_are_the_same_limits():
    """``basis=False`` (scf monitor and scf serve's request step, which write no memo)
    leaves every column as it was and only the memo's limit lines empty."""
    from scf_engine.credit.limits import frame_columns, limit_arrays

    cols = frame_columns(limits_frame())
    full = limit_arrays(cols, POLICY, core_line=LINES)
    lean = limit_arrays(cols, POLICY, core_line=LINES, basis=False)
    assert full.keys() == lean.keys()
    for name in full:
        if name != "limit_basis":
            pd.testing.assert_series_equal(pd.Series(list(full[name]), dtype=object), pd.Series(list(lean[name]), dtype=object))
    assert all(b for b in full["limit_basis"]) and all(b == [] for b in lean["limit_basis"])
    assert len(lean["limit_basis"]) == len(full["limit_basis"]) == len(limits_frame())


def test_consent_not_required_and_optional_columns_absent():
    frame = pd.DataFrame([firm("A", 0.01, "grade_1", 1e6)]).drop(
        columns=["consent_ok", "requested_amount", "core_id", "cycle_share_12m", "round_trip_share_12m",
                 "in_trade_cycle", "dq_issues"])
    with pytest.raises(ValueError, match="consent_ok"):
        apply_limits(frame, POLICY)
    r = apply_limits(frame, dict(POLICY, require_consent=False)).iloc[0]
    assert r["decision"] == "approve" and r["limit_cny"] == 200_000


def test_limit_frame_checks():
    with pytest.raises(ValueError, match="eligible_receivables"):
        apply_limits(pd.DataFrame([firm("A", 0.01, "grade_1", 1e6)]).drop(columns="eligible_receivables"), POLICY)
    with pytest.raises(ValueError, match="grade"):
        apply_limits(pd.DataFrame([firm("A", 0.01, "gold", 1e6)]), POLICY)


# ------------------------------------------------------------- eligible receivables, core lines


@pytest.fixture()
def chain() -> Chain:
    nodes = pd.DataFrame({
        "firm_id": ["CORE_AA", "CORE_BBB", "CORE_DEF", "CORE_A", "S1", "S2", "S3"],
        "is_core": [True, True, True, True, False, False, False],
        "core_rating": ["AA", "BBB", "AAA", "A", "", "", ""],
        "defaulted": [False, False, True, False, False, False, False],
        "trade_in_12m": [0.0, 0, 0, 0, 1e6, 2e6, 0],
    }).set_index("firm_id")
    edges = pd.DataFrame({
        "supplier": ["S1", "S1", "S2", "S2", "S2", "S3"],
        "buyer": ["CORE_AA", "CORE_BBB", "CORE_AA", "S1", "CORE_DEF", "CORE_A"],
        "confirmed_open": [100.0, 50.0, 30.0, 70.0, 40.0, 20.0],
        "confirmed_open_not_due": [100.0, 50.0, 30.0, 70.0, 40.0, 20.0],
        "open_amount": [150.0, 60.0, 30.0, 90.0, 40.0, 20.0],
        "trade_volume_12m": [1000.0, 500.0, 300.0, 700.0, 400.0, 200.0],
    })
    return Chain(pd.Timestamp("2024-06-30"), edges, nodes)


def test_eligible_receivables_from_the_chain(chain):
    ms = policies.load("master_scale")
    er = eligible_receivables(chain, POLICY, ms)
    # S1: on AA (eligible) 100, on BBB (below A) not; S2: on AA 30, on a non-core and a
    # defaulted core not; S3: on an A core, exactly at the floor
    assert er.to_dict() == {"CORE_AA": 0.0, "CORE_BBB": 0.0, "CORE_DEF": 0.0, "CORE_A": 0.0,
                            "S1": 100.0, "S2": 30.0, "S3": 20.0}
    stricter = eligible_receivables(chain, dict(POLICY, buyer_rating_floor="AA+"), ms)
    assert stricter["S1"] == 0 and stricter["S3"] == 0
    with pytest.raises(PolicyError):
        eligible_receivables(chain, dict(POLICY, buyer_rating_floor="Z"), ms)


def test_core_lines_from_the_chain(chain):
    lines = core_lines(chain, POLICY)
    assert lines["CORE_AA"] == pytest.approx(0.3 * 1300)
    assert lines["CORE_BBB"] == pytest.approx(0.3 * 500)
    assert "S1" not in lines.index


# -------------------------------------------------------------------------------- envelope

ENV = dict(POLICY, round_to_cny=0)


def members(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["firm_id", "pd", "limit_cny", "uncapped_limit", "decision"])


def test_envelope_pro_rata_with_redistribution():
    m = members([("A", 0.01, 100_000, 1e6, "approve"),
                 ("B", 0.01, 1e6, 1e6, "approve"),
                 ("C", 0.01, 1e6, 2e6, "approve")])
    out = allocate_envelope(m, 1.2e6, ENV).set_index("firm_id")
    # pro rata 300k / 300k / 600k; A is held at 100k and its 200k goes to B and C 1:2
    assert out.loc["A", "allocation_cny"] == 100_000 and out.loc["A", "bound_by"] == "own_limit"
    assert out.loc["B", "allocation_cny"] == pytest.approx(1.1e6 / 3)
    assert out.loc["C", "allocation_cny"] == pytest.approx(2.2e6 / 3)
    assert set(out.loc[["B", "C"], "bound_by"]) == {"envelope"}
    assert out["allocation_cny"].sum() == pytest.approx(1.2e6)


def test_envelope_covering_every_limit_gives_each_its_limit():
    m = members([("A", 0.01, 100_000, 1e6, "approve"), ("B", 0.01, 200_000, 1e6, "review")])
    out = allocate_envelope(m, 1e7, ENV)
    assert out["allocation_cny"].tolist() == [100_000, 200_000]
    assert (out["bound_by"] == "own_limit").all()
    assert out.attrs["summary"]["unallocated_cny"] == pytest.approx(1e7 - 300_000)


def test_envelope_excludes_declined_unscored_and_zero_limits():
    m = members([("A", 0.01, 1e6, 1e6, "approve"), ("B", 0.20, 1e6, 1e6, "decline"),
                 ("C", np.nan, 1e6, 1e6, "review"), ("D", 0.01, 0.0, 1e6, "approve"),
                 ("E", 0.01, 1e6, 0.0, "approve")])
    out = allocate_envelope(m, 5e5, ENV).set_index("firm_id")
    assert out.loc["A", "allocation_cny"] == 5e5
    assert (out.loc[["B", "C", "D", "E"], "allocation_cny"] == 0).all()
    assert (out.loc[["B", "C", "D", "E"], "bound_by"] == "not_eligible").all()


def test_envelope_expected_loss_trims_highest_pd_first():
    m = members([("X", 0.09, 1e6, 1e6, "review"), ("Y", 0.01, 1e6, 1e6, "approve")])
    pol = dict(ENV, expected_loss_budget_share=0.01)  # budget 10k on 1m
    out = allocate_envelope(m, 1e6, pol).set_index("firm_id")
    # 500k each: EL 0.09*0.5*500k + 0.01*0.5*500k = 25k; X is cut by 15k / 0.045
    assert out.loc["Y", "allocation_cny"] == pytest.approx(500_000)
    assert out.loc["X", "allocation_cny"] == pytest.approx(500_000 - 15_000 / 0.045)
    assert out.loc["X", "bound_by"] == "expected_loss_budget" and out.loc["Y", "bound_by"] == "envelope"
    s = out.attrs["summary"]
    assert s["expected_loss_cny"] <= s["expected_loss_budget_cny"] + 1e-6
    # a tighter budget cuts X to zero before Y is touched
    out = allocate_envelope(m, 1e6, dict(ENV, expected_loss_budget_share=0.002)).set_index("firm_id")
    assert out.loc["X", "allocation_cny"] == 0
    assert out.loc["Y", "allocation_cny"] == pytest.approx(400_000)  # 2k budget / 0.005
    assert (out["bound_by"] == "expected_loss_budget").all()


def test_envelope_pd_ties_trim_by_firm_id():
    m = members([("B", 0.05, 1e6, 1e6, "approve"), ("A", 0.05, 1e6, 1e6, "approve")])
    out = allocate_envelope(m, 1e6, dict(ENV, expected_loss_budget_share=0.02)).set_index("firm_id")
    # EL 25k on a 20k budget: A (first by firm_id) loses 5k / 0.025 = 200k, B nothing
    assert out.loc["A", "allocation_cny"] == pytest.approx(300_000)
    assert out.loc["B", "allocation_cny"] == pytest.approx(500_000)


def test_envelope_is_deterministic_and_rounds_down():
    rng = np.random.default_rng(5)
    m = members([(f"F{i:03d}", float(rng.uniform(0.001, 0.09)), float(rng.integers(1, 50)) * 1e5,
                  float(rng.uniform(1e5, 5e6)), "approve") for i in range(40)])
    pol = dict(POLICY)  # rounds to 10,000
    a = allocate_envelope(m, 2.5e7, pol).set_index("firm_id").sort_index()
    b = allocate_envelope(m.sample(frac=1, random_state=1), 2.5e7, pol).set_index("firm_id").sort_index()
    pd.testing.assert_frame_equal(a, b)
    assert (a["allocation_cny"] % 10_000 == 0).all()
    assert a["allocation_cny"].sum() <= 2.5e7
    assert (a["allocation_cny"] <= a["cap"]).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0005, 0.2), st.floats(0, 5e6), st.floats(0, 1e7)), min_size=1, max_size=25),
       st.floats(0, 5e7), st.floats(0.001, 0.05), st.sampled_from([0, 1, 10_000]))
def test_envelope_invariants(rows, total, el_share, unit):
    m = members([(f"F{i:02d}", p, c, w, "approve") for i, (p, c, w) in enumerate(rows)])
    pol = dict(POLICY, expected_loss_budget_share=el_share, round_to_cny=unit)
    out = allocate_envelope(m, total, pol)
    alloc = out["allocation_cny"].to_numpy()
    assert (alloc >= 0).all()
    assert alloc.sum() <= total + 1e-6
    assert (alloc <= m["limit_cny"].to_numpy() + 1e-6).all()
    el = (m["pd"].to_numpy() * pol["lgd"] * alloc).sum()
    assert el <= el_share * total + 1e-6


def test_water_fill_matches_share_and_redistribute():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        w, c, total = rng.uniform(0, 5, n), rng.uniform(0, 5, n), float(rng.uniform(0, 30))
        fast, _ = water_fill(w, c, total)
        # the textbook loop: share, cap, redistribute the surplus, repeat
        alloc, active, left = np.zeros(n), (w > 0) & (c > 0), total
        while active.any() and left > 1e-12:
            share = left * np.where(active, w, 0) / w[active].sum()
            room = c - alloc
            over = active & (share >= room)
            if not over.any():
                alloc += share
                break
            alloc[over] = c[over]
            left = total - alloc.sum()
            active &= ~over
        assert np.allclose(fast, alloc, atol=1e-9)


def test_trim_expected_loss_leaves_budget_alone_when_met():
    a, t = trim_expected_loss(np.array([1.0, 2.0]), np.array([0.01, 0.02]), 0.5, budget=1.0)
    assert a.tolist() == [1.0, 2.0] and not t.any()


# --------------------------------------------------------------------------------- consent


def write_consents(tmp_path, text: str, encoding="utf-8"):
    p = tmp_path / "consents.csv"
    p.write_bytes(text.encode(encoding))
    return p


def test_consent_statuses(tmp_path):
    p = write_consents(tmp_path, "firm_id,granted_on,expires_on,signed_by\n"
                                 "OK,2024-01-01,2024-12-31,张三\n"
                                 "EDGE1,2024-06-30,2024-06-30,\n"
                                 "EXP,2023-01-01,2024-06-29,\n"
                                 "LATER,2024-07-01,2025-06-30,\n"
                                 "OPEN,2020-01-01,,\n"
                                 "RENEW,2023-01-01,2024-01-01,\n"
                                 "RENEW,2024-06-01 09:30:00,2025-06-01,\n"
                                 "BOTH,2023-01-01,2024-01-01,\n"
                                 "BOTH,2024-09-01,2025-09-01,\n")
    c = read_consents(p)
    ids = ["OK", "EDGE1", "EXP", "LATER", "OPEN", "RENEW", "BOTH", "NONE"]
    s = consent_status(ids, c, "2024-06-30")
    assert s.to_dict() == {"OK": "ok", "EDGE1": "ok", "EXP": "expired", "LATER": "not_yet_valid",
                           "OPEN": "ok", "RENEW": "ok", "BOTH": "not_yet_valid", "NONE": "missing"}
    assert consent_ok(s).tolist() == [True, True, False, False, True, True, False, False]
    assert (consent_status(["OK"], None, "2024-06-30") == "missing").all()


def test_consent_file_in_gb18030(tmp_path):
    p = write_consents(tmp_path, "firm_id,granted_on,expires_on,备注\nA,2024-01-01,2025-01-01,已授权\n", "gb18030")
    assert consent_status(["A"], read_consents(p), "2024-06-30")["A"] == "ok"


@pytest.mark.parametrize("text, needle", [
    ("firm_id,granted_on\nA,2024-01-01\n", "missing column(s) expires_on"),
    ("firm_id,granted_on,expires_on\nA,2024-01-01,2025-01-01\nB,2024-13-01,2025-01-01\n", "line 3: granted_on '2024-13-01'"),
    ("firm_id,granted_on,expires_on\nA,01/02/2024,2025-01-01\n", "line 2: granted_on '01/02/2024' is not a date"),
    ("firm_id,granted_on,expires_on\nA,,2025-01-01\n", "line 2: granted_on is empty"),
    ("firm_id,granted_on,expires_on\nA,2024-01-01,2023-01-01\n", "line 2: expires_on 2023-01-01 is before"),
    ("firm_id,granted_on,expires_on\n,2024-01-01,2025-01-01\n", "line 2: firm_id is empty"),
    ("", "empty file"),
])
def test_consent_file_errors_are_one_line(tmp_path, text, needle):
    p = write_consents(tmp_path, text)
    with pytest.raises(DatasetError) as exc:
        read_consents(p)
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg and msg.startswith("consents.csv")


def test_missing_consent_file(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        read_consents(tmp_path / "consents.csv")


def test_refused_consent_sends_firm_to_review_with_the_reason(tmp_path):
    p = write_consents(tmp_path, "firm_id,granted_on,expires_on\nA,2023-01-01,2024-01-01\nC,2024-01-01,2025-01-01\n")
    status = consent_status(["A", "B", "C"], read_consents(p), "2024-06-30")
    frame = pd.DataFrame([firm(f, 0.01, "grade_1", 1e6) for f in ("A", "B", "C")])
    frame["consent_status"] = status.to_numpy()
    frame["consent_ok"] = consent_ok(status).to_numpy()
    out = apply_limits(frame, POLICY).set_index("firm_id")
    assert out["decision"].to_dict() == {"A": "review", "B": "review", "C": "approve"}
    assert "expired" in out.loc["A", "decision_reasons"][0]
    assert "no data-use authorisation is on file" in out.loc["B", "decision_reasons"][0]


# --- no double financing (issue 15): which receivables may back a limit ----------------------------


def _receivables(**extra):
    """Five open, not-yet-due receivables of firm S on core C (and one on a weak buyer)."""
    T = pd.Timestamp("2024-06-01")
    day = pd.Timestamp
    r = pd.DataFrame({
        "receivable_id": ["R1", "R2", "R3", "R4", "R5", "R6", "R7"],
        "supplier_id": ["S"] * 7, "buyer_id": ["C"] * 6 + ["W"],
        "amount": [100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0],
        "issued_on": [day("2024-03-01")] * 7, "due_on": [day("2024-09-01")] * 7,
        "confirmed_on": [day("2024-03-02")] * 5 + [pd.NaT, day("2024-03-02")],
        "paid_on": pd.Series([pd.NaT] * 7, dtype="datetime64[s]"), "paid_amount": np.nan,
    })
    for k, v in extra.items():
        r[k] = v
    return r, T


def test_clean_receivables_all_back_the_limit_and_the_amount_is_kept_exactly():
    from scf_engine.credit.encumbrance import eligible_after_exclusions, receivable_status
    from scf_engine.dataset import empty_financings

    r, T = _receivables()
    status = receivable_status(r, empty_financings(), pd.Series({"C": True, "W": False}), T)
    assert status["receivable_id"].tolist() == ["R1", "R2", "R3", "R4", "R5", "R6"]  # W is not an accepted core
    assert status.set_index("receivable_id").loc["R6", "reason"].startswith("not confirmed")
    chain_value = pd.Series({"S": 0.1 + 0.2 + 1500.0}, name="eligible_receivables")  # any float: kept bit for bit
    eligible, excluded = eligible_after_exclusions(chain_value, status[status["confirmed"]])
    assert eligible["S"] == chain_value["S"] and excluded["S"] == 0


def test_pledged_transferred_financed_and_earmarked_receivables_are_left_out_with_their_reason():
    from scf_engine.credit.encumbrance import earmarks_in_force, eligible_after_exclusions, receivable_status
    from scf_engine.dataset import empty_financings

    day = pd.Timestamp
    r, T = _receivables(
        pledged_to=[np.nan, "BANK-B", "BANK-C", np.nan, np.nan, np.nan, np.nan],
        pledged_on=[pd.NaT, day("2024-04-01"), day("2024-06-01"), pd.NaT, pd.NaT, pd.NaT, pd.NaT],  # R3: on the as-of
        transferred_to=[np.nan, np.nan, np.nan, "FACTOR-1", np.nan, np.nan, np.nan],
        transferred_on=[pd.NaT, pd.NaT, pd.NaT, day("2024-05-01"), pd.NaT, pd.NaT, pd.NaT])
    fin = empty_financings()
    fin = pd.concat([fin, pd.DataFrame({
        "financing_id": ["F1", "F2"], "firm_id": ["S", "S"], "receivable_id": ["R5", "R1"],
        "drawn_on": [day("2024-05-10"), day("2024-04-10")], "amount": [400.0, 80.0],
        "maturity_on": [day("2024-09-05")] * 2, "collection_account": ["COL-1"] * 2,
        "repaid_on": [pd.NaT, day("2024-05-20")], "repaid_amount": [np.nan, 80.0]})], ignore_index=True)
    entries = [{"action": "score", "details": {"batch_id": "B-other", "as_of": "2024-06-01",
                                               "earmarked_receivables": [["R3", "S"], ["R1", "OTHER-FIRM"]]}},
               {"action": "score", "details": {"batch_id": "B-mine", "as_of": "2024-06-01",
                                               "earmarked_receivables": [["R1", "S"]]}},
               {"action": "score", "details": {"batch_id": "B-old", "as_of": "2024-05-01",
                                               "earmarked_receivables": [["R1", "S"]]}}]
    earmarks = earmarks_in_force(entries, T, 0, batch_id="B-mine")
    assert earmarks["batch_id"].unique().tolist() == ["B-other"]  # my own re-run and an older snapshot do not bind
    status = receivable_status(r, fin, pd.Series({"C": True, "W": False}), T, earmarks).set_index("receivable_id")
    why = status["reason"]
    assert why["R1"] == ""  # F1 was repaid: free again; the earmark naming another firm's R1 does not bind
    assert why["R2"].startswith("pledged to BANK-B on 2024-04-01")
    assert why["R3"].startswith("earmarked by batch B-other")  # the pledge dated on the as-of is not known yet
    assert why["R4"].startswith("transferred to FACTOR-1")
    assert why["R5"].startswith("already financed: financing F1 drawn 2024-05-10")
    assert why["R6"].startswith("not confirmed")
    eligible, excluded = eligible_after_exclusions(pd.Series({"S": 1500.0}), status.reset_index())
    assert eligible["S"] == 100.0 and excluded["S"] == 5
    # a wider window lets the earlier snapshot's batch bind too
    assert set(earmarks_in_force(entries, T, 31, batch_id="B-mine")["batch_id"]) == {"B-other", "B-old"}


def test_two_batches_decided_at_once_cannot_both_lend_on_one_receivable(tmp_path):
    """Each batch reads the earmarks before either writes; the second to append finds, under
    the log's lock, that a receivable behind its limits was earmarked meanwhile, and is
    refused with one line before its entry is written. Its own re-run, another firm's
    receivable of the same id and a batch on an older snapshot do not clash."""
    from scf_engine import access, policies
    from scf_engine.errors import RequestError
    from scf_engine.pipelines.score import check_still_free

    log, T, pols = tmp_path / "audit.jsonl", pd.Timestamp("2024-06-01"), policies.load_all()
    mine = [["R1", "S"], ["R2", "S"]]
    check_still_free(log, T, pols, "B-mine", mine)  # no log yet: nothing is taken
    access.record(log, "x", "score", "batch", ["S"], batch_id="B-old", as_of="2024-05-01", earmarked_receivables=[["R1", "S"]])
    access.record(log, "x", "score", "batch", ["S"], batch_id="B-mine", as_of="2024-06-01", earmarked_receivables=mine)
    access.record(log, "x", "score", "batch", ["Q"], batch_id="B-q", as_of="2024-06-01", earmarked_receivables=[["R2", "Q"]])
    check_still_free(log, T, pols, "B-mine", mine)
    access.record(log, "y", "score", "batch", ["S"], batch_id="B-fast", as_of="2024-06-01",
                  earmarked_receivables=[["R2", "S"]])
    size = log.stat().st_size
    with pytest.raises(RequestError, match=r"1 receivable\(s\) .*first R2\) were earmarked by batch B-fast"):
        access.record(log, "x", "score", "batch", ["S"], batch_id="B-mine", as_of="2024-06-01", earmarked_receivables=mine,
                      precondition=lambda: check_still_free(log, T, pols, "B-mine", mine))
    assert log.stat().st_size == size  # nothing written for the refused batch


def test_final_pd_is_floored_at_the_policy_minimum_and_the_models_columns_are_not():
    """A model that says 1e-9 (a small bank's over-confident fit) gives the floor, 0.03%
    in the shipped policy, under either method; a firm no model scored stays unscored, and
    a PD above the floor is untouched."""
    frame = pd.DataFrame({"pd_hybrid": [1e-9, np.nan, 0.02], "pd_decoupled": [1e-12, np.nan, np.nan],
                          "pd_propagation": [1e-10, np.nan, np.nan]}, index=list("abc"))
    shipped = policies.load("final_pd")
    assert shipped["floor"] == 0.0003
    for policy in (shipped, {**CHAMPION, "floor": 0.0003}, {**BLEND, "floor": 0.0003}):
        out = final_pd(frame, policy)
        assert out.loc["a", "pd"] == 0.0003 and np.isnan(out.loc["b", "pd"]) and out.loc["c", "pd"] == 0.02
    assert final_pd(frame, CHAMPION).loc["a", "pd"] == 1e-9  # no floor in the policy: none applied
    assert frame.loc["a", "pd_hybrid"] == 1e-9
    with pytest.raises(PolicyError, match="floor"):
        final_pd(frame, {**CHAMPION, "floor": 0.5})
