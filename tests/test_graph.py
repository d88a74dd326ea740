"""The transaction graph, roles and tiers, and the propagation model."""

from __future__ import annotations

import copy
import json

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from scf_engine.dataset import Dataset
from scf_engine.graph import build_chain, chain_roles
from scf_engine.graph.export import export_chain, plot_chain
from scf_engine.graph.features import may_lie_on_cycle, pagerank
from scf_engine.ingest import load_dataset
from scf_engine.propagation import CorePropagation, transmission
from scf_engine.propagation.stress import debtrank, stress_core
from scf_engine.contract import make_uscc

T = pd.Timestamp("2024-07-01")


def ids(n):
    return [make_uscc("320281", 10_000_000 + i) for i in range(n)]


def hand_dataset():
    """C1, C2 cores. A -> C1 (tier 1), B -> A (tier 2), G -> B (tier 3), D buys from C1
    (downstream 1), H buys from D (downstream 2), F sells to C1 and C2, E unattached,
    X -> Y -> X unconfirmed loop with no core."""
    C1, C2, A, B, D, E, F, G, H, X, Y = ids(11)
    names = dict(C1=C1, C2=C2, A=A, B=B, D=D, E=E, F=F, G=G, H=H, X=X, Y=Y)
    firms = pd.DataFrame({
        "firm_id": list(names.values()), "name": list(names), "industry": "C34", "region": "320281",
        "founded_on": pd.Timestamp("2015-01-01"), "registered_capital": 1e6,
        "is_core": [k in ("C1", "C2") for k in names], "core_rating": [("AA" if k in ("C1", "C2") else None) for k in names],
        "batch_group": None,
    })
    firms["founded_on"] = firms["founded_on"].astype("datetime64[s]")
    rec = []

    def r(s, b, amount, issued, confirmed=True, paid=True, late=0):
        issued = pd.Timestamp(issued)
        due = issued + pd.Timedelta(days=60)
        rec.append(dict(receivable_id=f"R{len(rec)}", supplier_id=names[s], buyer_id=names[b], amount=amount,
                        issued_on=issued, due_on=due, confirmed_on=issued + pd.Timedelta(days=3) if confirmed else pd.NaT,
                        paid_on=due + pd.Timedelta(days=late) if paid else pd.NaT, paid_amount=amount if paid else np.nan))

    for m in range(6):
        month = pd.Timestamp("2023-10-01") + pd.DateOffset(months=m)
        r("A", "C1", 100_000, month)
        r("B", "A", 50_000, month, confirmed=False)
        r("G", "B", 20_000, month, confirmed=False)
        r("C1", "D", 80_000, month, confirmed=False)
        r("D", "H", 30_000, month, confirmed=False)
        r("F", "C1", 60_000, month)
        r("F", "C2", 40_000, month)
        r("X", "Y", 10_000, month, confirmed=False, paid=False)
        r("Y", "X", 10_000, month, confirmed=False, paid=False)
    receivables = pd.DataFrame(rec)
    flows = receivables.dropna(subset=["paid_on"]).assign(
        txn_id=lambda d: "T" + d["receivable_id"], booked_on=lambda d: d["paid_on"], payer_id=lambda d: d["buyer_id"],
        payee_id=lambda d: d["supplier_id"], purpose="trade")[["txn_id", "booked_on", "payer_id", "payee_id", "paid_amount", "purpose"]]
    flows = flows.rename(columns={"paid_amount": "amount"})
    for c in ("issued_on", "due_on", "confirmed_on", "paid_on"):
        receivables[c] = receivables[c].astype("datetime64[s]")
    flows["booked_on"] = flows["booked_on"].astype("datetime64[s]")
    defaults = pd.DataFrame({"firm_id": pd.Series([], dtype="str"), "default_on": pd.Series([], dtype="datetime64[s]")})
    return Dataset(firms, receivables, flows.reset_index(drop=True), defaults), names


