"""Explanations for 100,000 firms and credit memos for 1,000 firms.

Model: the de-coupled LightGBM trained by the policy (``models/lightgbm.yaml``) on a
simulated world of ``N_FIRMS`` firms; the rows explained are its distinct training and
test feature rows, up to ``BENCH_EXPLAIN_ROWS`` (at this world's size, fewer than
100,000: resampling them with replacement, as this bench did, repeats rows, and the
product's route computes a repeated row's split patterns once).

* **explanations**: path-dependent TreeSHAP on the calibrated log-odds, on the same
  model and rows (distinct firm-dates: the product's route gains from repeated rows):
  the product's route, LightGBM's ``pred_contrib`` asked once per split pattern of each
  tree (``method="native"``, :mod:`scf_engine.learners.treeshap`), the baseline, the
  same ``pred_contrib`` on the whole booster at once (``method="pred_contrib"``), and
  ``shap.TreeExplainer`` (``method="treeshap"``). For a LightGBM booster the latter hands
  the work to LightGBM's ``pred_contrib`` (shap's "shortcut"), so a third row times
  shap's own C++ TreeSHAP (``method="shap_internal"``), the one a shap user gets for
  models shap has no shortcut for. Seconds are the explanation call alone,
  not loading, in one fresh process per method (``BENCH_EXPLAIN_REPEATS`` for a median
  of several; one keeps the whole benchmark within ~15 minutes on 2 cores); additivity
  is checked on every row.
  "ratio" is a route's seconds / whole-booster pred_contrib seconds (< 1: faster).
* **memos**: the decision core (``credit.decide``, what ``scf score`` calls) decides the
  requested firms, then one memo per scored firm, each with its SHAP waterfall, chain
  picture, propagation paths, reasons, and the three files (HTML, PDF through WeasyPrint,
  Markdown), in ``WORKERS`` processes (default: all cores), built by the product's
  ``memo.context`` (pictures as inline SVG, one chain layout per core, path
  decompositions sharing one :class:`~scf_engine.explain.PathContext`). Baseline in the
  same run: the first design, matplotlib PNG pictures and a full path decomposition per
  firm, on ``BENCH_MEMOS_PNG`` firms (default 100; it costs ~1.2 CPU seconds a memo);
  "ratio" is the baseline's CPU seconds per memo / ours. Stage shares are of the CPU seconds spent per memo summed
  over workers; PDF "dominates" when it takes more than half.

``BENCH_EXPLAIN_ROWS``, ``BENCH_MEMOS`` (0: explanations only), ``BENCH_MEMOS_PNG`` and
``BENCH_MEMO_WORKERS`` override the sizes.
"""

from __future__ import annotations

import os
import pickle
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import measure, show

ROWS = int(os.environ.get("BENCH_EXPLAIN_ROWS", 100_000))
MEMOS = int(os.environ.get("BENCH_MEMOS", 1_000))
MEMOS_PNG = int(os.environ.get("BENCH_MEMOS_PNG", 100))
WORKERS = int(os.environ.get("BENCH_MEMO_WORKERS", os.cpu_count() or 1))
REPEATS = int(os.environ.get("BENCH_EXPLAIN_REPEATS", 1))
N_FIRMS = 1_400
DATA = Path("out/bench/explain")
WORLD = DATA / f"world_{N_FIRMS}.pkl"


def make_world() -> Path:
    """Simulate, assemble, fit every model the way ``scf train`` does (pipelines'
    fit_and_evaluate); keep what explanations and memos need (made once)."""
    if WORLD.is_file():
        return WORLD
    from scf_engine.assemble import split_dates
    from scf_engine.ingest import load_dataset
    from scf_engine.ingest.requests import read_consents
    from scf_engine.pipelines.train import fit_and_evaluate
    from scf_engine.simulate import WorldConfig, simulate, write_dataset

    DATA.mkdir(parents=True, exist_ok=True)
    path = write_dataset(simulate(WorldConfig(n_firms=N_FIRMS, seed=5, n_months=36)), DATA / f"data_{N_FIRMS}")
    ds = load_dataset(path)
    dates = ds.snapshot_dates()
    train, test = split_dates(dates, n_test=1)
    fitted = fit_and_evaluate(ds, dates, train, test)
    tr, te, dec = fitted.train, fitted.test, fitted.models["decoupled"]
    ok = tr.history_months.notna()
    models = {"propagation": fitted.propagation, "decoupled": dec, "hybrid": fitted.models["hybrid"]}
    world = {"as_of": test[0], "data": fitted.data[test[0]], "models": models, "dec": dec, "dataset": ds,
             "consents": read_consents(path / "consents.csv"),
             "rows": pd_concat([tr[ok], te[te.history_months.notna()]])[dec.features_ + ["industry"]]}
    tmp = WORLD.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(world))
    tmp.replace(WORLD)
    return WORLD


