"""The one reader of ``models/``: what a risk committee reviews, schema-checked on load.

Each file in ``models/`` is YAML a person can read and sign off. This module loads them,
checks each against its schema (required keys, types, allowed values, and no key the
engine does not read: a typo must not pass for a policy) and gives every loaded policy a
content hash, which every MLflow run logs, so a result can always be tied to the exact
policy text it was produced under.

The files ship inside the package (``scf_engine/models/``; the repository's top-level
``models/`` points there), so an installed wheel finds its own policies. A bank that
keeps its reviewed policies elsewhere sets ``SCF_MODELS_DIR`` to that folder.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

MODELS_DIR = Path(__file__).resolve().parent / "models"


def policy_dir() -> Path:
    """``$SCF_MODELS_DIR`` when set, else the policies shipped with the package."""
    env = os.environ.get("SCF_MODELS_DIR")
    return Path(env) if env else MODELS_DIR


from scf_engine.errors import PolicyError  # noqa: E402


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


def as_data(policy: "Policy | Mapping[str, Any]") -> Mapping[str, Any]:
    """The mapping behind a loaded :class:`Policy` or a plain mapping with its keys (what
    tests and what-if runs pass)."""
    return policy.data if isinstance(policy, Policy) else policy


def _only(data: Mapping, allowed, path: Path, where: str = "") -> None:
    unknown = sorted(set(data) - set(allowed))
    _require(not unknown, path, f"{where}unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})" if unknown else "")


FEATURE_KINDS = {"panel", "cpty", "firm", "derived", "rank", "code"}
DIRECTIONS = {"increasing", "decreasing", "none"}
FEATURE_SETS = {"decoupled", "hybrid", "registry"}
FEATURE_KEYS = {"name", "family", "kind", "direction", "sets", "label_en", "label_zh", "definition", "expr", "of",
                "function", "windows", "model"}


def _check_features(data: dict, path: Path) -> None:
    _require(isinstance(data.get("features"), list), path, "'features' must be a list")
    _require(isinstance(data.get("windows"), list), path, "'windows' must list the default windows (months)")
    seen = set()
    for i, e in enumerate(data["features"]):
        where = f"feature #{i + 1} ({e.get('name', '?')})"
        _only(e, FEATURE_KEYS, path, f"{where}: ")
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
    _require(isinstance(data.get("monotone", True), bool), path, "'monotone' must be true or false")
    # Platt scaling is linear in log-odds, so SHAP contributions stay additive; isotonic
    # calibration would break that, so it is not offered
    _require(data.get("calibration", "platt") == "platt", path, "'calibration' must be platt (the one method that keeps SHAP additive)")
    folds = data.get("calibration_folds", 1)
    _require(isinstance(folds, int) and not isinstance(folds, bool) and 1 <= folds <= 20, path,
             "'calibration_folds' must be an integer from 1 (one split) to 20")
    if "tuning" in data:
        _check_tuning(data["tuning"], path)


def _check_tuning(t: Any, path: Path) -> None:
    _require(isinstance(t, dict), path, "'tuning' must be a mapping")
    _only(t, {"n_trials", "timeout_s", "folds", "seed", "space"}, path, "tuning: ")
    for key in ("n_trials", "folds", "seed"):
        _require(isinstance(t.get(key), int) and t[key] >= 1, path, f"tuning: '{key}' must be an integer >= 1")
    _require(isinstance(t.get("timeout_s"), (int, float)) and t["timeout_s"] > 0, path, "tuning: 'timeout_s' must be a positive number")
    _require(isinstance(t.get("space"), dict) and t["space"], path, "tuning: 'space' must be a non-empty mapping")
    for name, spec in t["space"].items():
        ok = isinstance(spec, list) and len(spec) in (2, 3) and all(isinstance(v, (int, float)) for v in spec[:2])
        _require(ok and spec[0] < spec[1] and (len(spec) == 2 or spec[2] in ("log", "int")), path,
                 f"tuning.space.{name}: must be [low, high] or [low, high, log|int] with low < high")


def _check_propagation(data: dict, path: Path) -> None:
    _require(isinstance(data.get("decay_grid"), list) and data["decay_grid"], path, "'decay_grid' must be a non-empty list")
    _require(all(0 < float(d) < 1 for d in data["decay_grid"]), path, "every decay must lie in (0, 1)")
    for key in ("core_evidence", "standalone_evidence"):
        _require(isinstance(data.get(key), list), path, f"'{key}' must be a list of registry features")
    _require(float(data.get("C", 0)) > 0, path, "'C' must be a positive number")
    _require(isinstance(data.get("max_tier"), int) and data["max_tier"] >= 1, path, "'max_tier' must be an integer >= 1")
    _require(float(data.get("stress_equity_months", -1)) >= 0, path, "'stress_equity_months' must be a number >= 0")


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
    _require(data.get("off_whitelist", "decline") in ("decline", "review"), path, "'off_whitelist' must be decline or review")
    w = data.get("earmark_window_days", 0)
    _require(isinstance(w, int) and w >= 0, path, "'earmark_window_days' must be an integer >= 0")
    m = data.get("silent_account_review_months")
    _require(m is None or (isinstance(m, int) and not isinstance(m, bool) and m >= 1), path,
             "'silent_account_review_months' must be an integer >= 1 (or empty: never)")


FINAL_PD_MODELS = ("hybrid", "decoupled", "propagation")


def _check_final_pd(data: dict, path: Path) -> None:
    _require(data.get("method") in ("champion", "blend"), path, "'method' must be champion or blend")
    floor = data.get("floor", 0.0)
    _require(isinstance(floor, (int, float)) and not isinstance(floor, bool) and 0 <= floor < 0.01, path,
             "'floor' must be a PD in [0, 0.01) (the regulatory minimum, e.g. 0.0003)")
    if data["method"] == "champion":
        fb = data.get("fallback")
        _require(isinstance(fb, list) and bool(fb) and set(fb) <= set(FINAL_PD_MODELS), path,
                 f"'fallback' must be a non-empty list within {', '.join(FINAL_PD_MODELS)}")
    w = data.get("weights")
    if data["method"] == "blend" or w is not None:
        _require(isinstance(w, dict) and bool(w) and set(w) <= set(FINAL_PD_MODELS), path,
                 f"'weights' must map models within {', '.join(FINAL_PD_MODELS)} to weights")
        _require(all(float(v) >= 0 for v in w.values()) and sum(float(v) for v in w.values()) > 0, path,
                 "weights must be >= 0 with a positive sum")


SEVERITIES = ("low", "medium", "high")
AUTHENTICITY_SECTIONS = {"rings": {"window_days", "min_parties", "max_parties"}, "round_trip": {"days", "tolerance"},
                         "pass_through": {"days"}, "scatter_gather": {"days", "min_fan"}, "bursts": {"days"},
                         "structural_rings": {"max_parties", "chain_days", "chain_tolerance", "walk_floor", "walk_half"},
                         "ring_score": {"temporal", "chain", "structural"}}
ALERT_KEYS = {"name", "label_zh", "label_en", "severity", "feature", "rule"}


def _check_named_rules(items: list, keys: set, path: Path, kind: str) -> None:
    """A list of named rules (authenticity alerts, monitoring signals): exactly ``keys``
    each, a known severity, no name twice."""
    names = set()
    for i, r in enumerate(items):
        where = f"{kind} #{i + 1} ({r.get('name', '?')}): "
        _only(r, keys, path, where)
        _require(set(r) == keys, path, f"{where}needs {', '.join(sorted(keys))}")
        _require(r["severity"] in SEVERITIES, path, f"{where}severity must be one of {', '.join(SEVERITIES)}")
        _require(r["name"] not in names, path, f"duplicate {kind} name {r['name']!r}")
        names.add(r["name"])


def _check_authenticity(data: dict, path: Path) -> None:
    _require(0 <= float(data.get("hop_decay", -1)) < 1, path, "'hop_decay' must lie in [0, 1)")
    _require(float(data.get("hop_growth", -1)) >= 0, path, "'hop_growth' must be >= 0")
    for section, keys in AUTHENTICITY_SECTIONS.items():
        _require(isinstance(data.get(section), dict), path, f"'{section}' must be a mapping")
        _only(data[section], keys, path, f"{section}: ")
        for key in keys:
            _require(float(data[section].get(key, -1)) >= 0, path, f"'{section}.{key}' must be a number >= 0")
    rings = data["rings"]
    _require(3 <= int(rings["min_parties"]) <= int(rings["max_parties"]), path,
             "rings need 3 <= min_parties <= max_parties (a ring passes through at least two other parties)")
    st = data["structural_rings"]
    _require(2 <= int(st["max_parties"]) <= 8, path, "structural_rings.max_parties must lie in [2, 8] (the search "
             "meets in the middle: balls of max_parties / 2 hops)")
    _require(float(st["chain_tolerance"]) < 1, path, "structural_rings.chain_tolerance must lie in [0, 1)")
    _require(float(st["walk_floor"]) < 1, path, "structural_rings.walk_floor must lie in [0, 1)")
    _require(float(st["walk_half"]) > 0, path, "structural_rings.walk_half must be above 0")
    _require(sum(float(v) for v in data["ring_score"].values()) > 0, path, "ring_score needs a weight above 0")
    _require(isinstance(data.get("alerts"), list), path, "'alerts' must be a list")
    _check_named_rules(data["alerts"], ALERT_KEYS, path, "alert")


MONITOR_LEVELS = ("red", "amber", "green")
PD_LEVEL_KEYS = ("amber_rating", "red_rating", "red_persistent_rating", "persist_months")
SIGNAL_KEYS = {"name", "label_zh", "label_en", "severity", "rule", "evidence"}
ESCALATION_KEYS = {"name", "label_zh", "label_en", "severity", "signals", "min_signals", "pd_rating"}


def _check_escalations(items, signals: list, path: Path) -> None:
    """monitoring.yaml's escalations: each combines named signals of the same file (at
    least ``min_signals`` of them, at most as many as it names), optionally at a PD at or
    worse than a rating (checked against the master scale when levels are judged); a name
    that is no signal's, or that a signal already has, is refused."""
    _require(isinstance(items, list), path, "'escalations' must be a list")
    _check_named_rules(items, ESCALATION_KEYS, path, "escalation")
    known = {s.get("name") for s in signals if isinstance(s, dict)}
    for e in items:
        where = f"escalation {e['name']!r}: "
        _require(e["name"] not in known, path, f"{where}a signal has that name already")
        _require(isinstance(e["signals"], list) and e["signals"] and set(e["signals"]) <= known, path,
                 f"{where}signals must be a list of signal names of this file")
        _require(isinstance(e["min_signals"], int) and 1 <= e["min_signals"] <= len(e["signals"]), path,
                 f"{where}min_signals must be an integer from 1 to the number of signals it names")
        _require(e["pd_rating"] is None or isinstance(e["pd_rating"], str), path,
                 f"{where}pd_rating names a rating of master_scale.yaml, or is empty")


