"""Flow features: values on hand-built flow tables, point in time, and the catalogue."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scf_engine.catalogue import load_catalogue
from scf_engine.dataset import Dataset
from scf_engine.features import flow_features
from scf_engine.features.authenticity import (
    RingSummary, ShapeSearch, TransferIndex, authenticity_features, chain_edges, pass_through_edges, ring_paths, round_trip_edges,
    scatter_gather, structural_cycles, walk_returns,
)
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
    # B pays utilities, so the platform carries them and A's months without are missed (an
    # obligation no firm pays in the snapshot's months would be unknown, not missed)
    F = flow_features(dataset(flows_for_a() + [(month(0, 20), B, "EXT-UTIL", 800.0, "utilities")]).as_of(T)).loc[A]
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
    young = [(month(1, 3), "EXT-C9", D, 10.0, "trade"), (month(0, 3), "EXT-C9", D, 10.0, "trade")]
    F = flow_features(dataset(flows_for_a() + young).as_of(T))
    assert F.loc[D, "history_months"] == 2 and F.loc[D, "payroll_missed_12m"] == 2
    assert F.loc[D, "firm_age_years"] == pytest.approx((T - pd.Timestamp("2024-09-15")).days / 365.25)
    assert np.isnan(F.loc[B, "history_months"]) and np.isnan(F.loc[B, "trade_in_12m"])


def flows_for_c():
    """C's account reaches the platform only 15 months before T (months 15-20 show just A's
    payments to it, from A's account) and is missing in months 4 and 0 (A's payments still
    show); in every reported month C pays all its obligations and is paid the same."""
    rows = [(month(k, 4), A, C, 30_000.0, "trade") for k in range(21)]
    for k in set(range(15)) - {0, 4}:
        rows += [(month(k, 5), "EXT-C5", C, 70_000.0, "trade"), (month(k, 10), C, "EXT-PAY", 10_000.0, "payroll"),
                 (month(k, 15), C, "EXT-TAX", 2_000.0, "tax"), (month(k, 18), C, "EXT-SI", 3_000.0, "social_insurance"),
                 (month(k, 22), C, "EXT-GRID", 1_000.0, "utilities")]
    return rows


def test_months_before_joining_or_missing_from_the_platform_are_unknown_not_missed():
    F = flow_features(dataset(flows_for_a() + flows_for_c() + [(month(k, 4), A, B, 5_000.0, "trade") for k in range(6)]).as_of(T))
    c = F.loc[C]
    assert c["history_months"] == 15  # from its first reported month, not A's first payment to it
    for f in ("payroll_missed_12m", "tax_missed_12m", "social_insurance_missed_12m", "utilities_missed_12m",
              "obligations_missed_3m", "obligations_missed_12m", "payroll_open_gap", "tax_open_gap", "obligations_open"):
        assert c[f] == 0, f
    assert c["trade_in_12m"] == 10 * 100_000  # reported months only
    assert c["trade_in_slope_12m"] == pytest.approx(0.0, abs=1e-12)
    assert c["trade_in_volatility_12m"] == pytest.approx(0.0, abs=1e-12)
    assert c["trade_in_trend_3v12"] == pytest.approx(0.0, abs=1e-12)
    # year on year over matched months (1 and 2 against 13 and 14): no 24 months needed
    assert c["trade_in_yoy_12m"] == pytest.approx(0.0, abs=1e-12) and c["tax_yoy_3m"] == pytest.approx(0.0, abs=1e-12)
    assert F.loc[A, "trade_in_yoy_12m"] == pytest.approx(0.0, abs=1e-12)
    # B's own account never reached the platform: no flow history, only A's payments to it
    assert np.isnan(F.loc[B, "history_months"]) and np.isnan(F.loc[B, "payroll_missed_12m"])


def index_of(payer, payee, day, amount, decay=0.05, growth=0.0):
    codes, _ = pd.factorize(np.concatenate([payer, payee]))
    n = len(payer)
    return TransferIndex(codes[:n], codes[n:], np.asarray(day), np.asarray(amount, float), hop_decay=decay, hop_growth=growth)


def rings_of(index, **kw):
    return sorted(tuple(int(e) for e in row) for p in ring_paths(index, **kw) for row in p)


def test_rings_need_three_parties_in_time_order_with_shrinking_amounts():
    # a -> b -> c -> a, each hop 1% smaller and a few days later: a ring; x <-> y is a pair
    idx = index_of(list("abcxy"), list("bcayx"), [1, 4, 9, 1, 2], [1000.0, 990.0, 980.1, 500.0, 500.0])
    assert rings_of(idx, window_days=30) == [(0, 1, 2)]
    # the last hop before the one it carries on: not a ring (money cannot come back first)
    assert rings_of(index_of(list("abc"), list("bca"), [1, 9, 4], [1000.0, 990.0, 980.1]), window_days=30) == []
    # a hop that grows, or shrinks by more than the tolerance, breaks it; a slow return too
    assert rings_of(index_of(list("abc"), list("bca"), [1, 4, 9], [1000.0, 1010.0, 1000.0]), window_days=30) == []
    assert rings_of(index_of(list("abc"), list("bca"), [1, 4, 9], [1000.0, 900.0, 890.0]), window_days=30) == []
    assert rings_of(idx, window_days=7) == []


def test_the_searches_give_the_same_shapes_in_chunks_on_threads_as_in_one_piece(monkeypatch):
    """The ring and pair searches take CHUNK starting transfers at a time, SEARCH_THREADS
    chunks at once: on threads, the same rings and pairs in the same order as chunk after
    chunk on one thread; and the same rings and pairs as one chunk (many small chunks
    here, the last one part-full)."""
    import scf_engine.features.authenticity as au
    from scf_engine import policies

    rng = np.random.default_rng(11)
    n = 2_001
    payer, payee = rng.integers(0, 150, n), rng.integers(0, 150, n)
    keep = payer != payee
    day = np.sort(rng.integers(0, 400, n))[keep]
    amount = rng.choice([1000.0, 990.0, 980.0, 975.0, 500.0, 495.0], n)[keep]
    payer, payee = payer[keep], payee[keep]
    pol = policies.as_data(au.load_policy())

    def shapes(chunk, threads):
        monkeypatch.setattr(au, "CHUNK", chunk)
        monkeypatch.setattr(au, "SEARCH_THREADS", threads)
        idx = TransferIndex(payer, payee, day, amount, hop_decay=pol["hop_decay"], hop_growth=pol["hop_growth"])
        return au.find_shapes(idx, pol)

    def rows(a):
        return sorted(map(tuple, a.tolist()))

    whole = shapes(1 << 30, 1)
    assert sum(len(p) for p in whole.rings) > 0 and len(whole.round_trip) and len(whole.onward) and len(whole.chain)
    for chunk in (97, 1_000):
        one = shapes(chunk, 1)
        for threads in (2, 3):
            got = shapes(chunk, threads)
            assert len(got.rings) == len(one.rings) > len(whole.rings)  # an array per chunk and ring length
            for a, b in zip(got.rings, one.rings):
                np.testing.assert_array_equal(a, b)
            for name in ("round_trip", "onward", "chain"):
                np.testing.assert_array_equal(getattr(got, name), getattr(one, name))
        assert sorted(r for p in one.rings for r in map(tuple, p.tolist())) == \
            sorted(r for p in whole.rings for r in map(tuple, p.tolist()))
        for name in ("round_trip", "onward", "chain"):
            assert rows(getattr(one, name)) == rows(getattr(whole, name))


def test_a_chain_of_pairs_is_not_a_ring():
    """A<->B and B<->C at one amount: strongly connected, but no cycle passes through three
    parties (the old bucket-graph detector called all four transfers a ring)."""
    idx = index_of(np.array(["A", "B", "B", "C"]), np.array(["B", "A", "C", "B"]), [1, 2, 3, 4], [100.0] * 4)
    assert rings_of(idx, window_days=365) == []
    assert not RingSummary.of(idx, ring_paths(idx, window_days=365)).on_ring.any()


def brute_rings(payer, payee, day, amount, *, window_days, decay, growth, min_parties, max_parties):
    """Every ring by plain enumeration of transfer sequences (the definition, written out)."""
    n, found = len(payer), []

    def grow(path):
        last = path[-1]
        for e in range(n):
            if payer[e] != payee[last] or not (day[last] <= day[e] <= day[path[0]] + window_days):
                continue
            if not (amount[last] * (1 - decay) <= amount[e] <= amount[last] * (1 + growth)):
                continue
            if payee[e] == payer[path[0]]:
                if len(path) + 1 >= min_parties:
                    found.append(tuple(path + [e]))
            elif payee[e] not in {payer[p] for p in path} and len(path) + 1 < max_parties:
                grow(path + [e])

    for s in range(n):
        grow([s])
    return sorted(found)


graphs = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 20), st.sampled_from([100.0, 99.0, 97.0, 96.0, 90.0])),
                  min_size=1, max_size=30).map(lambda rows: [r for r in rows if r[0] != r[1]]).filter(bool)


@settings(max_examples=150, deadline=None)
@given(graphs, st.sampled_from([0.0, 0.02, 0.05]), st.sampled_from([0.0, 0.02]), st.integers(3, 5), st.integers(3, 20))
def test_rings_round_trips_and_onward_hops_match_a_brute_force_reference(rows, decay, growth, max_parties, window):
    payer, payee, day, amount = (np.array(c) for c in zip(*rows))
    idx = TransferIndex(payer, payee, day, amount, hop_decay=decay, hop_growth=growth)
    kw = dict(window_days=window, min_parties=3, max_parties=max_parties)
    assert rings_of(idx, **kw) == brute_rings(payer, payee, day, amount, decay=decay, growth=growth, **kw)
    n = len(rows)
    onward = [(i, j) for i in range(n) for j in range(n) if payer[j] == payee[i] and day[i] <= day[j] <= day[i] + window
              and amount[i] * (1 - decay) <= amount[j] <= amount[i] * (1 + growth)]
    passed = {i for i, j in onward if payee[j] != payer[i]}
    assert set(np.flatnonzero(pass_through_edges(idx, days=window))) == passed
    fan = pd.DataFrame([(payer[i], payee[i], payee[j]) for i, j in onward if payee[j] != payer[i]],
                       columns=["src", "mid", "dst"]).drop_duplicates()
    want = {} if fan.empty else fan.groupby(["src", "dst"]).size().to_dict()
    got = scatter_gather(idx, days=window).set_index(["src", "dst"])["fan"].to_dict()
    assert got == want
    trips = {k for i in range(n) for j in range(n) for k in (i, j) if payer[j] == payee[i] and payee[j] == payer[i]
             and day[i] <= day[j] <= day[i] + 7 and abs(np.log(amount[j] / amount[i])) <= np.log1p(0.02) + 1e-12}
    assert set(np.flatnonzero(round_trip_edges(idx, days=7, tolerance=0.02))) == trips


def legs_of(rows, ids):
    """Trade legs of transfers ``rows`` (payer, payee, day, amount), every party a firm:
    an out leg for the payer and an in leg for the payee, named by ``ids``."""
    legs = [(i, a, b, "out", amt, d) for (a, b, d, amt), i in zip(rows, ids)] + \
           [(i, b, a, "in", amt, d) for (a, b, d, amt), i in zip(rows, ids)]
    return pd.DataFrame(legs, columns=["_i", "firm_id", "cpty", "dir", "amount", "day"]).sort_values(["_i", "dir"],
                                                                                                  ignore_index=True)


@settings(max_examples=120, deadline=None)
@given(graphs, st.integers(0, 20), st.lists(st.booleans(), min_size=30, max_size=30))
def test_a_pass_wide_shape_search_gives_each_window_what_its_own_search_gives(rows, first_day, dropped):
    """scf monitor searches the shapes (rings, round trips, onward hops, amount chains)
    once among every transfer of its pass (ShapeSearch) and each as-of keeps those inside
    its own window: every authenticity feature must be what the window's own search
    gives, for any window and any transfers missing from it (transfers named by sparse,
    unordered ids, as a pass's ``_i`` are)."""
    ids = [7 * len(rows) - 3 * k for k in range(len(rows))]
    payer, payee, day, amount = (np.array(c) for c in zip(*rows))
    search = ShapeSearch(payer, payee, day, amount, ids)
    keep = [k for k, r in enumerate(rows) if r[2] >= first_day and not dropped[k]]
    if not keep:
        return
    window = legs_of([rows[k] for k in keep], [ids[k] for k in keep])
    pd.testing.assert_frame_equal(authenticity_features(window, search=search), authenticity_features(window),
                                  check_exact=True)
    # a pass's search is a superset: the whole of it gives each window no shape of another
    assert all(len(p) == 0 for p in search.within(np.array([10**6])).rings)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=40), st.lists(st.integers(-3, 70), max_size=40))
