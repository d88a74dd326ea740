"""Early-warning signals (预警信号): the rules of ``models/monitoring.yaml`` over one as-of.

Each signal is defined once in the policy (name, Chinese and English label, severity, a
DuckDB SQL rule, an evidence template); this module only evaluates them, so a risk
committee reads and changes what fires without reading code. The authenticity alerts of
``models/authenticity.yaml`` are reused as they stand: one that fires now and was quiet at
the batch is a new round trip or circular money. The policy's escalations combine the
signals that fired (and the PD) into alerts of their own: a statutory payment missed is
amber, the same miss at a high PD, or two at once, is red.
"""

from __future__ import annotations

import math
import string

import numpy as np
import pandas as pd

from scf_engine import policies
from scf_engine.duck import connect
from scf_engine.errors import PolicyError
from scf_engine.features.alerts import raise_alerts
from scf_engine.policies import as_data
from scf_engine.propagation.stress import debtrank

ALERTS_COLUMNS = ["firm_id", "as_of", "signal", "level", "evidence", "label_zh", "label_en"]


def fill(rule: str, policy) -> str:
    """The rule with the policy's own numbers put in (``{pd_step}``, ``{months}``...)."""
    p = as_data(policy)
    values = {"pd_step": p["pd_step"], "consent_warn_days": p["consent_warn_days"], "months": p["credit_repair"]["months"]}
    for key, value in values.items():
        rule = rule.replace("{" + key + "}", str(value))
    return rule


def holds(frame: pd.DataFrame, rule: str, what: str) -> pd.Series:
    """Where the SQL condition ``rule`` holds over ``frame`` (indexed by firm_id); a rule
    naming a column that does not exist is a one-line policy error naming ``what``."""
    f = frame.rename_axis("firm_id").reset_index()
    with connect() as con:
        con.register("_f", f)
        try:
            hit = con.sql(f"SELECT coalesce(({rule}), false) AS hit FROM _f").df()["hit"]
        except Exception as exc:
            raise PolicyError(f"monitoring.yaml: {what}: rule {rule!r} cannot be evaluated: "
                              f"{str(exc).splitlines()[0][:200]}") from None
    return pd.Series(hit.to_numpy(dtype=bool), index=frame.index)


class _Row(dict):
    """A row for an evidence template: a missing value shows as 'n/a', not a crash."""

    def __missing__(self, key):
        return float("nan")


class _Evidence(string.Formatter):
    """Formats a template's fields; a missing value (NaN, None, NA) shows as 'n/a' whatever
    its format spec. Field by field: replacing "nan" in the formatted text also hit words
    that contain it ("financing" read "fin/acing")."""

    def format_field(self, value, format_spec):
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return super().format_field(value, format_spec)


def evidence(template: str, row: dict) -> str:
    try:
        return _Evidence().vformat(template, (), _Row(row))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return template


def core_distress(chain_now, chain_batch, min_rise: float) -> pd.DataFrame:
    """Per firm: the DebtRank distress carried from every core whose share of payables
    paid late rose by more than ``min_rise`` since the batch (the rise is the core's
    initial distress), the core that hurts it most and that core's rise."""
    nodes, before = chain_now.nodes, chain_batch.nodes
    cores = nodes.index[nodes["is_core"].eq(True)]
    late_now = nodes.loc[cores, "payables_late_share"].fillna(0.0)
    late_then = before["payables_late_share"].reindex(cores).fillna(0.0)
    rise = (late_now - late_then).clip(0.0, 1.0)
    shocked = rise[rise > min_rise]
    out = pd.DataFrame({"core_distress": 0.0, "distressed_core": "", "core_late_rise": np.nan}, index=nodes.index)
    if shocked.empty:
        return out
    out["core_distress"] = debtrank(chain_now, shocked.to_dict()).reindex(nodes.index).fillna(0.0)
    for fid, tied in nodes["cores"].items():
        hit = [c for c in (tied if isinstance(tied, tuple) else ()) if c in shocked.index]
        if hit:
            worst = max(hit, key=lambda c: shocked[c])
            out.at[fid, "distressed_core"] = worst
            out.at[fid, "core_late_rise"] = float(shocked[worst])
    return out


def holds_all(frame: pd.DataFrame, rules: dict[str, str]) -> pd.DataFrame:
    """Where each named SQL condition holds (one column per name), in ONE DuckDB query
    over one registration of ``frame``: a query per rule registered the whole frame and
    opened a connection each time, which cost more than the rules themselves. A rule
    that cannot be evaluated is found by :func:`holds` one at a time, for its one-line
    error."""
    if not rules:
        return pd.DataFrame(index=frame.index)
    f = frame.rename_axis("firm_id").reset_index()
    cols = ", ".join(f"coalesce(({rule}), false) AS s{i}" for i, rule in enumerate(rules.values()))
    try:
        with connect() as con:
            con.register("_f", f)
            hit = con.sql(f"SELECT {cols} FROM _f").fetchnumpy()
    except Exception:
        for name, rule in rules.items():
            holds(frame, rule, name)
        raise
    return pd.DataFrame({name: np.asarray(hit[f"s{i}"], dtype=bool) for i, name in enumerate(rules)}, index=frame.index)


