"""SHAP contributions of a LightGBM booster, computed by LightGBM once per split pattern.

Why: path-dependent TreeSHAP (LightGBM's ``pred_contrib``) is the dearest step of a
large re-score. The cross-fitted models hold every fold's trees (~350 of up to 15 leaves,
up to 13 deep), and ``pred_contrib`` cost ~0.9 ms of one core per row on them: about 70 s
for the ~75,000 lent firms of a 100,000-firm portfolio, at every monitoring date.

What makes it cheaper without another algorithm: TreeSHAP reads a row only through the
side each split of a tree sends it (its "hot" child at every internal node); the
arithmetic uses the tree's leaf values and covers, never the feature values. Two rows
that every split of a tree sends the same way get the same contributions from that tree,
to the last bit. Within one tree the rows fall into few such patterns (a median of ~640
per tree among 8,400 firms, and fewer per row as the portfolio grows), so each tree's
contributions are asked of LightGBM for one row per pattern (``start_iteration=i,
num_iteration=1``) and copied to the rest; the trees' contributions are then added in
tree order. LightGBM still computes every SHAP value: this module only decides which rows
share one, by evaluating the splits as LightGBM's predictor and ``NumericalDecision`` do (a value
within LightGBM's zero threshold is read as 0; a missing value is 0 unless the split's
``missing_type`` is NaN; ``Zero`` splits send 0 and missing values to the default side,
``NaN`` splits missing values; otherwise ``value <= threshold`` goes left).
Trees with categorical splits or more than 52 internal nodes are asked for every row.
``dump_model`` writes a threshold of 1e300 or more as 1e300 (LightGBM's ``AvoidInf``):
such a threshold (in our models ``inf``, a split of missing values from the rest) is
read from the model's text, which holds it exactly (the halves' boosters are loaded
from that text).

The result equals ``pred_contrib``'s up to the order of the additions (LightGBM adds each
leaf's term into the running total of all earlier trees; here each tree's total is
added): ~1e-15 apart on our models. It is the same bits for a row whatever other rows
are computed with it (a firm alone, in a batch, on a Spark partition), as the decision
core requires, because a row's per-tree terms and their order do not depend on the
others. ``tests/test_learners.py`` checks both against ``pred_contrib`` on boosters
grown with every missing-value mode, with values on the thresholds, missing and zero.
"""

from __future__ import annotations

import contextvars
import re
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np

# LightGBM's kZeroThreshold (a float): |value| <= it counts as zero for ``Zero`` splits
ZERO_THRESHOLD = float(np.float32(1e-35))
# a pattern is a number of at most this many bits, exact in a double (see _keys)
MAX_NODES = 52
# below this many rows every tree is asked for every row: finding the patterns costs more
# than it saves (the answers are the same bits either way)
PATTERN_ROWS = 64
# rows computed at a time: the rows by feature, two halves' totals and their sum are ~4
# copies of the answer (85 doubles a row), ~0.27 GB per 100,000 rows; a batch of 1,000,000
# firms is done in ten pieces (the same bits: a row's answer is its own)
CHUNK_ROWS = 100_000
MISSING = {"None": 0, "Zero": 1, "NaN": 2}
# LightGBM's dump_model writes thresholds of this magnitude or more as +-1e300 (AvoidInf)
FINITE_DUMP = 1e300


@dataclass(frozen=True)
class TreeSplits:
    """One tree's internal nodes as arrays (pre-order), and the features it splits on."""

    feature: np.ndarray  # int, per node
    threshold: np.ndarray  # float64, per node
    missing: np.ndarray  # MISSING codes, per node
    default_left: np.ndarray  # bool, per node
    used: np.ndarray  # the features the tree splits on (sorted, unique)
    exact: bool  # numerical splits only and few enough nodes: patterns can be found


@dataclass
class Half:
    """A contiguous half of the trees, with a booster of its own holding only them.

    The per-tree calls cannot go to the model's booster: LightGBM sets the iteration
    range of a prediction on the booster itself (``GBDT::InitPredict``), so two threads
    predicting different ranges at once read each other's (measured: contributions off by
    up to 0.19 log-odds), and the model's own predictions, made by other threads of
    ``scf serve`` with the whole range, would be too. Each half's booster is used by one
    thread at a time (``lock``)."""

    trees: list  # TreeSplits, in tree order
    booster: object  # lightgbm.Booster of these trees only (tree i of the half is its iteration i); None if none
    lock: threading.Lock


