"""Flow features: values on hand-built flow tables, point in time, and the catalogue."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scf_engine.catalogue import load_catalogue
from scf_engine.dataset import Dataset
from scf_engine.features import flow_features
from scf_engine.features.authenticity import cycle_edges
from scf_engine.contract import make_uscc

T = pd.Timestamp("2025-01-01")
A, B, C, D = (make_uscc("320281", 20_000_000 + i) for i in range(4))


def firms():
    f = pd.DataFrame({"firm_id": [A, B, C, D], "name": list("ABCD"), "industry": "C34", "region": "320281",
                      "founded_on": pd.Timestamp("2015-01-01"), "registered_capital": 1e6, "is_core": False,
                      "core_rating": None, "batch_group": None})
    f.loc[3, "founded_on"] = pd.Timestamp("2024-09-15")
    return f


def month(k, day=10):
    """A date in the k-th whole month before T (k = 0 is December 2024)."""
    return (T - pd.DateOffset(months=k + 1)).replace(day=day)


def flows_for_a():
    rows = []
    for k in range(24):
        # trade inflow from two customers; December is paid by a third
        rows.append((month(k, 5), "EXT-C1", A, 100_000.0, "trade"))
        rows.append((month(k, 6), "EXT-C2" if k else "EXT-C3", A, 50_000.0, "trade"))
        rows.append((month(k, 8), A, "EXT-S1", 90_000.0, "trade"))
        if k not in (2, 5, 6):  # payroll missed in months 2, 5 and 6; month 4 catches up 5... (see test)
            rows.append((month(k, 10), A, "EXT-PAY", 20_000.0 if k != 1 else 40_000.0, "payroll"))
        if k >= 1:  # no tax in the latest month: an open gap of 1
            rows.append((month(k, 15), A, "EXT-TAX", 5_000.0 if k >= 12 else 6_000.0, "tax"))
        rows.append((month(k, 18), A, "EXT-SI", 6_000.0, "social_insurance"))
    return rows


def dataset(rows):
    flows = pd.DataFrame(rows, columns=["booked_on", "payer_id", "payee_id", "amount", "purpose"])
    flows.insert(0, "txn_id", [f"T{i}" for i in range(len(flows))])
    empty_r = pd.DataFrame(columns=["receivable_id", "supplier_id", "buyer_id", "amount", "issued_on", "due_on",
                                    "confirmed_on", "paid_on", "paid_amount"])
    for c in ("issued_on", "due_on", "confirmed_on", "paid_on"):
        empty_r[c] = empty_r[c].astype("datetime64[s]")
    defaults = pd.DataFrame({"firm_id": pd.Series([], dtype="str"), "default_on": pd.Series([], dtype="datetime64[s]")})
    return Dataset(firms(), empty_r, flows, defaults)


def test_feature_values_on_a_hand_built_flow_table():
    F = flow_features(dataset(flows_for_a()).as_of(T)).loc[A]
    assert F["history_months"] == 24
    assert F["trade_in_1m"] == 150_000 and F["trade_in_3m"] == 450_000 and F["trade_in_12m"] == 1_800_000
    assert F["active_months_12m"] == 12
    assert F["trade_in_slope_12m"] == pytest.approx(0.0, abs=1e-12)
    assert F["payroll_missed_12m"] == 3 and F["payroll_open_gap"] == 0
    assert F["payroll_cured_12m"] == 1  # month 1 paid double right after the missed month 2
    assert F["tax_missed_12m"] == 1 and F["tax_open_gap"] == 1
    assert F["tax_yoy_3m"] == pytest.approx(np.log((12_000 + 1) / (15_000 + 1)))
    assert F["social_insurance_missed_12m"] == 0
    # last 3 months: payroll missed in month 2, tax in month 0, utilities never paid (3)
    assert F["obligations_missed_3m"] == 1 + 1 + 3
    assert F["payers_12m"] == 3 and F["payers_3m"] == 3
    assert F["payer_hhi_12m"] == pytest.approx((1_200_000 / 1_800_000) ** 2 + (550_000 / 1_800_000) ** 2 + (50_000 / 1_800_000) ** 2)
    assert F["payer_churn_3m"] == pytest.approx(50_000 / 450_000)  # EXT-C3 first paid in the latest 3 months
    assert F["round_amount_share_12m"] == pytest.approx(1.0)  # 100,000 and 50,000 are both whole 10,000s
    assert F["net_margin_12m"] == pytest.approx((1_800_000 - 12 * 90_000 - 8 * 20_000 - 40_000 - 11 * 6_000 - 12 * 6_000) / 1_800_000)


def test_young_and_flowless_firms():
    F = flow_features(dataset(flows_for_a() + [(month(1, 3), "EXT-C9", D, 10.0, "trade")]).as_of(T))
    assert F.loc[D, "history_months"] == 2 and F.loc[D, "payroll_missed_12m"] == 2
    assert F.loc[D, "firm_age_years"] == pytest.approx((T - pd.Timestamp("2024-09-15")).days / 365.25)
    assert np.isnan(F.loc[B, "history_months"]) and np.isnan(F.loc[B, "trade_in_12m"])


def test_cycles_of_matching_amounts_are_found_and_pairs_are_not():
    payer = np.array(["a", "b", "c", "x", "y", "p", "q"])
    payee = np.array(["b", "c", "a", "y", "x", "q", "r"])
    amount = np.array([1000.0, 995.0, 990.0, 500.0, 500.0, 70.0, 70.0])
    assert cycle_edges(payer, payee, amount).tolist() == [True, True, True, False, False, False, False]
    # the same loop with an amount that does not match is not a cycle of matching amounts
    assert not cycle_edges(payer[:3], payee[:3], np.array([1000.0, 600.0, 990.0])).any()


def test_round_trips_and_cycles_show_in_the_features():
    rows = flows_for_a()
    for k in range(6):
        rows += [(month(k, 3), A, B, 200_000.0, "trade"), (month(k, 4), B, C, 199_000.0, "trade"),
                 (month(k, 5), C, A, 198_000.0, "trade"), (month(k, 20), A, "EXT-Z", 80_000.0, "trade"),
                 (month(k, 22), "EXT-Z", A, 79_500.0, "trade")]
    F = flow_features(dataset(rows).as_of(T))
    assert F.loc[A, "cycle_share_12m"] > 0 and F.loc[A, "cycle_parties_12m"] == 2
    assert F.loc[B, "cycle_share_12m"] == pytest.approx(1.0)
    assert F.loc[A, "round_trip_share_12m"] > 0


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 400), st.sampled_from([A, B, C, "EXT-Q"]), st.sampled_from([A, B, C, "EXT-R"]),
                          st.floats(1, 1e6), st.sampled_from(["trade", "payroll", "tax", "utilities", "loan_drawdown"])),
                min_size=1, max_size=40))
def test_flows_dated_on_or_after_T_change_no_feature_at_T(later):
    base = dataset(flows_for_a())
    extra = [(T + pd.Timedelta(days=d), p, q, round(a, 2), u) for d, p, q, a, u in later if p != q]
    if not extra:
        return
    more = dataset(flows_for_a() + extra)
    pd.testing.assert_frame_equal(flow_features(base.as_of(T)), flow_features(more.as_of(T)))


def test_every_catalogue_feature_is_computed_somewhere_and_nothing_else():
    cat = load_catalogue()
    F = flow_features(dataset(flows_for_a()).as_of(T))
    flow_kinds = {s.name for s in cat.specs if s.kind != "code" or s.function in ("payer_concentration", "authenticity")}
    assert set(F.columns) == flow_kinds
    from scf_engine.assemble import chain_feature_names
    others = {s.name for s in cat.specs if s.kind == "code" and s.function in ("graph", "registry")}
    assert set(chain_feature_names()) == others
    assert {s.name for s in cat.specs if s.function == "propagation"} == {"propagated_log_odds", "pd_propagation"}
    # de-coupled features never use the registry, the chain or ratings
    dec = cat.model_features("decoupled")
    assert not {cat[n].family for n in dec} & {"registry", "chain", "propagation"}
    assert all(cat[n].label_zh and cat[n].label_en for n in dec)