def test_positions_in_is_the_inverse_table_of_the_ids(ids, keys):
    """Shapes.within looks each transfer up among an as-of's ids by binary search
    (positions_in): per key the position a table ``at[ids] = arange(len(ids))`` gives
    (the last of repeated ids), -1 for a key not among them; ids sorted or not."""
    from scf_engine.features.authenticity import positions_in

    at = np.full(100, -1, np.int64)
    at[np.array(ids, np.int64)] = np.arange(len(ids))
    want = np.array([at[k] if k >= 0 else -1 for k in keys], np.int64)
    np.testing.assert_array_equal(positions_in(np.array(ids, np.int64), np.array(keys, np.int64)), want)
    np.testing.assert_array_equal(positions_in(np.sort(np.array(ids, np.int64)), np.array(keys, np.int64)),
                                  [np.flatnonzero(np.sort(ids) == k).max() if k in ids else -1 for k in keys])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(-2, 50), max_size=60), st.sampled_from(["int32", "int64", "uint16", "float64", "Int64"]),
       st.integers(0, 1))
def test_dense_factorize_is_pandas_sorted_factorize(values, dtype, sparse):
    """The authenticity features number the legs' firms by flags over the party codes
    (dense_factorize): the same codes and sorted uniques as pd.factorize(sort=True), for
    dense codes and, by falling back to it, sparse, negative or non-integer ones."""
    from scf_engine.features.authenticity import dense_factorize

    v = np.array(values, dtype=np.int64) + (10**7 if sparse else 0)
    if dtype == "uint16":
        v = np.abs(v) % 60_000
    s = pd.Series(v, name="firm_id").astype(dtype)
    codes, uniques = dense_factorize(s)
    want_codes, want_uniques = pd.factorize(s, sort=True)
    np.testing.assert_array_equal(codes, want_codes)
    assert codes.dtype == want_codes.dtype
    pd.testing.assert_index_equal(pd.Index(uniques), pd.Index(want_uniques), exact=True)


def test_the_sorted_needle_search_answers_as_searchsorted_does():
    """The ring search looks its needles up in sorted order past a size (_search): same
    positions as np.searchsorted, ties and keys outside the range included, either side."""
    from scf_engine.features.authenticity import _search

    rng = np.random.default_rng(4)
    keys = np.sort(rng.integers(0, 5_000, 20_000))  # many repeated keys
    needles = np.concatenate([rng.integers(-10, 5_010, 30_000), keys[:50]])
    for side in ("left", "right"):
        np.testing.assert_array_equal(_search(keys, needles, side), np.searchsorted(keys, needles, side))


# small payment graphs on 8 parties (self-payments and repeats included) for the
# brute-force references below: (payer, payee) pairs
PAYMENT_GRAPHS = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), min_size=1, max_size=25)


def brute_shortest_cycle(payer, payee, n, max_parties):
    """Per party: the fewest parties on a simple directed cycle through it, by enumerating
    every simple path (the definition, written out); inf when none of at most max_parties."""
    out = {v: set() for v in range(n)}
    for a, b in zip(payer, payee):
        if a != b:
            out[a].add(b)
    best = np.full(n, np.inf)

    def walk(start, path):
        for w in out[path[-1]]:
            if w == start and len(path) >= 2:
                best[start] = min(best[start], len(path))
            elif w not in path and len(path) < max_parties:
                walk(start, path + [w])

    for v in range(n):
        walk(v, [v])
    return best


@settings(max_examples=150, deadline=None)
@given(PAYMENT_GRAPHS, st.integers(2, 6))
def test_structural_rings_match_a_brute_force_reference(edges, max_parties):
    payer, payee = (np.array(c) for c in zip(*edges))
    got = structural_cycles(payer, payee, 8, max_parties=max_parties, chunk=3)  # small chunks: the chunking is exercised
    np.testing.assert_array_equal(got, brute_shortest_cycle(payer, payee, 8, max_parties))


def brute_walk_returns(payer, payee, n, max_parties):
    """Per party: the chance that a walk from it, each step to one of the current party's
    distinct payees picked evenly, first comes back to it within max_parties steps - by
    enumerating every such walk (the definition, written out)."""
    out = {v: sorted({b for a, b in zip(payer, payee) if a == v and b != v}) for v in range(n)}
    back = np.zeros(n)

    def walk(start, at, chance, steps):
        for w in out[at]:
            p = chance / len(out[at])
            if w == start:
                back[start] += p
            elif steps + 1 < max_parties:
                walk(start, w, p, steps + 1)

    for v in range(n):
        walk(v, v, 1.0, 0)
    return back


