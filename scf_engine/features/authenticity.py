"""Is the trade real? (贸易背景真实性) Money that moves without trade behind it.

Fabricated trade and 资金空转 leave shapes in account flows that real trade rarely does:

* a **ring**: money leaves a firm and comes back to it through at least two other
  parties, each hop booked after the one before it, within weeks, losing a little at each
  hop (fees, a thin margin);
* a **round trip**: paid to a counterparty and paid back by it at a matching amount within
  days;
* a **pass-through** account (过桥): a receipt paid straight on to someone else;
* **scatter-gather**: money from one party reaches another through several intermediaries;
* fan-in and fan-out **bursts**: many payers (payees) within a few days.

Every threshold (window, per-hop decay, ring length, days) is in ``models/authenticity.yaml``.

How rings are found, at scale: a bounded-depth, time-respecting path search, one hop at a
time, for all starting transfers at once (numpy). Transfers are sorted by (payer, amount
band, day), the band a log-scale bucket one hop's tolerance wide, so the transfers that may
follow a hop (leaving its payee, at most ``hop_decay`` smaller, on or after its day, before
the window closes) are a few contiguous slices found by binary search; only those are
checked exactly. A path is extended only to parties it has not visited; it is a ring when a
hop reaches the party it started from with at least ``min_parties`` parties on it. Work
grows with the number of *matching* onward transfers, not with counterparties, so a hub
with thousands of payments a month costs no more than its matching ones. Start transfers
are processed in chunks to bound memory. Exact: ``tests/test_features.py`` checks it
against a brute-force enumeration on small random graphs (hypothesis).

The same onward-hop search gives pass-through (a receipt followed by a matching payment to
another party within days) and scatter-gather (two-hop paths grouped by their ends).

Order-free ring evidence, beside the time-respecting rings: a ring whose hops are booked out
of time order (IBM's AMLSim books a planted cycle's hops at random days; a real one may book
the closing hop under another name) never "comes back". What it still leaves is an amount
handed on from party to party (**amount chains**, the onward-hop search over a window either
side of the receipt) and a short directed cycle of trade relationships (**structural
rings**, a meet-in-the-middle breadth-first search over sparse matrices, exact up to
``max_parties``), and the **walk return**: the chance that money the firm pays comes back
to it if every party spreads what it receives evenly over its payees (a ring through a hub
brings back little; one of thin relationships a lot). ``cycle_score_12m`` weighs the three
kinds of evidence (policy weights): money that came round in order, then an amount chain,
then the walk return, which ordinary firms have a little of by chance too.

Until this version, cycles were strongly connected components of a (party, amount bucket)
graph, with no time order: two pairs A<->B and B<->C at one amount read as a ring, though no
cycle passes through three parties, and money that shrank on the way read as none.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from scf_engine import policies

CHUNK = 1 << 18  # start transfers per pass of a search (bounds the frontier's memory; at 1 << 20,
# the searches over a monitoring pass's ~24 months of trade at 100,000 firms held ~2 GB at once)
# chunks searched at once, on threads: numpy lets the GIL go in the sorts, binary searches
# and gathers that are most of a chunk's time, so a second core takes a second chunk; each
# chunk's answer is its own and they are put together in chunk order, so the answers are
# the same for any number (the memory held is that of this many chunks)
SEARCH_THREADS = 2


def _chunks(n: int, work) -> list:
    """``work(lo, hi)`` for the ``CHUNK``-sized ranges of ``range(n)``, ``SEARCH_THREADS``
    at a time, the results in the ranges' order."""
    spans = [(c, min(c + CHUNK, n)) for c in range(0, n, CHUNK)]
    if len(spans) < 2 or SEARCH_THREADS < 2:
        return [work(lo, hi) for lo, hi in spans]
    with ThreadPoolExecutor(max_workers=SEARCH_THREADS, thread_name_prefix="scf-search") as pool:
        return list(pool.map(lambda span: work(*span), spans))


def load_policy(models_dir=None) -> policies.Policy:
    return policies.load("authenticity", models_dir)