EXPLAIN_SCOPES = ("all", "changed")  # monitoring.yaml's explain.scope (pipelines.monitor.explain_scope)


def _check_monitoring(data: dict, path: Path) -> None:
    lv = data.get("levels")
    _require(isinstance(lv, dict) and set(lv) == set(SEVERITIES) and set(lv.values()) <= set(MONITOR_LEVELS), path,
             f"'levels' must map {', '.join(SEVERITIES)} to {', '.join(MONITOR_LEVELS)}")
    _require(isinstance(data.get("pd_step"), (int, float)) and 0 <= data["pd_step"] <= 1, path,
             "'pd_step' must lie in [0, 1]")
    _require(data.get("authenticity_max_level") in MONITOR_LEVELS, path,
             f"'authenticity_max_level' must be one of {', '.join(MONITOR_LEVELS)}")
    pl = data.get("pd_levels")
    _require(isinstance(pl, dict) and set(pl) == set(PD_LEVEL_KEYS), path,
             f"'pd_levels' must give {', '.join(PD_LEVEL_KEYS)}")
    _require(all(isinstance(pl[k], str) for k in PD_LEVEL_KEYS[:3]), path,
             "pd_levels: amber_rating, red_rating and red_persistent_rating name ratings of master_scale.yaml")
    _require(isinstance(pl["persist_months"], int) and pl["persist_months"] >= 1, path,
             "pd_levels.persist_months must be an integer >= 1")
    wl = data.get("watch_list")
    _require(isinstance(wl, dict) and set(wl) == {"share", "min_firms"} and 0 <= float(wl["share"]) < 1
             and isinstance(wl["min_firms"], int) and wl["min_firms"] >= 1, path,
             "'watch_list' must give share in [0, 1) and min_firms, an integer >= 1")
    _require(isinstance(data.get("consent_warn_days"), int) and data["consent_warn_days"] >= 0, path,
             "'consent_warn_days' must be an integer >= 0")
    cd = data.get("core_distress")
    _require(isinstance(cd, dict) and set(cd) == {"min_rise"} and 0 <= float(cd["min_rise"]) <= 1, path,
             "'core_distress' must give min_rise in [0, 1]")
    act = data.get("actions")
    _require(isinstance(act, dict) and set(act) == {"reduce_share", "raise_share", "raise_after_months", "clean_rule"},
             path, "'actions' must give reduce_share, raise_share, raise_after_months and clean_rule")
    _require(0 <= float(act["reduce_share"]) <= 1 and float(act["raise_share"]) >= 0, path,
             "actions: reduce_share in [0, 1], raise_share >= 0")
    _require(isinstance(act["raise_after_months"], int) and act["raise_after_months"] >= 0, path,
             "actions.raise_after_months must be an integer >= 0")
    cr = data.get("credit_repair")
    _require(isinstance(cr, dict) and set(cr) == {"months", "rule"} and cr["months"] in (3, 12), path,
             "'credit_repair' must give months (3 or 12, a catalogue window) and rule")
    dr = data.get("drift")
    _require(isinstance(dr, dict) and set(dr) == {"bins", "epsilon", "psi_amber", "psi_red", "vintage_amber",
                                                  "vintage_red"}, path,
             "'drift' must give bins, epsilon, psi_amber, psi_red, vintage_amber and vintage_red")
    _require(0 < float(dr["vintage_amber"]) <= float(dr["vintage_red"]), path,
             "drift: 0 < vintage_amber <= vintage_red (ratios of observed to expected default rate)")
    _require(isinstance(dr["bins"], int) and dr["bins"] >= 2 and 0 < float(dr["epsilon"]) < 0.01, path,
             "drift: bins an integer >= 2, epsilon in (0, 0.01)")
    _require(isinstance(data.get("signals"), list) and data["signals"], path, "'signals' must be a non-empty list")
    _check_named_rules(data["signals"], SIGNAL_KEYS, path, "signal")
    _check_escalations(data.get("escalations"), data["signals"], path)
    ex = data.get("explain", {"scope": "all"})
    _require(isinstance(ex, dict) and set(ex) == {"scope"} and ex["scope"] in EXPLAIN_SCOPES, path,
             f"'explain' must give scope: one of {', '.join(EXPLAIN_SCOPES)}")


