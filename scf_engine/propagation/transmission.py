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

solved with a sparse LU factorisation (``scipy.sparse.linalg.splu``). ``G`` itself (one
column per core) is the decomposition of a firm's transmitted credit by core.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import splu

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

    def solve(self, decay: float, y_core: np.ndarray) -> np.ndarray:
        """Transmitted ``y`` for every non-core firm; ``y_core`` may be (n_cores,) or (n_cores, k)."""
        lu = self.factor(decay)
        rhs = decay * (self.W_UC @ y_core)
        if rhs.ndim == 1:
            return lu.solve(np.asarray(rhs, dtype=np.float64))
        return lu.solve(np.asarray(rhs, dtype=np.float64))

    def factor(self, decay: float):
        n = self.W_UU.shape[0]
        M = (sp.identity(n, format="csc") - decay * self.W_UU.tocsc()).tocsc()
        return splu(M, permc_spec="COLAMD")

    def gain(self, decay: float) -> np.ndarray:
        """G (n_other x n_cores): how much of each core's credit reaches each firm."""
        lu = self.factor(decay)
        rhs = (decay * self.W_UC).toarray()
        return lu.solve(rhs) if rhs.size else np.zeros((self.W_UU.shape[0], 0))


def transmission(chain: Chain) -> Transmission:
    nodes = chain.nodes
    edges = chain.edges
    is_core = nodes["is_core"].to_numpy()
    core_ids = nodes.index[is_core]
    other_ids = nodes.index[~is_core]
    order = core_ids.append(other_ids)
    pos = pd.Index(order)
    n_c = len(core_ids)

    sales = np.maximum(nodes["trade_in_12m"].reindex(order).to_numpy(),
                       edges.groupby("supplier")["recv_amount_12m"].sum().reindex(order).fillna(0).to_numpy())
    purchases = nodes["trade_out_12m"].reindex(order).to_numpy()
    s = pos.get_indexer(edges["supplier"])
    b = pos.get_indexer(edges["buyer"])
    # upstream: supplier s takes credit from buyer b through confirmed receivables
    up_w = edges["confirmed_amount_12m"].to_numpy() / np.where(sales[s] > 0, sales[s], np.inf)
    # downstream: buyer b takes credit from supplier s through trade it paid for
    down_w = edges["trade_volume_12m"].to_numpy() / np.where(purchases[b] > 0, purchases[b], np.inf)
    rows = np.concatenate([s, b])
    cols = np.concatenate([b, s])
    vals = np.concatenate([up_w, down_w])
    keep = (vals > 0) & (rows >= n_c) & (rows != cols)  # cores keep their own credit
    n = len(order)
    W = sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, n))
    row_sum = np.asarray(W.sum(axis=1)).ravel()
    scale = np.where(row_sum > 1, 1 / np.maximum(row_sum, 1e-12), 1.0)
    W = sp.diags(scale) @ W
    W = W.tocsr()
    covered = nodes["role"].reindex(other_ids).isin(["upstream", "downstream"]).to_numpy()
    return Transmission(pos, core_ids, W[n_c:, n_c:].tocsr(), W[n_c:, :n_c].tocsr(), covered)