def pd_concat(frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def _load():
    return pickle.loads(WORLD.read_bytes())


def _rows(world, n: int):
    rng = np.random.default_rng(0)
    rows = world["rows"]
    return rows.iloc[rng.integers(0, len(rows), n)].reset_index(drop=True)


def _distinct_rows(world, n: int):
    """Up to ``n`` distinct feature rows (the world's firm-dates without repeats): the
    product's route asks LightGBM once per split pattern of each tree, and resampled rows
    repeat their patterns, which would flatter it."""
    rows = world["rows"].drop_duplicates(subset=list(world["dec"].features_)).reset_index(drop=True)
    return rows.sample(n=min(n, len(rows)), random_state=0).reset_index(drop=True)


def explain(method: str, n: int):
    """Contributions for up to ``n`` distinct rows; times the explanation call alone."""
    from scf_engine.explain import additivity_error, contributions

    world = _load()
    X = _distinct_rows(world, n)
    n = len(X)
    dec = world["dec"]
    t = time.perf_counter()
    c = contributions(dec, X, method=method)
    seconds = time.perf_counter() - t
    err = float(additivity_error(c, dec, X).max())
    return {"rows": n, "explain_s": seconds, "max_additivity_error": err}


# --- memos ---------------------------------------------------------------------------------------
_W = {}


def _init_worker(out_dir: str, style: str):
    import matplotlib

    matplotlib.use("Agg")
    _W["world"] = _load() if "world" not in _W else _W["world"]
    _W["out"] = Path(out_dir)
    _W["style"] = style


def _baseline_context(ctx, fid):
    """The first memo design: matplotlib PNG pictures and a full path decomposition per
    firm, on the decision core's numbers."""
    from scf_engine.explain import path_decomposition
    from scf_engine.explain.plots import waterfall_plot
    from scf_engine.memo import neighbourhood_png

    w = _W["world"]
    times = {}
    t = time.process_time()
    if ctx["propagation_paths"] is not None:
        ctx["propagation_paths"] = path_decomposition(w["models"]["propagation"], w["data"].chain, fid, max_len=3)
    times["paths"] = time.process_time() - t
    t = time.process_time()
    k = w["decisions"].limits.index[w["decisions"].limits["firm_id"] == fid][0]
    src = w["decisions"].limits.at[k, "pd_source"]
    if src in w["decisions"].contributions:
        x = w["data"].table.loc[fid, w["models"][src].features_]
        ctx["waterfall_png"] = waterfall_plot(w["decisions"].contributions[src].loc[k], x, None, lang="zh", dpi=90)
    ctx.pop("waterfall_svg", None)
    times["waterfall"] = time.process_time() - t
    t = time.process_time()
    ctx["neighbourhood_png"] = neighbourhood_png(w["data"].chain, fid)
    ctx.pop("neighbourhood_svg", None)
    times["chain_picture"] = time.process_time() - t
    return ctx, times


def _one_memo(i):
    """Build request row ``i``'s memo context (the product's memo.context, or the
    baseline's pictures) and render it stage by stage as ``render_memo`` does (view ->
    HTML -> PDF from that HTML -> Markdown); per-stage CPU seconds."""
    from scf_engine.memo.context import memo_context
    from scf_engine.memo.render import _is_svg, memo_stem, render_html, render_markdown, view, write_pdf

    w = _W["world"]
    t = time.process_time()
    ctx = memo_context(i, w["decisions"], w["data"], w["models"], w["shared"], w["provenance"], w["dataset"].report)
    times = {"context": time.process_time() - t}
    fid = ctx["firm"]["firm_id"]
    if _W["style"] == "png":
        ctx, extra = _baseline_context(ctx, fid)
        times.update(extra)
    out = _W["out"] / f"{i % 50:02d}"  # keep directories small
    out.mkdir(parents=True, exist_ok=True)
    stem = memo_stem(ctx)
    t = time.process_time()
    v = view(ctx)
    html = render_html(ctx, v)
    (out / f"{stem}.html").write_text(html, encoding="utf-8")
    times["html"] = time.process_time() - t
    t = time.process_time()
    write_pdf(html, out / f"{stem}.pdf", base_url=str(out))
    times["pdf"] = time.process_time() - t
    t = time.process_time()
    names = {}
    for key, img in v["pictures"].items():
        if img is not None:
            names[key] = f"{stem}.{key}.{'svg' if _is_svg(img) else 'png'}"
            (out / names[key]).write_bytes(img)
    (out / f"{stem}.md").write_text(render_markdown(ctx, v, names), encoding="utf-8")
    times["md"] = time.process_time() - t
    sizes = {f: (out / f"{stem}.{f}").stat().st_size for f in ("html", "pdf", "md")}
    if i >= 3:  # keep three examples, drop the rest as we go (1,000 memos are ~1 GB)
        for p in out.glob(f"{stem}*"):
            p.unlink()
    return times, sizes


def memos(n: int, workers: int, style: str = "svg"):
    """``n`` memos in ``workers`` processes: wall seconds, and per-stage CPU seconds.
    The decisions come from the decision core (``credit.decide``) on ``n`` requested firms;
    ``style``: ``svg`` (what ``scf score`` does) or ``png`` (the first design)."""
    import multiprocessing as mp

    import pandas as pd

    from scf_engine import policies
    from scf_engine.credit import decide
    from scf_engine.ingest.requests import requests_frame
    from scf_engine.memo.context import Provenance, _BatchShared

    world = _load()
    data, models = world["data"], world["models"]
    firms = data.table.index[data.table["history_months"].notna()][:n]
    if len(firms) < n:
        raise RuntimeError(f"only {len(firms)} scorable firms at {world['as_of']}; need {n}")
    t0 = time.perf_counter()
    decisions = decide(data, models, policies.load_all(), requests_frame(pd.DataFrame({"firm_id": firms})),
                       dataset=world["dataset"], consents=world["consents"])
    world.update(decisions=decisions, shared=_BatchShared(decisions, data, models),
                 provenance=Provenance({k: {"version": "1", "run_id": "0" * 32} for k in models}, "0" * 32, "bench-explain",
                                       "sqlite:///mlflow.db"))
    batch_s = time.perf_counter() - t0
    _W["world"] = world  # inherited by the forked workers
    rows = list(decisions.limits.index[decisions.scored])
    out_dir = Path(tempfile.mkdtemp(prefix="memos_", dir=DATA))
    t1 = time.perf_counter()
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(str(out_dir), style)) as pool:
        results = pool.map(_one_memo, rows, chunksize=4)
    wall = time.perf_counter() - t1
    examples = DATA / "memo_examples"
    shutil.rmtree(examples, ignore_errors=True)
    shutil.copytree(out_dir / "00", examples) if (out_dir / "00").exists() else None
    shutil.rmtree(out_dir, ignore_errors=True)
    stages = {}
    for times, _ in results:
        for k, v in times.items():
            stages[k] = stages.get(k, 0.0) + v
    sizes = {f: statistics.mean(s[f] for _, s in results) for f in ("html", "pdf", "md")}
    return {"memos": len(rows), "workers": workers, "memo_wall_s": wall, "batch_explain_s": batch_s,
            "stage_cpu_s": stages, "mean_bytes": sizes}