def _check_jiangyin(data: dict, path: Path) -> None:
    g = data.get("grades")
    _require(isinstance(g, dict) and set(g) == {"premium", "grade_1"}, path, "'grades' must give premium and grade_1")
    for name, r in g.items():
        _require(isinstance(r, dict) and set(r) == {"min_a", "max_c"}, path, f"grades.{name} needs min_a and max_c")
        _require(all(isinstance(r[k], int) and 0 <= r[k] <= 13 for k in r), path, f"grades.{name}: counts are 0..13")
    _require(g["premium"]["min_a"] >= g["grade_1"]["min_a"], path, "premium cannot need fewer A than grade_1")
    b = data.get("rank_bands")
    _require(isinstance(b, dict) and set(b) == {"A", "B"} and 0 < float(b["B"]) <= float(b["A"]) < 1, path,
             "'rank_bands' must give A and B percentile floors with 0 < B <= A < 1")
    lr = data.get("loan_record")
    _require(isinstance(lr, dict) and set(lr) == {"b_max_missed", "arrears_gap_months"}, path,
             "'loan_record' must give b_max_missed and arrears_gap_months")
    for key in ("years_in_business_a_above", "bonus_step_up_points"):
        _require(isinstance(data.get(key), (int, float)) and data[key] >= 0, path, f"'{key}' must be a number >= 0")