@dataclass
class PatternMemory:
    """Each tree's contributions per split pattern, kept across calls
    (:func:`remembering`): a monitoring pass explains the same portfolio at twelve dates,
    and a firm's rows of one month fall mostly into patterns some row of an earlier call
    already had (on the bench's 10,000-firm world over 12 dates, 367,887 of the 2,062,448
    tree patterns asked were new). LightGBM is asked only for the new ones. A pattern's
    terms are the same bits whichever row of it LightGBM was asked for (module
    docstring), so the answers are the same bits as without the memory.

    At most ``max_bytes`` are kept (a pattern is its key and its tree's terms, one per
    feature the tree splits on and the expected value: ~100 bytes); past that, new
    patterns are computed as without the memory and not kept."""

    max_bytes: int = 192 * 2**20
    n_patterns: int = 0
    n_bytes: int = 0
    asked: int = 0  # patterns LightGBM was asked for (the memory missed)
    recalled: int = 0  # patterns answered from the memory
    _trees: dict = field(default_factory=dict)  # (id(half), tree) -> [half, sorted keys, terms]
    # the two halves' threads share the counts (each half's trees are its own thread's)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def terms(self, half, i: int, keys: np.ndarray, compute) -> np.ndarray:
        """The terms of tree ``i`` of ``half`` for the patterns ``keys`` (ascending, unique):
        those remembered, and ``compute(positions)`` for the others (LightGBM)."""
        entry = self._trees.get((id(half), i))
        if entry is None:
            out = compute(np.arange(len(keys)))
            self._keep(half, i, keys, out, 0)
            return out
        known, values = entry[1], entry[2]
        at = np.minimum(np.searchsorted(known, keys), len(known) - 1)
        found = known[at] == keys
        out = np.empty((len(keys), values.shape[1]))
        out[found] = values[at[found]]
        new = np.flatnonzero(~found)
        if len(new):
            out[new] = compute(new)
        self._keep(half, i, keys[new], out[new], len(keys) - len(new))
        return out

    def _keep(self, half, i, keys, values, recalled: int) -> None:
        with self._lock:
            self.asked += len(keys)
            self.recalled += recalled
            size = keys.nbytes + values.nbytes
            if not len(keys) or self.n_bytes + size > self.max_bytes:
                return
            self.n_patterns += len(keys)
            self.n_bytes += size
        entry = self._trees.get((id(half), i))
        if entry is None:  # the half is held too, so its id is not reused while remembered
            self._trees[(id(half), i)] = [half, keys.copy(), values.copy()]
            return
        k, v = np.concatenate([entry[1], keys]), np.concatenate([entry[2], values])
        order = np.argsort(k, kind="stable")
        entry[1], entry[2] = k[order], v[order]


_MEMORY: contextvars.ContextVar = contextvars.ContextVar("scf_treeshap_memory", default=None)


@contextmanager
def remembering(max_bytes: int = PatternMemory.max_bytes):
    """Within the block, :func:`pattern_contributions` called from this thread (context)
    keeps each tree's terms per split pattern across calls (:class:`PatternMemory`) and
    asks LightGBM only for patterns not seen before: for a caller that explains the same
    firms again and again (``scf monitor``'s dates). The same bits; the memory goes at
    the end of the block."""
    memory = PatternMemory(max_bytes=max_bytes)
    token = _MEMORY.set(memory)
    try:
        yield memory
    finally:
        _MEMORY.reset(token)


_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_PLANS_LOCK = threading.Lock()


def split_nodes(node: dict, out: list | None = None) -> list[dict]:
    """The internal nodes of one tree of ``Booster.dump_model()`` (its ``tree_structure``),
    in pre-order."""
    out = [] if out is None else out
    if "split_index" in node:
        out.append(node)
        split_nodes(node["left_child"], out)
        split_nodes(node["right_child"], out)
    return out


def model_thresholds(model: str) -> dict:
    """Per tree (its index): the thresholds of its internal nodes by ``split_index``, as the
    model's text (``Booster.model_to_string``) holds them: exactly (``inf`` too), where
    ``dump_model`` writes any beyond +-1e300 as +-1e300."""
    out = {}
    for m in re.finditer(r"^Tree=(\d+)$(.*?)(?=^Tree=|^end of trees)", model, re.S | re.M):
        line = re.search(r"^threshold=(.*)$", m.group(2), re.M)
        out[int(m.group(1))] = np.array(line.group(1).split() if line else [], dtype=np.float64)
    return out


