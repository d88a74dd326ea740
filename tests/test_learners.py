"""The estimators' scikit-learn manners and their plain state (what a registered model stores)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from scf_engine.learners import DecoupledModel, HybridModel, JiangyinGrading
from scf_engine.learners import state as model_state
from scf_engine.propagation import CorePropagation


@pytest.fixture(scope="module")
def fitted(explain_world):
    w = explain_world
    tr = w["tr"][w["tr"]["history_months"].notna()]
    jy = JiangyinGrading().fit(tr, tr["label"])
    X, covered = w["prop"].design(w["chain"])
    return {"decoupled": (w["dec"], w["te"]), "jiangyin": (jy, w["te"]), "propagation": (w["prop"], X[covered])}


@pytest.mark.parametrize("kind", ["decoupled", "jiangyin", "propagation"])
def test_predict_is_the_class_predict_pd_the_pd_and_predict_proba_both(fitted, kind):
    model, X = fitted[kind]
    p = model.predict_pd(X)
    proba = model.predict_proba(X)
    assert p.shape == (len(X),) and proba.shape == (len(X), 2)
    assert np.array_equal(proba[:, 1], p) and np.allclose(proba.sum(axis=1), 1.0)
    labels = model.predict(X)
    assert set(np.unique(labels)) <= {0, 1} and np.array_equal(labels, (p > 0.5).astype(int))


def test_propagation_predicts_from_its_design_frame_as_predict_frame_does(explain_world):
    prop, chain = explain_world["prop"], explain_world["chain"]
    X, covered = prop.design(chain)
    frame = prop.predict_frame(chain)
    # equal up to the order of summation BLAS picks for a different number of rows
    np.testing.assert_allclose(prop.predict_pd(X[covered]), frame.loc[covered, "pd"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(prop.decision_function(X[covered]), frame.loc[covered, "log_odds"].to_numpy(), rtol=1e-12)


@pytest.mark.parametrize("model", [DecoupledModel(), HybridModel(), JiangyinGrading(), CorePropagation()],
                         ids=["decoupled", "hybrid", "jiangyin", "propagation"])
def test_an_unfitted_model_says_so(model, explain_world):
    X = explain_world["te"].head(3)
    methods = ["predict", "predict_pd", "predict_proba", "get_state"]
    if not isinstance(model, JiangyinGrading):
        methods.append("decision_function")
    if isinstance(model, (DecoupledModel, HybridModel)):
        methods += ["raw_score", "contributions"]
    for name in methods:
        with pytest.raises(NotFittedError, match="not fitted"):
            getattr(model, name)(*([] if name == "get_state" else [X]))
    if isinstance(model, CorePropagation):
        for name in ("design", "predict_frame", "core_credit"):
            with pytest.raises(NotFittedError):
                getattr(model, name)(explain_world["chain"])


@pytest.mark.parametrize("kind", ["decoupled", "jiangyin", "propagation"])
def test_state_round_trip_gives_the_same_pds_and_names_no_class(fitted, kind, tmp_path):
    model, X = fitted[kind]
    files = model_state.save_state(model, tmp_path)
    text = files["state"].read_text(encoding="utf-8")
    assert "scf_engine" not in text and json.loads(text)["kind"] == kind
    assert set(files) == ({"state", "booster"} if kind == "decoupled" else {"state"})
    back = model_state.load(files["state"], files.get("booster"))
    assert type(back) is type(model) and back.get_params() == model.get_params()
    assert np.array_equal(back.predict_pd(X), model.predict_pd(X))


def test_propagation_state_keeps_every_fitted_attribute(explain_world):
    prop, chain = explain_world["prop"], explain_world["chain"]
    back = model_state.from_state(json.loads(json.dumps(model_state.get_state(prop))))
    assert sorted(vars(back)) == sorted(vars(prop))
    for k, v in vars(prop).items():
        b = getattr(back, k)
        if isinstance(v, pd.Series):
            pd.testing.assert_series_equal(b, v, check_exact=True)
        elif isinstance(v, pd.Index):
            assert b.equals(v)
        elif k == "core_stats_":
            assert all(np.array_equal(x, y) for x, y in zip(b, v))
        else:
            assert b == v, k
    pd.testing.assert_frame_equal(back.predict_frame(chain), prop.predict_frame(chain), check_exact=True)


def test_a_moved_class_still_loads_a_saved_state(fitted, tmp_path, monkeypatch):
    """The state names a kind, not a class path: point the kind at another class (as a
    move or rename would) and the saved model loads into it."""
    model, X = fitted["decoupled"]
    files = model_state.save_state(model, tmp_path)

    class Renamed(DecoupledModel):
        pass

    monkeypatch.setitem(model_state.KINDS, "decoupled", Renamed)
    back = model_state.load(files["state"], files["booster"])
    assert type(back) is Renamed and np.array_equal(back.predict_pd(X), model.predict_pd(X))


def _few_defaults_frame(n_bad: int):
    """100 firms on 4 quarterly snapshots with the de-coupled model's features; the
    ``n_bad`` defaulting firms are labelled 1 on the first snapshot only (defaults early
    in the history, none late), as in a third-party dataset with a handful of defaults."""
    from scf_engine.catalogue import load_catalogue

    feats = load_catalogue().model_features("decoupled")
    rng = np.random.default_rng(5)
    firms = [f"F{i:03d}" for i in range(100)]
    dates = pd.to_datetime(["2021-01-01", "2021-04-01", "2021-07-01", "2021-10-01"])
    rows = pd.DataFrame([(f, d) for d in dates for f in firms], columns=["firm_id", "as_of"])
    X = pd.DataFrame(rng.normal(size=(len(rows), len(feats))), columns=feats)
    y = ((rows["as_of"] == dates[0]) & rows["firm_id"].isin(firms[:n_bad])).astype(float).to_numpy()
    return X, y, rows


def test_a_handful_of_early_defaults_still_trains_and_calibrates():
    """With defaults only in early snapshots, the latest training snapshot (the
    validation fold) and the last fifth of the rows hold none, and Platt scaling on a
    one-class fold raised sklearn's ValueError through ``scf train`` as a traceback. The
    fold falls back to a firm-disjoint share of the defaulting and other firms."""
    X, y, rows = _few_defaults_frame(3)
    m = DecoupledModel.from_policy(num_boost_round=30, early_stopping_rounds=10)
    m.fit(X, y, as_of=rows["as_of"], groups=rows["firm_id"])
    pd_ = m.predict_pd(X)
    assert np.isfinite(m.platt_a_) and np.isfinite(m.platt_b_)
    assert ((pd_ > 0) & (pd_ < 1)).all()


def test_one_defaulting_firm_is_a_one_line_dataset_error():
    """One defaulting firm cannot be both learned from and calibrated on: a DatasetError
    (one line and exit 2 from the command line), not sklearn's traceback."""
    from scf_engine.errors import DatasetError

    X, y, rows = _few_defaults_frame(1)
    with pytest.raises(DatasetError, match="too few defaults"):
        DecoupledModel.from_policy(num_boost_round=30).fit(X, y, as_of=rows["as_of"], groups=rows["firm_id"])