@settings(max_examples=150, deadline=None)
@given(PAYMENT_GRAPHS, st.integers(2, 6))
def test_walk_returns_match_a_brute_force_reference(edges, max_parties):
    payer, payee = (np.array(c) for c in zip(*edges))
    got = walk_returns(payer, payee, 8, max_parties=max_parties, chunk=3)  # small chunks: the chunking is exercised
    np.testing.assert_allclose(got, brute_walk_returns(payer, payee, 8, max_parties), atol=1e-12)


def test_a_ring_through_a_hub_brings_back_less_than_a_ring_of_thin_relationships():
    """Two rings of three: A -> B -> C -> A where each pays only the next, and H -> X -> Y
    -> H where X also pays 9 other parties. Both are the shortest ring (3); the walk tells
    them apart: all of A's money comes back, a tenth of H's."""
    payer = ["A", "B", "C", "H", "X", "Y"] + ["X"] * 9
    payee = ["B", "C", "A", "X", "Y", "H"] + [f"S{i}" for i in range(9)]
    codes, parties = pd.factorize(pd.Series(payer + payee))
    n = len(payer)
    back = dict(zip(parties, walk_returns(codes[:n], codes[n:], len(parties), max_parties=6)))
    short = dict(zip(parties, structural_cycles(codes[:n], codes[n:], len(parties), max_parties=6)))
    assert short["A"] == short["H"] == 3
    assert back["A"] == pytest.approx(1.0) and back["H"] == pytest.approx(0.1) and back["S0"] == 0


@settings(max_examples=100, deadline=None)
@given(graphs, st.sampled_from([0.0, 0.02, 0.05]), st.integers(0, 10))
def test_amount_chains_match_a_brute_force_reference(rows, tolerance, days):
    payer, payee, day, amount = (np.array(c) for c in zip(*rows))
    idx = TransferIndex(payer, payee, day, amount, hop_decay=tolerance)
    n = len(rows)
    want = {k for i in range(n) for j in range(n) for k in (i, j)
            if payer[j] == payee[i] and payee[j] != payer[i] and abs(int(day[j]) - int(day[i])) <= days
            and amount[i] * (1 - tolerance) <= amount[j] <= amount[i]}
    assert set(np.flatnonzero(chain_edges(idx, days=days))) == want


def test_structural_rings_and_chains_ignore_time_order():
    """A ring booked out of time order (as AMLSim books them): no ring in time order, but a
    structural ring of 3 and an amount chain at every hop; a pair paying each other is a
    ring of 2; a chain of pairs (A<->B, B<->C) has rings of 2 and none of 3."""
    idx = index_of(list("abcxy"), list("bcayx"), [9, 5, 1, 1, 2], [100.0, 100.0, 100.0, 7.0, 8.0])
    assert rings_of(idx, window_days=30) == []
    codes = np.arange(5)
    assert list(structural_cycles(idx.payer, idx.payee, 5, max_parties=6)[codes]) == [3, 3, 3, 2, 2]
    assert list(chain_edges(idx, days=30)) == [True, True, True, False, False]
    assert not chain_edges(idx, days=3).any()  # hops 4 or more days apart
    pairs = index_of(np.array(["A", "B", "B", "C"]), np.array(["B", "A", "C", "B"]), [1, 2, 3, 4], [100.0] * 4)
    assert list(structural_cycles(pairs.payer, pairs.payee, 3, max_parties=6)) == [2, 2, 2]
    assert chain_edges(pairs, days=30).all()  # B hands A's 100 on to C and C's on to A: chains, though no ring of 3


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
    # six payments of 200,000 left A and came back round B and C two days later, each time
    assert F.loc[A, "cycle_rings_12m"] == 6 and F.loc[B, "cycle_rings_12m"] == 0
    assert F.loc[A, "cycle_return_share_12m"] == pytest.approx(6 * 200_000 / (12 * 90_000 + 6 * 280_000))
    assert F.loc[A, "cycle_min_parties_12m"] == 3 and F.loc[C, "cycle_min_parties_12m"] == 3
    assert F.loc[A, "cycle_return_days_12m"] == 2 and np.isnan(F.loc[B, "cycle_return_days_12m"])
    # B and C pass each receipt on within a day at a matching amount
    assert F.loc[B, "pass_through_share_12m"] == pytest.approx(1.0)


def test_alerts_follow_the_policy_rules():
    from scf_engine.features.alerts import raise_alerts

    F = pd.DataFrame({"cycle_return_share_12m": [0.2, 0.01, np.nan], "cycle_share_12m": [0.3, 0.0, np.nan],
                      "round_trip_share_12m": [0.0, 0.5, np.nan], "pass_through_share_12m": [0.0, 0.0, np.nan],
                      "scatter_gather_12m": [0.0, 4.0, np.nan], "fan_in_burst_12m": [1.0, 9.0, np.nan],
                      "fan_out_burst_12m": [1.0, 1.0, np.nan]}, index=pd.Index(["X", "Y", "Z"], name="firm_id"))
    got = raise_alerts(F)
    assert list(zip(got["firm_id"], got["name"], got["severity"])) == [
        ("X", "ring_return", "high"), ("X", "ring_member", "medium"), ("Y", "round_trip", "medium"),
        ("Y", "scatter_gather", "medium"), ("Y", "fan_in_burst", "low")]
    assert got.loc[0, "value"] == 0.2 and got.loc[0, "label_zh"].startswith("资金空转")


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
    flow_kinds = {s.name for s in cat.specs if s.kind != "code" or s.function in ("payer_concentration", "authenticity", "fan_bursts",
                                                                                "counterparty_health", "closed_loop")}
    assert set(F.columns) == flow_kinds
    from scf_engine.assemble import chain_feature_names
    others = {s.name for s in cat.specs if s.kind == "code" and s.function in ("graph", "registry")}
    assert set(chain_feature_names()) == others
    assert {s.name for s in cat.specs if s.function == "propagation"} == {"propagated_log_odds", "pd_propagation"}
    # de-coupled features never use the registry, the chain or ratings
    dec = cat.model_features("decoupled")
    assert not {cat[n].family for n in dec} & {"registry", "chain", "propagation"}
    assert all(cat[n].label_zh and cat[n].label_en for n in dec)


def test_the_structural_ring_policy_is_checked():
    """The order-free ring settings are read from models/authenticity.yaml and checked: a
    ring search that would not meet in the middle cheaply, a tolerance of 100% or a score
    with no weight, a walk return that counts nothing as half the evidence or drops every
    path is refused with the key named."""
    import copy

    from scf_engine import policies
    from scf_engine.features.authenticity import load_policy

    good = policies.as_data(load_policy())
    for section, key, value, words in (("structural_rings", "max_parties", 9, "max_parties"),
                                       ("structural_rings", "chain_tolerance", 1.0, "chain_tolerance"),
                                       ("structural_rings", "walk_half", 0, "walk_half"),
                                       ("structural_rings", "walk_floor", 1.0, "walk_floor"),
                                       ("ring_score", None, 0, "weight")):
        bad = copy.deepcopy(good)
        if key:
            bad[section][key] = value
        else:
            bad[section] = {k: value for k in bad[section]}
        with pytest.raises(policies.PolicyError, match=words):
            policies.validate("authenticity", bad)
    extra = copy.deepcopy(good)
    extra["structural_rings"]["min_parties"] = 3
    with pytest.raises(policies.PolicyError, match="min_parties"):
        policies.validate("authenticity", extra)


def test_counterparty_health_reads_the_paying_firms_own_flows():
    """A is paid equally by B, whose own account is on the platform (an external customer
    pays it) and which pays no payroll, tax, social insurance or utilities, and by C, which pays them all every month: half of A's receipts come from a payer in
    arrears. External customers are nobody to read and count for nothing."""
    rows = flows_for_a()
    for k in range(12):
        rows.append((month(k, 7), B, A, 80_000.0, "trade"))
        rows.append((month(k, 3), "EXT-C7", B, 90_000.0, "trade"))  # B's own account is on the platform
        rows.append((month(k, 7), C, A, 80_000.0, "trade"))
        for purpose, payee in (("payroll", "EXT-PAY"), ("tax", "EXT-TAX"), ("social_insurance", "EXT-SI"),
                               ("utilities", "EXT-GRID")):
            rows.append((month(k, 12), C, payee, 1_000.0, purpose))
    F = flow_features(dataset(rows).as_of(T))
    assert F.loc[A, "payer_arrears_share_12m"] == 0.5
    assert np.isnan(F.loc[B, "payer_arrears_share_12m"])  # nobody on the platform pays B
    without = flow_features(dataset(flows_for_a()).as_of(T))
    assert np.isnan(without.loc[A, "payer_arrears_share_12m"])


