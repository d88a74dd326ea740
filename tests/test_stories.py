"""World stories: other generative mechanisms, the default story left byte for byte alone."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from scf_engine.simulate import WorldConfig, simulate, write_dataset

# sha256 of a 150-firm, 18-month default world's files, made by the simulator before
# stories existed: a story knob that leaks into the default story changes them
BEFORE_STORIES = {
    "flows.csv": "ef33c60a87ce7c429286a6a92821abedd2e74848201eaa7e05b008341fa5e85d",
    "truth.csv": "bc8e95137ba546b11a8a3a0dd8d34127f62ce3d3d76a257db448c4b1fa738324",
    "world.json": "9cbbc10c7380613ee2e92b89b04ab8e8d62d51b5981b267a5783d9f0b64b669d",
}


def test_default_story_is_byte_identical_to_the_world_before_stories(tmp_path):
    path = write_dataset(simulate(WorldConfig(n_firms=150, seed=5, n_months=18)), tmp_path / "d")
    assert {n: hashlib.sha256((path / n).read_bytes()).hexdigest() for n in BEFORE_STORIES} == BEFORE_STORIES


@pytest.fixture(scope="module")
def worlds():
    return {s: simulate(WorldConfig(n_firms=300, seed=4, n_months=24, story=s)) for s in ("default", "cyclical", "shock")}


def test_stories_keep_the_firms_and_change_the_mechanism(worlds, tmp_path):
    d, c, s = worlds["default"], worlds["cyclical"], worlds["shock"]
    assert (d.firms["firm_id"] == c.firms["firm_id"]).all()  # same firms and chains
    assert not np.allclose(d.state["health"], c.state["health"])  # industry cycles differ
    # the shock story's hazard is another function of the same health: truth differs
    assert not np.allclose(d.records["truth"]["true_pd"].head(50), s.records["truth"]["true_pd"].head(50))
    meta = json.loads((write_dataset(s, tmp_path / "s") / "world.json").read_text())
    assert meta["config"]["story"] == "shock"


def test_cyclical_story_has_stronger_seasons_and_habitual_late_payers(worlds):
    def firm_month(w, purpose, payer_side):
        fa = w.records["flows_arrays"]
        n = len(w.firms)
        firm = fa["payer"] if payer_side else fa["payee"]
        keep = (firm < n) & (fa["purpose"] == purpose)
        m = pd.to_datetime(fa["booked_on"][keep].astype("datetime64[D]")).to_period("M")
        return pd.Series(fa["amount"][keep]).groupby([firm[keep], m]).sum().unstack(fill_value=0.0)

    def median_cv(w):  # how much a firm's monthly trade receipts swing
        t = firm_month(w, 0, False)
        return (t.std(axis=1) / t.mean(axis=1)).median()

    def habitual_share(w):  # firms that never default yet miss 4+ payroll months
        paid = firm_month(w, 1, True)
        t = paid.to_numpy() > 0
        idx = np.arange(t.shape[1])
        first = np.where(t.any(axis=1), t.argmax(axis=1), t.shape[1])
        last = t.shape[1] - 1 - t[:, ::-1].argmax(axis=1)
        inside = (idx >= first[:, None]) & (idx <= last[:, None])
        never_default = w.state["default_month"][paid.index.to_numpy()] < 0
        return ((~t & inside).sum(axis=1)[never_default] >= 4).mean()

    c, d = worlds["cyclical"], worlds["default"]
    assert median_cv(c) > 1.15 * median_cv(d)
    assert habitual_share(c) > habitual_share(d) + 0.03


def test_shock_story_has_firms_joining_late_and_months_missing(worlds):
    d, s = worlds["default"], worlds["shock"]
    late = lambda w: (w.firms["flows_visible_from"] > w.months[0]).mean()  # noqa: E731
    assert late(s) > late(d) + 0.15

    def months_seen(w):
        fa = w.records["flows_arrays"]
        n = len(w.firms)
        firm = np.where(fa["payer"] < n, fa["payer"], fa["payee"])
        m = pd.to_datetime(fa["booked_on"].astype("datetime64[D]")).to_period("M")
        return pd.DataFrame({"f": firm, "m": m}).drop_duplicates().groupby("f").size().mean()

    assert months_seen(s) < months_seen(d)


def test_unknown_story_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown world story 'nope'"):
        simulate(WorldConfig(n_firms=50, seed=1, n_months=12, story="nope"))
