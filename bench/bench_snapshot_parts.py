"""``python -m bench snapshot_parts``: the parts of a monitoring pass's snapshot that made
arrays of fresh memory at every as-of, each against the code it replaced, interleaved in
one process (A then B, B then A on alternate dates) on the monitor bench's cost world.

Why a benchmark of parts: on a VM that hands freed memory back to its host (free page
reporting, nested paging: this project's machines), touching fresh memory costs a page
fault per page, and how much depends on the host's load, so whole passes measured an hour
apart differ by x1.5 and hide a few seconds an as-of. Interleaved in one process, both
sides meet the same machine. Every pair is checked for equal answers before it is timed.

``BENCH_MONITOR_COST_FIRMS`` (default 100,000): the world's size; ``BENCH_MONITOR_FIRMS``
as for ``bench monitor`` (the models' world)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.harness import show

STEPS = {
    "within": "Shapes.within: binary search (positions_in) / an inverse table as long as the largest id",
    "factorize": "the legs' firms numbered: dense_factorize / pd.factorize(sort=True)",
    "legs_frame": "a pass's trade legs as a frame: copy=False / stacked int32 block",
    "receivables": "Dataset.as_of's receivables: leading slice, copy on write / filter and deep copy",
}


def _old_within(shapes, ids):
    """Shapes.within before 2550b0e: an inverse table indexed by transfer id."""
    ids = np.asarray(ids, np.int64)
    top = max([int(ids.max()) if len(ids) else -1] + [int(a.max()) for a in shapes._arrays() if a.size])
    at = np.full(top + 1, -1, np.int64)
    at[ids] = np.arange(len(ids))

    def keep(a):
        p = at[a].reshape(a.shape)
        return p[(p >= 0).all(axis=1)] if p.size else p.reshape(0, a.shape[1])

    return shapes._map(keep)


def _receivables(ds, T, new: bool) -> pd.DataFrame:
    """Dataset.as_of's receivables at T: this code's (``new``) or before ba592c3's."""
    from scf_engine.dataset import _private, _rows_before

    r = _private(_rows_before(ds.receivables, "issued_on", T)) if new else \
        ds.receivables[ds.receivables["issued_on"] < T].copy()
    r.loc[r["confirmed_on"] >= T, "confirmed_on"] = pd.NaT
    late = r["paid_on"] >= T
    r.loc[late, "paid_on"] = pd.NaT
    r.loc[late, "paid_amount"] = np.nan
    return r


def main() -> None:
    from bench.bench_monitor import prepare_cost
    from scf_engine.duck import connect
    from scf_engine.features.authenticity import _transfers_of, dense_factorize, load_policy
    from scf_engine.features.flows import FlowPass
    from scf_engine.ingest.load import load_or_report
    from scf_engine.pipelines.monitor import chain_flows, lean_flows
    from scf_engine.release import give_back

    n_firms = int(os.environ.get("BENCH_MONITOR_COST_FIRMS", 100_000))
    _, data, _, _, batch_T = prepare_cost(n_firms)
    dates = [batch_T + pd.DateOffset(months=k) for k in range(1, 13)]
    ds = load_or_report(data, Path(tempfile.mkdtemp()) / "quarantine.csv")
    lean_flows(ds, dates[-1])
    con = connect()
    fp = FlowPass(con, ds.flows, ds.firms["firm_id"], [batch_T, *dates])
    chain_flows(ds)
    give_back()
    search = fp.shape_search(load_policy())
    firms = pd.Index(ds.firms["firm_id"].astype(str))
    took: dict[tuple[str, str], list[float]] = {}

    def timed(step, side, f):
        t0 = time.perf_counter()
        f()
        took.setdefault((step, side), []).append(time.perf_counter() - t0)
        give_back()

    for k, T in enumerate(dates):
        trade, _ = fp.trade_legs(str(T.date()), firms)
        columns = {c: trade[c].array if c == "dir" else trade[c].to_numpy() for c in trade.columns}
        ids = _transfers_of(trade)[0]["_i"].to_numpy(np.int64)
        pairs = {"within": (lambda: search.within(ids), lambda: _old_within(search.shapes, ids)),
                 "factorize": (lambda: dense_factorize(trade["firm_id"]),
                               lambda: pd.factorize(trade["firm_id"], sort=True)),
                 "legs_frame": (lambda: pd.DataFrame(columns, copy=False), lambda: pd.DataFrame(columns)),
                 "receivables": (lambda: _receivables(ds, T, True), lambda: _receivables(ds, T, False))}
        new_w, old_w = search.within(ids), _old_within(search.shapes, ids)
        assert all(np.array_equal(a, b) for a, b in zip(new_w._arrays(), old_w._arrays()))
        (c1, u1), (c2, u2) = pairs["factorize"][0](), pairs["factorize"][1]()
        assert np.array_equal(c1, c2) and np.array_equal(np.asarray(u1), np.asarray(u2))
        pd.testing.assert_frame_equal(_receivables(ds, T, True), _receivables(ds, T, False), check_exact=True)
        del new_w, old_w, c1, c2
        for step, (new, old) in pairs.items():
            for side, f in ((("this", new), ("before", old)) if k % 2 == 0 else (("before", old), ("this", new))):
                timed(step, side, f)
        trade = columns = ids = None  # this date's legs let go before the next date's
        give_back()
    con.close()
    rows = []
    for step, what in STEPS.items():
        this, before = took[(step, "this")], took[(step, "before")]
        rows.append({"step": step, "what": what, "this_s_12_dates": sum(this), "before_s_12_dates": sum(before),
                     "before_max_one_date_s": max(before), "x": sum(before) / sum(this)})
    show(f"snapshot parts, {n_firms:,} firms x 12 as-of dates, interleaved in one process (equal answers checked)",
         rows, "snapshot_parts")


if __name__ == "__main__":
    main()