def rating_pd(ratings: dict, name: str) -> float:
    """The master scale's PD of rating ``name`` (a one-line policy error for an unknown one)."""
    if name not in ratings:
        raise PolicyError(f"monitoring.yaml: names rating {name!r}, not on the master scale "
                          f"({', '.join(ratings)})")
    return float(ratings[name])


def fire(frame: pd.DataFrame, policy, as_of: pd.Timestamp, ratings: dict | None = None) -> pd.DataFrame:
    """alerts.csv rows for one as-of: every policy signal whose rule holds, with its
    evidence, in the policy's order, by firm within each; then the escalations that the
    signals which fired combine into (:func:`escalate`; ``ratings``: master_scale.yaml's)."""
    rows = _signal_rows(frame, policy, as_of)
    up = escalate(frame, rows, policy, as_of, ratings)
    return pd.concat([rows, up], ignore_index=True) if len(up) else rows


def template_fields(template: str) -> set | None:
    """The names an evidence template's fields read (nested ones too, ``{pd:.{digits}f}``),
    or None when the template cannot be parsed (:func:`evidence` then shows it as written)."""

    def fields(text: str) -> set:
        out = set()
        for _, f, spec, _ in string.Formatter().parse(text):
            if f:
                out.add(f.split(".")[0].split("[")[0])
            if spec:  # a nested field, "{pd:.{digits}f}"
                out |= fields(spec)
        return out

    try:
        return fields(template)
    except ValueError:
        return None


def _template_columns(template: str, columns) -> list:
    """The columns of ``columns`` an evidence template names (all of them when the
    template cannot be parsed: :func:`evidence` then shows it as written). A row's other
    columns cannot reach the text, and turning every feature column of each firm hit
    into a dict was most of :func:`fire`'s time (~0.4 s an as-of at 20,000 firms)."""
    named = template_fields(template)
    return list(columns) if named is None else [c for c in columns if c in named]


def rule_columns(rule: str) -> set | None:
    """The column names a SQL rule reads, lower-cased (DuckDB matches a name whatever its
    case), by sqlglot's parse of it; None when it cannot be told: the rule does not parse,
    or it reads columns it does not name (``*``, ``COLUMNS(...)``)."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(rule, read="duckdb")
    except sqlglot.errors.SqlglotError:
        return None
    if tree is None or any(isinstance(n, exp.Star) or (isinstance(n, exp.Func) and n.sql_name().upper() == "COLUMNS")
                           for n in tree.walk()):
        return None
    return {c.name.lower() for c in tree.find_all(exp.Column)}


def policy_columns(policy) -> set | None:
    """Every column name the policy's rules (signals, ``actions.clean_rule``,
    ``credit_repair.rule``, with the policy's numbers put in) and evidence templates
    read, lower-cased; None when one of them cannot be told (:func:`rule_columns`,
    :func:`template_fields`): a caller then keeps every column. What lets ``scf monitor``
    build each as-of's frame of the columns the rules read, not of every feature now
    and at the batch (:func:`scf_engine.pipelines.monitor.monitor_frame`)."""
    p = as_data(policy)
    rules = [s["rule"] for s in p["signals"]] + [p["actions"]["clean_rule"], p["credit_repair"]["rule"]]
    out = set()
    for rule in rules:
        named = rule_columns(fill(rule, p))
        if named is None:
            return None
        out |= named
    for s in p["signals"]:
        named = template_fields(s["evidence"])
        if named is None:
            return None
        out |= {n.lower() for n in named}
    return out


def _signal_rows(frame: pd.DataFrame, policy, as_of: pd.Timestamp) -> pd.DataFrame:
    """The policy signals' rows (see :func:`fire`)."""
    p = as_data(policy)
    day = str(as_of.date())
    hits = holds_all(frame, {f"signal {s['name']}": fill(s["rule"], p) for s in p["signals"]})
    rows = []
    for s, col in zip(p["signals"], hits.columns):
        ids = sorted(frame.index[hits[col].to_numpy()])
        if not ids:
            continue
        level = p["levels"][s["severity"]]
        for fid, rec in zip(ids, frame.loc[ids, _template_columns(s["evidence"], frame.columns)].to_dict("records")):
            rows.append({"firm_id": fid, "as_of": day, "signal": s["name"], "level": level,
                         "evidence": evidence(s["evidence"], {**rec, "as_of": day}), "label_zh": s["label_zh"],
                         "label_en": s["label_en"]})
    return pd.DataFrame(rows, columns=ALERTS_COLUMNS)


