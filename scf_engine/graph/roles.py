"""Roles and tiers, derived from the graph alone (never from simulator labels).

* **core**: ``is_core`` in firms.
* **upstream tier k**: the shortest supply path from the firm to a core has k edges
  (supplier -> buyer -> ... -> core); tier 1 sells to a core directly.
* **downstream tier k**: the shortest path from a core down to the firm as a buyer has
  k edges; tier 1 buys from a core.
* **unattached**: neither.

A firm tied to several cores keeps all of them (``cores``). Paths do not run through
another core: a core's own suppliers belong to that core's chain.

Computed as sparse boolean reachability, one sparse product per tier
(``R_{k+1} = A R_k``, a firms x cores matrix), which stays fast with hundreds of cores
and hundreds of thousands of firms where a breadth-first search per core would not.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

def chain_roles(firm_ids: pd.Index, is_core: np.ndarray, edges: pd.DataFrame, *, max_tier: int) -> pd.DataFrame:
    """Per firm: role, upstream_tier, downstream_tier, cores (tuple), n_cores."""
    n = len(firm_ids)
    pos = pd.Index(firm_ids)
    s = pos.get_indexer(edges["supplier"])
    b = pos.get_indexer(edges["buyer"])
    ok = (s >= 0) & (b >= 0)
    A = sp.csr_matrix((np.ones(ok.sum()), (s[ok], b[ok])), shape=(n, n))
    A.data[:] = 1.0
    core_idx = np.flatnonzero(is_core)
    n_core = len(core_idx)
    seed = sp.csr_matrix((np.ones(n_core), (core_idx, np.arange(n_core))), shape=(n, n_core))
    not_core = sp.diags((~np.asarray(is_core, bool)).astype(float))

    def walk(M):
        tier = np.full(n, np.nan)
        reached = seed.copy()
        frontier = seed.copy()
        for k in range(1, max_tier + 1):
            frontier = not_core @ (M @ frontier)
            frontier.data[:] = 1.0
            frontier = frontier - frontier.multiply(reached)  # only newly reached (firm, core) pairs
            frontier.eliminate_zeros()
            if frontier.nnz == 0:
                break
            rows = np.unique(frontier.nonzero()[0])
            new_rows = rows[np.isnan(tier[rows])]
            tier[new_rows] = k
            reached = reached + frontier
            reached.data[:] = 1.0
        return tier, (reached - seed).tocsr()

    up_tier, up_reach = walk(A)
    down_tier, down_reach = walk(A.T.tocsr())
    reach = (up_reach + down_reach).tocsr()
    core_names = pos[core_idx].to_numpy()
    cores = [tuple(core_names[reach.indices[reach.indptr[i]:reach.indptr[i + 1]]]) for i in range(n)]
    role = np.where(is_core, "core",
                    np.where(~np.isnan(up_tier) & (np.isnan(down_tier) | (up_tier <= down_tier)), "upstream",
                             np.where(~np.isnan(down_tier), "downstream", "unattached")))
    out = pd.DataFrame({
        "role": role, "upstream_tier": up_tier, "downstream_tier": down_tier,
        "cores": cores, "n_cores": [len(c) for c in cores],
    }, index=pos)
    out.loc[out["role"] == "core", "cores"] = pd.Series(list(zip(pos[is_core])), index=pos[is_core])
    out.index.name = "firm_id"
    return out
