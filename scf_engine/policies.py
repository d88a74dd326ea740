"""The one reader of ``models/``: what a risk committee reviews, schema-checked on load.

Each file in ``models/`` is YAML a person can read and sign off. This module loads them,
checks each against its schema (required keys, types, allowed values) and gives every
loaded policy a content hash, which every MLflow run logs, so a result can always be tied
to the exact policy text it was produced under.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


class PolicyError(ValueError):
    """A policy file does not match its schema."""


@dataclass(frozen=True)
class Policy:
    name: str
    path: Path
    data: dict
    sha256: str

    def __getitem__(self, key):
        return self.data[key]

    def get(self, key, default=None):
        return self.data.get(key, default)


def _require(cond: bool, path: Path, msg: str) -> None:
    if not cond:
        raise PolicyError(f"{path.name}: {msg}")


FEATURE_KINDS = {"panel", "cpty", "firm", "derived", "rank", "code"}
DIRECTIONS = {"increasing", "decreasing", "none"}
FEATURE_SETS = {"decoupled", "hybrid", "registry"}


def _check_features(data: dict, path: Path) -> None:
    _require(isinstance(data.get("features"), list), path, "'features' must be a list")
    seen = set()
    for i, e in enumerate(data["features"]):
        where = f"feature #{i + 1} ({e.get('name', '?')})"
        for key in ("name", "family", "kind", "direction", "sets", "label_en", "label_zh", "definition"):
            _require(key in e, path, f"{where}: missing '{key}'")
        _require(e["kind"] in FEATURE_KINDS, path, f"{where}: kind must be one of {sorted(FEATURE_KINDS)}")
        _require(e["direction"] in DIRECTIONS, path, f"{where}: direction must be one of {sorted(DIRECTIONS)}")
        _require(set(e["sets"]) <= FEATURE_SETS, path, f"{where}: sets must be within {sorted(FEATURE_SETS)}")
        if e["kind"] in ("panel", "cpty", "firm", "derived"):
            _require(isinstance(e.get("expr"), str), path, f"{where}: kind {e['kind']} needs an 'expr'")
        if e["kind"] == "rank":
            _require(isinstance(e.get("of"), str), path, f"{where}: kind rank needs 'of'")
        if e["kind"] == "code":
            _require(isinstance(e.get("function"), str), path, f"{where}: kind code needs 'function'")
        windows = e.get("windows", [None])
        _require(("{w}" in e["name"]) == (windows != [None]), path, f"{where}: '{{w}}' in the name iff 'windows' is given")
        for w in windows:
            name = e["name"].replace("{w}", str(w))
            _require(name not in seen, path, f"duplicate feature name {name!r}")
            seen.add(name)


def _check_master_scale(data: dict, path: Path) -> None:
    from scf_engine.contract import RATINGS

    scale = data.get("ratings")
    _require(isinstance(scale, dict), path, "'ratings' must map each rating to a PD")
    _require(set(scale) == set(RATINGS), path, f"'ratings' must cover exactly {', '.join(RATINGS)}")
    pds = [float(scale[r]) for r in RATINGS]
    _require(all(0 < p < 1 for p in pds), path, "every PD must lie in (0, 1)")
    _require(all(a <= b for a, b in zip(pds, pds[1:])), path, "PDs must not fall as ratings worsen")


def _check_score_scale(data: dict, path: Path) -> None:
    for key in ("base_score", "base_odds", "points_to_double_odds", "min_score", "max_score"):
        _require(isinstance(data.get(key), (int, float)), path, f"'{key}' must be a number")
    _require(data["points_to_double_odds"] > 0, path, "'points_to_double_odds' must be positive")
    _require(data["base_odds"] > 0, path, "'base_odds' must be positive")
    _require(data["min_score"] < data["max_score"], path, "'min_score' must be below 'max_score'")


def _check_lightgbm(data: dict, path: Path) -> None:
    _require(isinstance(data.get("params"), dict), path, "'params' must be a mapping of LightGBM parameters")
    for key in ("num_boost_round", "early_stopping_rounds"):
        _require(isinstance(data.get(key), int), path, f"'{key}' must be an integer")


def _check_propagation(data: dict, path: Path) -> None:
    _require(isinstance(data.get("decay_grid"), list) and data["decay_grid"], path, "'decay_grid' must be a non-empty list")
    _require(all(0 < float(d) < 1 for d in data["decay_grid"]), path, "every decay must lie in (0, 1)")


def _check_limit_policy(data: dict, path: Path) -> None:
    from scf_engine.contract import GRADES

    for key in ("flow_share_by_grade", "advance_rate", "buyer_rating_floor", "pd_decline_above",
                "expected_loss_budget_share", "lgd"):
        _require(key in data, path, f"missing '{key}'")
    from scf_engine.contract import RATINGS

    _require(set(data["flow_share_by_grade"]) == set(GRADES), path, f"'flow_share_by_grade' must cover {', '.join(GRADES)}")
    _require(all(0 <= float(v) <= 1 for v in data["flow_share_by_grade"].values()), path, "flow shares must lie in [0, 1]")
    for key in ("advance_rate", "pd_decline_above", "expected_loss_budget_share", "lgd"):
        _require(0 <= float(data[key]) <= 1, path, f"'{key}' must lie in [0, 1]")
    _require(data["buyer_rating_floor"] in RATINGS, path, "'buyer_rating_floor' must be a rating of the master scale")
    for key in ("max_expected_loss_cny", "max_limit_cny", "round_to_cny"):
        if key in data:
            _require(float(data[key]) >= 0, path, f"'{key}' must be >= 0")


def _check_final_pd(data: dict, path: Path) -> None:
    _require(data.get("method") in ("champion", "blend"), path, "'method' must be champion or blend")
    if data["method"] == "champion":
        fb = data.get("fallback")
        _require(isinstance(fb, list) and fb and set(fb) <= {"hybrid", "decoupled", "propagation"}, path,
                 "'fallback' must list models among hybrid, decoupled, propagation")
    if data["method"] == "blend":
        _require(isinstance(data.get("weights"), dict), path, "a blend needs 'weights'")


SCHEMAS = {
    "features": _check_features,
    "master_scale": _check_master_scale,
    "score_scale": _check_score_scale,
    "lightgbm": _check_lightgbm,
    "propagation": _check_propagation,
    "limit_policy": _check_limit_policy,
    "final_pd": _check_final_pd,
}


def load(name: str, models_dir: Path | None = None) -> Policy:
    """Load ``models/<name>.yaml`` and check it against its schema."""
    path = Path(models_dir or MODELS_DIR) / f"{name}.yaml"
    if not path.is_file():
        raise PolicyError(f"{path}: no such policy file")
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path.name}: not valid YAML: {str(exc).splitlines()[0]}") from None
    _require(isinstance(data, dict), path, "top level must be a mapping")
    if name in SCHEMAS:
        SCHEMAS[name](data, path)
    return Policy(name, path, copy.deepcopy(data), hashlib.sha256(raw).hexdigest())


def load_all(models_dir: Path | None = None) -> dict[str, Policy]:
    """Every policy file in ``models/``, checked."""
    d = Path(models_dir or MODELS_DIR)
    return {p.stem: load(p.stem, d) for p in sorted(d.glob("*.yaml"))}


def fingerprint(policies: dict[str, Policy]) -> dict[str, Any]:
    """``{name: sha256}``, what every run logs."""
    return {name: p.sha256 for name, p in sorted(policies.items())}
