"""Batch scoring: a 10,000-firm batch end to end, and 1,000,000 firms scored and limited.

1. **10,000-firm batch, end to end** (target: under 2 minutes on 2 cores): ``scf score``'s
   pipeline on a simulated 12,000-firm world whose models were trained once (cached under
   out/bench/score/): load and check the dataset, snapshot, graph and flow features,
   champion models from MLflow, PDs, limits, reasons, memos (HTML + Markdown; PDF is
   measured separately on 200 memos and extrapolated, because WeasyPrint dominates),
   the MLflow run and the audit entry.
2. **1,000,000 firms scored and limited, no memos**: the scoring core (each model's PD,
   final PD, score and grade, limit policy, SHAP reason codes) on 1,000,000 feature rows
   resampled from the 12,000-firm world's snapshot. The graph and flow-feature stages that
   produce such rows are benchmarked in bench_graph / bench_features.

Baseline in the same run: the same scoring core on 10,000 rows; "ratio" is the
per-firm cost at scale over the per-firm cost at 10,000 (1.0 = linear).
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.harness import measure, show

ROOT = Path("out/bench/score").resolve()
N_FIRMS = int(os.environ.get("BENCH_SCORE_FIRMS", 12000))
BIG = int(os.environ.get("BENCH_SCORE_ROWS", 1_000_000))


def prepare():
    """Simulate and train once; returns (data dir, tracking uri, batch csv)."""
    import pandas as pd

    from scf_engine import pipelines, tracking
    from scf_engine.simulate import WorldConfig, simulate, write_dataset

    data = ROOT / f"world_{N_FIRMS}"
    uri = f"sqlite:///{ROOT / 'mlflow.db'}"
    if not (data / "firms.parquet").exists():
        write_dataset(simulate(WorldConfig(n_firms=N_FIRMS, seed=5)), data, fmt="parquet")
    tracking.configure(uri)
    if tracking.model_version_info("hybrid", "champion") is None:
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            pipelines.train(data, tracking_uri=uri, out_dir=ROOT / "train")
            for kind in tracking.MODEL_KINDS:
                tracking.set_alias(kind, "champion", tracking.model_version_info(kind, "challenger")["version"])
        finally:
            os.chdir(cwd)
    batch = ROOT / "batch_10000.csv"
    if not batch.exists():
        firms = pd.read_parquet(data / "firms.parquet")
        ids = firms.loc[~firms["is_core"], "firm_id"].sort_values().head(10_000)
        pd.DataFrame({"firm_id": ids, "requested_amount": ""}).to_csv(batch, index=False)
        firms.loc[~firms["is_core"], ["firm_id"]].assign(granted_on="2020-01-01", expires_on="").to_csv(ROOT / "consents.csv", index=False)
    return data, uri, batch


def end_to_end(formats: str):
    from scf_engine.scoring import score

    data, uri, batch = prepare()
    out = ROOT / f"run_{formats.replace(',', '_')}"
    r = score(data, batch, out / "limits.csv", tracking_uri=uri, consents=ROOT / "consents.csv",
              memo_formats=tuple(formats.split(",")), audit_log=out / "audit.jsonl")
    return {"rows": len(r.limits), "scored": int(r.limits["pd"].notna().sum()),
            "memos": len(list((out / "memos").glob("*.html"))) if r.memo_dir else 0}


def pdf_only(n: int):
    """Render ``n`` memos' PDFs from the HTML already written (WeasyPrint's share)."""
    from weasyprint import HTML

    html = sorted((ROOT / "run_html_md" / "memos").glob("*.html"))[:n]
    for p in html:
        HTML(filename=str(p)).write_pdf(str(p.with_suffix(".bench.pdf")))
        p.with_suffix(".bench.pdf").unlink()
    return {"rows": len(html)}


def scoring_core(n_rows: int):
    """PDs, final PD, score and grade, limits and reason codes on ``n_rows`` resampled rows."""
    import numpy as np
    import pandas as pd

    from scf_engine import policies, tracking
    from scf_engine.assemble import add_propagation, assemble
    from scf_engine.credit.limits import apply_limits
    from scf_engine.credit.scale import ScoreScale, final_pd, score_frame
    from scf_engine.explain import contributions, format_reasons, reason_codes
    from scf_engine.ingest import load_dataset
    from scf_engine.pipelines import predict_all

    data, uri, _ = prepare()
    tracking.configure(uri)
    models = {k: tracking.load_model(k, "champion")[0] for k in tracking.MODEL_KINDS}
    cache = ROOT / "snapshot_table.parquet"
    if cache.exists():
        table = pd.read_parquet(cache)
    else:
        ds = load_dataset(data)
        T = ds.default_as_of
        sd = assemble(ds, [T], with_labels=False)[T]
        add_propagation({T: sd}, models["propagation"])
        table = sd.table.assign(industry=sd.chain.nodes["industry"].reindex(sd.table.index))
        table.to_parquet(cache)
    rng = np.random.default_rng(0)
    X = table.iloc[rng.integers(0, len(table), n_rows)].reset_index()
    X["firm_id"] = [f"F{i:08d}" for i in range(n_rows)]  # distinct firms
    import time

    t = time.perf_counter()
    pols = policies.load_all()
    preds = predict_all({"decoupled": models["decoupled"], "hybrid": models["hybrid"]}, X)
    fin = final_pd(preds, pols["final_pd"])
    sg = score_frame(fin["pd"], ScoreScale.from_policy(pols["score_scale"]))
    t_pd = time.perf_counter() - t
    lim = apply_limits(pd.DataFrame({"firm_id": X["firm_id"], "pd": fin["pd"], "grade": sg["grade"],
                                     "trade_in_12m": X["trade_in_12m"].fillna(0), "eligible_receivables": 0.0,
                                     "consent_ok": True}), pols["limit_policy"])
    t_lim = time.perf_counter() - t - t_pd
    hyb = models["hybrid"]
    contrib = contributions(hyb, X)
    reasons = reason_codes(contrib, X, hyb.features_)
    text = [format_reasons(r) for r in reasons]
    t_all = time.perf_counter() - t
    return {"rows": n_rows, "core_s": t_all, "pd_s": t_pd, "limits_s": t_lim, "reasons_s": t_all - t_pd - t_lim,
            "approved": int((lim["decision"] == "approve").sum()), "reasons": len(text)}


def main():
    prepare()
    rows = []
    e2e = measure("bench.bench_score:end_to_end", "html,md", repeats=1)
    rows.append({"what": "10,000-firm batch end to end (memos HTML+MD)", "firms": e2e["rows"], "seconds": e2e["seconds"],
                 "firms_per_s": e2e["rows"] / e2e["seconds"], "peak_mb": e2e["peak_mb"], "ratio": float("nan"),
                 "note": f"{e2e['memos']} memos; target < 120 s"})
    pdf = measure("bench.bench_score:pdf_only", 200, repeats=1)
    per_pdf = pdf["seconds"] / max(pdf["rows"], 1)
    rows.append({"what": "PDF memos (WeasyPrint), 200 rendered", "firms": pdf["rows"], "seconds": pdf["seconds"],
                 "firms_per_s": 1 / per_pdf, "peak_mb": pdf["peak_mb"], "ratio": float("nan"),
                 "note": f"10,000 PDFs extrapolated: {per_pdf * e2e['memos']:.0f} s"})
    base = measure("bench.bench_score:scoring_core", 10_000, repeats=3)
    big = measure("bench.bench_score:scoring_core", BIG, repeats=1)
    for r, n in ((base, 10_000), (big, BIG)):
        rows.append({"what": "scoring core (PD, score, grade, limits, reasons), no memos", "firms": n, "seconds": r["core_s"],
                     "firms_per_s": n / r["core_s"], "peak_mb": r["peak_mb"],
                     "ratio": (r["core_s"] / n) / (base["core_s"] / 10_000),
                     "note": f"pd {r['pd_s']:.1f}s, limits {r['limits_s']:.1f}s, reasons {r['reasons_s']:.1f}s"})
    show("Batch scoring (fresh process each; ratio = per-firm cost / per-firm cost at 10,000)", rows, "score")


if __name__ == "__main__":
    main()