def tree_splits(booster, num_iteration: int) -> list[TreeSplits]:
    """The splits of the first ``num_iteration`` trees of ``booster``."""
    return [t for h in _halves(booster, num_iteration) for t in h.trees]


def _halves(booster, num_iteration: int) -> list[Half]:
    """The two halves of the first ``num_iteration`` trees of ``booster`` (cached per
    booster and its number of iterations: a model's ``dump_model`` and the halves'
    boosters cost ~0.3 s, once per loaded model). A booster changed in place otherwise
    (``set_leaf_output``, ``model_from_string``) would be read from the stale plan:
    nothing in the engine changes a fitted booster."""
    key = (num_iteration, booster.current_iteration())  # a booster trained further is planned again
    with _PLANS_LOCK:
        plans = _PLANS.setdefault(booster, {})
        if key not in plans:
            trees = []
            text = None  # the model's text, read for a threshold dump_model does not write exactly
            for tree in booster.dump_model(num_iteration=num_iteration)["tree_info"]:
                ns = split_nodes(tree["tree_structure"])
                numerical = [n["decision_type"] == "<=" for n in ns]
                # a categorical split's threshold is its categories ("0||2||5"), not a number
                thr = np.array([float(n["threshold"]) if ok else np.nan for n, ok in zip(ns, numerical)], dtype=np.float64)
                if np.any(np.abs(thr) >= FINITE_DUMP):
                    text = text if text is not None else model_thresholds(booster.model_to_string(num_iteration=num_iteration))
                    thr = np.where(np.abs(thr) >= FINITE_DUMP, text[tree["tree_index"]][[n["split_index"] for n in ns]], thr)
                feat = np.array([n["split_feature"] for n in ns], dtype=np.intp)
                trees.append(TreeSplits(
                    feature=feat, threshold=thr,
                    missing=np.array([MISSING.get(n.get("missing_type"), -1) for n in ns], dtype=np.int8),
                    default_left=np.array([bool(n.get("default_left", False)) for n in ns], dtype=bool),
                    used=np.unique(feat),
                    exact=all(numerical) and len(ns) <= MAX_NODES
                    and all(n.get("missing_type") in MISSING for n in ns)))
            cut = len(trees) // 2
            plans[key] = [
                # an empty half (a one-tree model) gets no booster: LightGBM reads 0 iterations as all
                Half(trees[a:b], lgb.Booster(model_str=booster.model_to_string(start_iteration=a, num_iteration=b - a))
                     if b > a else None, threading.Lock())
                for a, b in ((0, cut), (cut, len(trees)))]
        return plans[key]


def _keys(t: TreeSplits, XT: np.ndarray, nanT: np.ndarray) -> np.ndarray:
    """Each row's pattern in tree ``t``: bit j set when node j sends it left, as LightGBM
    decides (module docstring). ``XT``: the rows by feature (features x rows), values
    within LightGBM's zero threshold already 0 (its predictor reads them so); ``nanT``:
    where they are missing.

    One node at a time, into a row of a (nodes x rows) table of booleans: ``value <=
    threshold`` is already the answer for a value read as 0 (0 <= threshold) and is False
    for a missing one, so only the missing values (and, at a ``Zero`` split, the zeros)
    are set apart, as the split's ``missing_type`` says. The bits are then summed in
    integers. The earlier form (the decisions as (nodes x rows) arrays through two
    ``np.where``, summed as doubles by a product with the powers of two) cost ~6.6 ms a
    tree at 40,000 rows, 0.8 ms this way (the same keys): at 100,000 firms the patterns
    were ~55 of the pass's ~85 s of TreeSHAP CPU over 12 dates, on the cores the
    snapshot's SQL runs on."""
    lefts = np.empty((len(t.feature), XT.shape[1]), dtype=bool)
    for j, (f, thr, kind) in enumerate(zip(t.feature.tolist(), t.threshold.tolist(), t.missing.tolist())):
        row, nan = lefts[j], nanT[f]
        np.less_equal(XT[f], thr, out=row)
        if kind == MISSING["NaN"]:
            if t.default_left[j]:  # else False already: NaN <= threshold is False
                row |= nan
        elif kind == MISSING["Zero"]:  # 0 and missing both go the default way
            either = XT[f] == 0.0
            either |= nan
            if t.default_left[j]:
                row |= either
            else:
                row &= ~either
        elif thr >= 0.0:  # None: a missing value is read as 0
            row |= nan
    return np.einsum("j,jn->n", np.left_shift(1, np.arange(len(t.feature), dtype=np.int64)), lefts.view(np.uint8))


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One representative row per pattern, and each row's pattern number."""
    if keys.max(initial=0) < (1 << 20):  # small trees: a table, no sort
        rep = np.empty(int(keys.max(initial=0)) + 1, dtype=np.intp)
        rep[keys] = np.arange(len(keys))
        seen = np.zeros(len(rep), dtype=bool)
        seen[keys] = True
        patterns = np.flatnonzero(seen)
        number = np.empty(len(rep), dtype=np.intp)
        number[patterns] = np.arange(len(patterns))
        return rep[patterns], number[keys]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse.ravel()


