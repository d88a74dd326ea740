"""Explanations of the core-enterprise credit propagation model.

The chain's part of firm i's log-odds (``propagated_log_odds`` of
:meth:`CorePropagation.predict_frame`) is exactly

    sum_c G[i, c] * core_credit[c],   G = (I - d W_UU)^-1 d W_UC = sum_k (d W_UU)^k d W_UC

so it decomposes two ways:

* by core (:func:`core_decomposition`): one row per core, ``gain * core_credit``;
* by path (:func:`path_decomposition`): expanding the series, every walk
  ``i -> j1 -> ... -> core`` of length L carries ``d^L * prod(W along it) * core_credit``.
  The simple paths up to ``max_len`` hops are listed with the trade behind each hop (the
  confirmed receivables the firm sold on, the trade it paid for); everything else -
  longer paths and walks that loop (i sells to j and j buys back from i) - is one
  remainder row, so the column sums exactly to the total.

Only sparse matrices are used: G's row for one firm is one transposed sparse solve
(``e_i' (I - d W_UU)^-1``), never a dense N x N matrix.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scf_engine.propagation.transmission import Transmission, transmission

REMAINDER = "longer paths and loops"
PATH_COLUMNS = ["kind", "core_id", "core_name", "length", "path", "names", "hops", "weight", "decay_factor",
                "core_credit", "contribution"]


def _position(tr: Transmission, firm_id: str) -> int:
    others = tr.other_ids
    if firm_id in tr.core_ids:
        raise ValueError(f"{firm_id} is a core enterprise: it sends credit, it has no propagated score")
    loc = others.get_indexer([firm_id])[0]
    if loc < 0:
        raise KeyError(f"{firm_id} is not in the chain")
    return int(loc)


def gain_row(tr: Transmission, decay: float, i: int) -> np.ndarray:
    """Row ``i`` of G (one value per core) by one transposed sparse solve."""
    if tr.W_UC.shape[1] == 0:
        return np.zeros(0)
    return tr.gain_row(decay, i)


def _total(model, chain, firm_id, frame):
    f = frame if frame is not None else model.predict_frame(chain)
    row = f.loc[firm_id]
    return bool(row["covered"]), float(row["propagated_log_odds"])


def core_decomposition(model, chain, firm_id: str, *, tr: Transmission | None = None,
                       frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per core with a non-zero gain: ``core_id, core_name, gain, core_credit,
    contribution`` (gain * core_credit), largest first. The contributions sum to the
    firm's ``propagated_log_odds`` (``attrs['total']``; ``attrs['covered']`` False means
    the model does not score the firm, and the frame is empty)."""
    tr = tr or transmission(chain)
    i = _position(tr, firm_id)
    covered, total = _total(model, chain, firm_id, frame)
    cols = ["core_id", "core_name", "gain", "core_credit", "contribution"]
    if not covered:
        out = pd.DataFrame(columns=cols)
        out.attrs.update(total=np.nan, covered=False, firm_id=firm_id)
        return out
    g = gain_row(tr, model.decay_, i)
    cc = model.core_credit(chain, tr).reindex(tr.core_ids).to_numpy()
    out = pd.DataFrame({"core_id": tr.core_ids, "core_name": chain.nodes["name"].reindex(tr.core_ids).to_numpy(),
                        "gain": g, "core_credit": cc, "contribution": g * cc})
    out = out[out["gain"] != 0]
    out = out.iloc[np.argsort(-np.abs(out["contribution"].to_numpy()), kind="stable")].reset_index(drop=True)
    out.attrs.update(total=total, covered=True, firm_id=firm_id)
    return out


