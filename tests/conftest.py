"""Shared fixtures: small simulated worlds written once per test session.

Worlds are small (hundreds of firms) so the whole suite stays fast on two cores; the
tests that need statistical power use the ``medium_world`` fixture.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from scf_engine.simulate import WorldConfig, simulate, write_dataset

EXTERNAL = Path(__file__).resolve().parents[2] / "shared" / "external-data"


@pytest.fixture(scope="session")
def small_world_dir(tmp_path_factory) -> Path:
    """400 firms, 36 months, CSV."""
    world = simulate(WorldConfig(n_firms=400, seed=7, n_months=36))
    return write_dataset(world, tmp_path_factory.mktemp("small") / "data", fmt="csv")


@pytest.fixture(scope="session")
def medium_world(tmp_path_factory):
    """1,500 firms, 48 months: enough defaults for statistical checks."""
    world = simulate(WorldConfig(n_firms=1500, seed=11))
    path = write_dataset(world, tmp_path_factory.mktemp("medium") / "data", fmt="compact")
    return world, path


def write_csv(folder: Path, name: str, rows: list[dict] | pd.DataFrame, encoding: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    path = folder / f"{name}.csv"
    df.to_csv(path, index=False, encoding=encoding)
    return path