def _check_data_use(data: dict, path: Path) -> None:
    _require(data.get("training") in ("attested", "consent_at_snapshot"), path,
             "'training' must be attested or consent_at_snapshot")


SERVE_PERMISSIONS = ("decide", "reasons", "memo", "reload")


def _check_serve(data: dict, path: Path) -> None:
    roles = data.get("roles")
    _require(isinstance(roles, dict) and bool(roles), path, "'roles' must map role names to lists of permissions")
    for role, perms in roles.items():
        _require(isinstance(perms, list) and set(perms) <= set(SERVE_PERMISSIONS), path,
                 f"role {role!r}: permissions must be a list within {', '.join(SERVE_PERMISSIONS)}")
    for key in ("max_body_bytes", "max_firms_per_request"):
        _require(isinstance(data.get(key), int) and data[key] > 0, path, f"'{key}' must be an integer > 0")
    for key in ("answer_cache_entries", "memo_cache_entries", "reload_poll_seconds"):
        _require(isinstance(data.get(key), (int, float)) and data[key] >= 0, path, f"'{key}' must be a number >= 0")
    skip = data.get("audit_skip_paths", [])
    _require(isinstance(skip, list) and all(isinstance(p, str) and p.startswith("/") for p in skip), path,
             "'audit_skip_paths' must be a list of paths starting with /")


