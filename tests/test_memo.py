"""Credit memos: rendered HTML opened in headless Chromium, the PDF rasterised with
pdftoppm, the Markdown read back; masking of counterparty identifiers.

Chromium and poppler-utils are Debian packages (``make system-test-deps``); these tests
fail, never skip, when they are missing.
"""

from __future__ import annotations

import html as htmllib
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from scf_engine.memo.render import MAX_PATHS_SHOWN
from scf_engine.memo import chain_position, firm_record, mask_id, neighbourhood_png, render_memo, scrub

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if path is None:
        pytest.fail(f"{name} is not installed: run `apt-get install -y {package}` (or `make system-test-deps`)",
                    pytrace=False)
    return path


@pytest.fixture(scope="session")
def memo_case(tmp_path_factory, explain_world):
    """A trained world and one rendered memo for a firm reached by core credit over several hops."""
    from scf_engine.explain import contributions, path_decomposition, reason_codes
    from scf_engine.explain.plots import waterfall_plot

    world = explain_world
    tmp = tmp_path_factory.mktemp("memo")
    prop, dec, tr, te = world["prop"], world["dec"], world["tr"], world["te"]
    T = world["as_of"]
    chain = world["chain"]
    frame = prop.predict_frame(chain)
    te = te[te.firm_id.isin(frame.index[frame["covered"]])].set_index("firm_id")
    # the scorable firm with the most multi-hop paths, so the memo shows counterparties
    best, best_paths = None, None
    for fid in chain.nodes.loc[te.index].sort_values("upstream_tier", ascending=False).index[:10]:
        p = path_decomposition(prop, chain, fid, max_len=4, frame=frame)
        n = int((p["length"] > 1).sum())
        if best is None or n > best[0]:
            best, best_paths = (n, fid), p
    fid = best[1]
    row = te.loc[[fid]]
    c = contributions(dec, row)
    reasons = reason_codes(c, row, dec.features_, reference=tr)[fid]
    pd_dec = float(dec.predict_proba(row)[0, 1])
    other = [f for f in chain.nodes.index if f != fid]
    dq = [{"file": r["file"], "line": r["line"], "column": r["column"], "reason": r["reason"]}
          for r in world["quarantine"].rows_touching(fid).to_dict("records")]
    dq.append({"file": "flows.csv", "line": 4711, "column": "payer_id",
               "reason": f"payer {other[0]} paid from account 6222020200112233445 twice; EXT-C-000123 unknown"})
    ctx = {
        "firm": firm_record(chain, fid), "as_of": T, "chain_position": chain_position(chain, fid),
        "neighbourhood_png": neighbourhood_png(chain, fid),
        "models": [
            {"name": "propagation", "pd": float(frame.at[fid, "pd"]), "version": "1", "run_id": "a" * 32},
            {"name": "decoupled", "pd": pd_dec, "version": "3", "run_id": "b" * 32},
            {"name": "hybrid", "pd": None, "version": "2", "run_id": "c" * 32, "reason": "no registry history"},
        ],
        "final": {"pd": pd_dec, "score": 81.5, "grade": "grade_1", "limit_cny": 1_250_000.0, "decision": "approve",
                  "limit_basis": [f"Receivables: 70% of confirmed open receivables on {other[1]} = ¥1,250,000 (binding)",
                                  "Flows: 30% of trade inflow, last 12 months = ¥2,575,541",
                                  "Grade 1 cap: ¥3,000,000 (not binding)"]},
        "reasons": reasons,
        "waterfall_png": waterfall_plot(c.loc[fid], row.loc[fid], None, lang="zh"),
        "propagation_paths": best_paths,
        "data_quality": dq,
        "authenticity": {
            "features": [{"label_zh": "经环路回流的付款占比（资金空转）", "label_en": "Payments that came back round a ring",
                          "value": 0.25}, {"label_zh": "资金环路回流天数", "label_en": "Days for money to come back", "value": None}],
            "alerts": [{"name": "ring_return", "severity": "high", "label_zh": "资金空转：资金经两家以上企业回流",
                        "label_en": "Money came back round a ring of firms", "feature": "cycle_return_share_12m", "value": 0.25}],
            "rings": [{"days": 12, "hops": [
                {"payer": fid, "payee": other[2], "date": "2023-11-01", "amount": 500_000.0},
                {"payer": other[2], "payee": "EXT-C-000777", "date": "2023-11-05", "amount": 495_000.0},
                {"payer": "EXT-C-000777", "payee": fid, "date": "2023-11-13", "amount": 490_000.0}]}],
        },
        "mlflow": {"run_id": "d" * 32, "experiment": "scf-batch", "tracking_uri": "sqlite:///mlflow.db"},
        "generated_at": pd.Timestamp("2024-01-02 09:30"),
    }
    out = render_memo(ctx, tmp / "memos")
    return {"ctx": ctx, "out": out, "fid": fid, "others": other, "tmp": tmp, "n_multi": best[0]}


