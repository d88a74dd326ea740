"""Batch credit (批量授信): a batch of firms in, a limits table and memos out.

``score(...)`` is the pipeline behind ``scf score DIR --batch batch.csv --out limits.csv``:

1. read and check the dataset and the batch (bad request rows become rows with reasons);
2. the snapshot at the as-of date (default: the day after the dataset's last date);
3. the registered ``champion`` models by alias from MLflow, never a file lying around;
4. each model's PD, the final PD by ``models/final_pd.yaml``, score and grade by
   ``models/score_scale.yaml``;
5. limits and decisions by ``models/limit_policy.yaml`` (optionally one envelope shared
   by the group: 整园/整会/整村授信);
6. reasons (SHAP, grouped by catalogue family) and a credit memo per scored firm;
7. one MLflow run for the batch and one entry in the hash-chained audit log.

A requested firm that is unknown, a core, not yet founded, in default, without a valid
consent (when the policy requires one), or that no model can score gets a row with an
empty PD, ``decline`` and the reason: never a silent gap.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from scf_engine import audit, policies, tracking
from scf_engine.assemble import add_propagation, assemble
from scf_engine.contract import LIMITS_COLUMNS
from scf_engine.credit.consent import consent_ok, consent_status, read_consents
from scf_engine.credit.envelope import allocate_envelope
from scf_engine.credit.limits import apply_limits, core_lines, eligible_receivables
from scf_engine.credit.scale import ScoreScale, final_pd, score_frame
from scf_engine.dataset import as_timestamp
from scf_engine.ingest import load_dataset
from scf_engine.ingest.reading import DatasetError, file_sha256, read_small_csv

DEFAULT_AUDIT_LOG = Path("audit/audit.jsonl")


@dataclass
class ScoreResult:
    limits: pd.DataFrame
    out_path: Path
    memo_dir: Path | None
    run_id: str
    audit_entry: dict
    summary: dict


# --- the batch file ---------------------------------------------------------------------

def read_batch(path: Path) -> pd.DataFrame:
    """``firm_id`` (required) and ``requested_amount`` (optional) with per-row problems in
    ``request_problem``; structural problems raise DatasetError."""
    header, rows, lines = read_small_csv(Path(path))
    if "firm_id" not in header:
        raise DatasetError(f"{Path(path).name}: missing required column 'firm_id'")
    df = pd.DataFrame(rows, columns=header)
    df["_line"] = lines
    if df.empty:
        raise DatasetError(f"{Path(path).name}: nothing to score: the batch has no rows")
    df["firm_id"] = df["firm_id"].str.strip()
    problem = pd.Series("", index=df.index, dtype=object)
    raw = df["requested_amount"].str.strip() if "requested_amount" in df else pd.Series("", index=df.index)
    amount = pd.to_numeric(raw.str.replace(",", "", regex=False).replace("", np.nan), errors="coerce")
    bad = raw.ne("") & (amount.isna() | (amount < 0))
    problem[bad] = [f"requested_amount {v!r} is not a number >= 0" for v in raw[bad]]
    problem[df["firm_id"] == ""] = "firm_id is empty"
    first = df.groupby("firm_id")["_line"].transform("min")
    dup = (df["_line"] > first) & (df["firm_id"] != "")
    problem[dup] = [f"firm_id repeated in the batch (first on line {f})" for f in first[dup]]
    df["requested_amount"] = amount.where(~bad)
    df["request_problem"] = problem
    return df


# --- the pipeline -------------------------------------------------------------------------

def score(data_dir: Path | str, batch: Path | str, out: Path | str, *, as_of=None, tracking_uri: str | None = None,
          consents: Path | str | None = None, group_limit: float | None = None, group_by: str = "batch",
          chain_core: str | None = None, memos: bool = True, memo_formats=("html", "pdf", "md"),
          audit_log: Path | str = DEFAULT_AUDIT_LOG, actor: str | None = None, alias: str = "champion",
          progress=None) -> ScoreResult:
    say = progress or (lambda *a, **k: None)
    out = Path(out)
    ds = load_dataset(data_dir, progress=say)
    req = read_batch(Path(batch))
    consents_frame = read_consents(consents) if consents else None
    T = as_timestamp(as_of) if as_of is not None else ds.default_as_of
    if group_by not in ("batch", "batch_group"):
        raise ValueError("--group-by takes batch or batch_group")
    pols = policies.load_all()

    tracking.configure(tracking_uri)
    say(f"loading {alias} models")
    models, versions = {}, {}
    for kind in tracking.MODEL_KINDS:
        model, mv = tracking.load_model(kind, alias)  # ModelNotFound names the missing one
        models[kind], versions[kind] = model, {"version": mv.version, "run_id": mv.run_id}

    batch_hash = file_sha256(Path(batch))
    batch_id = f"{T.strftime('%Y%m%d')}-{batch_hash[:10]}"
    # the batch's MLflow run is open while memos are written, so each memo names it
    with tracking.run("score", f"batch {batch_id}", tags={"scf_role": "score", "batch_id": batch_id}) as rid:
        say(f"snapshot at {T.date()}")
        sd = assemble(ds, [T], with_labels=False)[T]
        add_propagation({T: sd}, models["propagation"])
        table, chain = sd.table, sd.chain

        # who can be scored at all
        firms = ds.firms.set_index("firm_id")
        status = pd.DataFrame({"firm_id": req["firm_id"]}, index=req.index)
        why = req["request_problem"].copy()
        known = status["firm_id"].isin(firms.index)
        why[(why == "") & ~known] = "unknown firm: not in firms"
        is_core = status["firm_id"].map(firms["is_core"]).fillna(False).astype(bool)
        why[(why == "") & is_core] = "core enterprise: rated externally, not scored by this engine"
        founded = status["firm_id"].map(firms["founded_on"])
        why[(why == "") & known & (founded >= T)] = f"not founded before the as-of date {T.date()}"
        defaulted_on = ds.default_dates(status["firm_id"]).set_axis(status.index)
        in_default = defaulted_on < T
        why[(why == "") & in_default] = [f"in default since {d.date()}" for d in defaulted_on[(why == "") & in_default]]
        c_status = consent_status(status["firm_id"], consents_frame, T).to_numpy()
        require = bool(pols["limit_policy"].get("require_consent", False))
        if require:
            no_consent = (why == "") & (c_status != "ok")
            why[no_consent] = [f"not scored: no valid data-sharing authorisation ({s.replace('_', ' ')})" for s in c_status[no_consent]]

        ok = why == ""
        rows = table.reindex(status["firm_id"]).set_axis(status.index)
        preds = pd.DataFrame(index=status.index, columns=["pd_propagation", "pd_decoupled", "pd_hybrid"], dtype=float)
        scorable_rows = rows[ok]
        if len(scorable_rows):
            from scf_engine.pipelines import predict_all

            p = predict_all({"decoupled": models["decoupled"], "hybrid": models["hybrid"]}, scorable_rows)
            preds.loc[ok, ["pd_propagation", "pd_decoupled", "pd_hybrid"]] = p[["pd_propagation", "pd_decoupled", "pd_hybrid"]].to_numpy()
        fin = final_pd(preds, pols["final_pd"])
        no_model = ok & fin["pd"].isna()
        why[no_model] = "not scorable: no fund-flow history and no chain link to a core"
        ok &= ~no_model

        scale = ScoreScale.from_policy(pols["score_scale"])
        sg = score_frame(fin["pd"].where(ok), scale)

        # limits
        say("limits")
        elig = eligible_receivables(chain, pols["limit_policy"], pols["master_scale"])
        nodes = chain.nodes.reindex(status["firm_id"]).set_axis(status.index)
        dq = ds.report.rows
        dq_count = status["firm_id"].map(lambda f: int(len(ds.report.rows_touching(f))) if len(dq) else 0)
        core_of_batch = chain_core or _single_core(nodes[ok])
        lim_in = pd.DataFrame({
            "firm_id": status["firm_id"], "pd": fin["pd"].where(ok), "grade": sg["grade"].where(ok),
            "trade_in_12m": nodes["trade_in_12m"].fillna(0.0), "eligible_receivables": elig.reindex(status["firm_id"]).fillna(0.0).to_numpy(),
            "requested_amount": req["requested_amount"], "core_id": core_of_batch if core_of_batch else np.nan,
            "cycle_share_12m": rows.get("cycle_share_12m"), "round_trip_share_12m": rows.get("round_trip_share_12m"),
            "in_trade_cycle": rows.get("in_trade_cycle"), "dq_issues": dq_count,
            "consent_ok": consent_ok(pd.Series(c_status, index=status.index)).to_numpy() if require else True,
            "consent_status": c_status,
        }, index=status.index)
        lines = core_lines(chain, pols["limit_policy"]) if core_of_batch else None
        # only scorable rows (unique firms: repeats are not scorable) go through the policy
        lim = apply_limits(lim_in[ok], pols["limit_policy"], core_line=lines).reindex(status.index)
        group_info = None
        if group_limit is not None:
            lim_ok, group_info = _envelope(lim[ok], lim_in[ok], nodes[ok], group_limit, group_by, pols["limit_policy"])
            lim.loc[ok, "limit_cny"] = lim_ok["limit_cny"]
            group_info = group_info.reindex(status.index)
        lim.loc[~ok, "limit_cny"] = 0.0
        lim.loc[~ok, "decision"] = "decline"
        for col in ("binding_caps", "decision_reasons", "limit_basis"):
            lim[col] = [v if isinstance(v, list) else [] for v in lim[col]]

        # reasons
        say("reasons")
        reasons_text = pd.Series("", index=status.index, dtype=object)
        reason_objs = pd.Series([[] for _ in status.index], index=status.index, dtype=object)
        contribs = {}
        source = fin["pd_source"]
        for kind in ("hybrid", "decoupled"):
            use = ok & (source == kind)
            if use.any():
                X = rows[use].assign(industry=nodes.loc[use, "industry"])
                reason_objs[use], contribs[kind] = _shap_reasons(models[kind], X, table.assign(industry=chain.nodes["industry"].reindex(table.index)))
        use = ok & (source == "propagation")
        if use.any():
            reason_objs[use] = _propagation_reasons(models["propagation"], chain, status.loc[use, "firm_id"])
        for i in status.index:
            base = reason_objs[i]
            if not ok[i]:
                reasons_text[i] = why[i]
            else:
                from scf_engine.explain import format_reasons

                reasons_text[i] = format_reasons(base) if base else ""

        result = pd.DataFrame({
            "firm_id": status["firm_id"], "as_of": T.strftime("%Y-%m-%d"),
            "pd": fin["pd"].where(ok).round(6), "score": sg["score"].where(ok), "grade": sg["grade"].where(ok),
            "limit_cny": lim["limit_cny"].fillna(0.0), "decision": lim["decision"], "reasons": reasons_text,
            "pd_propagation": preds["pd_propagation"].round(6), "pd_decoupled": preds["pd_decoupled"].round(6),
            "pd_hybrid": preds["pd_hybrid"].round(6), "pd_source": source.where(ok, ""),
            "requested_amount": req["requested_amount"], "uncapped_limit": lim["uncapped_limit"].where(ok),
            "flow_part": lim["flow_part"].where(ok), "receivable_part": lim["receivable_part"].where(ok),
            "binding_caps": lim["binding_caps"].map(lambda c: ";".join(c) if isinstance(c, list) else ""),
            "decision_reasons": [("; ".join(r) if isinstance(r, list) else "") if o else w
                                 for r, o, w in zip(lim["decision_reasons"], ok, why)],
            "consent": c_status,
        })
        if group_info is not None:
            result["group"] = group_info["group"]
            result["group_allocation_cny"] = group_info["allocation_cny"]
            result["group_bound_by"] = group_info["bound_by"]
        assert list(result.columns[: len(LIMITS_COLUMNS)]) == list(LIMITS_COLUMNS)
        out.parent.mkdir(parents=True, exist_ok=True)
        result.to_csv(out, index=False, encoding="utf-8")

        # memos
        memo_dir = None
        if memos and ok.any():
            memo_dir = out.parent / "memos"
            say("memos")
            _write_memos(memo_dir, memo_formats, result, ok, status, ds, chain, table, models, versions, contribs,
                         reason_objs, lim, T, tracking_uri)

        # MLflow run and audit entry
        summary = _summary(result, lim_in, pols)
        tracking.log_params({
            "batch_id": batch_id, "as_of": str(T.date()), "dataset_path": str(Path(data_dir).resolve()),
            "batch_file": str(Path(batch).resolve()), "n_requested": len(result),
            "model_versions": {k: v["version"] for k, v in versions.items()},
            "policy_hashes": policies.fingerprint(pols), "group_limit": group_limit, "group_by": group_by,
            "chain_core": core_of_batch or "",
        })
        tracking.log_metrics(summary)
        tracking.log_artifact(out, "limits")
        tracking.log_small_table(result.groupby(["decision", "grade"], dropna=False).agg(
            firms=("firm_id", "size"), limit_cny=("limit_cny", "sum")).reset_index().astype({"grade": str}), "limits_summary.json")
        if memo_dir is not None:
            tracking.log_artifacts(memo_dir, "memos")
        entry = audit.append(audit_log, actor or getpass.getuser(), "score", {
            "batch_id": batch_id, "mlflow_run_id": rid, "as_of": str(T.date()),
            "firms": result["firm_id"].tolist(), "inputs": {**ds.fingerprints, "batch": batch_hash,
                                                          **({"consents": file_sha256(Path(consents))} if consents else {})},
            "model_versions": {k: v["version"] for k, v in versions.items()},
            "policy_hashes": policies.fingerprint(pols), "output": {out.name: file_sha256(out)},
        })
        with_entry = out.parent / "audit_entry.json"
        with_entry.write_text(json.dumps(entry, ensure_ascii=False, indent=2))
        tracking.log_artifact(with_entry, "audit")
        tracking.set_tags({"audit_head": f"{entry['seq']}:{entry['hash']}"})  # for `scf audit verify --anchor`
        return ScoreResult(result, out, memo_dir, rid, entry, summary)


def _single_core(nodes: pd.DataFrame) -> str | None:
    """The one core every scorable firm of the batch is tied to, if there is exactly one
    (a 1+N chain batch); else None."""
    cores = nodes["cores"].dropna()
    if cores.empty:
        return None
    common = set(cores.iloc[0])
    for c in cores.iloc[1:]:
        common &= set(c)
    return sorted(common)[0] if len(common) == 1 and all(len(c) >= 1 for c in cores) else None


def _envelope(lim, lim_in, nodes, total, group_by, policy):
    frame = lim.assign(pd=lim_in["pd"])
    groups = nodes["batch_group"].fillna("(none)") if group_by == "batch_group" else pd.Series("batch", index=lim.index)
    parts = []
    for g, idx in groups.groupby(groups).groups.items():
        alloc = allocate_envelope(frame.loc[idx], float(total), policy)
        parts.append(alloc.assign(group=g))
    a = pd.concat(parts).reindex(lim.index)
    lim = lim.copy()
    lim["limit_cny"] = a["allocation_cny"].fillna(0.0)
    return lim, a


def _shap_reasons(model, X, reference):
    from scf_engine.explain import contributions, reason_codes

    contrib = contributions(model, X)
    feats = model.features_
    return reason_codes(contrib, X, feats, reference=reference), contrib


def _propagation_reasons(model, chain, firm_ids):
    """Reasons for a firm only the propagation model scores: its design terms (transmitted
    core credit, the core's registry record, its own registry evidence), in the
    catalogue's words, largest first."""
    from scf_engine.explain.reasons import Reason
    from scf_engine.features.catalogue import load_catalogue

    cat = load_catalogue()
    X, _ = model.design(chain)
    out = []
    for fid in firm_ids:
        x = X.loc[fid]
        terms = (x - model.x_mean_) * model.coef_
        reasons = []
        for col in terms.abs().sort_values(ascending=False).index[:5]:
            c = float(terms[col])
            if c == 0:
                continue
            feat = {"transmitted": "propagated_log_odds"}.get(col, col.removeprefix("own_").removeprefix("core_"))
            label_en, label_zh = (cat[feat].label_en, cat[feat].label_zh) if feat in cat else (col, col)
            if col.startswith("core_"):
                label_en, label_zh = f"Core's registry record: {label_en}", f"核心企业登记记录：{label_zh}"
            reasons.append(Reason(family=cat[feat].family if feat in cat else "propagation", feature=feat, label_en=label_en,
                                  label_zh=label_zh, direction="raises risk" if c > 0 else "lowers risk", contribution=c,
                                  feature_contribution=c, value=float(x[col]), industry_median=None, industry=None))
        out.append(reasons)
    return out


def _summary(result: pd.DataFrame, lim_in: pd.DataFrame, pols) -> dict:
    lgd = float(pols["limit_policy"]["lgd"])
    el = float((result["pd"].fillna(0) * lgd * result["limit_cny"]).sum())
    out = {"n_requested": len(result), "total_limit_cny": float(result["limit_cny"].sum()), "expected_loss_cny": el,
           "n_scored": int(result["pd"].notna().sum())}
    for d in ("approve", "review", "decline"):
        out[f"n_{d}"] = int((result["decision"] == d).sum())
    for g in ("premium", "grade_1", "alternate"):
        out[f"n_{g}"] = int((result["grade"] == g).sum())
    return out


def _write_memos(memo_dir, formats, result, ok, status, ds, chain, table, models, versions, contribs, reason_objs, lim, T,
                 tracking_uri):
    """One memo per scored firm. Everything shared by the batch is computed once: the
    propagation frame and weights, the PDs that colour the chain picture, one chain
    layout per core; per firm only templating is left (pictures are SVG)."""
    from scf_engine.explain import path_context, path_rows
    from scf_engine.features.catalogue import load_catalogue
    from scf_engine.memo import chain_position, firm_record, render_memo
    from scf_engine.memo.svg import ChainPictures, waterfall_svg

    cat = load_catalogue()
    labels = {s.name: s.label_en for s in cat.specs}
    run = tracking.active_run_id()
    uri = tracking.configure(tracking_uri)
    risk = pd.Series(models["hybrid"].predict_proba(table)[:, 1], index=table.index)
    pictures = ChainPictures(chain, risk)
    prop = models["propagation"]
    paths_ctx = path_context(prop, chain)
    frame = paths_ctx.frame
    # per firm only dict lookups: the contributions and feature values as row dicts, once
    contrib_rows = {k: dict(zip(c.index, c.to_dict("records"))) for k, c in contribs.items()}
    batch_table = table.loc[table.index.intersection(status.loc[ok, "firm_id"])]
    value_rows = {k: dict(zip(batch_table.index, batch_table[list(models[k].features_)].to_dict("records")))
                  for k in contribs}
    for i in status.index[ok]:
        fid = status.at[i, "firm_id"]
        src = result.at[i, "pd_source"]
        waterfall = None
        if src in contrib_rows and i in contrib_rows[src]:
            waterfall = waterfall_svg(contrib_rows[src][i], value_rows[src][fid], labels)
        paths = None
        if chain.nodes.at[fid, "role"] in ("upstream", "downstream") and frame.at[fid, "covered"]:
            paths = path_rows(prop, chain, fid, max_len=3, context=paths_ctx)
        dq = ds.report.rows_touching(fid)
        ctx = {
            "firm": firm_record(chain, fid),
            "as_of": T,
            "chain_position": chain_position(chain, fid),
            "neighbourhood_svg": pictures.svg(fid),
            "models": [{"name": k, "pd": None if pd.isna(result.at[i, f"pd_{k}"]) else float(result.at[i, f"pd_{k}"]),
                        "version": versions[k]["version"], "run_id": versions[k]["run_id"]} for k in ("propagation", "decoupled", "hybrid")],
            "final": {"pd": float(result.at[i, "pd"]), "score": float(result.at[i, "score"]), "grade": result.at[i, "grade"],
                      "limit_cny": float(result.at[i, "limit_cny"]), "decision": result.at[i, "decision"],
                      "limit_basis": list(lim.at[i, "limit_basis"]) + [f"Decision: {r}" for r in lim.at[i, "decision_reasons"]]},
            "reasons": list(reason_objs[i]),
            "waterfall_svg": waterfall,
            "propagation_paths": paths,
            "data_quality": dq[["file", "line", "column", "reason"]].to_dict("records") if len(dq) else [],
            "mlflow": {"run_id": run, "experiment": tracking.EXPERIMENTS["score"], "tracking_uri": uri},
            "generated_at": datetime.now(timezone.utc),
        }
        render_memo(ctx, memo_dir, formats)


def batch_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