def test_platt_scaling_on_a_small_separable_fold_gives_platts_bayesian_pds():
    """Five defaults that the raw score separates perfectly from 95 others: a plain
    logistic fit drives the slope up until the PDs are 0 and 1 (the de-coupled model gave
    PDs from 1e-20 to 1.0 on a 500-firm world). Platt's prior-corrected targets give the
    defaults (5 + 1) / (5 + 2) and the others 1 / (95 + 2), and keep the ranking."""
    from scf_engine.learners.lgbm import platt_scaling
    from scf_engine.numeric import sigmoid

    raw = np.r_[np.linspace(-3, -1, 95), np.linspace(1, 2, 5)]
    y = np.r_[np.zeros(95), np.ones(5)]
    a, b = platt_scaling(raw, y)
    pd_ = sigmoid(a * raw + b)
    assert a > 0 and np.all(np.diff(pd_) > 0)
    assert 0.5 < pd_[95:].min() and pd_[95:].max() < 0.99
    assert 1e-4 < pd_[:95].min() and pd_[:95].max() < 0.2
    assert pd_[95:].mean() == pytest.approx(6 / 7, abs=0.1) and pd_[:95].mean() == pytest.approx(1 / 97, abs=0.01)


def test_platt_scaling_on_a_large_fold_is_the_plain_logistic_fit():
    """With thousands of rows the prior moves the map by little: the same slope and
    intercept as a plain logistic regression of the labels within 1%."""
    from sklearn.linear_model import LogisticRegression

    from scf_engine.learners.lgbm import platt_scaling

    rng = np.random.default_rng(3)
    raw = rng.normal(size=20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(1.5 * raw - 3)))).astype(float)
    a, b = platt_scaling(raw, y)
    plain = LogisticRegression(C=1e6, max_iter=1000).fit(raw.reshape(-1, 1), y)
    assert a == pytest.approx(plain.coef_[0, 0], rel=0.01) and b == pytest.approx(plain.intercept_[0], rel=0.01)