def _not_blank(png_path, min_std: float = 8.0, min_ink: float = 0.02):
    from PIL import Image

    img = np.asarray(Image.open(png_path).convert("L"), dtype=float)
    ink = float((img < 200).mean())
    assert img.std() > min_std and ink > min_ink, f"{png_path} looks blank (std {img.std():.1f}, ink {ink:.3f})"


def _visible_text(html: str) -> str:
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    html = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", html, flags=re.S)
    return htmllib.unescape(re.sub(r"<[^>]+>", " ", html))


def test_memo_files(memo_case):
    out = memo_case["out"]
    assert set(out) == {"html", "pdf", "md"}
    for p in out.values():
        assert p.is_file() and p.stat().st_size > 1000
    html = out["html"].read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 2  # self-contained
    assert "src=\"http" not in html and "href=\"http" not in html
    assert "@page" in html and "@media print" in html
    md = out["md"].read_text(encoding="utf-8")
    for key in ("neighbourhood", "waterfall"):
        name = f"{out['md'].stem}.{key}.png"
        assert f"]({name})" in md and (out["md"].parent / name).is_file()
    assert memo_case["n_multi"] > 0


def test_memo_in_headless_chromium(memo_case, tmp_path):
    chromium = _tool("chromium", "chromium")
    html_path = memo_case["out"]["html"]
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "memo.png"
    r = subprocess.run(common + [f"--screenshot={shot}", "--window-size=1200,1600", html_path.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"chromium made no screenshot (rc {r.returncode}): {r.stderr[-2000:]}"
    _not_blank(shot)
    dom = subprocess.run(common + ["--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = _visible_text(dom.stdout)
    ctx = memo_case["ctx"]
    assert memo_case["fid"] in text
    assert "一级 Grade 1" in text
    first = ctx["reasons"][0]
    assert first.label_en in text and first.label_zh in text
    assert "企业概况" in text and "Key reasons" in text  # bilingual headings


def test_memo_pdf_renders(memo_case, tmp_path):
    pdftoppm = _tool("pdftoppm", "poppler-utils")
    pdftotext = _tool("pdftotext", "poppler-utils")
    pdf = memo_case["out"]["pdf"]
    assert pdf.read_bytes()[:5] == b"%PDF-"
    r = subprocess.run([pdftoppm, "-png", "-r", "60", str(pdf), str(tmp_path / "page")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pages = sorted(tmp_path.glob("page*.png"))
    assert pages, "pdftoppm made no page"
    _not_blank(pages[0])
    text = subprocess.run([pdftotext, str(pdf), "-"], capture_output=True, text=True, timeout=120).stdout
    assert memo_case["fid"] in text and "一级 Grade 1" in text
    assert memo_case["ctx"]["reasons"][0].label_zh in text


def test_counterparty_ids_are_masked(memo_case):
    fid, others = memo_case["fid"], memo_case["others"]
    out = memo_case["out"]
    pdf_text = subprocess.run([_tool("pdftotext", "poppler-utils"), str(out["pdf"]), "-"], capture_output=True,
                              text=True, timeout=120).stdout
    texts = {"html": _visible_text(out["html"].read_text(encoding="utf-8")),
             "md": out["md"].read_text(encoding="utf-8"), "pdf": pdf_text}
    for kind, text in texts.items():
        leaked = [o for o in others if o in text]
        assert not leaked, f"{kind} shows counterparty ids in full: {leaked[:3]}"
        assert "6222020200112233445" not in text and "EXT-C-000123" not in text
        assert fid in text
    md = texts["md"]
    assert mask_id(others[0]) in md and mask_id("6222020200112233445") in md
    # the paths section names its counterparties masked: every hop of the paths it shows
    # (the first MAX_PATHS_SHOWN; a set's first three of all paths' hops, as this once
    # read, named a hop of an unshown path whenever hash order put one first)
    paths = memo_case["ctx"]["propagation_paths"]
    shown = paths[paths.get("kind", pd.Series("path", index=paths.index)).fillna("path") == "path"].head(MAX_PATHS_SHOWN)
    hop_ids = sorted({h["to"] for hops in shown["hops"].dropna() for h in hops} - {fid})
    assert hop_ids and all(mask_id(h) in md for h in hop_ids)
    # the authenticity section: the alert, and the ring with every party but the firm masked
    assert "贸易背景真实性 / Trade authenticity" in md and "资金空转：资金经两家以上企业回流" in md
    assert f"本企业 this firm ({fid}) → {mask_id(others[2])} → {mask_id('EXT-C-000777')} → 本企业 this firm ({fid})" in md
    assert "EXT-C-000777" not in texts["html"] and "(12 天 days)" in texts["html"]


def test_masking_rules():
    assert mask_id("91320281MA1XYZ007A") == "9132************7A"
    assert len(mask_id("913202812705344758")) == 18
    s = scrub("paid by 913202812705344758 to EXT-C-004211 from 6222020200112233445; own 91370211753684902W",
              keep={"91370211753684902W"})
    assert "913202812705344758" not in s and "9132************58" in s
    assert "EXT-******11" in s and "6222*************45" in s and "91370211753684902W" in s
    assert scrub("amount ¥1,250,000 on 2024-01-01, run abcdef0123456789abcdef0123456789") == \
        "amount ¥1,250,000 on 2024-01-01, run abcdef0123456789abcdef0123456789"


def test_context_is_checked(memo_case, tmp_path):
    ctx = dict(memo_case["ctx"])
    with pytest.raises(ValueError, match="unknown"):
        render_memo({**ctx, "score": 1}, tmp_path)
    ctx.pop("final")
    with pytest.raises(ValueError, match="final"):
        render_memo(ctx, tmp_path)
    minimal = {k: memo_case["ctx"][k] for k in ("firm", "as_of", "models", "final", "reasons")}
    out = render_memo(minimal, tmp_path, formats=("html", "md"))
    assert set(out) == {"html", "md"}
    assert "No quarantined rows" in out["md"].read_text(encoding="utf-8")


def test_svg_pictures_are_shared_across_a_chain_without_changing(explain_world):
    """Batch memos draw one chain picture per core and only ring the firm: each firm's
    picture equals a fresh drawing, and differs from its neighbour's only by the ring."""
    from scf_engine.memo.svg import ChainPictures, waterfall_svg

    chain = explain_world["chain"]
    nodes = chain.nodes
    tied = [f for f in nodes.index[~nodes["is_core"]] if isinstance(nodes.at[f, "cores"], tuple) and nodes.at[f, "cores"]]
    by_core = pd.Series({f: nodes.at[f, "cores"][0] for f in tied})
    core, firms = next((c, g.index[:3]) for c, g in by_core.groupby(by_core) if len(g) >= 3)
    risk = pd.Series(np.linspace(0.001, 0.2, len(nodes)), index=nodes.index)
    shared = ChainPictures(chain, risk)
    pictures = [shared.svg(f) for f in firms]
    assert pictures == [ChainPictures(chain, risk).svg(f) for f in firms]  # cache changes nothing
    for f, svg in zip(firms, pictures):
        assert svg.startswith("<svg") and svg.endswith("</svg>") and svg.count('stroke-width="2"') == 1
        assert str(nodes.at[f, "name"])[:16] in svg
    assert len(set(pictures)) == len(pictures)
    loose = [f for f in nodes.index if not (isinstance(nodes.at[f, "cores"], tuple) and nodes.at[f, "cores"])]
    assert loose and shared.svg(loose[0]) is None  # tied to no core: no chain to draw

    contrib = pd.Series({"expected_value": -3.0, "a": 0.5, "b": -0.2, "c": 0.1})
    values = pd.Series({"a": 1234.5, "b": np.nan, "c": 0.25})
    w = waterfall_svg(contrib, values, {"a": "Alpha"}, top=2)
    assert w == waterfall_svg(contrib.to_dict(), values.to_dict(), {"a": "Alpha"}, top=2)
    assert "Alpha = 1,234" in w and "1 other features" in w and "firm -2.600" in w


def test_svg_pictures_travel_in_svg_keys_and_each_key_has_one_format(memo_case, explain_world, tmp_path):
    """``*_svg`` keys carry SVG markup (what batch scoring passes), ``*_png`` keys PNG: a
    picture in the other key's format, or in both keys, is refused."""
    from scf_engine.memo.svg import ChainPictures, waterfall_svg

    ctx = {k: v for k, v in memo_case["ctx"].items() if k not in ("neighbourhood_png", "waterfall_png")}
    chain, fid = explain_world["chain"], memo_case["fid"]
    nb = ChainPictures(chain, pd.Series(0.01, index=chain.nodes.index)).svg(fid)
    wf = waterfall_svg({"expected_value": -3.0, "a": 0.5}, {"a": 1.0}, {"a": "Alpha"})
    out = render_memo({**ctx, "neighbourhood_svg": nb, "waterfall_svg": wf}, tmp_path, formats=("html", "md"))
    html = out["html"].read_text(encoding="utf-8")
    assert html.count("data:image/svg+xml;base64,") == 2 and "data:image/png" not in html
    assert sorted(p.suffix for p in tmp_path.glob("*.svg")) == [".svg", ".svg"]
    with pytest.raises(ValueError, match="waterfall_png: SVG markup"):
        render_memo({**ctx, "waterfall_png": wf}, tmp_path / "x", formats=("md",))
    with pytest.raises(ValueError, match="neighbourhood_svg: SVG markup expected"):
        render_memo({**ctx, "neighbourhood_svg": memo_case["ctx"]["neighbourhood_png"]}, tmp_path / "x", formats=("md",))
    with pytest.raises(ValueError, match="both waterfall_svg and waterfall_png"):
        render_memo({**ctx, "waterfall_svg": wf, "waterfall_png": memo_case["ctx"]["waterfall_png"]}, tmp_path / "x",
                    formats=("md",))
