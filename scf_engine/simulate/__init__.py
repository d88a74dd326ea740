"""A synthetic supply-chain world: the stand-in for bank data until a bank sends some.

The generative story, in order (details in each module's docstring):

1. :mod:`.world` — who exists: cores with external ratings, tier-1 and tier-2 suppliers,
   downstream distributors, unattached SMEs, rings of firms fabricating trade; their
   industries, regions, batch groups, names and unified social credit codes; who sells
   to whom and what share of sales or purchases each link carries.
2. :mod:`.dynamics` — a monthly latent financial health per firm: persistent, hit by
   industry shocks, with young firms riskier; one or more cores deteriorate during the
   history, and a buyer's health passes to its suppliers in proportion to their
   dependence on it (contagion), with a jump when a buyer defaults. Defaults follow a
   monthly hazard of health. ``truth.csv`` holds the true 12-month PD at quarter starts,
   by Monte Carlo over the same dynamics: the Bayes-optimal score.
3. :mod:`.emit` — what a bank would see: receivables on the registry and booked fund
   flows, each a noisy emission of health; nothing gives health away alone.
4. :mod:`.faults` — a copy of a dataset with contract violations of every kind injected,
   and a manifest of them, for tests of the quarantine.

Deterministic for a seed: every random stream is seeded from ``(seed, stage)``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from scf_engine.contract import DEFAULTS, FIRMS, FLOWS, PURPOSES, RECEIVABLES
from scf_engine.simulate.dynamics import simulate_history, true_pd
from scf_engine.simulate.emit import emit_records, sequential_ids
from scf_engine.simulate.stories import STORIES
from scf_engine.simulate.world import World, WorldConfig, build_world

__all__ = ["WorldConfig", "World", "simulate", "write_dataset", "STORIES"]


def simulate(config: WorldConfig | None = None, *, progress=None, **kwargs) -> World:
    """Build a world, run its history, compute truth and emit its records."""
    cfg = config or WorldConfig(**kwargs)
    say = progress or (lambda *a: None)
    world = build_world(cfg)
    say("world built")
    simulate_history(world)
    say("history simulated")
    world.records["truth"] = true_pd(world)
    say("truth computed")
    emit_records(world)
    say("records emitted")
    return world


FLOW_CHUNK = 4_000_000
SCENARIO_KEYS = ("deteriorating_share", "downgraded_cores", "scenario_month")  # left out of world.json when off
STORY_KEY = "story"  # left out of world.json for the default story (existing worlds' files unchanged)
CLOSED_LOOP_KEYS = ("closed_loop", "financed_share", "double_pledge_share", "misuse_share")  # likewise


def static_tables(world: World) -> dict[str, pa.Table]:
    """Firms, receivables and defaults as Arrow tables with exactly the contract's columns."""
    f = world.firms
    firm_ids = f["firm_id"].to_numpy()
    firms = pa.table({
        "firm_id": pa.array(firm_ids, pa.string()),
        "name": pa.array(f["name"], pa.string()),
        "industry": pa.array(f["industry"], pa.string()),
        "region": pa.array(f["region"], pa.string()),
        "founded_on": pa.array(f["founded_on"].to_numpy().astype("datetime64[D]"), pa.date32()),
        "registered_capital": pa.array(f["registered_capital"].to_numpy(), pa.float64()),
        "is_core": pa.array(f["is_core"].to_numpy(), pa.bool_()),
        "core_rating": pa.array(np.where(f["is_core"], f["core_rating"], None), pa.string()),
        "batch_group": pa.array(np.where(f["batch_group"] == "", None, f["batch_group"]), pa.string()),
    })
    r = world.records["receivables_frame"]
    receivables = pa.table({
        "receivable_id": sequential_ids("R", len(r), 9),
        "supplier_id": pa.array(firm_ids[r["supplier"].to_numpy().astype(int)], pa.string()),
        "buyer_id": pa.array(firm_ids[r["buyer"].to_numpy().astype(int)], pa.string()),
        "amount": pa.array(r["amount"].to_numpy(dtype=float), pa.float64()),
        "issued_on": pa.array(r["issued_on"].to_numpy().astype("datetime64[D]"), pa.date32()),
        "due_on": pa.array(r["due_on"].to_numpy().astype("datetime64[D]"), pa.date32()),
        "confirmed_on": pa.array(r["confirmed_on"].to_numpy().astype("datetime64[D]"), pa.date32()),
        "paid_on": pa.array(r["paid_on"].to_numpy().astype("datetime64[D]"), pa.date32()),
        "paid_amount": pa.array(r["paid_amount"].to_numpy(dtype=float), pa.float64(), from_pandas=True),
    })
    dd = world.records["default_day"]
    has = ~np.isnat(dd)
    defaults = pa.table({
        "firm_id": pa.array(firm_ids[has], pa.string()),
        "default_on": pa.array(dd[has], pa.date32()),
    })
    for spec, table in ((FIRMS, firms), (RECEIVABLES, receivables), (DEFAULTS, defaults)):
        assert table.column_names == list(spec.base_column_names), spec.name
    return {"firms": firms, "receivables": receivables, "defaults": defaults}


