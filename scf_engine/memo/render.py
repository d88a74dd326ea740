"""One credit memo (授信评审备忘录) per scored firm: printable HTML, PDF and Markdown.

``render_memo(ctx, out_dir, formats=("html", "pdf", "md"))`` renders the Jinja2
templates in ``memo/templates`` and returns ``{format: path}``. The HTML is
self-contained (images embedded as base64 data URIs, print CSS for A4); the PDF is that
HTML printed by WeasyPrint; the Markdown references the images written beside it
(``<stem>.neighbourhood.svg``, ``<stem>.waterfall.svg``, or ``.png`` for PNG pictures).

Context (``ctx``), exactly these keys (others are refused; * = required):

* ``firm``\\*: ``{firm_id, name, industry, region, founded_on, batch_group}``
* ``as_of``\\*: the as-of date (date, Timestamp or ISO string)
* ``chain_position``: ``{role, upstream_tier, downstream_tier, cores: [core names],
  core_dependence}`` (:func:`chain_position` builds it from a Chain)
* ``neighbourhood_svg``: the firm's chain as SVG markup (a string ``<svg ...``:
  :class:`scf_engine.memo.svg.ChainPictures`, what batch scoring uses); or instead
  ``neighbourhood_png``: PNG bytes or a path, made with ``plot_chain(...,
  highlight=firm_id)`` (:func:`neighbourhood_png`). One picture, one of the two keys.
* ``models``\\*: ``[{name, pd, version, run_id}]`` for ``propagation`` / ``decoupled`` /
  ``hybrid``; ``pd`` None means the model does not score the firm, and an optional
  ``reason`` says why
* ``final``\\*: ``{pd, score, grade, limit_cny, decision, limit_basis: [lines explaining
  each component and which cap bound]}``
* ``reasons``\\*: the firm's list from :func:`scf_engine.explain.reason_codes`
  (:class:`~scf_engine.explain.Reason` objects or their ``to_dict()``)
* ``waterfall_svg``: SVG markup (:func:`scf_engine.memo.svg.waterfall_svg`); or instead
  ``waterfall_png``: PNG bytes or a path (:func:`scf_engine.explain.plots.waterfall_plot`)
* ``propagation_paths``: rows of :func:`scf_engine.explain.path_decomposition`
  (DataFrame, or list of dicts such as :func:`scf_engine.explain.path_rows` gives), optional
* ``data_quality``: ``[{file, line, column, reason}]`` - quarantined rows touching the firm
* ``authenticity``: ``{features: [{label_zh, label_en, value}], alerts: [{name, severity,
  label_zh, label_en, feature, value}], rings: [{days, hops: [{payer, payee, date, amount}]}]}``
  - trade authenticity (贸易背景真实性): the family's values, the policy's alerts, and the
  rings by which the firm's own payments came back
* ``left_out``: ``[{receivable_id, buyer_id, amount, reason}]`` - the firm's receivables
  that could have backed the limit but were left out (pledged, transferred, already
  financed, earmarked by another batch, not confirmed: credit.encumbrance), buyers masked
* ``mlflow``: ``{run_id, experiment, tracking_uri}``
* ``generated_at``: when the memo was made (default: now)

Privacy: the firm's own id is shown in full; every other firm id (USCC), external
counterparty code (``EXT-...``) or account number is masked to its first 4 and last 2
characters (``9132************7A``), in tables and in free text alike (:func:`scrub`).
MLflow run ids and model versions are shown as given.
"""

from __future__ import annotations

import base64
import re
from datetime import date, datetime
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES = Path(__file__).resolve().parent / "templates"
FORMATS = ("html", "pdf", "md")
REQUIRED_KEYS = ("firm", "as_of", "models", "final", "reasons")
PICTURES = ("neighbourhood", "waterfall")
OPTIONAL_KEYS = ("jiangyin", "chain_position", "neighbourhood_svg", "neighbourhood_png", "waterfall_svg", "waterfall_png",
                 "propagation_paths", "data_quality", "authenticity", "mlflow", "generated_at", "left_out")
CONTEXT_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS
FIRM_KEYS = ("firm_id", "name", "industry", "region", "founded_on", "batch_group")
MAX_PATHS_SHOWN = 8