def test_roles_and_tiers_on_a_hand_built_chain():
    ds, n = hand_dataset()
    chain = build_chain(ds.as_of(T))
    nodes = chain.nodes.rename(index={v: k for k, v in n.items()})
    assert nodes.loc[["C1", "C2"], "role"].eq("core").all()
    assert nodes.loc["A", "role"] == "upstream" and nodes.loc["A", "upstream_tier"] == 1
    assert nodes.loc["B", "upstream_tier"] == 2 and nodes.loc["G", "upstream_tier"] == 3
    assert nodes.loc["D", "role"] == "downstream" and nodes.loc["D", "downstream_tier"] == 1
    assert nodes.loc["H", "downstream_tier"] == 2
    assert nodes.loc["E", "role"] == "unattached" and nodes.loc["X", "role"] == "unattached"
    # a firm tied to several cores keeps them all
    assert set(nodes.loc["F", "cores"]) == {n["C1"], n["C2"]} and nodes.loc["F", "n_cores"] == 2
    assert set(nodes.loc["B", "cores"]) == {n["C1"]}
    # graph features
    assert nodes.loc["A", "core_dependence"] == pytest.approx(1.0)
    assert nodes.loc["F", "buyer_hhi"] == pytest.approx(0.6**2 + 0.4**2)
    assert nodes.loc["A", "recv_confirmed_share"] == pytest.approx(1.0)
    assert nodes.loc["B", "recv_confirmed_share"] == pytest.approx(0.0)
    assert chain.graph.has_edge(n["A"], n["C1"]) and chain.graph.nodes[n["A"]]["role"] == "upstream"


def test_roles_do_not_run_through_another_core():
    firms = pd.Index(ids(4))
    edges = pd.DataFrame({"supplier": [firms[0], firms[1]], "buyer": [firms[1], firms[2]]})
    roles = chain_roles(firms, np.array([False, True, True, False]), edges, max_tier=6)
    assert roles.loc[firms[0], "upstream_tier"] == 1 and set(roles.loc[firms[0], "cores"]) == {firms[1]}
    assert roles.loc[firms[3], "role"] == "unattached"


def test_records_dated_on_or_after_T_change_nothing_at_T():
    ds, n = hand_dataset()
    before = build_chain(ds.as_of(T))
    later = ds.receivables.copy()
    # later events: new receivables, confirmations and payments dated T or after
    extra = later.head(5).assign(receivable_id=lambda d: d["receivable_id"] + "X", issued_on=T, due_on=T + pd.Timedelta(days=30),
                                 confirmed_on=T, paid_on=T + pd.Timedelta(days=10))
    moved = later.copy()
    open_ = moved["paid_on"].isna()
    moved.loc[open_, "paid_on"] = T + pd.Timedelta(days=1)
    moved.loc[open_, "paid_amount"] = moved.loc[open_, "amount"]
    moved.loc[moved["confirmed_on"].isna(), "confirmed_on"] = T
    flows = pd.concat([ds.flows, ds.flows.head(10).assign(txn_id=lambda d: d["txn_id"] + "X", booked_on=T + pd.Timedelta(days=3))])
    ds2 = Dataset(ds.firms, pd.concat([moved, extra], ignore_index=True), flows.reset_index(drop=True), ds.defaults)
    after = build_chain(ds2.as_of(T))
    pd.testing.assert_frame_equal(before.edges, after.edges)
    pd.testing.assert_frame_equal(before.nodes.drop(columns=["cores"]), after.nodes.drop(columns=["cores"]))


def test_sparse_solve_matches_a_dense_solve():
    rng = np.random.default_rng(0)
    for n_other, n_core, decay in ((12, 2, 0.7), (40, 3, 0.95), (30, 1, 0.3)):
        W = rng.random((n_other, n_other + n_core)) * (rng.random((n_other, n_other + n_core)) < 0.2)
        W[:, :n_other][np.eye(n_other, dtype=bool)] = 0
        W = W / np.maximum(W.sum(axis=1, keepdims=True), 1.0)
        from scf_engine.propagation.transmission import Transmission
        tr = Transmission(pd.Index(range(n_core + n_other)), pd.Index(range(n_core)), sp.csr_matrix(W[:, :n_other]),
                          sp.csr_matrix(W[:, n_other:]), np.ones(n_other, bool))
        y_core = rng.normal(size=n_core)
        dense = np.linalg.solve(np.eye(n_other) - decay * W[:, :n_other], decay * W[:, n_other:] @ y_core)
        np.testing.assert_allclose(tr.solve(decay, y_core), dense, atol=1e-10)
        np.testing.assert_allclose(tr.gain(decay) @ y_core, dense, atol=1e-10)