def flow_batches(world: World, chunk: int = FLOW_CHUNK):
    """The flows as Arrow record batches of ``chunk`` rows (bounded memory for big worlds).
    Party ids become strings by taking from one rendering of the distinct parties (plain
    strings: a multi-million-entry Arrow dictionary per batch makes Parquet writing
    several times slower)."""
    fa = world.records["flows_arrays"]
    parties = world.records["parties"]
    uniq = np.unique(np.concatenate([np.unique(fa["payer"]), np.unique(fa["payee"])]))
    dictionary = pa.array(parties.strings(uniq), pa.string())
    purposes = pa.array(PURPOSES)
    n = len(fa["amount"])
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        ids = sequential_ids("T", sl.stop - sl.start, 10, first=start + 1)
        batch = pa.record_batch({
            "txn_id": ids,
            "booked_on": pa.array(fa["booked_on"][sl], pa.date32()),
            "payer_id": dictionary.take(pa.array(np.searchsorted(uniq, fa["payer"][sl]).astype(np.int32))),
            "payee_id": dictionary.take(pa.array(np.searchsorted(uniq, fa["payee"][sl]).astype(np.int32))),
            "amount": pa.array(fa["amount"][sl], pa.float64()),
            "purpose": purposes.take(pa.array(fa["purpose"][sl].astype(np.int32))),
        })
        assert batch.schema.names == list(FLOWS.base_column_names)
        yield batch


def _plain(batch):
    """Dictionary columns as plain strings (the CSV writer's input)."""
    return pa.record_batch([c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c for c in batch.columns],
                           names=batch.schema.names)


def write_table(table: pa.Table, path: Path) -> None:
    write_batches(table.to_batches(), path, table.schema)


def write_batches(batches, path: Path, schema: pa.Schema | None = None) -> None:
    """Stream record batches to Parquet (zstd) or CSV (dictionaries as plain strings)."""
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        first = pa.RecordBatch.from_pylist([], schema=schema)
    if path.suffix == ".parquet":
        # zstd level 1 writes several times faster than level 9 for ~15% more bytes: used
        # for big worlds, level 9 for small ones (the shipped sample); dictionaries only
        # where values repeat (party ids, purposes, ratings)
        level = 9 if first.num_rows < 1_500_000 else 1
        dict_cols = [f.name for f in first.schema if pa.types.is_dictionary(f.type) or f.name.endswith(("_id", "purpose", "rating", "industry", "region", "group"))
                     and f.name not in ("txn_id", "receivable_id")]
        with pq.ParquetWriter(path, first.schema, compression="zstd", compression_level=level, use_dictionary=dict_cols) as writer:
            writer.write_batch(first)
            for b in batches:
                writer.write_batch(b)
    else:
        first = _plain(first)
        with pacsv.CSVWriter(path, first.schema, write_options=pacsv.WriteOptions(quoting_style="needed")) as writer:
            writer.write_batch(first)
            for b in batches:
                writer.write_batch(_plain(b))


def consents_frame(world: World) -> pd.DataFrame:
    """Data-sharing authorisations (``firm_id, granted_on, expires_on``): a firm's fund
    flows reach the platform from the day it authorised sharing; three-year terms; a few
    firms let theirs lapse and a few never signed (the limit policy then refuses them)."""
    rng = np.random.default_rng([world.config.seed, 5])
    f = world.firms[~world.firms["is_core"]]
    start = world.months[0]
    end = world.months[-1] + pd.offsets.MonthEnd(0)
    granted = pd.to_datetime(np.where(f["flows_visible_from"] > start, f["flows_visible_from"],
                                      start - pd.to_timedelta(rng.integers(0, 365, len(f)), unit="D")))
    expires = granted + pd.DateOffset(years=3)
    u = rng.random(len(f))
    lapsed = u < 0.04
    expires = pd.Series(expires, index=f.index)
    lapse = end - pd.to_timedelta(rng.integers(30, 200, lapsed.sum()), unit="D")
    expires[lapsed] = np.maximum(lapse, granted[lapsed] + pd.Timedelta(days=30))
    renewed = ~lapsed & (expires <= end)
    expires[renewed] = expires[renewed] + pd.DateOffset(years=3)
    keep = u >= 0.02  # 2% never signed
    out = pd.DataFrame({"firm_id": f["firm_id"], "granted_on": granted.strftime("%Y-%m-%d"),
                        "expires_on": expires.dt.strftime("%Y-%m-%d")})
    return out[keep].reset_index(drop=True)