def test_flows_read_from_a_parquet_lake_table_give_the_same_features(small_world_dir, tmp_path):
    """The embedded engine can read the flows as a lake's Parquet table (DuckDB streams it,
    as Spark does) instead of a pandas frame; every catalogue feature is the same, the
    ring search included (it keys flows by the file's ``_i`` row number)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scf_engine.ingest import load_dataset
    from scf_engine.sqlengine import DuckDBEngine

    ds = load_dataset(small_world_dir)
    snap = ds.as_of(ds.snapshot_dates()[-1])
    table = pa.Table.from_pandas(snap.flows[["booked_on", "payer_id", "payee_id", "amount", "purpose"]],
                                 preserve_index=False)
    table = table.append_column("_i", pa.array(np.arange(1, table.num_rows + 1, dtype=np.int64)))
    pq.write_table(table, tmp_path / "flows.parquet")
    expected = flow_features(snap)
    snap.flows = snap.flows.iloc[:0]  # nothing comes from the frame
    got = flow_features(snap, engine=DuckDBEngine(tables={"flows": tmp_path / "flows.parquet"}))
    assert expected.notna().sum().sum() > 1000
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12)


def test_the_flows_before_a_date_are_the_same_sorted_or_not():
    """Dataset.as_of takes the flows before T as a leading slice when they are in date
    order, by a filter otherwise: the same rows in the same order, a flow dated T left out."""
    rows = flows_for_a()
    ordered = dataset(sorted(rows, key=lambda r: r[0]))
    shuffled = dataset([rows[i] for i in np.random.default_rng(1).permutation(len(rows))])
    assert ordered.flows["booked_on"].is_monotonic_increasing and not shuffled.flows["booked_on"].is_monotonic_increasing
    for ds in (ordered, shuffled):
        for when in (T, T - pd.DateOffset(months=7), pd.Timestamp(rows[5][0]), pd.Timestamp("1990-01-01")):
            want = ds.flows[ds.flows["booked_on"] < when].reset_index(drop=True)
            got = ds.as_of(when).flows
            pd.testing.assert_frame_equal(got, want, check_exact=True)
            assert (got["booked_on"] < when).all()
    assert len(ordered.as_of(pd.Timestamp(rows[5][0])).flows) < len(rows)


def test_the_receivables_before_a_date_are_the_same_sorted_or_not_and_the_dataset_keeps_its_own(small_world_dir):
    """Dataset.as_of takes the receivables issued before T as a leading slice when they
    are in issue-date order (a filter otherwise) and blanks what T does not know yet
    (a confirmation, a payment on or after T) on its own rows only: the dataset's table
    is unchanged, sorted or shuffled, and the rows are the filter's, in its order."""
    from scf_engine.ingest import load_dataset

    ds = load_dataset(small_world_dir)
    ordered = ds.receivables.sort_values("issued_on", kind="stable", ignore_index=True)
    shuffled = ordered.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert not shuffled["issued_on"].is_monotonic_increasing
    dates = ordered["issued_on"]
    for table in (ordered, shuffled):
        ds.receivables = table
        before = table.copy(deep=True)
        for when in (dates.iloc[len(dates) // 2], dates.iloc[-1], dates.iloc[0], dates.iloc[-1] + pd.Timedelta(days=1)):
            got = ds.as_of(when).receivables
            want = table[table["issued_on"] < when].reset_index(drop=True)
            for col in ("confirmed_on", "paid_on"):
                want[col] = want[col].where(~(want[col] >= when))
            want["paid_amount"] = want["paid_amount"].where(~(table[table["issued_on"] < when]["paid_on"] >= when)
                                                            .to_numpy())
            pd.testing.assert_frame_equal(got[want.columns], want, check_exact=True)
            assert len(got) < len(table) or when > dates.iloc[-1]
            assert not (got["paid_on"] >= when).any() and not (got["confirmed_on"] >= when).any()
            assert got.empty == (when == dates.iloc[0])
            pd.testing.assert_frame_equal(table, before, check_exact=True)  # the dataset's rows untouched


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 400))
def test_the_counterparty_counts_from_one_grouping_are_the_distinct_counts(seed, n):
    """_cpty_sql counts distinct counterparties from one (firm, counterparty) grouping when
    every expression is ``count(DISTINCT cpty) [FILTER ...]``: the same integers as the
    expressions as written, NULL counterparties and NULL conditions included; with a
    ``sum`` or a ``count(*)`` among them (which count duplicates) it runs them as written."""
    from types import SimpleNamespace

    from scf_engine.duck import connect
    from scf_engine.features.flows import _cpty_sql

    rng = np.random.default_rng(seed)
    legs = pd.DataFrame({
        "firm_id": rng.choice(["F1", "F2", "F3", "F4"], n),
        "cpty": pd.Series(rng.choice(["C1", "C2", "C3", "EXT-9", None], n), dtype=object),
        "dir": rng.choice(["in", "out"], n),
        "purpose": pd.Series(rng.choice(["trade", "loan_drawdown", "tax", None], n), dtype=object),
        "k": rng.integers(0, 24, n),
        "amount": rng.integers(1, 5, n).astype(float),
    })
    catalogue = load_catalogue().of_kind("cpty")
    extra = [SimpleNamespace(name="any_12m", expr="count(DISTINCT cpty)"),
             SimpleNamespace(name="null_cond", expr="count(DISTINCT cpty) FILTER (WHERE purpose = 'tax' OR k < 2)")]
    dup = [SimpleNamespace(name="n_legs", expr="count(*) FILTER (WHERE dir = 'in')"),
           SimpleNamespace(name="in_sum", expr="sum(amount) FILTER (WHERE dir = 'in')")]
    with connect() as con:
        con.register("legs", legs)
        for specs in (catalogue, catalogue + extra, catalogue + dup):
            written = con.sql(f"SELECT firm_id, {', '.join(f'({s.expr}) AS {s.name}' for s in specs)} "
                              "FROM legs WHERE k < 12 GROUP BY firm_id").df().set_index("firm_id").sort_index()
            got = con.sql(_cpty_sql(specs)).df().set_index("firm_id").sort_index()
            pd.testing.assert_frame_equal(got[written.columns], written, check_dtype=False)


# --- features against the firm's own norm (issue 18) ---------------------------------------------

NORM_FEATURES = ("trade_in_vs_norm_3v9", "wage_payments_vs_norm_3v9", "obligations_missed_vs_norm_3m",
                 "obligations_uncured_12m", "obligations_uncured_clean_months", "active_share_12m")


def flows_for_norm():
    """A's account reported for 15 months (k = 0..14). Trade receipts 100,000 a month, none in
    month 4, falling to 50,000 in the latest 3. Payroll 20,000: missed in month 2 and caught
    up in month 1 (40,000); missed in 5 (not caught up: 20,000 in 4), in 9 and 8 (neither
    caught up) and in the latest month 0. Social insurance 6,000: missed in 10 and caught up
    in 9 (12,000), missed in 6 and not caught up. Tax 5,000 and utilities 1,000 every month."""
    rows = []
    payroll = {k: 20_000.0 for k in range(15)} | {2: 0.0, 1: 40_000.0, 5: 0.0, 9: 0.0, 8: 0.0, 0: 0.0}
    si = {k: 6_000.0 for k in range(15)} | {10: 0.0, 9: 12_000.0, 6: 0.0}
    for k in range(15):
        trade = 50_000.0 if k < 3 else 0.0 if k == 4 else 100_000.0
        if trade:
            rows.append((month(k, 5), "EXT-C1", A, trade, "trade"))
        if payroll[k]:
            rows.append((month(k, 10), A, "EXT-PAY", payroll[k], "payroll"))
        if si[k]:
            rows.append((month(k, 18), A, "EXT-SI", si[k], "social_insurance"))
        rows += [(month(k, 15), A, "EXT-TAX", 5_000.0, "tax"), (month(k, 22), A, "EXT-GRID", 1_000.0, "utilities")]
    return rows