GRADE_WORDS = {"premium": "高级 Premium", "grade_1": "一级 Grade 1", "alternate": "备选 Alternate"}
DECISION_WORDS = {"approve": "批准 Approve", "review": "人工复核 Review", "decline": "拒绝 Decline"}
ROLE_WORDS = {"core": "核心企业 Core enterprise", "upstream": "上游供应商 Upstream supplier",
              "downstream": "下游经销商 Downstream buyer", "unattached": "未挂链 Not attached to a chain"}
MODEL_WORDS = {"propagation": "核心企业信用传导 Core-credit propagation", "decoupled": "脱核模型 De-coupled (flows)",
               "hybrid": "混合模型 Hybrid (core + data)"}
JIANGYIN_WORDS = {  # the guide's 13 indicators, in its order
    "tax_growth": "1 纳税同比增长（行业排名） Tax growth, ranked in industry",
    "utilities_growth": "2 水电气费同比（行业排名） Utilities growth, ranked in industry",
    "social_insurance": "3 社保缴纳 Social insurance",
    "housing_fund": "4 公积金缴存 Housing fund",
    "years_in_business": "5 经营年限 Years in business",
    "ind_premises": "6 经营场所 Premises",
    "ind_legal_rep_credit": "7 法人个人信用 Legal representative's credit",
    "ind_environment": "8 环保评级 Environmental rating",
    "ind_public_credit": "9 公共信用记录 Public credit record",
    "loan_record": "10 信贷记录 Loan record",
    "ind_industrial_policy": "11 产业政策 Industrial policy",
    "performance_rank": "12 产业绩效排名 Industrial performance ranking",
    "ind_other_rating": "13 其他评级 Other ratings",
}
DIRECTION_ZH = {"raises risk": "推高风险", "lowers risk": "降低风险"}

# what counts as an identifier to mask in free text
_CODE = "0-9A-HJ-NPQRTUWXY"
ID_PATTERN = re.compile(
    rf"(?<![0-9A-Za-z])(?:[{_CODE}]{{2}}\d{{6}}[{_CODE}]{{10}}"  # unified social credit code (18)
    r"|EXT-[A-Za-z0-9-]{2,}"  # external counterparty code
    r"|\d{15,25})(?![0-9A-Za-z])"  # bank account number
)


# --- masking ---------------------------------------------------------------------------------
def mask_id(value) -> str:
    """Keep the first 4 and last 2 characters: ``9132************7A``."""
    s = "" if value is None else str(value)
    if len(s) <= 6:
        return "*" * len(s)
    return s[:4] + "*" * (len(s) - 6) + s[-2:]


def scrub(text, keep=()) -> str:
    """Mask every firm id, external counterparty code and account number in ``text``
    except those in ``keep`` (the memo's own firm)."""
    if text is None:
        return ""
    keep = set(keep)
    return ID_PATTERN.sub(lambda m: m.group(0) if m.group(0) in keep else mask_id(m.group(0)), str(text))


# --- formatting --------------------------------------------------------------------------------
def _missing(v) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def fmt_pd(v) -> str:
    if _missing(v):
        return "—"
    v = float(v)
    return f"{100 * v:.2f}%" if v >= 0.0001 else f"{100 * v:.4f}%"


def fmt_cny(v) -> str:
    return "—" if _missing(v) else f"¥{float(v):,.0f}"


def fmt_num(v, digits: int = 2) -> str:
    if _missing(v):
        return "—"
    v = float(v)
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:,.{digits}f}"


def fmt_signed(v, digits: int = 3) -> str:
    return "—" if _missing(v) else f"{float(v):+.{digits}f}"


def fmt_share(v) -> str:
    return "—" if _missing(v) else f"{100 * float(v):.1f}%"


def fmt_date(v) -> str:
    if _missing(v):
        return "—"
    if isinstance(v, (pd.Timestamp, datetime, date)):
        return pd.Timestamp(v).strftime("%Y-%m-%d")
    return str(v)


def fmt_datetime(v) -> str:
    if _missing(v):
        return "—"
    if isinstance(v, (pd.Timestamp, datetime)):
        return pd.Timestamp(v).strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


def _md_cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


_MD_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def _md_text(v) -> str:
    """Every value put into a Markdown memo, with ``&``, ``<`` and ``>`` as entities:
    Markdown passes inline HTML through, so a firm named ``<script>...`` or
    ``<img onerror=...>`` would be live in any viewer that renders it. Entities show as
    the characters themselves, so the memo reads the same."""
    return "" if v is None else str(v).translate(_MD_HTML)


