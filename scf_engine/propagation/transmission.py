"""How much of each core's credit reaches each firm: the transmission weights and the
sparse linear solve.

Credit is a log-odds deviation from the portfolio average, ``y`` (negative = safer).
A core's ``y`` is set from its rating and its own registry record. Every other firm
takes a ``decay``-discounted, weighted average of its chain partners' ``y``:

    y_i = decay * sum_j W_ij y_j

* upstream (the firm sells to j): ``W_ij`` = amount of receivables on j that j
  *confirmed* in the last 12 months, over the firm's sales (unconfirmed receivables
  carry no credit: the pain point of lending when a core refuses to confirm);
* downstream (the firm buys from j): ``W_ij`` = trade paid to j over the firm's purchases.

Rows are capped to sum at most 1, so a firm never gets more than its partners have. In
matrix form, with U the non-core firms and C the cores,

    y_U = G y_C,   G = (I - decay W_UU)^-1 decay W_UC

solved by fixed-point iteration on sparse matrices, ``y <- decay (W_UU y + W_UC y_C)``,
which converges because ``decay < 1`` and rows sum to at most 1 (a contraction). Supply
chains are nearly acyclic, so it converges in about as many sweeps as the chain is deep;
a sparse LU factorisation, tried first, filled in catastrophically on graphs with loops
(4 minutes on a 1M-edge graph, against under 2 seconds here: bench/bench_graph.py).
``G`` itself (one column per core) is the decomposition of a firm's transmitted credit
by core; the model never forms it whole, it solves for the few columns it needs, and an
explanation takes one row of it (:meth:`Transmission.gain_row`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from scf_engine.graph import Chain


@dataclass
class Transmission:
    """Weights of one chain, ready to solve for any decay."""

    firm_ids: pd.Index  # all firms, cores first then the rest (U)
    core_ids: pd.Index
    W_UU: sp.csr_matrix
    W_UC: sp.csr_matrix
    covered: np.ndarray  # bool over U: linked to a core within max_tier

    @property
    def other_ids(self) -> pd.Index:
        return self.firm_ids[len(self.core_ids):]

    def solve(self, decay: float, y_core: np.ndarray, *, tol: float = 1e-13, max_iter: int = 20_000) -> np.ndarray:
        """Transmitted ``y`` for every non-core firm; ``y_core`` may be (n_cores,) or (n_cores, k)."""
        b = decay * (self.W_UC @ np.asarray(y_core, dtype=np.float64))
        return _fixed_point(decay * self.W_UU, np.asarray(b), tol, max_iter)

    def gain_row(self, decay: float, i: int, *, tol: float = 1e-13, max_iter: int = 20_000) -> np.ndarray:
        """Row ``i`` of G (one value per core): ``decay W_UC' x`` where
        ``(I - decay W_UU)' x = e_i``, solved by the same iteration on the transpose."""
        e = np.zeros(self.W_UU.shape[0])
        e[i] = 1.0
        x = _fixed_point((decay * self.W_UU).T.tocsr(), e, tol, max_iter)
        return np.asarray(decay * (self.W_UC.T @ x)).ravel()

    def gain(self, decay: float) -> np.ndarray:
        """G (n_other x n_cores), dense: for small graphs, tests and pictures only."""
        if self.W_UC.shape[1] == 0:
            return np.zeros((self.W_UU.shape[0], 0))
        return self.solve(decay, np.eye(self.W_UC.shape[1]))


def _fixed_point(A: sp.csr_matrix, b: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Solve ``x = A x + b`` for a contraction ``A`` (sparse), ``b`` 1-D or 2-D."""
    x = b.copy()
    scale = 1.0 + float(np.max(np.abs(b))) if b.size else 1.0
    for _ in range(max_iter):
        nxt = A @ x + b
        if np.max(np.abs(nxt - x), initial=0.0) <= tol * scale:
            return nxt
        x = nxt
    raise RuntimeError(f"propagation did not converge in {max_iter} sweeps")


def _large_strings(ids) -> pa.Array | pa.ChunkedArray:
    """Ids as Arrow large strings (zero-copy for Arrow-backed pandas strings)."""
    arr = pa.array(ids)
    return arr if arr.type == pa.large_string() else pc.cast(arr, pa.large_string())


def transmission(chain: Chain) -> Transmission:
    nodes = chain.nodes
    edges = chain.edges
    is_core = nodes["is_core"].to_numpy(dtype=bool)
    # cores first, then the rest; positions by one Arrow hash lookup per edge column
    # (pandas' get_indexer on Arrow-backed strings took 1.4 of 1.7 s on a 1M-edge graph)
    perm = np.concatenate([np.flatnonzero(is_core), np.flatnonzero(~is_core)])
    order = nodes.index[perm]
    n_c, n = int(is_core.sum()), len(order)
    key = _large_strings(order)
    if isinstance(key, pa.ChunkedArray):
        key = key.combine_chunks()

    def position(ids: pd.Series) -> np.ndarray:
        found = pc.index_in(_large_strings(ids), value_set=key)
        return np.asarray(pc.fill_null(found, -1), dtype=np.int64)

    s = position(edges["supplier"])
    b = position(edges["buyer"])
    known = (s >= 0) & (b >= 0)
    s, b = s[known], b[known]
    recv = edges["recv_amount_12m"].to_numpy(dtype=np.float64)[known]
    sales = np.maximum(nodes["trade_in_12m"].to_numpy(dtype=np.float64)[perm], np.bincount(s, weights=recv, minlength=n))
    purchases = nodes["trade_out_12m"].to_numpy(dtype=np.float64)[perm]
    # upstream: supplier s takes credit from buyer b through confirmed receivables
    up_w = edges["confirmed_amount_12m"].to_numpy(dtype=np.float64)[known] / np.where(sales[s] > 0, sales[s], np.inf)
    # downstream: buyer b takes credit from supplier s through trade it paid for
    down_w = edges["trade_volume_12m"].to_numpy(dtype=np.float64)[known] / np.where(purchases[b] > 0, purchases[b], np.inf)
    rows = np.concatenate([s, b])
    cols = np.concatenate([b, s])
    vals = np.concatenate([up_w, down_w])
    keep = (vals > 0) & (rows >= n_c) & (rows != cols)  # cores keep their own credit
    rows, cols, vals = rows[keep] - n_c, cols[keep], vals[keep]
    # rows capped to sum at most 1 (repeated cells add up, as in the sparse matrix)
    row_sum = np.bincount(rows, weights=vals, minlength=n - n_c)
    vals = vals * np.where(row_sum > 1, 1 / np.maximum(row_sum, 1e-12), 1.0)[rows]
    to_core = cols < n_c
    W_UC = sp.csr_matrix((vals[to_core], (rows[to_core], cols[to_core])), shape=(n - n_c, n_c))
    W_UU = sp.csr_matrix((vals[~to_core], (rows[~to_core], cols[~to_core] - n_c)), shape=(n - n_c, n - n_c))
    covered = np.isin(nodes["role"].to_numpy(dtype=object)[perm[n_c:]], ["upstream", "downstream"])
    return Transmission(pd.Index(order), order[:n_c], W_UU, W_UC, covered)
