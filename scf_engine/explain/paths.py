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

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scf_engine.propagation.transmission import Transmission, transmission

REMAINDER = "longer paths and loops"
PATH_COLUMNS = ["kind", "core_id", "core_name", "length", "path", "names", "hops", "weight", "decay_factor",
                "core_credit", "contribution"]


def _not_scored(firm_id: str, core_ids) -> Exception:
    """Why a firm has no position among the chain's non-core firms."""
    if firm_id in core_ids:
        return ValueError(f"{firm_id} is a core enterprise: it sends credit, it has no propagated score")
    return KeyError(f"{firm_id} is not in the chain")


def _position(tr: Transmission, firm_id: str) -> int:
    loc = tr.other_ids.get_indexer([firm_id])[0]
    if loc < 0:
        raise _not_scored(firm_id, tr.core_ids)
    return int(loc)


def gain_row(tr: Transmission, decay: float, i: int) -> np.ndarray:
    """Row ``i`` of G (one value per core) by one transposed sparse solve."""
    if tr.W_UC.shape[1] == 0:
        return np.zeros(0)
    return tr.gain_row(decay, i)


def _total(model, chain, firm_id, frame):
    f = frame if frame is not None else model.predict_frame(chain)
    return bool(f.at[firm_id, "covered"]), float(f.at[firm_id, "propagated_log_odds"])


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


@dataclass
class PathContext:
    """What every firm's path decomposition in one chain shares, computed once: a batch
    of thousands of memos must not rebuild the weights, the cores' credit, the id lookups
    or the trade behind each edge per firm."""

    decay: float
    core_credit: np.ndarray
    Wuu: sp.csr_matrix
    Wuc: sp.csr_matrix
    others: np.ndarray  # non-core firm ids, W_UU order
    cores: np.ndarray  # core ids, W_UC column order
    position: dict  # non-core firm id -> row
    names: dict  # firm id -> name
    amounts: dict  # (supplier, buyer) -> (confirmed receivables 12m, trade volume 12m)
    frame: pd.DataFrame  # CorePropagation.predict_frame(chain)


def path_context(model, chain, *, tr: Transmission | None = None, frame: pd.DataFrame | None = None) -> PathContext:
    tr = tr or transmission(chain)
    e = chain.edges
    others = np.asarray(tr.other_ids, dtype=object)
    return PathContext(
        decay=float(model.decay_),
        core_credit=model.core_credit(chain, tr).reindex(tr.core_ids).to_numpy(),
        Wuu=tr.W_UU.tocsr(), Wuc=tr.W_UC.tocsr(), others=others,
        cores=np.asarray(tr.core_ids, dtype=object),
        position={f: k for k, f in enumerate(others)},
        names=dict(zip(chain.nodes.index.tolist(), chain.nodes["name"].tolist())),
        amounts=dict(zip(zip(e["supplier"].tolist(), e["buyer"].tolist()),
                         zip(e["confirmed_amount_12m"].tolist(), e["trade_volume_12m"].tolist()))),
        frame=frame if frame is not None else model.predict_frame(chain),
    )


class PathList(list):
    """The rows of a path decomposition as plain dicts, with the DataFrame's ``attrs``:
    what memos take, so a batch does not build and unpick a DataFrame per firm."""

    def __init__(self, rows=(), **attrs):
        super().__init__(rows)
        self.attrs = dict(attrs)


def path_decomposition(model, chain, firm_id: str, max_len: int = 4, *, max_paths: int = 20_000,
                       tr: Transmission | None = None, frame: pd.DataFrame | None = None,
                       context: PathContext | None = None) -> pd.DataFrame:
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
    others fall into the remainder. Pass ``context`` (:func:`path_context`) when
    decomposing many firms of one chain.
    """
    rows = path_rows(model, chain, firm_id, max_len, max_paths=max_paths, tr=tr, frame=frame, context=context)
    out = pd.DataFrame(list(rows), columns=PATH_COLUMNS)
    out.attrs.update(rows.attrs)
    return out


def path_rows(model, chain, firm_id: str, max_len: int = 4, *, max_paths: int = 20_000,
              tr: Transmission | None = None, frame: pd.DataFrame | None = None,
              context: PathContext | None = None) -> PathList:
    """:func:`path_decomposition` as a :class:`PathList` of row dicts (same rows, same order)."""
    ctx = context or path_context(model, chain, tr=tr, frame=frame)
    if firm_id not in ctx.position:
        raise _not_scored(firm_id, set(ctx.cores))
    i = ctx.position[firm_id]
    covered, total = _total(model, chain, firm_id, ctx.frame)
    if not covered:
        return PathList(total=np.nan, covered=False, firm_id=firm_id, max_len=max_len)
    d, cc, Wuu, Wuc, others, cores = ctx.decay, ctx.core_credit, ctx.Wuu, ctx.Wuc, ctx.others, ctx.cores

    found = []  # (U-path, core index, weight per hop)
    truncated = False

    def walk(path, weights):
        nonlocal truncated
        u = path[-1]
        lo, hi = Wuc.indptr[u], Wuc.indptr[u + 1]
        for c, w in zip(Wuc.indices[lo:hi].tolist(), Wuc.data[lo:hi].tolist()):
            if len(found) >= max_paths:
                truncated = True
                return
            found.append((tuple(path), c, weights + (w,)))
        if len(path) + 1 > max_len:
            return
        lo, hi = Wuu.indptr[u], Wuu.indptr[u + 1]
        for v, w in zip(Wuu.indices[lo:hi].tolist(), Wuu.data[lo:hi].tolist()):
            if v in path or w == 0:
                continue
            walk(path + [v], weights + (w,))
            if truncated:
                return

    if max_len >= 1:
        walk([i], ())

    names, amounts = ctx.names, ctx.amounts
    rows = []
    for p, c, ws in found:
        ids = tuple(others[list(p)].tolist()) + (cores[c],)
        hops = [{"from": a, "to": b,
                 "confirmed_receivables_cny": float(amounts.get((a, b), (0.0, 0.0))[0]),
                 "trade_paid_cny": float(amounts.get((b, a), (0.0, 0.0))[1]),
                 "weight": float(w)} for a, b, w in zip(ids[:-1], ids[1:], ws)]
        L = len(ids) - 1
        weight = float(np.prod(ws))
        rows.append({"kind": "path", "core_id": cores[c], "core_name": names.get(cores[c]), "length": L,
                     "path": ids, "names": tuple(names.get(f) for f in ids), "hops": hops, "weight": weight,
                     "decay_factor": d ** L, "core_credit": float(cc[c]),
                     "contribution": d ** L * weight * float(cc[c])})
    rows.sort(key=lambda r: -abs(r["contribution"]))  # stable: equal contributions keep walk order
    listed = float(sum(r["contribution"] for r in rows))
    rows.append({"kind": "remainder", "core_id": None, "core_name": REMAINDER, "length": np.nan, "path": None,
                 "names": None, "hops": None, "weight": np.nan, "decay_factor": np.nan, "core_credit": np.nan,
                 "contribution": total - listed})
    return PathList(rows, total=total, covered=True, firm_id=firm_id, max_len=max_len, truncated=truncated)


__all__ = ["REMAINDER", "PathContext", "PathList", "core_decomposition", "gain_row", "path_context", "path_decomposition",
           "path_rows"]