def test_features_against_the_firms_own_norm_by_hand():
    F = flow_features(dataset(flows_for_norm()).as_of(T)).loc[A]
    prior = np.log1p([100_000.0] * 8 + [0.0])  # months 3-11, month 4 without trade
    assert F["trade_in_vs_norm_3v9"] == pytest.approx((np.log1p(50_000.0) - prior.mean()) / (prior.std(ddof=1) + 0.1))
    recent_wages = (6_000 + 46_000 + 6_000) / 3  # months 0-2: payroll 0, 40,000, 0; social insurance 6,000 each
    prior_wages = (6 * 20_000 + 6 * 6_000 + 12_000) / 9  # months 3-11: payroll missed in 5, 8, 9; SI in 6, 10, 12,000 in 9
    assert F["wage_payments_vs_norm_3v9"] == pytest.approx(np.log((recent_wages + 1) / (prior_wages + 1)))
    # missed per month: 2 of 3 recent months miss payroll; months 3-14 miss 3 payrolls and 2 SI
    assert F["obligations_missed_vs_norm_3m"] == pytest.approx(2 / 3 - 5 / 12)
    # not caught up: payroll 9, 8 and 5, social insurance 6 (month 2's and 10's were; month 0 cannot be yet)
    assert F["obligations_uncured_12m"] == 4
    assert F["obligations_uncured_clean_months"] == 5
    assert F["active_share_12m"] == pytest.approx(11 / 12)
    # the habitual late payer: misses payroll and social insurance every fourth month and
    # always catches up the next (its usual amount stays the median: 7 ordinary months of 11)
    habit = [r for r in flows_for_norm() if r[4] not in ("payroll", "social_insurance")]
    for k in range(15):
        pay = 0.0 if k % 4 == 1 else 40_000.0 if k % 4 == 0 else 20_000.0
        if pay:
            habit += [(month(k, 10), A, "EXT-PAY", pay, "payroll"), (month(k, 18), A, "EXT-SI", pay * 0.3, "social_insurance")]
    H = flow_features(dataset(habit).as_of(T)).loc[A]
    assert H["obligations_missed_12m"] == 6  # the level reads as arrears (months 1, 5 and 9, both payments)...
    assert H["obligations_uncured_12m"] == 0 and H["obligations_uncured_clean_months"] == 15  # ...all caught up
    assert H["obligations_missed_vs_norm_3m"] == pytest.approx(2 / 3 - 6 / 12)  # one miss in 3 months as in 12 before


def test_features_against_the_norm_are_empty_without_earlier_months():
    young = [(month(k, d), *r) for k in range(3) for d, r in ((5, ("EXT-C1", A, 10_000.0, "trade")),
                                                              (10, (A, "EXT-PAY", 2_000.0, "payroll")))]
    F = flow_features(dataset(young).as_of(T)).loc[A]
    for f in ("trade_in_vs_norm_3v9", "wage_payments_vs_norm_3v9", "obligations_missed_vs_norm_3m"):
        assert np.isnan(F[f]), f
    assert F["active_share_12m"] == 1.0 and F["obligations_uncured_12m"] == 0


def test_records_dated_T_or_later_do_not_move_the_norm_features():
    """A catch-up payroll, trade and a missed month's payment booked on T itself or later
    must not count (nor cure the latest month's miss); the same booked the day before T
    does, so the comparison can fail."""
    base = flow_features(dataset(flows_for_norm()).as_of(T)).loc[A, list(NORM_FEATURES)]
    later = [(T, A, "EXT-PAY", 40_000.0, "payroll"), (T, "EXT-C1", A, 900_000.0, "trade"),
             (T + pd.Timedelta(days=1), A, "EXT-SI", 12_000.0, "social_insurance"),
             (T + pd.Timedelta(days=40), "EXT-C2", A, 5_000.0, "trade")]
    after = flow_features(dataset(flows_for_norm() + later).as_of(T)).loc[A, list(NORM_FEATURES)]
    pd.testing.assert_series_equal(base, after)
    before = [(T - pd.Timedelta(days=1), A, "EXT-PAY", 40_000.0, "payroll")]
    moved = flow_features(dataset(flows_for_norm() + before).as_of(T)).loc[A, list(NORM_FEATURES)]
    assert moved["obligations_missed_vs_norm_3m"] < base["obligations_missed_vs_norm_3m"]
    assert moved["wage_payments_vs_norm_3v9"] > base["wage_payments_vs_norm_3v9"]


def test_flows_without_any_outside_party_count_every_month_from_a_firms_first_flow(small_world_dir):
    """A month is reported when the firm's own account shows a flow with an outside (EXT-)
    party. A platform that shares only its members' payments to each other has none: every
    flow feature was empty for every firm. There every month from a firm's first flow is
    reported, so the trade sums are the plain sums of its flows; with outside parties in
    the data the reading is unchanged (a firm with none stays unknown)."""
    from scf_engine.ingest import load_dataset

    ds = load_dataset(small_world_dir)
    T = ds.snapshot_dates()[-1]
    snap = ds.as_of(T)
    flows = snap.flows
    outside = flows["payer_id"].str.startswith("EXT-") | flows["payee_id"].str.startswith("EXT-")
    snap.flows = flows[~outside].reset_index(drop=True)
    got = flow_features(snap)
    fl = snap.flows
    booked = pd.to_datetime(fl["booked_on"])
    k = (T.year * 12 + T.month) - (booked.dt.year * 12 + booked.dt.month) - (booked.dt.day >= T.day).astype(int)
    trade = fl[(fl["purpose"] == "trade") & (k >= 0) & (k < 12)]
    want = trade.assign(amount=trade["amount"].astype(float)).groupby("payee_id")["amount"].sum()
    assert got["trade_in_12m"].notna().sum() > 300 and got["history_months"].notna().sum() > 300
    np.testing.assert_allclose(got.loc[want.index, "trade_in_12m"].to_numpy(float), want.to_numpy(), rtol=1e-12)
    assert (got["months_since_reported"].dropna() == 0).all()
    # one outside flow back in the data: the outside-party reading again, firms without one unknown
    snap.flows = pd.concat([flows[outside].iloc[:1], flows[~outside]], ignore_index=True)
    one = flow_features(snap)
    assert one["history_months"].notna().sum() == 1


def test_an_obligation_the_platform_does_not_carry_is_unknown_not_missed_by_everyone(small_world_dir):
    """A platform without payroll or housing fund payments: every reported month read as a
    month without payroll for every firm (12 of 12, and the composite counts with it).
    An obligation no firm paid in the snapshot's months is unknown in every month: no
    missed month, no open gap; the others are counted as before, and the composite is the
    sum of what is carried."""
    from scf_engine.ingest import load_dataset

    ds = load_dataset(small_world_dir)
    snap = ds.as_of(ds.snapshot_dates()[-1])
    before = flow_features(snap)
    parts = ["payroll_missed_12m", "tax_missed_12m", "social_insurance_missed_12m", "utilities_missed_12m"]
    seen = before["obligations_missed_12m"].notna()
    assert (before.loc[seen, "obligations_missed_12m"] == before.loc[seen, parts].sum(axis=1)).all()
    snap.flows = snap.flows[~snap.flows["purpose"].isin(["payroll", "housing_fund"])].reset_index(drop=True)
    after = flow_features(snap)
    seen = after["obligations_missed_12m"].notna()
    assert seen.sum() > 300
    assert (after.loc[seen, ["payroll_missed_12m", "payroll_open_gap"]] == 0).all().all()
    assert after["housing_fund_open_gap"].isna().all()
    assert (after.loc[seen, "obligations_missed_12m"] == after.loc[seen, parts[1:]].sum(axis=1)).all()
    pd.testing.assert_series_equal(after["tax_missed_12m"], before["tax_missed_12m"])


def test_the_chain_built_on_a_thread_beside_the_flow_features_gives_the_same_table(small_world_dir):
    """``scf monitor`` builds each date's chain on a thread (a cursor of the pass's
    connection) while the flow features' SQL runs: the chain, the table and the
    connection's thread setting are those of the one-after-another build."""
    from concurrent.futures import ThreadPoolExecutor

    from scf_engine.assemble import chain_and_table
    from scf_engine.duck import connect
    from scf_engine.features.flows import FlowPass
    from scf_engine.ingest import load_dataset

    ds = load_dataset(small_world_dir)
    dates = [ds.default_as_of - pd.DateOffset(months=m) for m in (6, 3)]
    got = {}
    for side in (None, ThreadPoolExecutor(max_workers=1)):
        con = connect()
        threads = con.execute("SELECT current_setting('threads')").fetchall()
        fp = FlowPass(con, ds.flows, ds.firms["firm_id"], dates)
        got[side is None] = [chain_and_table(ds.as_of(T), con, flow_pass=fp, side=side) for T in dates]
        assert con.execute("SELECT current_setting('threads')").fetchall() == threads
        con.close()
        if side is not None:
            side.shutdown()
    for (c1, t1), (c2, t2) in zip(got[True], got[False]):
        assert len(t1) > 100
        pd.testing.assert_frame_equal(t1, t2, check_exact=True)
        pd.testing.assert_frame_equal(c1.nodes, c2.nodes, check_exact=True)
        pd.testing.assert_frame_equal(c1.edges, c2.edges, check_exact=True)