@pytest.fixture(scope="module")
def fitted(medium_world):
    world, path = medium_world
    ds = load_dataset(path)
    dates = ds.snapshot_dates()
    train, test = dates[:-3], dates[-1]
    chains = {T: build_chain(ds.as_of(T)) for T in train + [test]}
    model = CorePropagation.from_policy().fit([chains[T] for T in train], [ds.labels(T).set_index("firm_id")["label"] for T in train])
    return ds, chains, model, test, path


def test_propagation_is_fitted_by_likelihood_and_inspectable(fitted):
    ds, chains, model, test, _ = fitted
    assert set(model.profile_) == set(float(d) for d in model.decay_grid)
    assert model.profile_[model.decay_] == max(model.profile_.values())
    assert model.transmission_ >= 0 and (model.core_evidence_weights_ >= 0).all()
    assert np.isfinite(model.intercept_)


def test_propagation_ranks_defaults_among_covered_firms_and_leaves_others_unscored(fitted):
    ds, chains, model, test, _ = fitted
    f = model.predict_frame(chains[test]).join(ds.labels(test).set_index("firm_id"), how="inner")
    covered = f[f["covered"]]
    assert 0.4 < f["covered"].mean() < 0.95
    assert covered["pd"].between(0, 1).all()
    assert f.loc[~f["covered"], "pd"].isna().all()
    assert roc_auc_score(covered["label"], covered["pd"]) > 0.6
    roles = chains[test].nodes["role"].reindex(f.index)
    assert (roles[~f["covered"]] == "unattached").all()


def test_a_disconnected_firm_is_not_scorable():
    ds, n = hand_dataset()
    chain = build_chain(ds.as_of(T))
    model = CorePropagation(decay_grid=(0.5,))
    model.mu0_, model.decay_ = -3.0, 0.5
    model.core_stats_ = (np.zeros(3), np.ones(3))
    model.medians_ = pd.Series(0.0, index=list(model.standalone_evidence))
    X = model._design_frame(np.zeros(1), np.zeros((1, 3)), pd.DataFrame(np.nan, index=["x"], columns=list(model.standalone_evidence)))
    model.columns_ = X.columns
    model.coef_ = pd.Series(0.1, index=X.columns)
    model.intercept_, model.transmission_ = -3.0, 0.1
    model.core_evidence_weights_ = model.coef_[[f"core_{c}" for c in model.core_evidence]]
    f = model.predict_frame(chain)
    assert np.isnan(f.loc[n["E"], "pd"]) and np.isnan(f.loc[n["X"], "pd"])
    assert f.loc[n["A"], "covered"] and np.isfinite(f.loc[n["A"], "pd"])
    # transmitted credit reaches tier 2 only through confirmed receivables: B's are not
    tr = transmission(chain)
    y = pd.Series(tr.solve(0.5, np.array([-1.0, -1.0])), index=tr.other_ids)
    assert y[n["A"]] < 0 and y[n["B"]] == 0 and y[n["E"]] == 0


def test_stress_moves_the_distressed_cores_chain_most(fitted):
    ds, chains, model, test, path = fitted
    core = json.loads((path / "world.json").read_text())["distressed_cores"][0]
    res = stress_core(model, chains[test], core)
    tied = res["tied_to_core"]
    assert res.loc[tied, "distress"].mean() > 20 * max(res.loc[~tied, "distress"].mean(), 1e-6)
    assert res.loc[tied, "pd_change"].mean() > 0
    assert res.loc[tied, "pd_change"].mean() > 10 * max(res.loc[~tied, "pd_change"].abs().mean(), 1e-9)
    top = res.dropna(subset=["pd_change"]).head(20)
    assert top["tied_to_core"].mean() >= 0.9
    # a downgrade moves less than a default
    down = stress_core(model, chains[test], core, to_rating="BB")
    assert down.loc[tied, "pd_change"].mean() <= res.loc[tied, "pd_change"].mean() + 1e-12


