"""Plain state of the fitted models: what a registered model stores instead of a pickle.

Every estimator has ``get_state() -> dict`` (JSON-able: constructor parameters and fitted
attributes as numbers, lists and dicts; LightGBM's booster as its own text format) and
``from_state(state)``. The state names a model *kind*, never a Python class: the kind is
mapped to the class here, so a class may move or be renamed (change :data:`KINDS`) and
every registered version still loads. The served model
(:mod:`scf_engine.learners.pyfunc_model`) computes the PD from the same state without
the engine.

On disk (:func:`save_state`): ``state.json``, and for LightGBM ``booster.txt`` (the
booster's model string, kept out of the JSON so it stays LightGBM's own readable format).
"""

from __future__ import annotations

import json
from pathlib import Path

from scf_engine.learners.jiangyin import JiangyinGrading
from scf_engine.learners.lgbm import DecoupledModel, HybridModel
from scf_engine.learners.pyfunc_model import STATE_FORMAT, load_state
from scf_engine.propagation import CorePropagation

KINDS = {"decoupled": DecoupledModel, "hybrid": HybridModel, "jiangyin": JiangyinGrading, "propagation": CorePropagation}
STATE_FILE = "state.json"
BOOSTER_FILE = "booster.txt"


def kind_of(model) -> str:
    for kind, cls in KINDS.items():
        if type(model) is cls:
            return kind
    raise TypeError(f"no model kind for {type(model).__name__}: known kinds are {sorted(KINDS)}")


def get_state(model) -> dict:
    """``{"format", "kind", "params", "fitted"}`` for a fitted model of a known kind."""
    return {"format": STATE_FORMAT, "kind": kind_of(model), **model.get_state()}


def from_state(state: dict):
    """The fitted estimator of ``state["kind"]``."""
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"model state format {state.get('format')!r}: this engine reads {STATE_FORMAT}")
    kind = state.get("kind")
    if kind not in KINDS:
        raise ValueError(f"model state of unknown kind {kind!r}: known kinds are {sorted(KINDS)}")
    return KINDS[kind].from_state(state)


def save_state(model, folder: Path | str) -> dict[str, Path]:
    """Write the model's state under ``folder``; returns the files by artifact name
    (``state``, and ``booster`` for LightGBM)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = get_state(model)
    files = {"state": folder / STATE_FILE}
    booster = state["fitted"].pop("booster", None)
    if booster is not None:
        files["booster"] = folder / BOOSTER_FILE
        files["booster"].write_text(booster, encoding="utf-8")
    files["state"].write_text(json.dumps(state, indent=1, ensure_ascii=False), encoding="utf-8")
    return files


def read_state(state_path: Path | str, booster_path: Path | str | None = None) -> dict:
    """The state written by :func:`save_state` (booster text put back in)."""
    return load_state(state_path, booster_path)


def load(state_path: Path | str, booster_path: Path | str | None = None):
    """The fitted estimator saved by :func:`save_state`."""
    return from_state(read_state(state_path, booster_path))