def test_a_pass_takes_each_dates_trade_legs_as_the_sql_reads_them(small_world_dir):
    """FlowPass.trade_legs builds an as-of's trade legs from the pass's transfers (numpy)
    instead of scanning the legs again: the same legs, in the same (_i, dir) order, with
    the same parties, as _trade_legs reads from the date's own legs. Dates on the 1st, the
    29th of February, the 30th and the 31st (k counts a month by the day of T), firms
    joining between dates (a leg belongs to a firm of the as-of only), and the legs'
    k < 12 edge (a leg on T's day of the month 12 months back is out)."""
    from scf_engine.duck import connect
    from scf_engine.features.flows import FlowPass, _legs_sql, _trade_legs
    from scf_engine.ingest import load_dataset
    from scf_engine.sqlengine import DuckDBEngine

    ds = load_dataset(small_world_dir)
    end = ds.default_as_of
    dates = sorted({pd.Timestamp("2024-02-29"), pd.Timestamp("2024-03-31"), pd.Timestamp("2024-04-30"),
                    pd.Timestamp("2024-06-01"), end - pd.DateOffset(months=1)})
    assert dates[-1] <= end
    con = connect()
    fp = FlowPass(con, ds.flows, ds.firms["firm_id"], dates)
    eng = DuckDBEngine(con)
    joined = 0
    for T in dates:
        snap = ds.as_of(T)
        firms = snap.firms["firm_id"]
        joined += len(ds.firms) - len(firms)
        got, got_party = fp.trade_legs(str(T.date()), firms)
        eng.register("firms", snap.firms[["firm_id", "industry", "founded_on"]])
        eng.register("flows", snap.flows[["booked_on", "payer_id", "payee_id", "amount", "purpose"]],
                     money=("amount",), row_number="_i")
        eng.create("legs", _legs_sql(str(T.date())))
        want, want_party = _trade_legs(eng)
        eng.drop("legs")
        assert len(want) > 1000
        # row numbers: the pass numbers the flows from its first month, the date's own legs from its first flow
        assert (np.diff(got["_i"].to_numpy()) >= 0).all()
        pd.testing.assert_series_equal(got["_i"] - got["_i"].iloc[0], want["_i"] - want["_i"].iloc[0],
                                       check_dtype=False)
        for c in ("dir", "amount", "day"):
            assert (got[c].astype(str if c == "dir" else float).to_numpy()
                    == want[c].astype(str if c == "dir" else float).to_numpy()).all(), c
        names = np.asarray(got_party.to_pylist(), dtype=object)
        for c in ("firm_id", "cpty"):
            assert (names[got[c].to_numpy()] == want_party[want[c].to_numpy()]).all(), c
    assert joined > 0  # some firm of the world joined during the dates
    con.close()


def _awkward_pass_world(ordered: bool):
    """A made world with what the simulator lacks, for a pass's legs against the SQL
    path: transfers from a firm to itself (an in and an out leg each), payers and payees
    that are no firm, purposes that are not trade, firms founded between the dates, flows
    on T itself and on T's day of the month 11 and 12 months back, and (``ordered``
    False) flows out of date order. Returns firms, flows and the pass's dates."""
    rng = np.random.default_rng(5)
    firm_ids = [f"F{j:03d}" for j in range(40)]
    firms = pd.DataFrame({"firm_id": firm_ids, "industry": "C13",
                          "founded_on": pd.Timestamp("2022-01-01") + pd.to_timedelta(rng.integers(0, 900, 40), "D")})
    parties = np.array(firm_ids + [f"EXT-{j}" for j in range(15)] + ["Z-nonfirm", "A-nonfirm"])
    dates = [pd.Timestamp(d) for d in ("2024-02-29", "2024-03-30", "2024-03-31", "2024-06-01", "2024-12-29", "2025-01-31")]
    n = 6000
    day = (pd.Timestamp("2022-06-01") + pd.to_timedelta(rng.integers(0, 1000, n), "D")).to_numpy().copy()
    edges = [t + pd.DateOffset(months=-m) for t in dates for m in (0, 11, 12)] + [pd.Timestamp("2023-02-28")]
    day[:len(edges) * 10] = np.repeat(np.array([e.to_datetime64() for e in edges]), 10)
    payer, payee = rng.choice(parties, n), rng.choice(parties, n)
    itself = rng.random(n) < 0.05
    payee[itself] = payer[itself]
    flows = pd.DataFrame({"booked_on": pd.to_datetime(day).astype("datetime64[s]"), "payer_id": payer, "payee_id": payee,
                          "amount": np.round(rng.uniform(1, 1e5, n), 2),
                          "purpose": rng.choice(["trade", "trade", "trade", "payroll", "tax"], n)})
    if ordered:
        flows = flows.sort_values("booked_on", kind="stable", ignore_index=True)
    return firms, flows, dates


def test_which_parties_are_firms_whatever_the_names_are_held_in():
    """FlowPass.trade_legs asks which of a pass's parties are the as-of's firms
    (``_is_firm``: Arrow's set lookup): the same answer as finding each name's party
    code, for names as pandas 3 text, object, a plain list or none at all, with names
    that are no party and repeated names; parties in either Arrow string type."""
    from scf_engine.features.flows import _is_firm, _party_codes

    for party in (pa.array(sorted(["A", "B", "C", "EXT-1", "Z"])), pa.array(["A", "B"], pa.large_string())):
        for names in (pd.Index(["C", "A", "Q"], dtype="str"), pd.Series(["Z", "Z"], dtype="str"),
                      pd.Index(["A"], dtype=object), ["B", "no party"], np.array(["C"], dtype=object),
                      pd.Index([], dtype="str"), []):
            want = np.zeros(len(party), dtype=bool)
            want[_party_codes(names, party).drop_null().to_numpy()] = True
            got = _is_firm(party, names)
            assert got.dtype == bool and got.tolist() == want.tolist(), (party, names)
    assert _is_firm(pa.array(["A", "B"]), pd.Index(["B"], dtype="str")).tolist() == [False, True]


@pytest.mark.parametrize("ordered", [True, False])
def test_a_pass_takes_the_trade_legs_of_awkward_flows_as_the_sql_reads_them(ordered):
    """FlowPass.trade_legs against the pass's own legs view read by _trade_legs (the SQL
    path), on a made world with what the simulator lacks: transfers from a firm to itself
    (an in and an out leg each), payers and payees that are no firm, purposes that are
    not trade, firms founded between the dates, flows on T itself and on T's day of the
    month 11 and 12 months back, and flows out of date order."""
    from scf_engine.duck import connect
    from scf_engine.features.flows import FlowPass, _trade_legs
    from scf_engine.sqlengine import DuckDBEngine

    firms, flows, dates = _awkward_pass_world(ordered)
    con = connect()
    fp, eng = FlowPass(con, flows, firms["firm_id"], dates), DuckDBEngine(con)
    seen_itself = fewer = 0
    for T in dates:
        now = firms[firms["founded_on"] < T]
        got, party = fp.trade_legs(str(T.date()), now["firm_id"])
        eng.register("firms", now)
        fp.create_legs(str(T.date()))
        want, want_party = _trade_legs(eng)
        fp.drop_legs()
        assert len(want) > 200 and len(now) > 0
        fewer += len(now) < len(firms)
        names = np.asarray(party.to_pylist(), dtype=object)
        assert got["_i"].tolist() == want["_i"].tolist()
        assert got["dir"].astype(str).tolist() == want["dir"].astype(str).tolist()
        for c in ("firm_id", "cpty"):
            assert names[got[c].to_numpy()].tolist() == want_party[want[c].to_numpy()].tolist(), c
        assert got["amount"].tolist() == want["amount"].tolist() and got["day"].tolist() == want["day"].tolist()
        seen_itself += int((got["firm_id"] == got["cpty"]).sum())
    assert seen_itself > 0 and fewer > 0
    con.close()