def test_stress_core_leaves_the_model_as_it_was(fitted):
    """The stressed run scores with a copy of the model: the caller's model (its master
    scale above all) is the same before and after, also when the stress is refused."""
    ds, chains, model, test, path = fitted
    before = copy.deepcopy(vars(model))
    scale_object = model.master_scale
    core = json.loads((path / "world.json").read_text())["distressed_cores"][0]
    stress_core(model, chains[test], core)
    stress_core(model, chains[test], core, to_rating="BB")
    with pytest.raises(ValueError, match="unknown rating"):
        stress_core(model, chains[test], core, to_rating="ZZ")
    assert model.master_scale is scale_object and "_DEFAULT" not in (model.master_scale or {})
    assert sorted(vars(model)) == sorted(before)
    for k, v in before.items():
        now = getattr(model, k)
        if isinstance(v, (pd.Series, pd.Index)):
            assert now.equals(v), k
        elif k == "core_stats_":
            assert all(np.array_equal(x, y) for x, y in zip(now, v))
        else:
            assert now == v, k


def test_debtrank_distress_is_bounded_and_spreads_along_exposures():
    ds, n = hand_dataset()
    chain = build_chain(ds.as_of(T))
    h = debtrank(chain, {n["C1"]: 1.0})
    assert h.between(0, 1).all() and h[n["C1"]] == 1.0
    assert h[n["A"]] > 0 and h[n["E"]] == 0 and h[n["X"]] == 0
    assert h[n["A"]] >= h[n["B"]] >= h[n["G"]]


def test_debtrank_leaves_out_an_edge_to_a_firm_founded_after_the_snapshot():
    """The contract only bounds founded_on by the data's last date, so a receivable may
    be registered before its buyer's founded_on; the snapshot's firms are those founded
    before T, but its receivables edges still name the buyer. DebtRank indexed that
    buyer as -1 (scipy: "negative axis 0 index", a traceback from scf monitor when a
    core's late payments rose); the edge now carries no distress, as chain_roles leaves
    it out of the tiers."""
    ds, n = hand_dataset()
    ds.firms.loc[ds.firms["firm_id"] == n["H"], "founded_on"] = T + pd.Timedelta(days=30)
    chain = build_chain(ds.as_of(T))
    assert n["H"] not in chain.nodes.index and (chain.edges["buyer"] == n["H"]).any()
    h = debtrank(chain, {n["C1"]: 1.0})
    assert h.between(0, 1).all() and h[n["C1"]] == 1.0 and h[n["A"]] > 0
    chain.edges = chain.edges[chain.edges["buyer"] != n["H"]]
    pd.testing.assert_series_equal(h, debtrank(chain, {n["C1"]: 1.0}))


def test_exports_and_picture(tmp_path):
    ds, n = hand_dataset()
    chain = build_chain(ds.as_of(T))
    paths = export_chain(chain, tmp_path)
    g = nx.read_graphml(paths["graphml"])
    assert g.number_of_edges() == len(chain.edges) and g.nodes[n["A"]]["role"] == "upstream"
    assert len(pd.read_parquet(paths["edges"])) == len(chain.edges)
    assert len(pd.read_parquet(paths["nodes"])) == len(chain.nodes)
    fig = plot_chain(chain, n["C1"], highlight=n["A"])
    fig.savefig(tmp_path / "chain.png")
    assert (tmp_path / "chain.png").stat().st_size > 5000


