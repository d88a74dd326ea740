"""Training on a 10,000-firm world (issue 18's target: under 10 minutes on 2 cores).

``scf train``'s pipeline (snapshots, the propagation, de-coupled, hybrid and rule models,
the out-of-time evaluation, MLflow logging and registration) on the default world
(``WorldConfig()``: 10,000 firms, seed 42; ``BENCH_TRAIN_FIRMS`` for another size), one
fresh process each, into a fresh SQLite store. Baseline in the same run: the same
pipeline with ``calibration_folds: 1`` (one early-stopping and calibration split, main
before cross-fitting) through a copy of ``models/`` (``SCF_MODELS_DIR``); ratio = this
code's seconds over the baseline's. CPU seconds are the process's own (every thread).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from bench.harness import measure, show

N_FIRMS = int(os.environ.get("BENCH_TRAIN_FIRMS", 10000))
ROOT = Path("out/bench/train").resolve()
TARGET_S = 600


def world() -> Path:
    """The world's dataset, written once (cached under out/bench/train)."""
    from scf_engine.simulate import WorldConfig, simulate, write_dataset

    data = ROOT / f"world_{N_FIRMS}_42"
    if not (data / "firms.parquet").exists():
        write_dataset(simulate(WorldConfig(n_firms=N_FIRMS, seed=42)), data, fmt="parquet")
    return data


def single_split_policies() -> Path:
    """A copy of the shipped policies with one calibration split (the baseline)."""
    from scf_engine.policies import policy_dir

    folder = ROOT / "models_single_split"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(policy_dir(), folder)
    path = folder / "lightgbm.yaml"
    text, n = re.subn(r"(?m)^calibration_folds:\s*\d+", "calibration_folds: 1", path.read_text())
    path.write_text(text if n else text + "\ncalibration_folds: 1\n")
    return folder


def run(variant: str) -> dict:
    from scf_engine import pipelines

    home = ROOT / variant
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    cpu = time.process_time()
    res = pipelines.train(world(), tracking_uri=f"sqlite:///{home / 'mlflow.db'}", out_dir=home / "train",
                          audit_log=home / "audit.jsonl")
    overall = res.evaluation["overall"].set_index("model")
    return {"cpu_s": time.process_time() - cpu, "test_rows": int(overall["n"].max()),
            "bayes_fraction": {m: round(float(overall.loc[m, "bayes_fraction"]), 3) for m in ("pd_decoupled", "pd_hybrid")
                               if m in overall.index and "bayes_fraction" in overall}}


def main():
    world()  # written before the clock starts
    rows, base = [], None
    for variant, env in (("single split (calibration_folds: 1)", {"SCF_MODELS_DIR": str(single_split_policies())}),
                         ("cross-fitted (models/ as shipped)", {})):
        r = measure("bench.bench_train:run", "single" if env else "cross", repeats=1, env=env)
        base = base or r["seconds"]
        rows.append({"firms": N_FIRMS, "variant": variant, "seconds": r["seconds"], "cpu_s": r["cpu_s"],
                     "peak_mb": r["peak_mb"], "ratio": r["seconds"] / base, "test_rows": r["test_rows"],
                     "bayes_fraction (dec, hyb)": str(r["bayes_fraction"]), "target (600 s)": "met" if r["seconds"] < TARGET_S else "missed"})
    show(f"scf train on a {N_FIRMS:,}-firm world (one fresh process each)", rows, "train")


if __name__ == "__main__":
    main()