class TransferIndex:
    """Transfers (parties as integer codes, ``day`` as integer days) indexed for the
    onward-hop query: which transfers may carry on the money of a given transfer."""

    def __init__(self, payer, payee, day, amount, *, hop_decay: float, hop_growth: float = 0.0):
        self.payer = np.asarray(payer, dtype=np.int64)
        self.payee = np.asarray(payee, dtype=np.int64)
        self.day = np.asarray(day, dtype=np.int64)
        self.amount = np.asarray(amount, dtype=np.float64)
        self.decay, self.growth = float(hop_decay), float(hop_growth)
        self.n = len(self.amount)
        # amount bands one hop's tolerance wide: a hop's onward range spans at most 3 bands
        self.width = max(-np.log1p(-self.decay), np.log1p(self.growth), 1e-6)
        if self.n == 0:
            return
        self.b0 = int(np.floor(self._log(self.amount).min() / self.width))
        band = self._band(self.amount)
        self.nb = int(band.max()) + 1
        self.d0 = int(self.day.min())
        self.nt = int(self.day.max()) - self.d0 + 1
        key = (self.payer * self.nb + band) * self.nt + (self.day - self.d0)
        self.order = np.argsort(key, kind="stable")
        self.skey = key[self.order]

    @staticmethod
    def _log(a):
        return np.log(np.maximum(a, 1e-9))

    def _band(self, a):
        return np.floor(self._log(a) / self.width).astype(np.int64) - self.b0

    def onward(self, last: np.ndarray, day_to: np.ndarray, day_from: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Pairs ``(row, edge)``: transfer ``edge`` leaves the payee of ``last[row]``, on its
        day or later (on ``day_from[row]`` or later when given: order ignored) and on
        ``day_to[row]`` or before, carrying between (1 - decay) and (1 + growth) times its
        amount."""
        if self.n == 0 or len(last) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        v, a = self.payee[last], self.amount[last]
        t_lo = np.maximum((self.day[last] if day_from is None else np.asarray(day_from, np.int64)) - self.d0, 0)
        t_hi = np.minimum(np.asarray(day_to, np.int64) - self.d0, self.nt - 1)
        lo_a, hi_a = a * (1 - self.decay), a * (1 + self.growth)
        blo = np.clip(self._band(lo_a), 0, self.nb - 1)
        bhi = np.clip(self._band(hi_a), 0, self.nb - 1)
        rows, edges = [], []
        for off in range(int((bhi - blo).max()) + 1):
            r = np.flatnonzero((blo + off <= bhi) & (t_lo <= t_hi))
            base = (v[r] * self.nb + blo[r] + off) * self.nt
            lo = _search(self.skey, base + t_lo[r], "left")
            cnt = _search(self.skey, base + t_hi[r], "right") - lo
            rows.append(np.repeat(r, cnt))
            first = np.repeat(lo - np.cumsum(cnt) + cnt, cnt)
            edges.append(self.order[first + np.arange(int(cnt.sum()))])
        r, e = np.concatenate(rows), np.concatenate(edges)
        ok = (self.amount[e] >= lo_a[r]) & (self.amount[e] <= hi_a[r])
        return r[ok], e[ok]


def _search(sorted_keys: np.ndarray, needles: np.ndarray, side: str) -> np.ndarray:
    """``np.searchsorted`` with the needles looked up in sorted order: the same answers,
    but one binary search after another walks the sorted keys forwards instead of jumping
    around millions of them (8x faster on 3 million needles; this was most of the ring
    search's time, which every as-of of ``scf monitor`` runs). Equal needles get equal
    answers, so the order among them does not matter: a plain quicksort (a stable sort
    took as long as the searches it saved)."""
    if len(needles) < 4096:
        return np.searchsorted(sorted_keys, needles, side)
    order = np.argsort(needles)
    out = np.empty(len(needles), dtype=np.intp)
    out[order] = np.searchsorted(sorted_keys, needles[order], side)
    return out


def ring_paths(index: TransferIndex, *, window_days: int, min_parties: int = 3, max_parties: int = 6,
               starts: np.ndarray | None = None) -> list[np.ndarray]:
    """Every ring, as arrays of transfer ids ``(n_rings, k)`` (one array per length k, the
    first column the transfer that started it): a simple directed cycle of k distinct
    parties, ``min_parties <= k <= max_parties``, each hop on or after the day of the one
    before, carrying the amount on within the index's tolerance, the last hop booked within
    ``window_days`` of the first. ``starts`` limits the starting transfers (all by default)."""
    starts = np.arange(index.n) if starts is None else np.asarray(starts, np.int64)

    def search(lo: int, hi: int) -> list[np.ndarray]:
        found: list[np.ndarray] = []
        path = starts[lo:hi, None]
        for hop in range(1, max_parties):
            r, e = index.onward(path[:, -1], index.day[path[:, 0]] + window_days)
            w = index.payee[e]
            home = w == index.payer[path[r, 0]]
            if hop + 1 >= min_parties and home.any():
                found.append(np.column_stack([path[r[home]], e[home]]))
            r, e, w = r[~home], e[~home], w[~home]
            seen = np.zeros(len(r), dtype=bool)
            for j in range(path.shape[1]):  # payers already on the path (the start included)
                seen |= index.payer[path[r, j]] == w
            path = np.column_stack([path[r[~seen]], e[~seen]])
            if not len(path):
                break
        return found

    return [p for part in _chunks(len(starts), search) for p in part]


@dataclass
class RingSummary:
    """Per transfer: on a ring at all, the shortest ring it is on, and for a ring's first
    transfer (money that came back) the shortest ring and the fewest days to return."""

    on_ring: np.ndarray
    min_parties: np.ndarray  # shortest ring through the transfer (inf: none)
    returns: np.ndarray
    return_days: np.ndarray  # fewest days from leaving to coming back (nan: never)

    @classmethod
    def of(cls, index: TransferIndex, rings: list[np.ndarray]) -> "RingSummary":
        return cls.of_days(index.day, rings)

    @classmethod
    def of_days(cls, day: np.ndarray, rings: list[np.ndarray]) -> "RingSummary":
        """Per transfer of ``day`` (each transfer's day), from rings of its positions."""
        n = len(day)
        shortest = np.full(n, np.inf)
        days = np.full(n, np.inf)
        for p in rings:
            np.minimum.at(shortest, p.ravel(), float(p.shape[1]))
            np.minimum.at(days, p[:, 0], (day[p[:, -1]] - day[p[:, 0]]).astype(np.float64))
        return cls(on_ring=np.isfinite(shortest), min_parties=shortest, returns=np.isfinite(days),
                   return_days=np.where(np.isfinite(days), days, np.nan))


def _pairs(index: TransferIndex, keep, *, after: int, before: int | None = None) -> np.ndarray:
    """Pairs ``(r, e)`` of :meth:`TransferIndex.onward` from every transfer ``r`` (``e`` on
    or before ``after`` days after ``r``'s day, and on or after ``before`` days before it
    when given, else on or after ``r``'s day) that ``keep(r, e)`` accepts: ``CHUNK``
    starting transfers at a time (``SEARCH_THREADS`` chunks at once), so only those
    chunks' candidates are held at once (the same pairs; their order, which no reader
    depends on, is chunk by chunk)."""
    def search(lo: int, hi: int) -> np.ndarray:
        at = np.arange(lo, hi)
        day = index.day[at]
        r, e = index.onward(at, day + after, None if before is None else day - before)
        ok = keep(at[r], e)
        return np.column_stack([at[r[ok]], e[ok]])

    return np.concatenate([np.zeros((0, 2), np.int64), *_chunks(index.n, search)])


def round_trip_pairs(index: TransferIndex, *, days: int, tolerance: float) -> np.ndarray:
    """Pairs ``(r, e)`` of transfers (rows of an ``(n, 2)`` array): ``e`` pays ``r``'s payer
    back from ``r``'s payee at a matching amount (within ``tolerance`` either way) within
    ``days`` days of ``r``."""
    back = TransferIndex(index.payer, index.payee, index.day, index.amount, hop_decay=1 - 1 / (1 + tolerance),
                         hop_growth=tolerance)
    return _pairs(back, lambda r, e: back.payee[e] == back.payer[r], after=days)


def round_trip_edges(index: TransferIndex, *, days: int, tolerance: float) -> np.ndarray:
    """Boolean mask of transfers answered (or answering) by a transfer the other way between
    the same two parties at a matching amount (within ``tolerance`` either way) within
    ``days`` days."""
    return _marked(index.n, round_trip_pairs(index, days=days, tolerance=tolerance), both=True)


def onward_pairs(index: TransferIndex, *, days: int) -> np.ndarray:
    """Pairs ``(r, e)``: ``e`` pays ``r``'s money on from ``r``'s payee to a third party (not
    back to ``r``'s payer) at a matching amount within ``days`` days of ``r`` - a
    pass-through hop, and two hops of a scatter-gather."""
    return _pairs(index, lambda r, e: index.payee[e] != index.payer[r], after=days)


def pass_through_edges(index: TransferIndex, *, days: int) -> np.ndarray:
    """Boolean mask of transfers whose money the payee paid on to a third party at a
    matching amount within ``days`` days."""
    return _marked(index.n, onward_pairs(index, days=days), both=False)


def chain_pairs(index: TransferIndex, *, days: int) -> np.ndarray:
    """Pairs ``(r, e)`` of an *amount chain*: ``e`` pays on to a third party, from ``r``'s
    payee, between (1 - decay) and (1 + growth) times ``r``'s amount (the index's
    tolerance), within ``days`` of ``r`` in either order (see :func:`chain_edges`)."""
    return _pairs(index, lambda r, e: index.payee[e] != index.payer[r], after=days, before=days)


def chain_edges(index: TransferIndex, *, days: int) -> np.ndarray:
    """Boolean mask of transfers that are a hop of an *amount chain*: a receipt and a
    payment of the same party to a third party, within ``days`` of each other in either
    order, the payment carrying between (1 - decay) and (1 + growth) times the receipt
    (the index's tolerance). Both hops are marked.

    Order is ignored on purpose: a ring booked out of time order (AMLSim books a ring's
    hops on unrelated days) still hands one amount from party to party."""
    return _marked(index.n, chain_pairs(index, days=days), both=True)


def _marked(n: int, pairs: np.ndarray, *, both: bool) -> np.ndarray:
    """Boolean mask of the ``n`` transfers that start a pair (and end one, ``both``)."""
    mask = np.zeros(n, dtype=bool)
    mask[pairs[:, 0]] = True
    if both:
        mask[pairs[:, 1]] = True
    return mask


class _Balls:
    """Breadth-first balls from a chunk of sources at once, one hop at a time: ``levels[d]``
    holds, per source row, the parties at exactly ``d + 1`` hops (0/1 sparse, the source
    never in it). ``keep`` drops rows whose answer is known, so they cost nothing more."""

    def __init__(self, adj: sp.csr_matrix, rows: np.ndarray):
        self.adj = adj
        self.seen = sp.csr_matrix((np.ones(len(rows), np.float32), (np.arange(len(rows)), rows)),
                                  shape=(len(rows), adj.shape[0]))
        self.levels: list[sp.csr_matrix] = []

    def grow(self, depth: int) -> None:
        while len(self.levels) < depth:
            front = self.levels[-1] if self.levels else self.seen
            nxt = (front @ self.adj).tocsr()
            nxt.data[:] = 1
            nxt = (nxt - nxt.multiply(self.seen)).tocsr()
            nxt.eliminate_zeros()
            self.seen = (self.seen + nxt).tocsr()
            self.levels.append(nxt)

    def keep(self, mask: np.ndarray) -> None:
        self.seen = self.seen[mask]
        self.levels = [lv[mask] for lv in self.levels]


def structural_cycles(payer: np.ndarray, payee: np.ndarray, n: int, *, max_parties: int,
                      chunk: int = 2048, relationships: tuple | None = None) -> np.ndarray:
    """Per party code ``0..n-1``: the fewest parties on a directed cycle of *relationships*
    through it (someone it paid paid someone ... who paid it), ``2 <= k <= max_parties``,
    with time order and amounts ignored; ``inf`` when there is none that short.

    Exact and bounded: a cycle lies inside one strongly connected component, so only
    parties of components of two or more are searched (external customers who only pay
    and suppliers who are only paid drop out). The shortest cycle through ``s`` has length
    ``min_x d(s, x) + d(x, s)`` (the shortest closed walk through ``s`` is a simple cycle),
    and the party half way round it lies within ``ceil(k/2)`` hops out and ``floor(k/2)``
    hops back, so the search meets in the middle: balls of radius 3 for rings of 6.
    ``relationships``: :func:`_relationships` of the same transfers, when already made."""
    best = np.full(n, np.inf)
    pairs, comp = relationships or _relationships(payer, payee, n)  # one relationship per (payer, payee)
    if not len(pairs) or max_parties < 2:
        return best
    big = np.bincount(comp)[comp] >= 2
    keep = big[pairs[:, 0]] & (comp[pairs[:, 0]] == comp[pairs[:, 1]])
    nodes = np.flatnonzero(big)
    if not len(nodes):
        return best
    at = np.full(n, -1)
    at[nodes] = np.arange(len(nodes))
    m = len(nodes)
    fwd = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (at[pairs[keep, 0]], at[pairs[keep, 1]])), shape=(m, m))
    back = fwd.T.tocsr()
    for c in range(0, m, chunk):
        rows = np.arange(c, min(c + chunk, m))
        out, inn = _Balls(fwd, rows), _Balls(back, rows)
        for k in range(2, max_parties + 1):  # shortest first; a row found leaves the search
            out.grow((k + 1) // 2)
            inn.grow(k // 2)
            hit = np.zeros(len(rows), dtype=bool)
            for i in range(k // 2, (k + 1) // 2 + 1):  # i hops out, k - i back (i = k/2 or the larger half)
                if 1 <= k - i <= len(inn.levels) and i <= len(out.levels):
                    hit |= np.diff(out.levels[i - 1].multiply(inn.levels[k - i - 1]).tocsr().indptr) > 0
            best[nodes[rows[hit]]] = k
            rows = rows[~hit]
            if not len(rows):
                break
            out.keep(~hit)
            inn.keep(~hit)
    return best


def _relationships(payer: np.ndarray, payee: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (payer, payee) relationships, self-payments left out, and the strongly
    connected component of each party (a closed chain of relationships lies inside one)."""
    payer, payee = np.asarray(payer, np.int64), np.asarray(payee, np.int64)
    # distinct by hashing, then sorted: np.unique sorts every transfer (a year of a pair's
    # monthly payments are one relationship), a third of the features' time at 10,000 firms
    key = np.sort(pd.unique((payer * n + payee)[payer != payee]))
    pairs = np.column_stack([key // n, key % n])
    adj = sp.csr_matrix((np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return pairs, connected_components(adj, directed=True, connection="strong")[1]


def _walk(front: sp.csr_matrix, step: sp.csr_matrix, floor: float) -> sp.csr_matrix:
    """One hop of the walk: chances below ``floor`` are dropped (a path through hubs that
    brings back less than that is no evidence, and keeping it fills the matrix)."""
    nxt = (front @ step).tocsr()
    nxt.data[nxt.data < floor] = 0
    nxt.eliminate_zeros()
    return nxt


def walk_returns(payer: np.ndarray, payee: np.ndarray, n: int, *, max_parties: int, floor: float = 0.0,
                 chunk: int = 2048, relationships: tuple | None = None) -> np.ndarray:
    """Per party code ``0..n-1``: the chance that money it pays comes back to it within
    ``max_parties`` hops, if every party passed what it receives on evenly among its
    payees (its distinct trade relationships), time order and amounts ignored.

    Why: the shortest structural ring says a ring *exists*; ordinary firms sit on short
    rings by chance, mostly through hubs (a party paying thousands). A ring through a
    hub brings back almost nothing here, because the hub spreads the money over all its
    payees, while a closed chain of thin relationships (a planted ring: each member pays
    few parties) brings back a lot. So it is ring evidence normalised by the degrees of
    the parties on the ring, the firm's own included.

    How: closed walks of k hops through ``s`` are ``(P^k)_ss`` with ``P`` the row-normalised
    relationship matrix; the search meets in the middle like :func:`structural_cycles`
    (``P^i`` rows from ``s``, ``(P^T)^(k-i)`` rows back to it), over the parties of strongly
    connected components only (money paid outside one never comes back; it still counts
    in the payer's spread). First returns: ``f_k = r_k - sum_j f_j r_(k-j)``, so the result
    is a probability in [0, 1] that counts money coming back once, not every lap.
    ``relationships``: :func:`_relationships` of the same transfers, when already made."""
    back_home = np.zeros(n)
    pairs, comp = relationships or _relationships(payer, payee, n)
    if not len(pairs) or max_parties < 2:
        return back_home
    spread = np.bincount(pairs[:, 0], minlength=n).astype(np.float64)
    nodes = np.flatnonzero(np.bincount(comp)[comp] >= 2)
    inside = comp[pairs[:, 0]] == comp[pairs[:, 1]]
    at = np.full(n, -1)
    at[nodes] = np.arange(len(nodes))
    m, (a, b) = len(nodes), pairs[inside].T
    fwd = sp.csr_matrix((1 / spread[a], (at[a], at[b])), shape=(m, m))
    back = fwd.T.tocsr()
    out_hops, in_hops = (max_parties + 1) // 2, max_parties // 2
    for c in range(0, m, chunk):
        rows = np.arange(c, min(c + chunk, m))
        start = sp.csr_matrix((np.ones(len(rows)), (np.arange(len(rows)), rows)), shape=(len(rows), m))
        out, inn = [start], [start]
        for _ in range(out_hops):
            out.append(_walk(out[-1], fwd, floor))
        for _ in range(in_hops):
            inn.append(_walk(inn[-1], back, floor))
        closed = {k: np.asarray(out[(k + 1) // 2].multiply(inn[k // 2]).sum(axis=1)).ravel()
                  for k in range(2, max_parties + 1)}
        first: dict[int, np.ndarray] = {}
        for k in range(2, max_parties + 1):
            first[k] = np.maximum(closed[k] - sum(first[j] * closed[k - j] for j in range(2, k - 1)), 0)
        back_home[nodes[rows]] = np.minimum(sum(first.values()), 1.0)
    return back_home


def scatter_gather(index: TransferIndex, *, days: int) -> pd.DataFrame:
    """Per (source, gatherer) pair: the number of distinct intermediaries through which
    money from the source reached the gatherer in two matching hops within ``days`` days."""
    return _gathered(index.payer, index.payee, onward_pairs(index, days=days))


def _gathered(payer: np.ndarray, payee: np.ndarray, pairs: np.ndarray) -> pd.DataFrame:
    """:func:`scatter_gather` from its two-hop pairs (``r`` into the intermediary, ``e`` out)."""
    r, e = pairs[:, 0], pairs[:, 1]
    trios = pd.DataFrame({"src": payer[r], "mid": payee[r], "dst": payee[e]}).drop_duplicates()
    return trios.groupby(["src", "dst"], sort=True).size().rename("fan").reset_index()


@dataclass
class Shapes:
    """What the onward-hop search finds among transfers (:func:`find_shapes`), each
    transfer named by its position in the search's index, or by its id after
    :meth:`named`: the rings (one ``(n, k)`` array per length k), and pairs ``(r, e)`` as
    ``(n, 2)`` arrays: round trips, onward hops within ``onward_days`` (pass-through and
    scatter-gather read theirs, the shorter window by the days between the two hops) and
    amount chains. Each is a fact about its own transfers only, so the shapes among a
    subset of transfers are those whose transfers all lie in it (:meth:`within`)."""

    rings: list[np.ndarray]
    round_trip: np.ndarray
    onward: np.ndarray
    chain: np.ndarray
    _coded: tuple | None = field(default=None, init=False, repr=False, compare=False)  # :meth:`_distinct`

    def _map(self, f) -> "Shapes":
        return Shapes([f(p) for p in self.rings], f(self.round_trip), f(self.onward), f(self.chain))

    def named(self, ids: np.ndarray) -> "Shapes":
        """The same shapes with each transfer named by ``ids[position]``."""
        return self._map(lambda a: np.asarray(ids)[a])

    def within(self, ids: np.ndarray) -> "Shapes":
        """The shapes all of whose transfers are among ``ids`` (ids, as :meth:`named`
        gave them), each transfer renamed to its position in ``ids`` (its last, if an id
        is repeated).

        Each transfer a shape names is looked up in ``ids`` by binary search, once per
        distinct transfer (:meth:`_distinct`). Not a table indexed by id, as before: that
        was an array as long as the largest id (a pass's transfers are named by their row
        among its flows, 31 million at 100,000 firms: 250 MB), filled afresh at every
        as-of, and on a machine that hands freed memory back to its host (a VM with free
        page reporting) touching that much fresh memory took 1.5 s an as-of; the shapes
        name ~700,000 transfers."""
        keys, coded = self._distinct()
        at = positions_in(ids, keys)

        def keep(a):
            p = at[a]  # a coded array keeps its shape, (0, k) included
            return p[(p >= 0).all(axis=1)]

        return coded._map(keep)

    def _distinct(self) -> tuple[np.ndarray, "Shapes"]:
        """The distinct transfers the shapes name (sorted), and the shapes with each
        transfer as its position among them; made once per :class:`Shapes`."""
        if self._coded is None:
            arrays = self._arrays()
            keys, inverse = np.unique(np.concatenate([np.asarray(a, np.int64).ravel() for a in arrays]),
                                      return_inverse=True)
            parts = np.split(inverse.ravel(), np.cumsum([a.size for a in arrays])[:-1])
            *rings, round_trip, onward, chain = (p.reshape(a.shape) for p, a in zip(parts, arrays))  # _arrays' order
            self._coded = (keys, Shapes(rings, round_trip, onward, chain))
        return self._coded

    def _arrays(self):
        return [*self.rings, self.round_trip, self.onward, self.chain]


def positions_in(ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Per key, its position in ``ids`` (the last, if repeated; -1 where absent), by
    binary search over ``ids`` (sorted first unless they already are), as the inverse
    table ``at[ids] = arange(len(ids))`` would give it, without a table as long as the
    largest id."""
    ids, keys = np.asarray(ids, np.int64), np.asarray(keys, np.int64)
    if not len(ids):
        return np.full(len(keys), -1, np.int64)
    order = None if len(ids) < 2 or bool((ids[1:] >= ids[:-1]).all()) else np.argsort(ids, kind="stable")
    ordered = ids if order is None else ids[order]
    i = np.maximum(np.searchsorted(ordered, keys, "right") - 1, 0)  # the last of equal ids: stable order
    return np.where(ordered[i] == keys, i if order is None else order[i], -1)


def find_shapes(index: TransferIndex, pol: dict) -> Shapes:
    """Every ring, round trip, onward hop and amount chain among ``index``'s transfers, by
    the policy's windows and tolerances (positions in the index)."""
    rp, st = pol["rings"], pol["structural_rings"]
    chained = TransferIndex(index.payer, index.payee, index.day, index.amount, hop_decay=st["chain_tolerance"])
    return Shapes(
        rings=ring_paths(index, window_days=rp["window_days"], min_parties=rp["min_parties"], max_parties=rp["max_parties"]),
        round_trip=round_trip_pairs(index, **pol["round_trip"]),
        onward=onward_pairs(index, days=max(pol["pass_through"]["days"], pol["scatter_gather"]["days"])),
        chain=chain_pairs(chained, days=st["chain_days"]))


class ShapeSearch:
    """The shapes among every trade transfer a pass over several as-of dates can read,
    searched once (``scf monitor``: thirteen as-of dates searched the same 12-month windows,
    each 11/12 the one before it, thirteen times); an as-of keeps those whose transfers all
    lie in its own window (:meth:`Shapes.within`). Exact: a ring, pair or chain is a fact
    about its own transfers (days, amounts, parties), so it is found among the pass's
    transfers exactly when it is among the as-of's, and the ring search never extends a
    path through a transfer an as-of does not have when it has all of the ring's.

    ``ids`` name the transfers (``_i``, as the as-of's legs name them)."""

    def __init__(self, payer, payee, day, amount, ids, policy=None):
        pol = policies.as_data(policy or load_policy())
        index = TransferIndex(payer, payee, day, amount, hop_decay=pol["hop_decay"], hop_growth=pol["hop_growth"])
        self.shapes = find_shapes(index, pol).named(np.asarray(ids, np.int64))

    def within(self, ids: np.ndarray) -> Shapes:
        return self.shapes.within(ids)


def _transfers_of(legs: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """One leg per transfer of ``legs`` (its first, by ``_i``), and per leg the position
    of its transfer among them."""
    ids = legs["_i"].to_numpy(np.int64)
    if len(ids) < 2 or bool((ids[1:] >= ids[:-1]).all()):  # legs in _i order (the engine's): a transfer's
        first = np.ones(len(ids), dtype=bool)                 # legs are neighbours, so its first one is
        first[1:] = ids[1:] != ids[:-1]                       # where _i changes (no hash table of every leg)
        return legs[first], np.cumsum(first) - 1
    transfers = legs.drop_duplicates("_i")
    return transfers, pd.Index(transfers["_i"].to_numpy()).get_indexer(ids)


def dense_factorize(values: pd.Series) -> tuple[np.ndarray, np.ndarray | pd.Index]:
    """``pd.factorize(values, sort=True)``'s codes and sorted uniques, for integer codes
    (party codes: non-negative, dense) without its hash table: a flag per code seen,
    and each value's code is its rank among the flagged. The same codes and uniques;
    anything else goes to ``pd.factorize``. Why: the hash table and the sort of its
    uniques took ~1.3 s an as-of over the ~6.5 million trade legs of 100,000 firms,
    most of it in touching fresh memory."""
    if not isinstance(values.dtype, np.dtype) or values.dtype.kind not in "iu" or not len(values):
        return pd.factorize(values, sort=True)  # nullable and Arrow integers too: their uniques keep their dtype
    v = values.to_numpy()
    lo, hi = int(v.min()), int(v.max())
    if lo < 0 or hi > 4 * len(v) + (1 << 20):  # sparse codes: the flags would be mostly empty
        return pd.factorize(values, sort=True)
    seen = np.zeros(hi + 1, dtype=bool)
    seen[v] = True
    rank = np.cumsum(seen, dtype=np.intp) - 1
    return rank[v], pd.Index(np.flatnonzero(seen).astype(v.dtype, copy=False))


def authenticity_features(legs: pd.DataFrame, policy=None, search: ShapeSearch | None = None) -> pd.DataFrame:
    """Per firm: the ring, round-trip, pass-through and scatter-gather features of the
    catalogue's authenticity family (``FEATURES``).

    ``legs`` are the firms' trade legs of the last 12 months: ``firm_id, cpty, dir, amount,
    day, _i`` with parties as integer codes (``_i`` identifies the underlying transfer; a
    transfer between two firms appears as two legs with the same ``_i``). ``search``: the
    shapes found once over a superset of these transfers named by ``_i``
    (:class:`ShapeSearch`, a monitoring pass's); by default they are searched here.
    """
    pol = policies.as_data(policy or load_policy())
    if legs.empty:
        return pd.DataFrame(columns=list(FEATURES))
    transfers, at = _transfers_of(legs)
    out_leg = (transfers["dir"] == "out").to_numpy()
    firm, cpty = transfers["firm_id"].to_numpy(np.int64), transfers["cpty"].to_numpy(np.int64)
    payer, payee = np.where(out_leg, firm, cpty), np.where(out_leg, cpty, firm)
    day = transfers["day"].to_numpy(np.int64)
    if search is None:
        shapes = find_shapes(TransferIndex(payer, payee, day, transfers["amount"].to_numpy(np.float64),
                                           hop_decay=pol["hop_decay"], hop_growth=pol["hop_growth"]), pol)
    else:
        shapes = search.within(transfers["_i"].to_numpy(np.int64))
    n = len(transfers)
    rings = RingSummary.of_days(day, shapes.rings)
    round_trip = _marked(n, shapes.round_trip, both=True)
    gap = day[shapes.onward[:, 1]] - day[shapes.onward[:, 0]]
    passed = _marked(n, shapes.onward[gap <= pol["pass_through"]["days"]], both=False)
    sg = _gathered(payer, payee, shapes.onward[gap <= pol["scatter_gather"]["days"]])
    chained = _marked(n, shapes.chain, both=True)
    st = pol["structural_rings"]
    n_parties = int(max(payer.max(), payee.max())) + 1 if n else 0
    rel = _relationships(payer, payee, n_parties)  # both searches read the same relationships
    structural = structural_cycles(payer, payee, n_parties, max_parties=st["max_parties"], relationships=rel)
    walked = walk_returns(payer, payee, n_parties, max_parties=st["max_parties"], floor=st["walk_floor"],
                          relationships=rel)

    codes, firms = dense_factorize(legs["firm_id"])
    amount = legs["amount"].to_numpy(dtype=np.float64)
    is_out = (legs["dir"] == "out").to_numpy()
    m = len(firms)

    def total(mask):
        return np.bincount(codes[mask], weights=amount[mask], minlength=m)

    everything, out_all, in_all = np.ones(len(legs), bool), is_out, ~is_out
    ring_legs, back = rings.on_ring[at], is_out & rings.returns[at]
    ring_pairs = pd.DataFrame({"f": codes[ring_legs], "c": legs["cpty"].to_numpy()[ring_legs]}).drop_duplicates()
    # the ring legs only: a leg on no ring has no length (inf) and no return (NaN), which
    # the min and the median below skip, so a firm without one gets NaN either way
    # (the ring legs picked before their transfers' values are gathered: the other order
    # made three arrays as long as every leg, ~6.5 million at 100,000 firms, each as-of)
    on_ring = at[ring_legs]
    per_firm = pd.DataFrame({"f": codes[ring_legs], "len": rings.min_parties[on_ring],
                             "days": np.where(back[ring_legs], rings.return_days[on_ring], np.nan)})
    fan = pd.concat([sg.rename(columns={"src": "p"}), sg.rename(columns={"dst": "p"})]).groupby("p")["fan"].max()
    ring_k = structural[np.asarray(firms, np.int64)]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = pd.DataFrame({
            "round_trip_share_12m": total(round_trip[at]) / total(everything),
            "cycle_share_12m": total(ring_legs) / total(everything),
            "cycle_parties_12m": np.bincount(ring_pairs["f"].to_numpy(), minlength=m).astype(np.float64),
            "cycle_return_share_12m": total(back) / total(out_all),
            "cycle_rings_12m": np.bincount(codes[back], minlength=m).astype(np.float64),
            "cycle_min_parties_12m": per_firm.groupby("f")["len"].min().replace(np.inf, np.nan).reindex(range(m)).to_numpy(),
            "cycle_return_days_12m": per_firm.groupby("f")["days"].median().reindex(range(m)).to_numpy(),
            "pass_through_share_12m": total(in_all & passed[at]) / total(in_all),
            "scatter_gather_12m": fan.reindex(firms).fillna(0).where(lambda s: s >= pol["scatter_gather"]["min_fan"], 0)
                                     .to_numpy(np.float64),
            "cycle_chain_hops_12m": np.bincount(codes[chained[at]], minlength=m).astype(np.float64),
            "cycle_structural_parties_12m": np.where(np.isfinite(ring_k), ring_k, np.nan),
            "cycle_walk_return_12m": walked[np.asarray(firms, np.int64)],
        }, index=pd.Index(firms, name=legs["firm_id"].name))
    out["cycle_score_12m"] = ring_score(out, pol)
    return out


def ring_score(f: pd.DataFrame, pol: dict) -> np.ndarray:
    """One ring-evidence score in [0, 1]: the policy's weights (``ring_score``) on money
    that came round in time order (on a ring at all), on an amount handed from party to
    party (a chain, order ignored), and on the chance that money the firm pays comes back
    round its trade relationships (``cycle_walk_return_12m``, as ``R / (R + walk_half)``:
    0 for none, a half at ``walk_half``, towards 1 above), divided by the sum of the weights.

    The walk, not the shortest structural ring, carries the structural weight: a short ring
    through a hub is common by chance and brings little back (on the AMLSim sample the
    shortest ring ranks cycle accounts at AUC 0.83, the walk at 0.86)."""
    w, half = pol["ring_score"], pol["structural_rings"]["walk_half"]
    walk = np.nan_to_num(f["cycle_walk_return_12m"].to_numpy(np.float64))
    total = w["temporal"] * (f["cycle_share_12m"].to_numpy() > 0) + w["chain"] * (f["cycle_chain_hops_12m"].to_numpy() > 0) \
        + w["structural"] * walk / (walk + half)
    return total / max(w["temporal"] + w["chain"] + w["structural"], 1e-12)


FEATURES = ("round_trip_share_12m", "cycle_share_12m", "cycle_parties_12m", "cycle_return_share_12m",
            "cycle_rings_12m", "cycle_min_parties_12m", "cycle_return_days_12m", "pass_through_share_12m",
            "scatter_gather_12m", "cycle_chain_hops_12m", "cycle_structural_parties_12m", "cycle_walk_return_12m",
            "cycle_score_12m")
# what a firm with flows but none of these shapes gets: 0, except the shortest rings and the
# days to return, which stay empty (there is no ring to measure)
ZERO_WHEN_NONE = tuple(f for f in FEATURES if f not in ("cycle_min_parties_12m", "cycle_return_days_12m",
                                                        "cycle_structural_parties_12m"))


class RingEvidence:
    """The rings by which a firm's own payments came back, for its credit memo: built once
    per snapshot (the last 12 months' trade flows indexed), then one small search per firm
    from its own payments only."""

    def __init__(self, flows: pd.DataFrame, as_of, policy=None):
        pol = policies.as_data(policy or load_policy())
        T = pd.Timestamp(as_of)
        t = flows[(flows["purpose"] == "trade") & (flows["booked_on"] >= T - pd.DateOffset(months=12))
                  & (flows["booked_on"] < T)]
        codes, self.party = pd.factorize(pd.concat([t["payer_id"], t["payee_id"]], ignore_index=True))
        n = len(t)
        self.day = t["booked_on"].to_numpy("datetime64[D]")
        self.index = TransferIndex(codes[:n], codes[n:], self.day.astype(np.int64), t["amount"].to_numpy(np.float64),
                                   hop_decay=pol["hop_decay"], hop_growth=pol["hop_growth"])
        self.rings = pol["rings"]

    def of(self, firm_id, limit: int = 5) -> list[dict]:
        """Up to ``limit`` rings that brought the firm's money back, quickest first:
        ``{"days", "hops": [{"payer", "payee", "date", "amount"}]}`` with party ids as in the
        data (the memo masks every party but the firm)."""
        where = np.flatnonzero(self.party == firm_id)
        if not len(where) or self.index.n == 0:
            return []
        starts = np.flatnonzero(self.index.payer == where[0])
        paths = [row for p in ring_paths(self.index, window_days=self.rings["window_days"],
                                         min_parties=self.rings["min_parties"], max_parties=self.rings["max_parties"],
                                         starts=starts) for row in p]
        idx = self.index
        paths.sort(key=lambda p: (int(idx.day[p[-1]] - idx.day[p[0]]), len(p), int(p[0])))
        return [{"days": int(idx.day[p[-1]] - idx.day[p[0]]),
                 "hops": [{"payer": self.party[idx.payer[e]], "payee": self.party[idx.payee[e]],
                           "date": self.day[e].astype(str), "amount": float(idx.amount[e])} for e in p]}
                for p in paths[:limit]]
