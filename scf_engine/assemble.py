"""Assemble what the learners need at each as-of date, from the Dataset alone.

For each as-of date T: the Snapshot (only what was known before T), its flow features,
its chain (graph, roles, graph and registry features) and, for training and evaluation,
the 12-month label. Rows are the firms scorable at T (not cores, not already in
default). The propagation model's outputs are added later, once it is fitted
(:func:`add_propagation`), because the hybrid takes them as features.
"""

from __future__ import annotations

from concurrent.futures import wait
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from scf_engine.catalogue import load_catalogue
from scf_engine.contract import FALSE_SPELLINGS, GRADED_INDICATORS, TRUE_SPELLINGS
from scf_engine.dataset import Dataset, Snapshot
from scf_engine.duck import connect
from scf_engine.features import flow_features
from scf_engine.graph import Chain, build_chain

CONTEXT_COLUMNS = ("industry", "region", "batch_group", "role")


@dataclass
class SnapshotData:
    as_of: pd.Timestamp
    snapshot: Snapshot
    chain: Chain
    table: pd.DataFrame  # index firm_id: features + context (+ label, true_pd when known)
    # (model, design): the propagation model's design over ``chain``, kept by add_propagation
    # for the decision core's context (DecisionContext.build), which reads it of the same model
    propagation_design: tuple | None = field(default=None, repr=False)

    @property
    def labels(self) -> pd.Series:
        return self.table["label"].dropna()


def chain_feature_names() -> list[str]:
    cat = load_catalogue()
    return [s.name for s in cat.of_kind("code") if s.function in ("graph", "registry")]


def indicator_columns(snapshot: Snapshot) -> pd.DataFrame:
    """The external grading indicators known at the as-of date, one row per firm:
    ``ind_<indicator>`` = A/B/C ("" when not graded) for the graded ones, ``ind_bonus``
    (points, NaN when none) and ``ind_dishonest`` (1.0 / 0.0, NaN when not reported)."""
    ind = snapshot.indicators
    ids = pd.Index(snapshot.firms["firm_id"], name="firm_id")
    wide = ind.pivot(index="firm_id", columns="indicator", values="grade").reindex(ids) if len(ind) else pd.DataFrame(index=ids)
    out = pd.DataFrame(index=ids)
    for name in GRADED_INDICATORS:
        out[f"ind_{name}"] = wide[name].fillna("").astype(str) if name in wide else ""
    out["ind_bonus"] = pd.to_numeric(wide["bonus"], errors="coerce") if "bonus" in wide else np.nan
    dishonest = wide["dishonest"].str.lower() if "dishonest" in wide else pd.Series(np.nan, index=ids, dtype=object)
    out["ind_dishonest"] = np.where(dishonest.isin(TRUE_SPELLINGS), 1.0, np.where(dishonest.isin(FALSE_SPELLINGS), 0.0, np.nan))
    return out


def snapshot_table(snapshot: Snapshot, chain: Chain, *, con=None, engine=None, flow_pass=None,
                   features: pd.DataFrame | None = None) -> pd.DataFrame:
    """The snapshot's rows, one per scorable firm in ``firm_id`` order (never the input
    files' row order): flow features (on ``engine`` when given, see
    :mod:`scf_engine.sqlengine`; from ``flow_pass``'s legs when given; ``features``: those
    already computed), chain features, context and external indicators."""
    flows = features if features is not None else flow_features(snapshot, con=con, engine=engine, flow_pass=flow_pass)
    nodes = chain.nodes
    chain_cols = [c for c in chain_feature_names() if c in nodes.columns]
    table = flows.join(nodes[chain_cols + list(CONTEXT_COLUMNS)], how="left").join(indicator_columns(snapshot), how="left")
    scorable = snapshot.scorable
    # rows in firm_id order, whatever order the files listed the firms in: LightGBM's
    # bagging draws rows by position and float sums follow row order, so a training frame
    # in file order made the same data in another row order train other models
    return table.loc[table.index.intersection(scorable)].sort_index(kind="stable")