def main():
    make_world()
    world = _load()
    dec = world["dec"]
    trees, leaves = dec.best_iteration_, dec.booster_.params.get("num_leaves", "?")
    # the two routes agree before we time them
    from scf_engine.explain import contributions

    X = _rows(world, 2_000)
    native = contributions(dec, X, "native").to_numpy()
    diff = max(float(np.abs(native - contributions(dec, X, m).to_numpy()).max())
               for m in ("pred_contrib", "treeshap", "shap_internal"))
    del world

    rows = []
    res = {}
    for method, what in (("native", "the product's: pred_contrib once per split pattern of each tree"),
                         ("pred_contrib", "LightGBM pred_contrib, the whole booster at once"),
                         ("treeshap", "shap.TreeExplainer(booster)"), ("shap_internal", "shap's own TreeSHAP")):
        runs = [measure("bench.bench_explain:explain", method, ROWS, repeats=1) for _ in range(REPEATS)]
        secs = statistics.median(r["explain_s"] for r in runs)
        res[method] = secs
        n = runs[0]["rows"]
        rows.append({"what": what, "method": method, "rows": n, "seconds": secs, "rows_per_s": n / secs,
                     "peak_mb": max(r["peak_mb"] for r in runs),
                     "max_additivity_error": max(r["max_additivity_error"] for r in runs)})
    for r in rows:
        r["ratio"] = res[r["method"]] / res["pred_contrib"]
    show(f"Explanations: {rows[0]['rows']:,} distinct firm-dates (at most {ROWS:,}), de-coupled LightGBM ({trees} trees x "
         f"{leaves} leaves), median of {REPEATS} fresh process(es); ratio = seconds / whole-booster pred_contrib "
         f"seconds (< 1: faster); routes agree to {diff:.1e}",
         rows, "explain")

    if MEMOS <= 0:
        return
    m = measure("bench.bench_explain:memos", MEMOS, WORKERS, "svg", repeats=1)
    b = measure("bench.bench_explain:memos", MEMOS_PNG, WORKERS, "png", repeats=1) if MEMOS_PNG > 0 else None
    stages = m["stage_cpu_s"]
    cpu = sum(stages.values())
    pdf_share = stages.get("pdf", 0.0) / cpu if cpu else float("nan")
    mrows = [{"route": "ours (SVG, shared)", "stage": k, "cpu_s": v, "share": v / cpu, "cpu_s_per_memo": v / MEMOS}
             for k, v in stages.items()]
    mrows.append({"route": "ours (SVG, shared)", "stage": "all (CPU, summed over workers)", "cpu_s": cpu, "share": 1.0,
                  "cpu_s_per_memo": cpu / MEMOS})
    ratio = ""
    if b:
        bcpu = sum(b["stage_cpu_s"].values())
        mrows += [{"route": "baseline (matplotlib PNG)", "stage": k, "cpu_s": v, "share": v / bcpu,
                   "cpu_s_per_memo": v / MEMOS_PNG} for k, v in b["stage_cpu_s"].items()]
        mrows.append({"route": "baseline (matplotlib PNG)", "stage": "all (CPU, summed over workers)", "cpu_s": bcpu,
                      "share": 1.0, "cpu_s_per_memo": bcpu / MEMOS_PNG})
        ratio = (f"; baseline {MEMOS_PNG} memos with matplotlib PNGs: {MEMOS_PNG / b['memo_wall_s']:.2f} memos/s, "
                 f"ratio (baseline CPU per memo / ours) {(bcpu / MEMOS_PNG) / (cpu / MEMOS):.2f}")
    show(f"Memos: {MEMOS:,} firms (HTML+PDF+MD with waterfall, chain picture, paths) in {m['workers']} processes: "
         f"{m['memo_wall_s']:.1f} s wall = {MEMOS / m['memo_wall_s']:.2f} memos/s; batch explanations "
         f"{m['batch_explain_s']:.1f} s; PDF {'DOMINATES' if pdf_share > 0.5 else 'does not dominate'} "
         f"({pdf_share:.0%} of memo CPU); mean sizes HTML {m['mean_bytes']['html'] / 1e3:.0f} kB, "
         f"PDF {m['mean_bytes']['pdf'] / 1e3:.0f} kB, MD {m['mean_bytes']['md'] / 1e3:.1f} kB{ratio}",
         mrows, "explain_memos")


if __name__ == "__main__":
    main()