@pytest.mark.parametrize("ordered", [True, False])
def test_a_pass_answers_the_trade_statements_from_its_trade_legs_as_from_every_leg(ordered):
    """In a pass, counterparty health, payer concentration and fan bursts read the
    as-of's trade legs with parties as codes (_pass_trade_view), not the legs view of
    every purpose by name: the same answers to the last bit, per firm, on the made world
    (self-transfers, parties that are no firm, firms founded between dates, flows out of
    order); the payers' health has gaps (NULL slopes), slopes of every magnitude (a sum
    in another order changes its last bits) and thousands of dormant firms (more firms
    than receipts: DuckDB then builds the join's hash table on the legs, and the sum's
    order must not come from the join)."""
    from scf_engine.duck import connect
    from scf_engine.features.flows import (PASS_TRADE, FlowPass, _counterparty_health, _drop_pass_trade_view,
                                           _fan_bursts, _named, _pass_trade_view, _payer_concentration)
    from scf_engine.sqlengine import DuckDBEngine

    firms, flows, dates = _awkward_pass_world(ordered)
    rng = np.random.default_rng(11)
    con = connect()
    fp, eng = FlowPass(con, flows, firms["firm_id"], dates), DuckDBEngine(con)
    compared = 0
    for T in dates:
        t = str(T.date())
        now = firms[firms["founded_on"] < T]
        ids = [*now["firm_id"], *(f"Z{j:05d}" for j in range(3000))]  # the dormant: no flow at all
        slope = rng.normal(0, 1, len(ids)) * 10.0 ** rng.integers(-8, 8, len(ids))
        health = pd.DataFrame({"obligations_missed_3m": rng.integers(0, 3, len(ids)).astype(float),
                               "trade_in_slope_12m": np.where(rng.random(len(ids)) < 0.2, np.nan, slope)},
                              index=pd.Index(ids, name="firm_id"))
        eng.register("firms", now)
        fp.create_legs(t)
        want = [_counterparty_health(eng, health), _payer_concentration(eng), _fan_bursts(eng, t, 7)]
        fp.drop_legs()
        trade, party = fp.trade_legs(t, now["firm_id"])
        legs = _pass_trade_view(eng, t, trade)
        got = [_counterparty_health(eng, health, legs, party), _named(_payer_concentration(eng, legs), party),
               _named(_fan_bursts(eng, t, 7, legs), party)]
        views = lambda: set(con.execute("SELECT view_name FROM duckdb_views()").df()["view_name"])  # noqa: E731
        assert PASS_TRADE in views()
        _drop_pass_trade_view(eng)
        assert PASS_TRADE not in views()
        for g, w in zip(got, want):
            assert len(w) > 5
            pd.testing.assert_frame_equal(g.sort_index(), w.sort_index(), check_exact=True)
            compared += w.notna().sum().sum()
    assert compared > 500
    con.close()


def test_an_aggregate_in_parts_gives_each_key_the_bits_of_one_thread_over_the_whole_table():
    """DuckDBEngine.df_in_parts (the panel's aggregate: ranges of firms at once, each on
    one thread of a cursor of its own) against one thread over the whole table: every
    key once, with the same bits of order-sensitive sums, deviations and slopes of
    doubles; a bound on an existing key puts it in the upper part only, a bound past
    every key leaves an empty part; the connection's thread setting is restored."""
    from scf_engine.duck import connect
    from scf_engine.sqlengine import DuckDBEngine

    rng = np.random.default_rng(3)
    n = 1_000_000  # ~8 of DuckDB's row groups, ~25 rows a key
    keys = np.sort(rng.choice(np.array([f"F{j:06d}" for j in range(40_000)]), n))
    x = rng.lognormal(0, 3, n) * rng.choice([1.0, -1.0, 1e-9, 1e9], n)
    con = connect()
    eng = DuckDBEngine(con)
    threads = con.execute("SELECT current_setting('threads')").fetchall()
    eng.register("_src", pd.DataFrame({"firm_id": keys, "k": rng.integers(0, 24, n), "x": x}))
    eng.create("t", "SELECT * FROM _src ORDER BY firm_id, k", shared=True)
    sql = ("SELECT firm_id, sum(x) AS s, stddev_samp(ln(1 + abs(x))) AS sd, regr_slope(x, -k) AS slope, "
           "sum(x) FILTER (WHERE k < 12) AS s12, count(*) AS n FROM {rows} GROUP BY firm_id")
    with eng.deterministic():
        whole = eng.df(sql.replace("{rows}", "t")).sort_values("firm_id", ignore_index=True)
    u = np.unique(keys)
    for bounds in ([u[len(u) // 2]], [u[100], u[len(u) // 3], u[-1]], [u[len(u) // 4], "G"], []):
        got = eng.df_in_parts(sql, "t", "firm_id", [str(b) for b in bounds]).sort_values("firm_id", ignore_index=True)
        pd.testing.assert_frame_equal(got, whole, check_exact=True)
        assert con.execute("SELECT current_setting('threads')").fetchall() == threads
    assert whole["n"].sum() == n and len(whole) == len(u)
    con.close()


def test_a_wide_aggregate_cut_into_statements_gives_the_bits_of_one_statement():
    """DuckDBEngine.aggregate_in_parts (the panel's 50 aggregates as statements of a few
    each, joined on the key; DuckDB's hash aggregate is slower with wide per-group state)
    against the one statement on one thread over the whole table: every key once, the
    columns in the select list's order, the same bits of order-sensitive sums, deviations
    and slopes of doubles whatever the statements' size and the key ranges; an empty
    select list gives the keys."""
    from scf_engine.duck import connect
    from scf_engine.sqlengine import DuckDBEngine

    rng = np.random.default_rng(11)
    n = 300_000
    keys = np.sort(rng.choice(np.array([f"F{j:05d}" for j in range(12_000)]), n))
    x = rng.lognormal(0, 3, n) * rng.choice([1.0, -1.0, 1e-9, 1e9], n)
    con = connect()
    eng = DuckDBEngine(con)
    eng.register("_src", pd.DataFrame({"firm_id": keys, "k": rng.integers(0, 24, n), "x": x,
                                       "y": np.where(rng.random(n) < 0.2, np.nan, x[::-1])}))
    eng.create("t", "SELECT * FROM _src ORDER BY firm_id, k", shared=True)
    exprs = ["sum(x) AS s", "stddev_samp(ln(1 + abs(x))) AS sd", "regr_slope(x, -k) AS slope",
             "sum(x) FILTER (WHERE k < 12) AS s12", "count(*) AS n", "avg(y) FILTER (WHERE k >= 3) AS ay",
             "count(y) - count(*) FILTER (WHERE y > 0) AS missed", "min(k) FILTER (WHERE y IS NULL) AS first_gap"]
    with eng.deterministic():
        whole = eng.df(f"SELECT firm_id, {', '.join(exprs)} FROM t GROUP BY firm_id").sort_values(
            "firm_id", ignore_index=True)
    u = np.unique(keys)
    for size in (1, 3, 5, len(exprs), 50):
        eng.AGGREGATES_PER_STATEMENT = size
        for bounds in ([u[len(u) // 2]], [u[100], u[len(u) // 3], u[-1]], []):
            got = eng.aggregate_in_parts(exprs, "t", "firm_id", [str(b) for b in bounds]).sort_values(
                "firm_id", ignore_index=True)
            pd.testing.assert_frame_equal(got, whole, check_exact=True)
    assert list(eng.aggregate_in_parts([], "t", "firm_id", [str(u[7])]).sort_values("firm_id")["firm_id"]) == list(u)
    assert whole["n"].sum() == n and whole["first_gap"].notna().any() and len(whole) == len(u)
    con.close()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 1100), st.sampled_from([A, B, C, D, "EXT-Q"]), st.sampled_from([A, B, C, D, "EXT-R"]),
                          st.sampled_from([0.01, 99.99, 5_000.0, 12_345.67, 200_000.0]),
                          st.sampled_from(["trade", "payroll", "tax", "social_insurance", "housing_fund", "utilities",
                                           "loan_drawdown", "loan_repayment"])),
                min_size=1, max_size=60),
       st.booleans(), st.booleans())
def test_a_pass_panel_is_each_dates_own_panel(rows, outside, with_a):
    """The panel features of a monitoring pass (each firm's months made once,
    FlowPass._build_panel, the as-of's window taken from them) equal those of the as-of's
    own dense panel and window functions, value for value: months missing in the middle
    and at the window's edges, firms whose first flow is inside or before the window,
    obligations no firm paid (unknown, not missed), platforms with no outside party at
    all (every month reported), as-of dates on two days of the month (two panel tables)
    and a flow on an as-of's day (at T: not read)."""
    from scf_engine.duck import connect
    from scf_engine.features.flows import FlowPass

    flows = [(T + pd.Timedelta(days=40) - pd.Timedelta(days=d), p, q, a, u) for d, p, q, a, u in rows
             if p != q and (outside or not (p.startswith("EXT") or q.startswith("EXT")))]
    flows += flows_for_a() if with_a else []
    if not flows:
        return
    dates = [T - pd.DateOffset(months=14), T - pd.DateOffset(months=1) + pd.Timedelta(days=14), T,
             T + pd.DateOffset(months=1)]
    ds = dataset(sorted(flows, key=lambda r: r[0]))
    con = connect()
    try:
        fp = FlowPass(con, ds.flows, ds.firms["firm_id"], dates)
        for d in dates:
            snap = ds.as_of(d)
            pd.testing.assert_frame_equal(flow_features(snap, con=con, flow_pass=fp), flow_features(snap), check_exact=True)
            # the rows themselves, every column (some neighbours no feature reads today)
            pd.testing.assert_frame_equal(_pass_panel_rows(con, fp, snap), _own_panel_rows(snap), check_exact=True)
    finally:
        con.close()


def _pass_panel_rows(con, fp, snap) -> pd.DataFrame:
    from scf_engine.sqlengine import DuckDBEngine

    DuckDBEngine(con).register("firms", snap.firms[["firm_id", "industry", "founded_on"]])
    return con.sql(fp.panel_rows_sql(snap.as_of.strftime("%Y-%m-%d"))).df()


def _own_panel_rows(snap) -> pd.DataFrame:
    """``p2`` as flow_features builds it without a pass: the as-of's legs, its dense
    panel, the window functions."""
    from scf_engine.duck import connect
    from scf_engine.features.flows import _legs_sql, _neighbours_sql, _panel_sql
    from scf_engine.sqlengine import DuckDBEngine

    eng = DuckDBEngine(connect())
    eng.register("firms", snap.firms[["firm_id", "industry", "founded_on"]])
    eng.register("flows", snap.flows[["booked_on", "payer_id", "payee_id", "amount", "purpose"]], money=("amount",),
                 row_number="_i")
    eng.create("legs", _legs_sql(snap.as_of.strftime("%Y-%m-%d")))
    eng.create("p", _panel_sql())
    try:
        return eng.con.sql(_neighbours_sql("p")).df()
    finally:
        eng.con.close()


# counts of distinct counterparties a pass can count for all its dates at once: windows
# set by `k < w` and `k <= w`, conditions on the leg's own columns, none at all
PASS_CPTY_EXPRS = {
    "cp_trade_in_2m": "count(DISTINCT cpty) FILTER (WHERE purpose = 'trade' AND dir = 'in' AND k < 2)",
    "cp_out_le4": "count(DISTINCT cpty) FILTER (WHERE k <= 4 AND dir = 'out')",
    "cp_big_7m": "count(DISTINCT cpty) FILTER (WHERE amount >= 5000 AND k < 7)",
    "cp_lenders": "count(DISTINCT cpty) FILTER (WHERE purpose = 'loan_drawdown' AND dir = 'in')",
    "cp_any": "count(DISTINCT cpty)",
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 27), st.sampled_from([1, 14, 15, 16, 28]), st.sampled_from([A, B, C, "EXT-Q"]),
                          st.sampled_from([A, B, C, "EXT-R"]), st.sampled_from([99.99, 5_000.0, 200_000.0]),
                          st.sampled_from(["trade", "tax", "loan_drawdown"])),
                min_size=1, max_size=50))