def indicators_frame(world: World) -> pd.DataFrame:
    """The bank's external grading indicators (contract v1.1 ``indicators.csv``): for 70%
    of the non-core firms the credit platform grades, once a year in the first quarter,
    the six Jiangyin indicators the flows cannot give, each read from the firm's latent
    health (``mu``) through its own noise, so they carry information but give nothing
    away; some firms earn bonus points (加分项) and the weakest few carry a serious-
    dishonesty record (严重失信). Its own random stream: the rest of the world is the same
    with or without it."""
    rng = np.random.default_rng([world.config.seed, 7])
    f = world.firms[~world.firms["is_core"]].reset_index(drop=True)
    mu = np.asarray(world.state["params"].mu)[~world.firms["is_core"].to_numpy()]
    covered = rng.random(len(f)) < 0.7
    years = sorted({d.year for d in world.months})
    rows = []
    policy_of = {ind: rng.choice(["A", "B", "C"], p=[0.3, 0.6, 0.1]) for ind in sorted(f["industry"].unique())}
    bonus = np.where(rng.random(len(f)) < 0.06, rng.integers(5, 21, len(f)), 0)
    for year in years:
        day = pd.DatetimeIndex(pd.Timestamp(year=year, month=1, day=15) + pd.to_timedelta(rng.integers(0, 75, len(f)), unit="D"))
        graded = covered & np.asarray(day >= pd.DatetimeIndex(f["founded_on"])) & np.asarray(day <= world.months[-1])
        z = mu + rng.normal(0.0, 1.0, len(f))

        def abc(x, a, b):
            return np.where(x > a, "A", np.where(x > b, "B", "C"))

        cols = {
            "premises": np.where(mu + rng.normal(0, 1, len(f)) > 0, "A", "B"),
            "legal_rep_credit": abc(z, 0.3, -0.8),
            "environment": np.where(rng.random(len(f)) < 0.6, abc(z + rng.normal(0, 0.5, len(f)), 0.0, -1.0), ""),
            "public_credit": abc(z + rng.normal(0, 0.5, len(f)), -0.5, -1.5),
            "industrial_policy": f["industry"].map(policy_of).to_numpy(),
            "other_rating": np.where(rng.random(len(f)) < 0.3, abc(z, 0.5, -0.5), ""),
            "bonus": np.where(bonus > 0, bonus.astype(str), ""),
            "dishonest": np.where(z < -2.8, "true", np.where(rng.random(len(f)) < 0.2, "false", "")),
        }
        for name, grades in cols.items():
            keep = graded & (grades != "")
            rows.append(pd.DataFrame({"firm_id": f.loc[keep, "firm_id"].to_numpy(), "as_of": day[keep].strftime("%Y-%m-%d"),
                                      "indicator": name, "grade": grades[keep]}))
    out = pd.concat(rows, ignore_index=True)
    return out.sort_values(["as_of", "firm_id", "indicator"], kind="stable").reset_index(drop=True)


def batch_frame(world: World) -> pd.DataFrame:
    """A demo batch request: one core's chain (1+N), its live tier-1 and tier-2 suppliers,
    some asking for an amount. The core is the one with the most suppliers."""
    rng = np.random.default_rng([world.config.seed, 6])
    f = world.firms
    dm = world.state["default_month"]
    chain = f[f["role"].isin(["tier1", "tier2"]) & (dm < 0)]
    core = chain["primary_core"].value_counts().index[0]
    members = chain[chain["primary_core"] == core]
    amounts = np.where(rng.random(len(members)) < 0.3, np.round(members["size"] * rng.uniform(0.5, 3, len(members)), -4), np.nan)
    out = pd.DataFrame({"firm_id": members["firm_id"], "requested_amount": amounts})
    return out.sort_values("firm_id").reset_index(drop=True)


