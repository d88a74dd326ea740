"""The monitoring bench's rounds: a ratio taken pair by pair sees through a drifting machine."""

import bench.bench_monitor as bm
from bench.bench_monitor import rounds_of


def test_paired_ratios_see_through_a_machine_that_drifts_between_rounds():
    # the machine 1.4x slower in the second round; pairs' ratios 1.212, 1.077, 1.05 (median
    # 1.077), where the ratio of the medians is 1.05, the mean of the pairs' 1.113, the
    # first pair's 1.212 and the last pair's 1.05: only the median of the pairs gives 1.077
    base = [{"seconds": 400.0, "cpu_s": 600.0, "peak_mb": 7700.0}, {"seconds": 560.0, "cpu_s": 840.0, "peak_mb": 7800.0},
            {"seconds": 420.0, "cpu_s": 630.0, "peak_mb": 7750.0}]
    mine = [{"seconds": s, "cpu_s": c, "peak_mb": 7650.0} for s, c in ((330.0, 480.0), (520.0, 700.0), (400.0, 600.0))]
    runs = {("baseline X", 100, 12): base, ("this code", 100, 12): mine, ("this code", 100, 1): mine[:1]}
    rows, paired = rounds_of(runs, "baseline X")
    assert abs(paired[("this code", 100)]["seconds"] - 560 / 520) < 1e-12
    assert abs(paired[("this code", 100)]["cpu_s"] - 1.2) < 1e-12  # 1.25, 1.2, 1.05
    assert paired[("baseline X", 100)] == {"seconds": 1.0, "cpu_s": 1.0}
    assert len(paired) == 2  # ratios at 12 dates only
    assert rows[("this code", 100, 12)]["seconds"] == 400.0 and rows[("this code", 100, 12)]["cpu_s"] == 600.0
    assert rows[("this code", 100, 12)]["seconds_all"] == [330.0, 520.0, 400.0]
    assert rows[("baseline X", 100, 12)]["peak_mb"] == 7800.0


def test_each_round_runs_its_pairs_back_to_back_in_swapped_order(monkeypatch):
    calls = []

    def fake_measure(target, seed, n, code, n_firms, repeats):
        calls.append(("baseline" if code else "this", n_firms, n))
        return {"seconds": 10.0, "cpu_s": 10.0, "peak_mb": 1.0, "firms": n_firms}

    monkeypatch.setattr(bm, "COST_FIRMS", [100])
    monkeypatch.setattr(bm, "COST_DATES", [12])
    monkeypatch.setattr(bm, "COST_ROUNDS", 3)
    monkeypatch.setattr(bm, "prepare_cost", lambda n: None)
    monkeypatch.setattr(bm, "baseline_code", lambda rev: "/nowhere/base")
    monkeypatch.setattr(bm, "measure", fake_measure)
    monkeypatch.setattr(bm, "same_outputs", lambda *a: True)
    out = bm.cost()
    assert [c[0] for c in calls] == ["baseline", "this", "this", "baseline", "baseline", "this"]
    assert {r["code"] for r in out} == {"baseline " + bm.BASELINE, "this code"}
    assert all(r["ratio_vs_baseline_12"] == 1.0 and len(r["seconds_all"]) == 3 for r in out)


def test_the_memory_timeline_names_the_stage_that_held_the_peak_and_puts_the_pass_back():
    """bench.timeline: a stage that holds 200 MB for a moment sets the as-of's peak, the
    light stages around it do not; after ``watch`` the monitor's functions are its own again."""
    import time
    import types

    import numpy as np

    import scf_engine.pipelines.monitor as monitor
    from bench.timeline import Timeline, watch

    def heavy():
        block = np.ones(25_000_000)  # 200 MB, every page written
        time.sleep(0.2)
        return float(block[-1])

    mod = types.SimpleNamespace(heavy=heavy, light=lambda: time.sleep(0.1), give_back=lambda: None)
    line = Timeline(interval=0.005)
    originals = [line.wrap(mod, n) for n in ("light", "heavy", "give_back")]
    line.date = "2024-02-01"  # before the sampler starts: a sample taken first would be filed under "-"
    line.start()
    try:
        mod.light()
        assert mod.heavy() == 1.0
        mod.light()
        mod.give_back()
    finally:
        line.stop()
    (row,) = line.rows()
    assert row["as_of"] == "2024-02-01" and row["peak_stage"] == "heavy"
    assert line.peaks[("2024-02-01", "heavy")] - line.peaks[("2024-02-01", "light")] > 150
    assert row["after_give_back_mib"] is not None and row["arrow_mib"] is not None
    assert [e["stage"] for e in line.ends] == ["light", "heavy", "light", "give_back"]
    assert originals[1] is heavy
    before = (monitor.snapshot_at, monitor.connect, monitor.explain_changed)
    with watch(Timeline()):
        assert monitor.snapshot_at is not before[0] and monitor.explain_changed is not before[2]
    assert (monitor.snapshot_at, monitor.connect, monitor.explain_changed) == before