CLOSED_LOOP_SECTIONS = {"payment": {"match_days", "amount_tolerance"},
                        "use_of_funds": {"window_days", "min_outflow_share", "circle_days", "circle_tolerance",
                                         "misuse_share"},
                        "borrow_to_repay": {"grace_days", "window_days"}}


def _check_closed_loop(data: dict, path: Path) -> None:
    for section, keys in CLOSED_LOOP_SECTIONS.items():
        _require(isinstance(data.get(section), dict), path, f"'{section}' must be a mapping")
        _only(data[section], keys, path, f"{section}: ")
        _require(set(data[section]) == keys, path, f"'{section}' needs {', '.join(sorted(keys))}")
        for key in keys:
            v = data[section][key]
            _require(isinstance(v, (int, float)) and v >= 0, path, f"'{section}.{key}' must be a number >= 0")
            if key.endswith(("_share", "_tolerance")):
                _require(v <= 1, path, f"'{section}.{key}' must lie in [0, 1]")
    _require(isinstance(data.get("lookback_months"), int) and data["lookback_months"] >= 1, path,
             "'lookback_months' must be an integer >= 1")


# name -> (checker, every key the engine reads; any other key is refused)
def _check_ingest(d: Mapping[str, Any], path: Path) -> None:
    fd = d.get("future_dates")
    _require(isinstance(fd, dict), path, "'future_dates' must be a mapping")
    _only(fd, {"max_days_after_today", "max_gap_days", "max_outlier_share"}, path)
    for key in ("max_days_after_today", "max_gap_days"):
        _require(isinstance(fd.get(key), int) and fd[key] >= 0, path, f"future_dates.{key} must be an integer >= 0")
    share = fd.get("max_outlier_share")
    _require(isinstance(share, (int, float)) and 0 <= share < 0.5, path,
             "future_dates.max_outlier_share must be a number in [0, 0.5)")
    n = d.get("max_field_chars")
    _require(isinstance(n, int) and n >= 1000, path, "'max_field_chars' must be an integer >= 1000")


def _check_output(d: Mapping[str, Any], path: Path) -> None:
    n = d.get("keep_published")
    _require(isinstance(n, int) and not isinstance(n, bool) and n >= 1, path,
             "'keep_published' must be an integer >= 1 (the published output is always kept)")