# --- images ------------------------------------------------------------------------------------
def _looks_svg(img) -> bool:
    return isinstance(img, str) and img.lstrip().startswith("<svg")


def _picture(ctx: dict, name: str) -> bytes | None:
    """The bytes of picture ``name`` (``neighbourhood`` / ``waterfall``): SVG markup from
    ``<name>_svg``, or PNG (bytes or a path) from ``<name>_png``; each key one format."""
    svg, png = ctx.get(f"{name}_svg"), ctx.get(f"{name}_png")
    if svg is not None and png is not None:
        raise ValueError(f"both {name}_svg and {name}_png given: one picture, one key")
    if svg is not None:
        if not _looks_svg(svg):
            raise ValueError(f"{name}_svg: SVG markup expected (a string starting with <svg), got {type(svg).__name__}")
        return svg.encode("utf-8")
    if png is None:
        return None
    if _looks_svg(png):
        raise ValueError(f"{name}_png: SVG markup given; pass it as {name}_svg")
    if isinstance(png, (bytes, bytearray, memoryview)):
        return bytes(png)
    p = Path(png)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    return p.read_bytes()


def _is_svg(img: bytes | None) -> bool:
    return img is not None and img.lstrip()[:4] == b"<svg"


def _data_uri(img: bytes | None) -> str | None:
    if img is None:
        return None
    mime = "image/svg+xml" if _is_svg(img) else "image/png"
    return f"data:{mime};base64," + base64.b64encode(img).decode("ascii")