def chain_and_table(snap: Snapshot, con, *, engine=None, flow_pass=None, side=None) -> tuple[Chain, pd.DataFrame]:
    """The chain and the table of one snapshot. ``side``: an executor (a thread) that
    builds the chain while this thread computes the flow features, on a cursor of ``con``
    (a connection of its own to the same database: its registered ``flows`` and ``firms``
    are its own, so the two never read each other's). Neither reads what the other makes
    until the table joins them, so the answers are the same; the chain (~3.5 s an as-of
    at 100,000 firms, mostly pandas and networkx holding the GIL) then runs while the
    features' SQL (DuckDB, which lets the GIL go) keeps the other core busy. Only this
    thread switches the database to one thread (``eng.deterministic``): the chain's
    queries then run one-threaded, with the same results."""
    # a pass's trade transfers (built once, here on this thread before the chain reads them):
    # the chain's trade edges and totals summed from them, not from the flows by name again
    transfers = flow_pass.transfers() if flow_pass is not None else None
    if side is None:
        chain = build_chain(snap, con=con, transfers=transfers)
        return chain, snapshot_table(snap, chain, con=con, engine=engine, flow_pass=flow_pass)
    cur = con.cursor()
    try:
        job = side.submit(build_chain, snap, con=cur, transfers=transfers)
        try:
            features = flow_features(snap, con=con, engine=engine, flow_pass=flow_pass)
        except BaseException:
            wait([job])  # its cursor is closed below: not while it reads
            raise
        chain = job.result()
    finally:
        cur.close()
    return chain, snapshot_table(snap, chain, features=features)


def assemble(dataset: Dataset, dates, *, with_labels: bool = True, truth: pd.DataFrame | None = None,
             progress=None, engine=None, con=None, flow_pass=None, side=None) -> dict[pd.Timestamp, SnapshotData]:
    """Snapshot data at each date; ``engine``: where the flow features' SQL runs (default
    the embedded DuckDB; the chain is built on DuckDB either way). ``con``: the DuckDB
    connection to use (left open; default a new one, closed at the end); ``flow_pass``:
    legs built once on ``con`` for these dates (:class:`scf_engine.features.flows.FlowPass`);
    ``side``: an executor that builds each date's chain beside its flow features
    (:func:`chain_and_table`)."""
    out = {}
    own = con is None
    con = con if con is not None else connect()
    for i, T in enumerate(dates):
        T = pd.Timestamp(T)
        snap = dataset.as_of(T)
        chain, table = chain_and_table(snap, con, engine=engine, flow_pass=flow_pass, side=side)
        if with_labels:
            lab = dataset.labels(T).set_index("firm_id")["label"]
            table["label"] = lab.reindex(table.index).astype(float)
        if truth is not None:
            t = truth[truth["as_of"] == T].set_index("firm_id")["true_pd"]
            table["true_pd"] = t.reindex(table.index)
        table["as_of"] = T
        out[T] = SnapshotData(T, snap, chain, table)
        if progress:
            progress(i + 1, len(dates))
    if own:
        con.close()
    return out


def add_propagation(data: dict[pd.Timestamp, SnapshotData], model) -> None:
    """Add the fitted propagation model's outputs (``pd_propagation``,
    ``propagated_log_odds``) to every snapshot table, and keep the model's design over
    each chain with the snapshot (``propagation_design``): the decision core's context
    reads it again (:meth:`scf_engine.credit.decide.DecisionContext.build`), and making it
    was ~0.4 s of CPU a snapshot at 100,000 firms (13 a monitoring pass)."""
    for sd in data.values():
        X, covered = model.design(sd.chain)
        sd.propagation_design = (model, X)
        f = model.predict_design(X, covered)
        sd.table["pd_propagation"] = f["pd"].reindex(sd.table.index)
        sd.table["propagated_log_odds"] = f["propagated_log_odds"].reindex(sd.table.index)


def stack(data: dict[pd.Timestamp, SnapshotData], dates) -> pd.DataFrame:
    """One modelling frame for the given dates (firm_id as a column)."""
    frames = [data[pd.Timestamp(T)].table for T in dates]
    return pd.concat(frames).rename_axis("firm_id").reset_index()


def split_dates(dates, *, n_test: int = 2, horizon_days: int = 365):
    """Out-of-time split: the latest ``n_test`` dates are held out; training dates are
    those whose 12-month label window closes before the first held-out date (no label of
    a training row can see the test period)."""
    dates = sorted(pd.Timestamp(d) for d in dates)
    test = dates[-n_test:]
    train = [d for d in dates if d + pd.Timedelta(days=horizon_days) <= test[0]]
    return train, test


def truth_frame(dataset: Dataset) -> pd.DataFrame | None:
    """The simulator's truth.csv beside the dataset, if any (evaluation only)."""
    if dataset.source is None:
        return None
    path = dataset.source / "truth.csv"
    if not path.is_file():
        return None
    t = pd.read_csv(path, dtype={"firm_id": str})
    t["as_of"] = pd.to_datetime(t["as_of"])
    return t


__all__ = ["SnapshotData", "assemble", "add_propagation", "stack", "split_dates", "truth_frame"]