SCHEMAS = {
    "features": (_check_features, {"version", "windows", "features"}),
    "master_scale": (_check_master_scale, {"version", "ratings"}),
    "score_scale": (_check_score_scale, {"version", "base_score", "base_odds", "points_to_double_odds", "min_score",
                                         "max_score", "decimals"}),
    "lightgbm": (_check_lightgbm, {"version", "num_boost_round", "early_stopping_rounds", "monotone", "calibration",
                                   "calibration_folds", "params", "tuning"}),
    "propagation": (_check_propagation, {"version", "decay_grid", "core_evidence", "standalone_evidence", "C", "max_tier",
                                         "stress_equity_months"}),
    "limit_policy": (_check_limit_policy, {"version", "flow_share_by_grade", "advance_rate", "buyer_rating_floor",
                                           "pd_decline_above", "lgd", "max_expected_loss_cny", "max_limit_cny", "round_to_cny",
                                           "core_line_share_of_core_payments", "round_trip_review_above", "require_consent",
                                           "expected_loss_budget_share", "envelope_weight", "off_whitelist",
                                           "earmark_window_days", "silent_account_review_months"}),
    "final_pd": (_check_final_pd, {"version", "method", "fallback", "weights", "floor"}),
    "closed_loop": (_check_closed_loop, {"version", "lookback_months"} | set(CLOSED_LOOP_SECTIONS)),
    "authenticity": (_check_authenticity, {"version", "hop_decay", "hop_growth", "alerts"} | set(AUTHENTICITY_SECTIONS)),
    "ingest": (_check_ingest, {"version", "future_dates", "max_field_chars"}),
    "data_use": (_check_data_use, {"version", "training"}),
    "output": (_check_output, {"version", "keep_published"}),
    "jiangyin": (_check_jiangyin, {"version", "grades", "rank_bands", "years_in_business_a_above", "loan_record",
                                   "bonus_step_up_points"}),
    "monitoring": (_check_monitoring, {"version", "levels", "authenticity_max_level", "pd_levels", "watch_list", "pd_step",
                                       "consent_warn_days", "core_distress", "actions", "credit_repair", "drift", "signals", "escalations",
                                       "explain"}),
    "serve": (_check_serve, {"version", "roles", "max_body_bytes", "max_firms_per_request", "answer_cache_entries",
                             "memo_cache_entries", "reload_poll_seconds", "audit_skip_paths"}),
}


def validate(name: str, data: Mapping[str, Any], path: Path | None = None) -> None:
    """Check ``data`` against the schema of policy ``name`` (the one place each rule is
    checked; plain mappings from tests and what-if runs go through it too)."""
    path = Path(path or f"{name}.yaml")
    _require(isinstance(data, dict), path, "top level must be a mapping")
    if name not in SCHEMAS:
        raise PolicyError(f"{path.name}: no schema for a policy named {name!r} (known: {', '.join(sorted(SCHEMAS))})")
    check, allowed = SCHEMAS[name]
    _only(data, allowed, path)
    if "version" in data:
        _require(isinstance(data["version"], int), path, "'version' must be an integer")
    check(data, path)


def load(name: str, models_dir: Path | None = None) -> Policy:
    """Load ``models/<name>.yaml`` and check it against its schema."""
    path = Path(models_dir or policy_dir()) / f"{name}.yaml"
    if not path.is_file():
        raise PolicyError(f"{path}: no such policy file")
    raw = path.read_bytes()
    try:
        data = copy.deepcopy(_parse(raw))  # the caller's own copy: a what-if edit never reaches the cache
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path.name}: not valid YAML: {str(exc).splitlines()[0]}") from None
    validate(name, data, path)
    return Policy(name, path, data, hashlib.sha256(raw).hexdigest())


# libyaml's parser where PyYAML has it (its wheels do), else the pure-Python one: the same
# documents. Every stage of every command loads the policies, so a process parsed the same
# few files many times over (the suite's pipeline tests: 1,731 parses, 55 s under the
# profiler); now once per content (the bytes are the key, so an edited file is parsed
# anew, and a file that does not parse raises every time).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=64)
def _parse(raw: bytes) -> Any:
    return yaml.load(raw, Loader=_LOADER)  # noqa: S506 - a safe loader


def load_all(models_dir: Path | None = None) -> dict[str, Policy]:
    """Every policy file in ``models/``, checked (a file without a schema is refused)."""
    d = Path(models_dir or policy_dir())
    return {p.stem: load(p.stem, d) for p in sorted(d.glob("*.yaml"))}


def fingerprint(policies: dict[str, Policy]) -> dict[str, Any]:
    """``{name: sha256}``, what every run logs."""
    return {name: p.sha256 for name, p in sorted(policies.items())}
