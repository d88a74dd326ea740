"""Batch scoring: a 10,000-firm batch end to end, and 1,000,000 firms scored and limited.

1. **10,000-firm batch, end to end** (target: under 2 minutes on 2 cores): ``scf score``'s
   pipeline on a simulated 12,000-firm world whose models were trained once (cached under
   out/bench/score/): load and check the dataset, snapshot, graph and flow features,
   champion models from MLflow, PDs, limits, reasons, memos (HTML + Markdown; PDF is
   measured separately on 200 memos and extrapolated, because WeasyPrint dominates),
   the MLflow run and the audit entry.
2. **1,000,000 firms scored and limited, no memos**: the decision core itself
   (:func:`scf_engine.credit.decide`: eligibility, each model's PD, final PD, score and
   grade, eligible receivables, limit policy, SHAP reason codes) on a 1,000,000-firm
   snapshot resampled from the 12,000-firm world's (feature rows and chain nodes, each
   copy a distinct firm). The graph and flow-feature stages that produce such rows are
   benchmarked in bench_graph / bench_features. Caveat since SHAP is asked once per split
   pattern of each tree (:mod:`scf_engine.learners.treeshap`): the copies repeat their
   rows' patterns, so this row understates the SHAP a million distinct firms would cost
   (bench_monitor's 100,000-firm world and bench_explain's distinct rows measure it).

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
    store = tracking.Store(uri)
    if store.model_version("hybrid", "champion") is None:
        pipelines.train(data, tracking_uri=uri, out_dir=ROOT / "train")
        versions = {k: store.model_version(k, "challenger") for k in tracking.MODEL_KINDS}
        pipelines.promote(store, versions, tracking.MODEL_KINDS)
    batch = ROOT / "batch_10000.csv"
    if not batch.exists():
        firms = pd.read_parquet(data / "firms.parquet")
        ids = firms.loc[~firms["is_core"], "firm_id"].sort_values().head(10_000)
        pd.DataFrame({"firm_id": ids, "requested_amount": ""}).to_csv(batch, index=False)
        firms.loc[~firms["is_core"], ["firm_id"]].assign(granted_on="2020-01-01", expires_on="").to_csv(ROOT / "consents.csv", index=False)
    return data, uri, batch


def end_to_end(formats: str):
    from scf_engine.pipelines import score

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


def _resampled(loaded, n_rows: int):
    """A snapshot of ``n_rows`` distinct firms resampled from the loaded one: feature rows,
    chain nodes and register rows copied under new ids (no edges: no receivables back
    their limits, as for firms new to the registry)."""
    import numpy as np
    import pandas as pd

    from scf_engine.assemble import SnapshotData
    from scf_engine.dataset import Dataset
    from scf_engine.graph import Chain

    data, ds = loaded.data, loaded.dataset
    rng = np.random.default_rng(0)
    pick = data.table.index[rng.integers(0, len(data.table), n_rows)]
    ids = pd.Index([f"F{i:08d}" for i in range(n_rows)], name="firm_id")
    table = data.table.loc[pick].set_axis(ids)
    nodes = data.chain.nodes.loc[pick].set_axis(ids)
    firms = ds.firms.set_index("firm_id").loc[pick].set_axis(ids).reset_index()
    edges = data.chain.edges.iloc[:0]
    big = Dataset(firms=firms, receivables=ds.receivables.iloc[:0], flows=ds.flows.iloc[:0], defaults=ds.defaults.iloc[:0])
    return SnapshotData(data.as_of, data.snapshot, Chain(data.as_of, edges, nodes), table), big, ids


def scoring_core(n_rows: int):
    """The decision core (``credit.decide``) on ``n_rows`` resampled firms, every one
    with a valid consent; times the call alone."""
    import time

    import pandas as pd

    from scf_engine.credit import decide
    from scf_engine.ingest.requests import requests_frame
    from scf_engine.pipelines.score import load_for_decisions

    data, uri, _ = prepare()
    loaded = load_for_decisions(data, consents=ROOT / "consents.csv", tracking_uri=uri)
    snap, big, ids = _resampled(loaded, n_rows)
    consents = pd.DataFrame({"firm_id": ids, "granted_on": pd.Timestamp("2020-01-01"), "expires_on": pd.NaT})
    requests = requests_frame(pd.DataFrame({"firm_id": ids}))
    t = time.perf_counter()
    d = decide(snap, loaded.models, loaded.pols, requests, dataset=big, consents=consents, scale=loaded.scale)
    seconds = time.perf_counter() - t
    lim = d.limits
    return {"rows": n_rows, "core_s": seconds, "scored": int(d.scored.sum()),
            "approved": int((lim["decision"] == "approve").sum()), "reasons": int(lim["reasons"].str.len().gt(0).sum())}


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
        rows.append({"what": "decision core (credit.decide), no memos", "firms": n, "seconds": r["core_s"],
                     "firms_per_s": n / r["core_s"], "peak_mb": r["peak_mb"],
                     "ratio": (r["core_s"] / n) / (base["core_s"] / 10_000),
                     "note": f"{r['scored']} scored, {r['approved']} approved"})
    show("Batch scoring (fresh process each; ratio = per-firm cost / per-firm cost at 10,000)", rows, "score")


if __name__ == "__main__":
    main()