def test_the_same_data_in_another_row_order_trains_the_same_models(small_world_dir, tmp_path):
    """Every file's rows shuffled is the same dataset, so it must train the same models.
    The snapshot tables followed the files' row order and LightGBM's bagging draws rows by
    position: on rob4's contract-only dataset the shuffled copy's de-coupled model gave
    150 of 160 firms another PD and moved 6 decisions. Tables are now in firm_id order."""
    from scf_engine.assemble import assemble, split_dates
    from scf_engine.ingest import load_dataset
    from scf_engine.pipelines import fit_propagation_and_decoupled

    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for i, path in enumerate(sorted(small_world_dir.glob("*.csv"))):
        rows = pd.read_csv(path, dtype=str, keep_default_na=False)
        rows.sample(frac=1, random_state=i).to_csv(shuffled / path.name, index=False)
    fitted = []
    for folder in (small_world_dir, shuffled):
        ds = load_dataset(folder)
        dates = ds.snapshot_dates()
        train, test = split_dates(dates, n_test=1)
        prop, dec, tr, te = fit_propagation_and_decoupled(assemble(ds, dates), train, test)
        te = te[te["history_months"].notna()].set_index(["firm_id", "as_of"]).sort_index()
        fitted.append((prop, dec, tr, te))
    (p1, d1, tr1, te1), (p2, d2, tr2, te2) = fitted
    assert len(te1) > 100
    assert d1.best_iteration_ == d2.best_iteration_  # was 209 against 162 on a shuffled copy
    np.testing.assert_allclose(d1.predict_pd(te1), d2.predict_pd(te2), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(te1["pd_propagation"], te2["pd_propagation"], rtol=1e-9, atol=1e-12)
    assert list(tr1["firm_id"]) == list(tr2["firm_id"])


def test_the_models_are_cross_fitted_every_latest_row_calibrated_out_of_fold(explain_world):
    """lightgbm.yaml's ``calibration_folds: 3``: three early-stopped fold boosters
    averaged into one (every fold's trees), and Platt scaling on every row of the latest
    training snapshot (a single split calibrated on 30% of them)."""
    w = explain_world
    dec = w["dec"]
    tr = w["tr"][w["tr"]["history_months"].notna()]
    latest = int((tr["as_of"] == tr["as_of"].max()).sum())
    assert dec.calibration_folds == 3 and len(dec.fold_iterations_) == 3
    assert dec.booster_.num_trees() == dec.best_iteration_ == sum(dec.fold_iterations_)
    assert dec.n_valid_ == latest and dec.n_train_ == len(tr) - latest
    single = DecoupledModel.from_policy(calibration_folds=1).fit(tr, tr["label"], as_of=tr["as_of"], groups=tr["firm_id"])
    assert single.fold_iterations_ is None and single.n_valid_ < 0.4 * latest


def test_cross_fitting_makes_the_mean_pd_depend_less_on_the_fold_draw(explain_world):
    """A small bank's models: with one split, which 30% of the firms early stopping and
    Platt scaling rest on moves the mean PD (renaming the firm ids of a 700-firm world
    re-drew it and halved the mean PD); cross-fitted, every firm counts, and the draw
    (the model's ``seed``) moves the mean PD on the held-out snapshot less."""
    w = explain_world
    tr = w["tr"][w["tr"]["history_months"].notna()]

    def spread(folds):
        means = [DecoupledModel.from_policy(calibration_folds=folds, seed=s)
                 .fit(tr, tr["label"], as_of=tr["as_of"], groups=tr["firm_id"]).predict_pd(w["te"]).mean()
                 for s in range(3)]
        return max(means) - min(means)

    assert spread(3) < 0.5 * spread(1)


def test_calibration_folds_must_be_a_whole_number_from_1(tmp_path):
    from tests.conftest import assert_policy_rejects

    models = assert_policy_rejects(tmp_path, "lightgbm", "calibration_folds: 3", ("0", "2.5", "true", "many"),
                                   "calibration_folds")
    path = models / "lightgbm.yaml"
    path.write_text(path.read_text().replace("calibration_folds: 3\n", "calibration_folds: 1\n"))
    assert DecoupledModel.from_policy(models).calibration_folds == 1


def test_averaged_boosters_score_and_explain_as_the_mean_of_theirs():
    """The cross-fitted model is its folds' average as one LightGBM booster: its raw score
    and its TreeSHAP values are the means of the folds' (each to its own iterations), and
    its SHAP values still add up to its raw score; saved and loaded, it scores the same."""
    import lightgbm as lgb

    from scf_engine.learners.lgbm import average_boosters

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 6))
    y = (rng.random(3000) < 1 / (1 + np.exp(-(X[:, 0] - X[:, 1] ** 2 - 2)))).astype(float)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 7, "bagging_fraction": 0.8, "bagging_freq": 1}
    boosters = [lgb.train({**params, "seed": k}, lgb.Dataset(X[k::3], y[k::3]), 30) for k in range(3)]
    iterations = [30, 12, 21]
    avg = average_boosters(boosters, iterations)
    assert avg.num_trees() == sum(iterations)
    raw = avg.predict(X, raw_score=True)
    want = np.mean([b.predict(X, raw_score=True, num_iteration=n) for b, n in zip(boosters, iterations)], axis=0)
    assert np.abs(raw - want).max() < 1e-12
    contrib = avg.predict(X, pred_contrib=True)
    assert np.abs(contrib.sum(axis=1) - raw).max() < 1e-12
    mean_contrib = np.mean([b.predict(X, pred_contrib=True, num_iteration=n) for b, n in zip(boosters, iterations)], axis=0)
    assert np.abs(contrib - mean_contrib).max() < 1e-12
    assert np.array_equal(lgb.Booster(model_str=avg.model_to_string()).predict(X, raw_score=True), raw)


