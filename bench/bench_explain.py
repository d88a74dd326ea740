"""Explanations for 100,000 firms and credit memos for 1,000 firms.

Model: the de-coupled LightGBM trained by the policy (``models/lightgbm.yaml``) on a
simulated world of ``N_FIRMS`` firms; the 100,000 rows are its training and test feature
rows resampled with replacement (explanation cost depends on the trees, not on where the
rows come from).

* **explanations**: path-dependent TreeSHAP on the calibrated log-odds, on the same
  model and rows: LightGBM's own ``pred_contrib`` (``method="native"``) and
  ``shap.TreeExplainer`` (``method="treeshap"``). For a LightGBM booster the latter hands
  the work to LightGBM's ``pred_contrib`` (shap's "shortcut"), so a third row times
  shap's own C++ TreeSHAP (``method="shap_internal"``), the one a shap user gets for
  models shap has no shortcut for. Seconds are the explanation call alone,
  not loading, in one fresh process per method (``BENCH_EXPLAIN_REPEATS`` for a median
  of several; one keeps the whole benchmark within ~15 minutes on 2 cores); additivity
  is checked on every row.
  "ratio" is a route's seconds / pred_contrib seconds (> 1: pred_contrib faster).
* **memos**: one memo per firm, each with its SHAP waterfall, chain picture, propagation
  paths, reasons, and the three files (HTML, PDF through WeasyPrint, Markdown), in
  ``WORKERS`` processes (default: all cores), the way ``scf score`` makes them: pictures
  as inline SVG (one chain layout per core, shared), path decompositions sharing one
  :class:`~scf_engine.explain.PathContext`. Baseline in the same run: the first design,
  matplotlib PNG pictures and a full path decomposition per firm, on ``BENCH_MEMOS_PNG``
  firms (default 100; it costs ~1.2 CPU seconds a memo); "ratio" is the baseline's CPU
  seconds per memo / ours. Stage shares are of the CPU seconds spent per memo summed
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
    """Simulate, assemble, fit the propagation model and the de-coupled LightGBM; keep
    what explanations and memos need (made once)."""
    if WORLD.is_file():
        return WORLD
    from scf_engine.assemble import assemble, split_dates
    from scf_engine.ingest import load_dataset
    from scf_engine.pipelines import fit_propagation_and_decoupled
    from scf_engine.simulate import WorldConfig, simulate, write_dataset

    DATA.mkdir(parents=True, exist_ok=True)
    path = write_dataset(simulate(WorldConfig(n_firms=N_FIRMS, seed=5, n_months=36)), DATA / f"data_{N_FIRMS}")
    ds = load_dataset(path)
    dates = ds.snapshot_dates()
    data = assemble(ds, dates)
    train, test = split_dates(dates, n_test=1)
    prop, dec, tr, te = fit_propagation_and_decoupled(data, train, test)
    ok = tr.history_months.notna()
    world = {"as_of": test[0], "chain": data[test[0]].chain, "prop": prop, "dec": dec,
             "rows": pd_concat([tr[ok], te[te.history_months.notna()]])[dec.features_ + ["industry"]],
             "tr": tr[ok][dec.features_ + ["industry"]], "te": te[te.history_months.notna()], "quarantine": ds.report}
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


def explain(method: str, n: int):
    """Contributions for ``n`` resampled rows; times the explanation call alone."""
    from scf_engine.explain import additivity_error, contributions

    world = _load()
    X = _rows(world, n)
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


def _one_memo(task):
    """Build one firm's context and render it, stage by stage as ``render_memo`` does
    (view -> HTML -> PDF from that HTML -> Markdown); per-stage CPU seconds."""
    import pandas as pd

    from scf_engine.explain import path_decomposition, path_rows
    from scf_engine.explain.plots import waterfall_plot
    from scf_engine.memo import chain_position, firm_record, neighbourhood_png
    from scf_engine.memo.render import _is_svg, memo_stem, render_html, render_markdown, view, write_pdf
    from scf_engine.memo.svg import waterfall_svg

    k, fid, contrib_row, x_row, reasons, model_pds, final = task
    w = _W["world"]
    chain, prop, frame = w["chain"], w["prop"], w["frame"]
    svg = _W["style"] == "svg"
    times = {}
    t = time.process_time()
    covered = bool(frame.at[fid, "covered"]) if fid in frame.index else False
    if not covered:
        paths = None
    elif svg:
        paths = path_rows(prop, chain, fid, max_len=4, context=w["paths_ctx"])
    else:
        paths = path_decomposition(prop, chain, fid, max_len=4, frame=frame)
    times["paths"] = time.process_time() - t
    t = time.process_time()
    wf = waterfall_svg(contrib_row, x_row, w["labels"]) if svg else waterfall_plot(contrib_row, x_row, None, lang="zh", dpi=90)
    times["waterfall"] = time.process_time() - t
    t = time.process_time()
    nb = w["pictures"].svg(fid) if svg else neighbourhood_png(chain, fid)
    times["chain_picture"] = time.process_time() - t
    dq = [{"file": r["file"], "line": r["line"], "column": r["column"], "reason": r["reason"]}
          for r in w["quarantine"].rows_touching(fid).head(20).to_dict("records")]
    ctx = {
        "firm": firm_record(chain, fid), "as_of": w["as_of"], "chain_position": chain_position(chain, fid),
        f"neighbourhood_{_W['style']}": nb, "models": model_pds, "final": final, "reasons": reasons, f"waterfall_{_W['style']}": wf,
        "propagation_paths": paths, "data_quality": dq,
        "mlflow": {"run_id": "0" * 32, "experiment": "bench-explain", "tracking_uri": "sqlite:///mlflow.db"},
        "generated_at": pd.Timestamp.now(),
    }
    out = _W["out"] / f"{k % 50:02d}"  # keep directories small
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
    if k >= 3:  # keep three examples, drop the rest as we go (1,000 memos are ~1 GB)
        for p in out.glob(f"{stem}*"):
            p.unlink()
    return times, sizes


def memos(n: int, workers: int, style: str = "svg"):
    """``n`` memos in ``workers`` processes: wall seconds, and per-stage CPU seconds.
    ``style``: ``svg`` (what ``scf score`` does) or ``png`` (the first design)."""
    import multiprocessing as mp

    import pandas as pd

    from scf_engine.explain import contributions, path_context, reason_codes
    from scf_engine.features.catalogue import load_catalogue
    from scf_engine.memo.svg import ChainPictures
    from scf_engine.propagation.transmission import transmission

    world = _load()
    chain, prop, dec = world["chain"], world["prop"], world["dec"]
    te = world["te"].set_index("firm_id")
    firms = te.index[:n]
    if len(firms) < n:
        raise RuntimeError(f"only {len(firms)} scorable firms at {world['as_of']}; need {n}")
    t0 = time.perf_counter()
    X = te.loc[firms]
    contrib = contributions(dec, X)
    reasons = reason_codes(contrib, X, dec.features_, reference=world["tr"])
    p_dec = dec.predict_proba(X)[:, 1]
    frame = prop.predict_frame(chain)
    world["frame"] = frame
    if style == "svg":  # shared by the batch, as scoring does
        world["paths_ctx"] = path_context(prop, chain, tr=transmission(chain), frame=frame)
        world["pictures"] = ChainPictures(chain, pd.Series(p_dec, index=firms))
        world["labels"] = {s.name: s.label_en for s in load_catalogue().specs}
    batch_s = time.perf_counter() - t0
    _W["world"] = world  # inherited by the forked workers
    tasks = []
    for k, fid in enumerate(firms):
        pdv = float(p_dec[k])
        pprop = frame.at[fid, "pd"] if fid in frame.index else np.nan
        score = float(np.clip(100 - 12 * np.log2(max(pdv, 1e-6) / 0.0003), 0, 100))
        grade = "premium" if score >= 90 else "grade_1" if score >= 75 else "alternate"
        limit = float(round(min(0.3 * X.at[fid, "trade_in_12m"], 5e6) * (score >= 60), -3))
        final = {"pd": pdv, "score": score, "grade": grade, "limit_cny": limit,
                 "decision": "approve" if score >= 75 else "review" if score >= 60 else "decline",
                 "limit_basis": [f"Flows: 30% of trade inflow, last 12 months (¥{X.at[fid, 'trade_in_12m']:,.0f})",
                                 "Product cap: ¥5,000,000", "Bench memo: illustrative limit"]}
        models = [{"name": "propagation", "pd": None if np.isnan(pprop) else float(pprop), "version": "1",
                   "run_id": "1" * 32, "reason": None if not np.isnan(pprop) else "no supply path to a core"},
                  {"name": "decoupled", "pd": pdv, "version": "1", "run_id": "2" * 32}]
        tasks.append((k, fid, contrib.loc[fid], X.loc[fid], reasons[fid], models, final))
    out_dir = Path(tempfile.mkdtemp(prefix="memos_", dir=DATA))
    t1 = time.perf_counter()
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(str(out_dir), style)) as pool:
        results = pool.map(_one_memo, tasks, chunksize=4)
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
    return {"memos": n, "workers": workers, "memo_wall_s": wall, "batch_explain_s": batch_s,
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
    diff = max(float(np.abs(native - contributions(dec, X, m).to_numpy()).max()) for m in ("treeshap", "shap_internal"))
    del world

    rows = []
    res = {}
    for method, what in (("native", "LightGBM pred_contrib"), ("treeshap", "shap.TreeExplainer(booster)"),
                         ("shap_internal", "shap's own TreeSHAP")):
        runs = [measure("bench.bench_explain:explain", method, ROWS, repeats=1) for _ in range(REPEATS)]
        secs = statistics.median(r["explain_s"] for r in runs)
        res[method] = secs
        rows.append({"what": what, "method": method, "rows": ROWS, "seconds": secs, "rows_per_s": ROWS / secs,
                     "peak_mb": max(r["peak_mb"] for r in runs),
                     "max_additivity_error": max(r["max_additivity_error"] for r in runs)})
    for r in rows:
        r["ratio"] = res[r["method"]] / res["native"]
    faster = "pred_contrib" if res["native"] < res["treeshap"] else "shap.TreeExplainer"
    show(f"Explanations: {ROWS:,} firms, de-coupled LightGBM ({trees} trees x {leaves} leaves), median of {REPEATS} "
         f"fresh process(es); ratio = seconds / pred_contrib seconds; faster of the two asked for: {faster}; "
         f"routes agree to {diff:.1e}",
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