def escalate(frame: pd.DataFrame, fired: pd.DataFrame, policy, as_of: pd.Timestamp,
             ratings: dict | None = None) -> pd.DataFrame:
    """Rows for the policy's ``escalations``: a firm for which at least ``min_signals`` of
    an escalation's ``signals`` fired at this as-of (``fired``: the signals' rows), with
    its PD at or worse than ``pd_rating`` when one is given, gets the escalation as an
    alert of its own, at the escalation's severity. Alone, a missed tax month or an
    8% PD each call for a closer look; together they have been followed by a default
    far more often than either (see monitoring.yaml), so the combination, not either
    signal, freezes. The evidence names the signals that combined and the PD."""
    p = as_data(policy)
    rules = p.get("escalations") or []
    if not rules or fired.empty:
        return pd.DataFrame(columns=ALERTS_COLUMNS)
    ratings = ratings if ratings is not None else as_data(policies.load("master_scale"))["ratings"]
    on = pd.crosstab(fired["firm_id"], fired["signal"]).gt(0)  # firm x signal: fired at this as-of
    # a frame without a PD (a rule check on its own) escalates only what needs no PD
    pd_now = (frame["pd"] if "pd" in frame else pd.Series(np.nan, index=frame.index)).astype(float).reindex(on.index)
    parts, day = [], str(as_of.date())
    for e in rules:
        mine = on.reindex(columns=e["signals"], fill_value=False)
        hit = mine.sum(axis=1) >= e["min_signals"]
        floor = rating_pd(ratings, e["pd_rating"]) if e["pd_rating"] else None
        if floor is not None:
            hit &= pd_now >= floor
        if not hit.any():
            continue
        at = (pd_now[hit].map(lambda v: f" at PD {v:.2%} ({e['pd_rating']} {floor:.2%} or worse)")
              if floor is not None else pd.Series("", index=hit.index[hit]))
        which = mine[hit].apply(lambda r: " + ".join(r.index[r.to_numpy()]), axis=1)
        parts.append(pd.DataFrame({"firm_id": hit.index[hit], "as_of": day, "signal": e["name"],
                                   "level": p["levels"][e["severity"]],
                                   "evidence": (which + at + f" at {day}").to_numpy(),
                                   "label_zh": e["label_zh"], "label_en": e["label_en"]}))
    return pd.concat(parts, ignore_index=True)[ALERTS_COLUMNS] if parts else pd.DataFrame(columns=ALERTS_COLUMNS)


def capped(levels: pd.Series, top: str) -> pd.Series:
    """Levels no worse than ``top``. The authenticity alerts' own severity means what to do
    at the batch (high: send to review, authenticity.yaml), so after lending they give at
    most the policy's ``authenticity_max_level``: a review of the trade, not a freeze."""
    order = ["green", "amber", "red"]
    return levels.where(levels.map(order.index) <= order.index(top), top)


def authenticity_seen(batch: pd.DataFrame) -> set:
    """(firm, alert) pairs that already fired at the batch: computed once per pass."""
    a = raise_alerts(batch)
    return set(zip(a["firm_id"], a["name"]))


def new_authenticity(now: pd.DataFrame, seen: set, policy, as_of: pd.Timestamp) -> pd.DataFrame:
    """Authenticity alerts (round trips, rings, pass-through...) that fire at the as-of and
    did not at the batch (``seen``: :func:`authenticity_seen`): new circular money since
    the credit was granted; levels capped (:func:`capped`)."""
    p = as_data(policy)
    a_now = raise_alerts(now)
    new = a_now[[(f, n) not in seen for f, n in zip(a_now["firm_id"], a_now["name"])]]
    if new.empty:
        return pd.DataFrame(columns=ALERTS_COLUMNS)
    return pd.DataFrame({
        "firm_id": new["firm_id"].to_numpy(), "as_of": str(as_of.date()),
        "signal": ("authenticity:" + new["name"]).to_numpy(), "level": capped(new["severity"].map(p["levels"]),
                                                                             p["authenticity_max_level"]).to_numpy(),
        "evidence": [f"{feat} = {_num(v)} at {as_of.date()} (quiet at the batch)" for feat, v in zip(new["feature"], new["value"])],
        "label_zh": new["label_zh"].to_numpy(), "label_en": new["label_en"].to_numpy(),
    })


def _num(v) -> str:
    v = float(v)
    return "n/a" if math.isnan(v) else f"{v:.3g}"


__all__ = ["ALERTS_COLUMNS", "policy_columns", "rule_columns", "template_fields", "fire", "escalate", "rating_pd", "holds", "holds_all", "authenticity_seen", "fill", "core_distress", "new_authenticity", "evidence"]