def test_averaged_boosters_take_one_leaf_trees():
    """A fold with nothing to split (a tuning trial's min_data_in_leaf above its rows:
    LightGBM stops with a one-leaf tree, whose model text has an empty internal_value)
    still averages: ``scf train --tune`` stopped on it with "could not convert string to
    float" on a 400-firm world."""
    import lightgbm as lgb

    from scf_engine.learners.lgbm import average_boosters

    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 4))
    y = (rng.random(600) < 0.1).astype(float)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 7}
    stump = lgb.train({**params, "min_data_in_leaf": 1000}, lgb.Dataset(X, y), 5)
    grown = lgb.train(params, lgb.Dataset(X, y), 5)
    iterations = [stump.current_iteration(), grown.current_iteration()]
    avg = average_boosters([stump, grown], iterations)
    want = np.mean([b.predict(X, raw_score=True, num_iteration=n) for b, n in zip([stump, grown], iterations)], axis=0)
    assert np.abs(avg.predict(X, raw_score=True) - want).max() < 1e-12


# --- SHAP per split pattern (scf_engine.learners.treeshap) ----------------------------------

def _pattern_boosters():
    """Boosters of every kind of split LightGBM makes: missing values learned (NaN
    splits), zero as missing (Zero), missing values off (None), a feature never missing
    in training (None: LightGBM reads NaN as 0 there), one categorical feature (``==``
    splits on several categories, asked for every row), thresholds beyond 1e300 (which
    dump_model writes as 1e300), one-leaf trees and a single tree."""
    import lightgbm as lgb

    from scf_engine.learners.treeshap import split_nodes

    rng = np.random.default_rng(7)
    n = 1500
    X = rng.normal(size=(n, 5))
    X[:, 4] = rng.integers(0, 8, n)
    X[:, 3] = np.where(rng.random(n) < 0.05, rng.choice([1e299, 1e301, 1e303, 1e305], n), X[:, 3])  # past dump_model's 1e300
    X[rng.random(n) < 0.15, 1] = np.nan
    X[rng.random(n) < 0.25, 2] = 0.0
    y = (rng.random(n) < 1 / (1 + np.exp(-(X[:, 0] + np.nan_to_num(X[:, 1]) - (X[:, 2] == 0) - 1.5
                                           + 2 * np.isin(X[:, 4], [0, 2, 5, 7]) + (X[:, 3] > 1e302))))).astype(float)
    base = {"objective": "binary", "verbose": -1, "num_leaves": 9, "min_data_in_leaf": 5, "seed": 1}
    out = {
        "nan": lgb.train(base, lgb.Dataset(X[:, :4], y), 25),
        "zero": lgb.train({**base, "zero_as_missing": True}, lgb.Dataset(X[:, :4], y), 25),
        "none": lgb.train({**base, "use_missing": False}, lgb.Dataset(np.nan_to_num(X[:, :4]), y), 25),
        "categorical": lgb.train(base, lgb.Dataset(X, y, categorical_feature=[4]), 25),
        "one_leaf": lgb.train({**base, "min_data_in_leaf": 5000}, lgb.Dataset(X[:, :4], y), 3),
        "one_tree": lgb.train(base, lgb.Dataset(X[:, :4], y), 1),  # its first half holds no tree
    }
    cats = {node["threshold"] for t in out["categorical"].dump_model()["tree_info"] for node in split_nodes(t["tree_structure"])
            if node["decision_type"] == "=="}
    assert any("||" in str(c) for c in cats), "the categorical booster should split on several categories at once"
    big = [node["threshold"] for t in out["nan"].dump_model()["tree_info"] for node in split_nodes(t["tree_structure"])
           if node["split_feature"] == 3 and abs(node["threshold"]) >= 1e300]
    assert big, "a threshold past dump_model's 1e300 should be among the splits"
    return out, X