def _half_into(total, half: Half, X, XT, nanT, threads, memory: PatternMemory | None = None) -> np.ndarray:
    """Add the contributions of ``half``'s trees to ``total`` (by column), tree after tree
    (``memory``: the terms of patterns seen in earlier calls, :func:`remembering`)."""
    n, n_feat = X.shape
    with half.lock:
        for i, t in enumerate(half.trees):
            cols = np.array([*t.used, n_feat])  # a feature the tree does not split on gets exactly 0 from it

            def ask(rows, i=i, cols=cols):
                return half.booster.predict(X[rows], start_iteration=i, num_iteration=1, pred_contrib=True,
                                            **threads(len(rows)))[:, cols]

            if XT is not None and t.exact:
                keys = _keys(t, XT, nanT)
                rep, number = _groups(keys)
                phi = ask(rep) if memory is None else memory.terms(half, i, keys[rep], lambda new: ask(rep[new]))
            else:
                number = None
                phi = half.booster.predict(X, start_iteration=i, num_iteration=1, pred_contrib=True,
                                           **threads(n))[:, cols]
            for j, c in enumerate(cols):
                total[c] += phi[:, j] if number is None else phi[number, j]
    return total


def pattern_contributions(booster, X: np.ndarray, num_iteration: int, threads=None) -> np.ndarray:
    """``booster.predict(X, num_iteration=num_iteration, pred_contrib=True)`` (raw score
    scale: one column per feature, then the expected value), computed per tree for one
    row per split pattern (module docstring). ``X``: float64 rows of the booster's
    features; ``threads``: LightGBM predict parameters for a number of rows (default
    none: LightGBM's threads). A booster with more than one tree per iteration
    (multiclass) is handed to ``pred_contrib`` whole.

    The trees are added in two halves, each tree after tree, and the first half's total
    then to the second's: always so, whatever the rows, so a row's bits stay its own. From
    ``PATTERN_ROWS`` rows the halves run on two threads (LightGBM and numpy let the GIL
    go), each on its own booster (:class:`Half`)."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    n, n_feat = X.shape
    threads = threads or (lambda rows: {})
    if booster.num_model_per_iteration() != 1:
        return booster.predict(X, num_iteration=num_iteration, pred_contrib=True, **threads(n))
    if n > CHUNK_ROWS:
        out = np.empty((n, n_feat + 1))
        for a in range(0, n, CHUNK_ROWS):
            out[a:a + CHUNK_ROWS] = pattern_contributions(booster, X[a:a + CHUNK_ROWS], num_iteration, threads)
        return out
    halves = _halves(booster, num_iteration)
    XT = nanT = None
    if n >= PATTERN_ROWS:
        nanT = np.isnan(X.T)
        XT = np.where(np.abs(X.T) <= ZERO_THRESHOLD, 0.0, X.T)  # by feature, contiguous; NaN stays NaN
    memory = _MEMORY.get() if XT is not None else None  # read here: the pool's threads have no context
    run = (lambda half: _half_into(np.zeros((n_feat + 1, n)), half, X, XT, nanT, threads, memory))
    if XT is None:
        first, second = map(run, halves)
    else:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="scf-treeshap") as pool:
            first, second = pool.map(run, halves)
    return (first + second).T


__all__ = ["pattern_contributions", "remembering", "PatternMemory", "split_nodes", "tree_splits", "TreeSplits"]
