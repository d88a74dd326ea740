"""The monitoring bench's rounds: a ratio taken pair by pair sees through a drifting machine."""

from bench.bench_monitor import rounds_of


def test_paired_ratios_see_through_a_machine_that_drifts_between_rounds():
    # this code 10% faster than the baseline in every pair; the machine 1.4x slower in round 2
    base = [{"seconds": 400.0, "cpu_s": 600.0, "peak_mb": 7700.0}, {"seconds": 560.0, "cpu_s": 840.0, "peak_mb": 7800.0},
            {"seconds": 420.0, "cpu_s": 630.0, "peak_mb": 7750.0}]
    mine = [{"seconds": b["seconds"] / 1.1, "cpu_s": b["cpu_s"] / 1.25, "peak_mb": b["peak_mb"] - 50} for b in base]
    mine[1]["seconds"] = 600.0  # one pair spoilt by a neighbour's job: the median of the pairs ignores it
    runs = {("baseline X", 100, 12): base, ("this code", 100, 12): mine, ("this code", 100, 1): mine[:1]}
    rows, paired = rounds_of(runs, "baseline X")
    assert abs(paired[("this code", 100)]["seconds"] - 1.1) < 1e-12
    assert abs(paired[("this code", 100)]["cpu_s"] - 1.25) < 1e-12
    assert paired[("baseline X", 100)] == {"seconds": 1.0, "cpu_s": 1.0}
    assert ("this code", 100) in paired and len(paired) == 2  # ratios at 12 dates only
    assert rows[("this code", 100, 12)]["seconds"] == sorted(r["seconds"] for r in mine)[1]
    assert rows[("this code", 100, 12)]["seconds_all"] == [round(r["seconds"], 1) for r in mine]
    assert rows[("baseline X", 100, 12)]["peak_mb"] == 7800.0