# --- context -> view ---------------------------------------------------------------------------
def check_context(ctx: dict) -> None:
    """Refuse unknown or missing keys (the context is a contract between scorer and memo)."""
    unknown = sorted(set(ctx) - set(CONTEXT_KEYS))
    if unknown:
        raise ValueError(f"unknown memo context keys: {unknown}; accepted: {list(CONTEXT_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in ctx]
    if missing:
        raise ValueError(f"memo context lacks required keys: {missing}")
    if "firm_id" not in (ctx["firm"] or {}):
        raise ValueError("ctx['firm'] needs a firm_id")


def _reason_view(r, keep) -> dict:
    from scf_engine.explain.reasons import _as_reason, format_value

    r = _as_reason(r)
    return {
        "label_en": scrub(r.label_en, keep), "label_zh": scrub(r.label_zh, keep), "family": r.family,
        "feature": r.feature, "value": format_value(r.value, "en"),
        "industry_median": None if r.industry_median is None else format_value(r.industry_median, "en"),
        "direction_en": r.direction_text("en"), "direction_zh": r.direction_text("zh"), "raises": r.raises_risk,
        "contribution": fmt_signed(r.contribution), "text_en": scrub(r.text("en"), keep),
        "text_zh": scrub(r.text("zh"), keep),
    }


def _party(fid, name, own) -> str:
    shown = fid if fid == own else mask_id(fid)
    if fid == own:
        return f"本企业 this firm ({shown})"
    return f"{name} ({shown})" if name else shown


def _paths_view(paths, own, keep) -> dict | None:
    """Plain Python over the rows (a DataFrame is turned into dicts once): thousands of
    memos per batch."""
    if paths is None:
        return None
    attrs = getattr(paths, "attrs", {}) or {}
    records = paths.to_dict("records") if isinstance(paths, pd.DataFrame) else list(paths)
    if not records:
        return {"rows": [], "total": None}
    total = float(sum(float(r["contribution"]) for r in records))
    listed = [r for r in records if r.get("kind", "path") == "path"]
    rest = [r for r in records if r.get("kind", "path") != "path"]
    rows = []
    for k, r in enumerate(listed[:MAX_PATHS_SHOWN], 1):
        path = list(r["path"])
        names = list(r["names"]) if isinstance(r.get("names"), (list, tuple)) else [None] * len(path)
        name_of = dict(zip(path, names))
        hops = []
        for h in (r.get("hops") or []):
            bits = []
            if h.get("confirmed_receivables_cny"):
                bits.append(f"已确权应收 confirmed receivables {fmt_cny(h['confirmed_receivables_cny'])}")
            if h.get("trade_paid_cny"):
                bits.append(f"采购付款 trade paid {fmt_cny(h['trade_paid_cny'])}")
            hops.append({"to": scrub(_party(h["to"], name_of.get(h["to"]), own), keep),
                         "what": "; ".join(bits) or "—", "weight": f"{float(h['weight']):.3f}"})
        rows.append({"n": k, "core": scrub(_party(r["core_id"], r["core_name"], own), keep), "length": int(r["length"]),
                     "hops": hops, "weight": f"{float(r['weight']):.4f}", "decay": f"{float(r['decay_factor']):.3f}",
                     "core_credit": fmt_signed(r["core_credit"]), "contribution": fmt_signed(r["contribution"], 4),
                     "route": " → ".join(scrub(_party(f, name_of.get(f), own), keep) for f in path)})
    more = listed[MAX_PATHS_SHOWN:]
    return {
        "rows": rows, "n_listed": len(listed),
        "more": {"n": len(more), "contribution": fmt_signed(sum(r["contribution"] for r in more), 4)} if more else None,
        "remainder": fmt_signed(sum(r["contribution"] for r in rest), 4) if rest else None,
        "max_len": attrs.get("max_len"),
        "total": fmt_signed(total, 4),
    }


SEVERITY_WORDS = {"high": "高 High", "medium": "中 Medium", "low": "低 Low"}


def _authenticity_view(auth, own, keep) -> dict | None:
    """Values as the catalogue's reasons show them; ring hops with every party but the
    firm masked."""
    from scf_engine.explain.reasons import format_value

    if not auth:
        return None
    rings = [{"days": r["days"], "route": " → ".join([scrub(_party(r["hops"][0]["payer"], None, own), keep)]
                                                     + [scrub(_party(h["payee"], None, own), keep) for h in r["hops"]]),
              "hops": [{"date": fmt_date(h["date"]), "amount": fmt_cny(h["amount"]),
                        "payer": scrub(_party(h["payer"], None, own), keep), "payee": scrub(_party(h["payee"], None, own), keep)}
                       for h in r["hops"]]}
             for r in auth.get("rings") or []]
    return {
        "features": [{"label_zh": f["label_zh"], "label_en": f["label_en"],
                      "value": "—" if _missing(f["value"]) else format_value(f["value"], "en")} for f in auth.get("features") or []],
        "alerts": [{"severity": SEVERITY_WORDS.get(a["severity"], a["severity"]), "label_zh": a["label_zh"],
                    "label_en": a["label_en"], "value": "—" if _missing(a["value"]) else format_value(a["value"], "en")}
                   for a in auth.get("alerts") or []],
        "rings": rings,
    }


def _jiangyin_view(jy) -> dict | None:
    if not jy:
        return None
    grade = jy.get("grade") or ""
    return {
        "grade": GRADE_WORDS.get(grade, "不评级 not graded (严重失信 serious dishonesty)" if jy.get("excluded") else "—"),
        "n_a": jy.get("n_a"), "n_c": jy.get("n_c"), "n_graded": jy.get("n_graded"),
        "bonus_step": "加分项升一级 raised one step by bonus points" if jy.get("bonus_step") else "",
        "rows": [{"name": JIANGYIN_WORDS.get(r["name"], str(r["name"])),
                  "grade": r["grade"] if r.get("grade") in ("A", "B", "C") else "未评 not graded"}
                 for r in jy.get("indicators") or []],
    }


def view(ctx: dict) -> dict:
    """The template's view of a context: formatted, masked, images as data URIs."""
    check_context(ctx)
    firm = {k: ctx["firm"].get(k) for k in FIRM_KEYS}
    own = str(firm["firm_id"])
    keep = {own}
    firm_v = {k: ("—" if _missing(v) or v == "" else scrub(fmt_date(v) if k == "founded_on" else v, keep))
              for k, v in firm.items()}
    firm_v["firm_id"] = own

    cp = dict(ctx.get("chain_position") or {})
    role = cp.get("role")
    chain_v = {
        "role": ROLE_WORDS.get(role, "—" if _missing(role) else scrub(role, keep)),
        "upstream_tier": fmt_num(cp.get("upstream_tier")), "downstream_tier": fmt_num(cp.get("downstream_tier")),
        "cores": [scrub(c, keep) for c in (cp.get("cores") or [])],
        "core_dependence": fmt_share(cp.get("core_dependence")),
    } if cp else None

    models = []
    for m in ctx.get("models") or []:
        scored = not _missing(m.get("pd"))
        models.append({
            "name": MODEL_WORDS.get(m.get("name"), scrub(m.get("name"), keep)), "pd": fmt_pd(m.get("pd")),
            "scored": scored, "version": "—" if _missing(m.get("version")) else str(m.get("version")),
            "run_id": "—" if _missing(m.get("run_id")) else str(m.get("run_id")),
            "reason": scrub(m.get("reason") or ("" if scored else "不可评分 not scorable"), keep),
        })

    fin = dict(ctx["final"] or {})
    final_v = {
        "pd": fmt_pd(fin.get("pd")), "score": fmt_num(fin.get("score"), 1),
        "grade": GRADE_WORDS.get(fin.get("grade"), "—" if _missing(fin.get("grade")) else str(fin.get("grade"))),
        "grade_code": "" if _missing(fin.get("grade")) else str(fin.get("grade")),
        "decision": DECISION_WORDS.get(fin.get("decision"),
                                       "—" if _missing(fin.get("decision")) else str(fin.get("decision"))),
        "decision_code": "" if _missing(fin.get("decision")) else str(fin.get("decision")),
        "limit_cny": fmt_cny(fin.get("limit_cny")),
        "limit_basis": [scrub(line, keep) for line in (fin.get("limit_basis") or [])],
    }

    dq = [{"file": scrub(d.get("file"), keep), "line": "—" if _missing(d.get("line")) else str(d.get("line")),
           "column": scrub(d.get("column"), keep), "reason": scrub(d.get("reason"), keep)}
          for d in (ctx.get("data_quality") or [])]
    ml = dict(ctx.get("mlflow") or {})
    generated = ctx.get("generated_at") or datetime.now().astimezone()
    return {
        "firm": firm_v, "as_of": fmt_date(ctx["as_of"]), "chain": chain_v, "models": models, "final": final_v,
        "reasons": [_reason_view(r, keep) for r in (ctx.get("reasons") or [])],
        "paths": _paths_view(ctx.get("propagation_paths"), own, keep), "data_quality": dq,
        "authenticity": _authenticity_view(ctx.get("authenticity"), own, keep),
        "mlflow": {k: ("—" if _missing(ml.get(k)) else str(ml.get(k))) for k in ("run_id", "experiment", "tracking_uri")},
        "generated_at": fmt_datetime(generated),
        "pictures": {name: _picture(ctx, name) for name in PICTURES},  # bytes: SVG or PNG (_is_svg tells)
        "jiangyin": _jiangyin_view(ctx.get("jiangyin")),
        "left_out": [{"receivable_id": scrub(str(r.get("receivable_id")), keep), "buyer": scrub(str(r.get("buyer_id")), keep),
                      "amount": fmt_cny(r.get("amount")), "reason": scrub(str(r.get("reason")), keep)}
                     for r in (ctx.get("left_out") or [])],
    }


# --- rendering ------------------------------------------------------------------------------------
_ENVS: dict[str, Environment] = {}


def _env(kind: str) -> Environment:
    if kind not in _ENVS:
        env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined,
                          autoescape=select_autoescape(enabled_extensions=("html", "html.j2"),
                                                       default_for_string=False) if kind == "html" else False,
                          trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                          **({"finalize": _md_text} if kind == "md" else {}))
        env.filters["md"] = _md_cell
        _ENVS[kind] = env
    return _ENVS[kind]