def test_a_pass_counts_counterparties_as_each_date_does(rows):
    """FlowPass.cpty_counts_sql (each pair's flagged months found once for every date of
    the pass) gives each as-of the same counts as grouping its own legs (_cpty_sql):
    pairs whose flagged months have gaps longer and shorter than a window, a month at a
    window's edge, firms with legs but no flagged pair (0) and none (no row), dates on
    two days of the month (a flow on an as-of's own day is not read)."""
    from scf_engine.catalogue import FeatureSpec
    from scf_engine.duck import connect
    from scf_engine.features.flows import FlowPass, _cpty_sql, _legs_sql, _pass_cpty_plan
    from scf_engine.sqlengine import DuckDBEngine

    specs = [FeatureSpec(name=n, family="t", kind="cpty", direction="increasing", sets=(), in_model=True, label_en=n,
                         label_zh=n, definition=n, expr=e) for n, e in PASS_CPTY_EXPRS.items()]
    assert [w for _, _, w in _pass_cpty_plan(specs)] == [2, 5, 7, 12, 12]
    # months from 14 before the first date to the last date, on days either side of the dates' days
    flows = [((T - pd.DateOffset(months=14 - m)).replace(day=day), p, q, a, u) for m, day, p, q, a, u in rows if p != q]
    if not flows:
        return
    dates = [T + pd.DateOffset(months=m) for m in range(0, 13, 2)] + [T + pd.Timedelta(days=14 + 31 * m) for m in (0, 3, 4)]
    ds = dataset(sorted(flows, key=lambda r: r[0]))
    con = connect()
    try:
        fp = FlowPass(con, ds.flows, ds.firms["firm_id"], dates)
        eng = DuckDBEngine(con)
        for d in dates:
            snap = ds.as_of(d)
            at = d.strftime("%Y-%m-%d")
            eng.register("firms", snap.firms[["firm_id", "industry", "founded_on"]])
            got = con.sql(fp.cpty_counts_sql(at, specs)).df().set_index("firm_id").sort_index()
            own = DuckDBEngine(connect())
            own.register("firms", snap.firms[["firm_id", "industry", "founded_on"]])
            own.register("flows", snap.flows[["booked_on", "payer_id", "payee_id", "amount", "purpose"]], money=("amount",),
                         row_number="_i")
            own.create("legs", _legs_sql(at))
            want = own.df(_cpty_sql(specs)).set_index("firm_id").sort_index()
            own.close()
            pd.testing.assert_frame_equal(got, want, check_exact=True, check_dtype=False)
    finally:
        con.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["F1", "F2", "F10", None]), st.sampled_from(["tax", "court", "esg", None]),
                          st.one_of(st.none(), st.integers(0, 9)), st.sampled_from(list("ABCD"))), max_size=30),
       st.integers(-1, 11))
def test_a_snapshot_holds_each_firms_latest_indicator_grade_before_T(rows, t):
    """The snapshot's indicators are each (firm, indicator)'s last row dated before T
    after a stable sort by (firm, indicator, date), as filtering, sorting and
    ``drop_duplicates(keep='last')`` give them, whatever the ties, missing values and
    order; and a dataset whose indicators are replaced reads the new ones."""
    day = lambda d: pd.NaT if d is None else pd.Timestamp("2024-01-01") + pd.Timedelta(days=d)
    ind = pd.DataFrame({"firm_id": pd.Series([r[0] for r in rows], dtype="str"),
                        "as_of": pd.Series([day(r[2]) for r in rows], dtype="datetime64[s]"),
                        "indicator": pd.Series([r[1] for r in rows], dtype="str"),
                        "grade": pd.Series([r[3] for r in rows], dtype="str")})
    ds = dataset(flows_for_a())
    T = pd.Timestamp("2024-01-01") + pd.Timedelta(days=t)
    for frame in (ind, ind.iloc[::-1].reset_index(drop=True)):
        ds.indicators = frame
        kept = frame[frame["as_of"] < T]
        want = kept.sort_values(["firm_id", "indicator", "as_of"], kind="stable").drop_duplicates(
            ["firm_id", "indicator"], keep="last").reset_index(drop=True)
        pd.testing.assert_frame_equal(ds.as_of(T).indicators, want)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=1, max_size=6, unique=True),
       st.lists(st.tuples(st.lists(st.integers(0, 9), max_size=8, unique=True), st.sampled_from(["int", "float", "bool"])),
                max_size=3))
def test_side_by_side_is_one_left_join_after_another(own, parts):
    """The features' parts put beside the firms' frame at once hold what left joins one
    after another gave: the frame's firms in its order, each part's values where it has
    the firm, empty where not, the same dtypes (an int column with a firm missing is a
    float one), a part's firms that the frame lacks left out."""
    from scf_engine.features.flows import beside

    ids = [f"F{i}" for i in own]
    out = pd.DataFrame({"a": np.arange(len(ids), dtype=float)}, index=pd.Index(ids, name="firm_id"))
    frames = []
    for j, (firms, kind) in enumerate(parts):
        values = {"int": np.arange(len(firms), dtype=np.int64), "float": np.arange(len(firms)) / 3.0,
                  "bool": np.arange(len(firms)) % 2 == 0}[kind]
        frames.append(pd.DataFrame({f"p{j}": values}, index=pd.Index([f"F{i}" for i in firms], name="firm_id")))
    want = out
    for f in frames:
        want = want.join(f, how="left")
    pd.testing.assert_frame_equal(beside(out, frames), want, check_exact=True)