def test_the_chain_reads_the_same_from_the_last_13_months_of_flows(medium_world):
    """build_edges hands DuckDB only the flows from 13 calendar months before T when they
    are in date order (graph.build.recent_flows): its queries read trade of the last 12
    months, so the edges and the firms' trade totals are those of every flow, out of
    order, given whole. As-of dates at a month's end and on a leap day, where
    ``T - INTERVAL 12 MONTH`` clips the day of month."""
    from scf_engine.graph.build import build_edges, recent_flows

    _, path = medium_world
    ds = load_dataset(path)
    assert ds.flows["booked_on"].is_monotonic_increasing
    last, ran = ds.snapshot_dates()[-1], 0
    for T in (last, pd.Timestamp(last.year, last.month, 1) - pd.Timedelta(days=1), pd.Timestamp("2024-02-29")):
        if not ds.flows["booked_on"].min() + pd.DateOffset(months=13) < T <= ds.default_as_of:
            continue
        snap = ds.as_of(T)
        assert len(recent_flows(snap.flows, T)) < len(snap.flows)  # the slice is taken
        edges, totals = build_edges(snap)
        snap.flows = snap.flows.sample(frac=1.0, random_state=0).reset_index(drop=True)  # out of order: passed whole
        assert len(recent_flows(snap.flows, T)) == len(snap.flows)
        edges_all, totals_all = build_edges(snap)
        pd.testing.assert_frame_equal(edges, edges_all, check_exact=True)
        pd.testing.assert_frame_equal(totals.sort_index(), totals_all.sort_index(), check_exact=True)
        ran += 1
    assert ran >= 2


def test_the_chain_from_a_pass_transfers_is_the_chain_from_the_flows(medium_world):
    """A monitoring pass hands the chain its trade transfers (FlowPass.transfers: party
    codes, days, amounts) and build_edges sums the trade side of the edges and the firms'
    totals from them in whole cents (graph.build.trade_sums), not from the flows by name
    in DuckDB's exact decimals: the same edges, totals and chain, value for value, at a
    month's first day, in mid-month and at a month's end (where T - 12 months clips the
    day), with firms founded between the dates (each date's own firms), and the amounts'
    cents kept (a float sum in another order would differ in the last bits)."""
    from scf_engine.duck import connect
    from scf_engine.features.flows import FlowPass, TradeTransfers
    from scf_engine.graph.build import build_edges

    _, path = medium_world
    ds = load_dataset(path)
    assert (ds.flows["amount"] * 100 % 100 != 0).any()  # amounts with cents
    last = ds.default_as_of
    dates = [last - pd.DateOffset(months=9), last - pd.DateOffset(months=5) + pd.Timedelta(days=13),
             pd.Timestamp(last.year, last.month, 1) - pd.Timedelta(days=1)]
    founded = ds.firms["founded_on"]
    assert ((founded >= dates[0]) & (founded < dates[-1])).any()  # the dates' firms differ
    con = connect()
    try:
        transfers = FlowPass(con, ds.flows, ds.firms["firm_id"], dates).transfers()
        for T in dates:
            snap = ds.as_of(T)
            edges, totals = build_edges(snap)
            edges_p, totals_p = build_edges(snap, transfers=transfers)
            assert (edges["trade_count_12m"] > 0).sum() > 100
            pd.testing.assert_frame_equal(edges, edges_p, check_exact=True)
            pd.testing.assert_frame_equal(totals.sort_index(), totals_p.sort_index(), check_exact=True,
                                          check_index_type=False)
            pd.testing.assert_frame_equal(build_chain(snap).nodes, build_chain(snap, transfers=transfers).nodes,
                                          check_exact=True)
        # transfers out of date order are filtered, not sliced: the same edges
        perm = np.random.default_rng(0).permutation(len(transfers.i))
        shuffled = TradeTransfers(*(getattr(transfers, c)[perm] for c in ("i", "payer", "payee", "day", "amount")),
                                  party=transfers.party)
        pd.testing.assert_frame_equal(build_edges(snap, transfers=shuffled)[0], edges, check_exact=True)
    finally:
        con.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=40))
def test_the_edges_left_for_the_loop_search_keep_every_loop(pairs):
    """``in_trade_cycle`` searches for loops among the edges :func:`may_lie_on_cycle`
    keeps: every strongly connected component of two or more firms must be the one the
    whole graph has, and every edge dropped must lie on no cycle."""
    tail = np.array([f"F{a}" for a, _ in pairs], dtype=object)
    head = np.array([f"F{b}" for _, b in pairs], dtype=object)
    whole = nx.DiGraph(list(zip(tail, head)))
    keep = may_lie_on_cycle(tail, head)
    left = nx.DiGraph(list(zip(tail[keep], head[keep])))
    comps = lambda g: {frozenset(c) for c in nx.strongly_connected_components(g) if len(c) >= 2}
    assert comps(left) == comps(whole)
    on_cycle = {(a, b) for c in comps(whole) for a, b in whole.subgraph(c).edges}
    for a, b in zip(tail[~keep], head[~keep]):
        assert (a, b) not in on_cycle and a != b


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9), st.sampled_from([0.0, 0.5, 1.0, 3.0, 250.0, 1e9])),
                max_size=40),
       st.integers(0, 8))