def path_decomposition(model, chain, firm_id: str, max_len: int = 4, *, max_paths: int = 20_000,
                       tr: Transmission | None = None, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """Simple paths ``firm -> ... -> core`` of at most ``max_len`` hops, largest first,
    then one ``kind == "remainder"`` row (longer paths and loops) so that ``contribution``
    sums exactly to the firm's ``propagated_log_odds``.

    Columns: ``kind`` ("path"/"remainder"), ``core_id``, ``core_name``, ``length`` (hops),
    ``path`` (firm ids, firm first, core last), ``names``, ``hops`` (per hop: ``from``,
    ``to``, ``confirmed_receivables_cny`` - receivables the hop's origin registered on
    the next firm and that firm confirmed, last 12 months -, ``trade_paid_cny`` - trade
    the origin paid to the next firm, last 12 months -, and ``weight`` W), ``weight``
    (product of W), ``decay_factor`` (decay^length), ``core_credit`` and ``contribution``
    (decay_factor * weight * core_credit). At most ``max_paths`` paths are listed; any
    others fall into the remainder.
    """
    tr = tr or transmission(chain)
    i = _position(tr, firm_id)
    covered, total = _total(model, chain, firm_id, frame)
    if not covered:
        out = pd.DataFrame(columns=PATH_COLUMNS)
        out.attrs.update(total=np.nan, covered=False, firm_id=firm_id, max_len=max_len)
        return out
    d = float(model.decay_)
    cc = model.core_credit(chain, tr).reindex(tr.core_ids).to_numpy()
    Wuu = tr.W_UU.tocsr()
    Wuc = tr.W_UC.tocsr()
    others, cores = tr.other_ids, tr.core_ids

    found = []  # (U-path, core index, weight product)
    truncated = False

    def walk(path, weight):
        nonlocal truncated
        u = path[-1]
        L = len(path)  # hops to a core from here = L
        for c, w in zip(Wuc.indices[Wuc.indptr[u]:Wuc.indptr[u + 1]], Wuc.data[Wuc.indptr[u]:Wuc.indptr[u + 1]]):
            if len(found) >= max_paths:
                truncated = True
                return
            found.append((tuple(path), int(c), weight * w))
        if L + 1 > max_len:
            return
        for v, w in zip(Wuu.indices[Wuu.indptr[u]:Wuu.indptr[u + 1]], Wuu.data[Wuu.indptr[u]:Wuu.indptr[u + 1]]):
            if v in path or w == 0:
                continue
            walk(path + [int(v)], weight * w)
            if truncated:
                return

    if max_len >= 1:
        walk([i], 1.0)

    names = chain.nodes["name"]
    rows = []
    if found:
        ids_in = set()
        for p, c, _ in found:
            ids_in.update(others[list(p)])
            ids_in.add(cores[c])
        e = chain.edges
        e = e[e["supplier"].isin(ids_in) & e["buyer"].isin(ids_in)]
        amounts = {(s, b): (cf, tv) for s, b, cf, tv in
                   zip(e["supplier"], e["buyer"], e["confirmed_amount_12m"], e["trade_volume_12m"])}
        W = sp.hstack([Wuc, Wuu]).tocsr()  # columns: cores, then others (tr.firm_ids order)
        pos = {f: k for k, f in enumerate(tr.firm_ids)}
        for p, c, weight in found:
            ids = tuple(others[list(p)]) + (cores[c],)
            hops = []
            for a, b in zip(ids[:-1], ids[1:]):
                hops.append({
                    "from": a, "to": b,
                    "confirmed_receivables_cny": float(amounts.get((a, b), (0.0, 0.0))[0]),
                    "trade_paid_cny": float(amounts.get((b, a), (0.0, 0.0))[1]),
                    "weight": float(W[pos[a] - len(cores), pos[b]]),
                })
            L = len(ids) - 1
            rows.append({"kind": "path", "core_id": cores[c], "core_name": names.get(cores[c]), "length": L,
                         "path": ids, "names": tuple(names.get(f) for f in ids), "hops": hops, "weight": weight,
                         "decay_factor": d ** L, "core_credit": float(cc[c]),
                         "contribution": d ** L * weight * float(cc[c])})
    out = pd.DataFrame(rows, columns=PATH_COLUMNS)
    if len(out):
        out = out.iloc[np.argsort(-np.abs(out["contribution"].to_numpy()), kind="stable")].reset_index(drop=True)
    listed = float(out["contribution"].sum()) if len(out) else 0.0
    rest = {"kind": "remainder", "core_id": None, "core_name": REMAINDER, "length": np.nan, "path": None,
            "names": None, "hops": None, "weight": np.nan, "decay_factor": np.nan, "core_credit": np.nan,
            "contribution": total - listed}
    out = pd.concat([out, pd.DataFrame([rest], columns=PATH_COLUMNS)], ignore_index=True) if len(out) else \
        pd.DataFrame([rest], columns=PATH_COLUMNS)
    out.attrs.update(total=total, covered=True, firm_id=firm_id, max_len=max_len, truncated=truncated)
    return out


__all__ = ["REMAINDER", "core_decomposition", "gain_row", "path_decomposition"]