@pytest.fixture(scope="module")
def pattern_boosters():
    return _pattern_boosters()


def _split_values(booster, n_feat):
    """Per feature: its thresholds, the floats either side of them, 0, -0, LightGBM's zero
    threshold either side, NaN, +-inf: the values a split decides at its edge."""
    from scf_engine.learners.treeshap import ZERO_THRESHOLD, tree_splits

    vals = {f: [0.0, -0.0, ZERO_THRESHOLD, -ZERO_THRESHOLD, 2 * ZERO_THRESHOLD, np.nan, np.inf, -np.inf, 1.0, -1.0]
            for f in range(n_feat)}
    for t in tree_splits(booster, booster.current_iteration()):
        for f, thr in zip(t.feature, t.threshold):
            vals[int(f)] += [thr, np.nextafter(thr, np.inf), np.nextafter(thr, -np.inf)]
    return {f: np.array(v) for f, v in vals.items()}


@pytest.mark.parametrize("kind", ["nan", "zero", "none", "categorical", "one_leaf", "one_tree"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300))
def test_shap_per_split_pattern_is_lightgbms_and_a_rows_bits_are_its_own(pattern_boosters, kind, seed, n):
    """SHAP asked once per split pattern (scf_engine.learners.treeshap) against LightGBM's
    own ``pred_contrib`` on rows made of each feature's split edges (thresholds and the
    floats beside them, 0, -0, LightGBM's zero threshold, NaN, inf) and of ordinary
    values: equal but for the order of the additions (1e-12), and each row's contributions
    the same bits alone, in another order and among other rows (a firm's reasons must
    not depend on the batch it is scored in); either side of the rows' count below which
    patterns are not looked for."""
    from scf_engine.learners.treeshap import PATTERN_ROWS, pattern_contributions

    boosters, X_train = pattern_boosters
    b = boosters[kind]
    n_feat = b.num_feature()
    rng = np.random.default_rng(seed)
    edges = _split_values(b, n_feat)
    X = np.column_stack([np.where(rng.random(n) < 0.5, rng.choice(edges[f], n), X_train[rng.integers(0, len(X_train), n), f])
                         for f in range(n_feat)])
    got = pattern_contributions(b, X, b.current_iteration())
    want = b.predict(X, pred_contrib=True)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-12
    assert np.abs(got.sum(axis=1) - b.predict(X, raw_score=True)).max() < 1e-12
    order = rng.permutation(n)
    assert np.array_equal(pattern_contributions(b, X[order], b.current_iteration()), got[order])
    alone = rng.integers(0, n)
    assert np.array_equal(pattern_contributions(b, X[[alone]], b.current_iteration())[0], got[alone])
    more = np.vstack([X, X_train[:PATTERN_ROWS, :n_feat]])  # past the threshold whatever n is
    assert np.array_equal(pattern_contributions(b, more, b.current_iteration())[:n], got)