def memo_stem(ctx: dict) -> str:
    fid = re.sub(r"[^0-9A-Za-z_-]", "_", str(ctx["firm"]["firm_id"]))
    return f"memo_{fid}_{fmt_date(ctx['as_of'])}"


def render_html(ctx: dict, v: dict | None = None) -> str:
    v = v or view(ctx)
    images = {name: _data_uri(img) for name, img in v["pictures"].items()}
    return _env("html").get_template("memo.html.j2").render(**v, images=images)


def render_markdown(ctx: dict, v: dict | None = None, image_names: dict | None = None) -> str:
    v = v or view(ctx)
    images = {"neighbourhood": None, "waterfall": None, **(image_names or {})}
    return _env("md").get_template("memo.md.j2").render(**v, images=images)


def write_pdf(html: str, path: Path, base_url: str | None = None) -> Path:
    from weasyprint import HTML

    HTML(string=html, base_url=base_url).write_pdf(str(path))
    return path


def render_memo(ctx: dict, out_dir: Path, formats=FORMATS) -> dict[str, Path]:
    """Render one memo into ``out_dir``; returns ``{format: path}`` for ``formats``."""
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown memo formats {bad}; choose from {FORMATS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    v = view(ctx)
    stem = memo_stem(ctx)
    out: dict[str, Path] = {}
    html = None
    if "html" in formats or "pdf" in formats:
        html = render_html(ctx, v)
    if "html" in formats:
        out["html"] = out_dir / f"{stem}.html"
        out["html"].write_text(html, encoding="utf-8")
    if "pdf" in formats:
        out["pdf"] = write_pdf(html, out_dir / f"{stem}.pdf", base_url=str(out_dir))
    if "md" in formats:
        names = {}
        for key, img in v["pictures"].items():
            if img is not None:
                name = f"{stem}.{key}.{'svg' if _is_svg(img) else 'png'}"
                (out_dir / name).write_bytes(img)
                names[key] = name
        out["md"] = out_dir / f"{stem}.md"
        out["md"].write_text(render_markdown(ctx, v, names), encoding="utf-8")
    return out


# --- helpers for building a context from the chain ---------------------------------------------------
def firm_record(chain, firm_id: str) -> dict:
    """``ctx['firm']`` from the chain's node table."""
    n = chain.nodes.loc[firm_id]
    rec = {"firm_id": firm_id}
    for k in FIRM_KEYS[1:]:
        v = n.get(k)
        rec[k] = None if _missing(v) else v
    return rec


def chain_position(chain, firm_id: str) -> dict:
    """``ctx['chain_position']``: role, tiers, the names of the cores the firm is tied to and
    its dependence on cores."""
    n = chain.nodes.loc[firm_id]
    cores = n.get("cores")
    cores = [c for c in cores if c != firm_id] if isinstance(cores, tuple) else []
    names = chain.nodes["name"].reindex(cores)
    return {
        "role": n.get("role"),
        "upstream_tier": None if _missing(n.get("upstream_tier")) else float(n.get("upstream_tier")),
        "downstream_tier": None if _missing(n.get("downstream_tier")) else float(n.get("downstream_tier")),
        "cores": [str(x) if not _missing(x) else mask_id(c) for c, x in zip(cores, names)],
        "core_dependence": None if _missing(n.get("core_dependence")) else float(n.get("core_dependence")),
    }


def neighbourhood_png(chain, firm_id: str, *, core_id: str | None = None, risk: pd.Series | None = None,
                      max_nodes: int = 400) -> bytes | None:
    """The firm's chain (its first core's, or ``core_id``'s) with the firm highlighted, as
    PNG bytes; None for a firm tied to no core."""
    import io

    import matplotlib.pyplot as plt

    from scf_engine.graph.export import chain_layout, plot_chain

    if core_id is None:
        cores = chain.nodes.at[firm_id, "cores"]
        cores = [c for c in cores if c != firm_id] if isinstance(cores, tuple) else []
        if not cores:
            return None
        core_id = cores[0]
    fig, ax = plt.subplots(figsize=(8, 5))
    plot_chain(chain, core_id, risk=risk, highlight=firm_id, ax=ax, max_nodes=max_nodes,
               title=f"{chain.nodes.at[core_id, 'name']} 供应链 / chain at {chain.as_of.date()}")
    ax.tick_params(axis="x", bottom=True, labelbottom=True)  # networkx's drawing hides the tier labels
    _, pos = chain_layout(chain, core_id, max_nodes=max_nodes)
    if firm_id in pos:
        x, y = pos[firm_id]
        ax.annotate("本企业 this firm", (x, y), xytext=(12, 10), textcoords="offset points", fontsize=9,
                    arrowprops={"arrowstyle": "->", "lw": 0.8}, bbox={"boxstyle": "round", "fc": "white", "lw": 0.5})
    else:
        ax.text(0.01, 0.01, f"本企业不在图中最大的 {max_nodes} 个伙伴内 / the firm is outside the {max_nodes} largest partners shown",
                transform=ax.transAxes, fontsize=8, color="#555")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


__all__ = ["CONTEXT_KEYS", "chain_position", "check_context", "firm_record", "mask_id", "neighbourhood_png",
           "render_html", "render_markdown", "render_memo", "scrub", "view", "write_pdf"]