def _closed_loop(world: World, tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """The closed-loop scenario's receivables, flows and financings as Arrow tables (dates
    as date32), and its truth frame (see :mod:`.closed_loop`)."""
    from scf_engine.simulate.closed_loop import closed_loop_records

    def frame(table):
        df = table.to_pandas()
        for c, t in zip(table.column_names, table.schema.types):
            if pa.types.is_date32(t):
                df[c] = pd.to_datetime(df[c])
        return df

    flows = frame(pa.Table.from_batches(list(flow_batches(world))))
    rec = closed_loop_records(world.config, frame(tables["firms"]), frame(tables["receivables"]), flows)

    def table(df):
        out = pa.Table.from_pandas(df, preserve_index=False)
        for i, (c, t) in enumerate(zip(out.column_names, out.schema.types)):
            if pa.types.is_timestamp(t):
                out = out.set_column(i, c, out[c].cast(pa.date32()))
        return out

    return {"receivables": table(rec["receivables"]), "flows": table(rec["flows"]), "financings": table(rec["financings"]),
            "truth": rec["truth"].assign(on=rec["truth"]["on"].dt.strftime("%Y-%m-%d"))}


def write_dataset(world: World, out: Path | str, *, fmt: str = "csv") -> Path:
    """Write the world as a contract dataset folder, plus truth and simulator metadata.

    ``fmt`` is ``csv``, ``parquet``, or ``compact`` (firms and defaults as CSV, the two
    large files as Parquet: the shipped sample's layout).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = static_tables(world)
    rows = {name: t.num_rows for name, t in tables.items()}
    rows["flows"] = len(world.records["flows_arrays"]["amount"])
    loop = _closed_loop(world, tables) if world.config.closed_loop else None
    if loop is not None:
        rows["flows"] = loop["flows"].num_rows
        rows["financings"] = loop["financings"].num_rows
    for name in ("firms", "receivables", "flows", "defaults") + (("financings",) if loop else ()):
        ext = ".parquet" if fmt == "parquet" or (fmt == "compact" and name in ("flows", "receivables")) else ".csv"
        for old in (out / f"{name}.csv", out / f"{name}.parquet"):
            if old.is_dir():  # an earlier NAME.parquet folder of part files (a lake's table): replaced too
                shutil.rmtree(old)
            old.unlink(missing_ok=True)
        if loop is not None and name in loop:
            write_table(loop[name], out / f"{name}{ext}")
        elif name == "flows":
            write_batches(flow_batches(world), out / f"flows{ext}")
        else:
            write_table(tables[name], out / f"{name}{ext}")
    if loop is not None:
        loop["truth"].to_csv(out / "closed_loop_truth.csv", index=False)
    truth = world.records["truth"]
    truth.assign(as_of=truth["as_of"].dt.strftime("%Y-%m-%d"), true_pd=truth["true_pd"].round(6))[
        ["firm_id", "as_of", "true_pd"]
    ].to_csv(out / "truth.csv", index=False)
    f = world.firms
    ids = f["firm_id"].to_numpy()
    scenario = [c for c in ("deteriorates", "downgraded_core") if c in f]  # only when the scenario is on
    f[["firm_id", "role", "fabricated", "young", "distressed_core", *scenario]].assign(
        flows_visible_from=f["flows_visible_from"].dt.strftime("%Y-%m-%d"),
        primary_core=np.where(f["primary_core"] >= 0, ids[np.maximum(f["primary_core"], 0)], ""),
        mu=np.round(world.state["params"].mu, 4),
    ).to_csv(out / "truth_firms.csv", index=False)
    consents_frame(world).to_csv(out / "consents.csv", index=False)
    indicators_frame(world).to_csv(out / "indicators.csv", index=False)
    batch_frame(world).to_csv(out / "batch.csv", index=False)
    meta = {
        "generator": "scf_engine.simulate",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in world.config.__dict__.items()
                   if (scenario or k not in SCENARIO_KEYS) and (k != STORY_KEY or v != "default")
                   and (world.config.closed_loop or k not in CLOSED_LOOP_KEYS)},
        "distressed_cores": f.loc[f["distressed_core"], "firm_id"].tolist(),
        "rings": [ids[g.sort_values("order")["firm"].to_numpy()].tolist() for _, g in world.rings.groupby("ring")],
        "rows": rows,
    }
    (out / "world.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    return out