def test_shap_per_split_pattern_is_safe_beside_other_threads_predicting(pattern_boosters):
    """LightGBM keeps a prediction's iteration range on the booster itself, so per-tree
    calls on the model's own booster, made while other threads predicted (``scf serve``
    answers requests on threads), gave both sides wrong numbers (contributions off by up
    to 0.19 log-odds). Four threads explaining and one scoring the same booster at once
    all get the answers they get alone."""
    from concurrent.futures import ThreadPoolExecutor

    from scf_engine.learners.treeshap import pattern_contributions

    boosters, X = pattern_boosters
    b, X = boosters["nan"], X[:400, :4]
    want_contrib, want_raw = pattern_contributions(b, X, b.current_iteration()), b.predict(X, raw_score=True)

    def explain(_):
        return pattern_contributions(b, X, b.current_iteration())

    def score(_):
        return [b.predict(X, raw_score=True) for _ in range(30)]

    with ThreadPoolExecutor(max_workers=5) as pool:
        scored = pool.submit(score, None)
        explained = list(pool.map(explain, range(8)))
        raws = scored.result()
    assert all(np.array_equal(c, want_contrib) for c in explained)
    assert all(np.array_equal(r, want_raw) for r in raws)


def test_shap_per_split_pattern_in_pieces_is_the_same(pattern_boosters, monkeypatch):
    """Large batches are computed CHUNK_ROWS rows at a time (memory); the pieces, the last
    one below the pattern threshold, give the same bits as one piece."""
    import scf_engine.learners.treeshap as ts

    boosters, X = pattern_boosters
    b = boosters["nan"]
    X = X[:301, :4]
    whole = ts.pattern_contributions(b, X, b.current_iteration())
    monkeypatch.setattr(ts, "CHUNK_ROWS", 120)  # pieces of 120, 120 and 61 (< PATTERN_ROWS) rows
    assert np.array_equal(ts.pattern_contributions(b, X, b.current_iteration()), whole)


@pytest.mark.parametrize("kind", ["nan", "zero", "none", "categorical", "one_tree"])
def test_remembered_split_patterns_give_the_same_bits_and_spare_lightgbm(pattern_boosters, kind):
    """treeshap.remembering (scf monitor's dates): each tree's terms per split pattern kept
    across calls, LightGBM asked only for patterns not seen before. Overlapping batches of
    rows, in another order, and rows none of them had: every answer the same bits as
    without the memory; later calls recall patterns (LightGBM asked for fewer); a memory
    full at its cap keeps no more and still answers the same; the memory is gone after the
    block."""
    import scf_engine.learners.treeshap as ts

    boosters, X_train = pattern_boosters
    b = boosters[kind]
    n_feat = b.num_feature()
    rng = np.random.default_rng(11)
    edges = _split_values(b, n_feat)
    X = np.column_stack([np.where(rng.random(900) < 0.3, rng.choice(edges[f], 900), X_train[:900, f])
                         for f in range(n_feat)])
    batches = [X[:400], X[200:600][::-1], X[rng.permutation(900)], X[600:], X[650:700]]
    want = [ts.pattern_contributions(b, x, b.current_iteration()) for x in batches]
    for cap in (ts.PatternMemory.max_bytes, 6000):
        with ts.remembering(max_bytes=cap) as memory:
            got = [ts.pattern_contributions(b, x, b.current_iteration()) for x in batches]
        for g, w in zip(got, want):
            assert np.array_equal(g, w)
        assert 0 < memory.n_bytes <= cap
        if cap > 6000 and kind != "categorical":  # a categorical tree is asked for every row, unremembered
            assert memory.recalled > memory.asked / 2 > 0
    assert ts._MEMORY.get() is None