def test_pagerank_from_the_edge_arrays_is_networkx_pagerank_bit_for_bit(edges, n_nodes):
    """:func:`pagerank` builds its matrix from the edge arrays instead of a DiGraph and must
    give networkx's numbers exactly (==, not approximately): repeated edges (the last
    weight counts), self-loops, zero weights, dangling firms, and ends missing from the
    node list (appended in order of first appearance) included."""
    nodes = pd.Index([f"F{i}" for i in range(n_nodes)], name="firm_id")
    tail = [f"F{a}" for a, _, _ in edges]
    head = [f"F{b}" for _, b, _ in edges]
    weight = np.array([w for _, _, w in edges], dtype=float)
    g = nx.DiGraph()
    g.add_nodes_from(nodes.tolist())
    g.add_weighted_edges_from(zip(tail, head, weight.tolist()))
    got = pagerank(nodes, tail, head, weight)
    want = pd.Series(nx.pagerank(g, weight="weight"), dtype=float)
    assert got.index.tolist() == want.index.tolist()
    assert (got.to_numpy() == want.to_numpy()).all()


REGISTRY_SUMS = ["confirmed_amount_12m", "recv_amount_12m", "late_amount_12m", "due_amount_12m", "overdue_open",
                 "open_amount", "late_day_amount_12m", "paid_amount_12m", "shortfall_12m"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5),
                          st.lists(st.sampled_from([0.0, 0.0, 1.0, 2.5, 7.0, 100.0]), min_size=9, max_size=9)),
                max_size=25))
def test_registry_ratios_are_each_firms_own_sums_over_its_edges(rows):
    """Each registry ratio of a firm is its own edges' sum over its own edges' sum, as a
    supplier (receivables) or as a buyer (payables), empty where it has no such edge or
    the denominator is 0, whatever the other firms' edges hold: checked against a
    firm-by-firm reference."""
    from scf_engine.graph.features import registry_features

    firms = [f"F{i}" for i in range(6)]
    edges = pd.DataFrame([{"supplier": f"F{s}", "buyer": f"F{b}", **dict(zip(REGISTRY_SUMS, v)),
                           "first_seen": pd.Timestamp("2023-01-01") + pd.Timedelta(days=30 * s)}
                          for s, b, v in rows], columns=["supplier", "buyer", *REGISTRY_SUMS, "first_seen"])
    edges[REGISTRY_SUMS] = edges[REGISTRY_SUMS].astype(float)
    got = registry_features(pd.DataFrame(index=pd.Index(firms, name="firm_id")), edges, T)
    ratios = {"recv_confirmed_share": ("supplier", "confirmed_amount_12m", "recv_amount_12m"),
              "recv_late_share": ("supplier", "late_amount_12m", "due_amount_12m"),
              "recv_overdue_open_share": ("supplier", "overdue_open", "open_amount"),
              "recv_days_late": ("supplier", "late_day_amount_12m", "paid_amount_12m"),
              "recv_shortfall_share": ("supplier", "shortfall_12m", "paid_amount_12m"),
              "payables_late_share": ("buyer", "late_amount_12m", "due_amount_12m"),
              "payables_unconfirmed_share": ("buyer", "confirmed_amount_12m", "recv_amount_12m"),
              "payables_days_late": ("buyer", "late_day_amount_12m", "paid_amount_12m")}
    for f in firms:
        for name, (side, num, den) in ratios.items():
            mine = edges[edges[side] == f]
            d = mine[den].sum()
            want = mine[num].sum() / d if len(mine) and d > 0 else np.nan
            if name == "payables_unconfirmed_share":
                want = 1 - want
            assert got.loc[f, name] == pytest.approx(want, nan_ok=True), (f, name)
