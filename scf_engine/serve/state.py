"""What the service holds: the champion models and the snapshot, loaded once through the
batch pipeline's own loader, and answers cached per loaded state.

Every answer comes from the decision core on the request as a batch, exactly as ``scf
score`` would decide a ``batch.csv`` holding the same rows: a one-firm request is a batch
of one. The core works in two steps (:mod:`scf_engine.credit.decide`): ``precompute``,
what a decision needs that does not depend on the request (eligibility, PDs, score,
grade, reasons, Jiangyin grade, limit inputs), and ``decide_rows``, the request (its
amounts, the 1+N core, caps, decision). The service runs the first once per loaded state
for every firm of the snapshot, so a request the cache has never seen (a new firm, a new
amount) runs only the second: numpy on a few rows, in the event loop, no thread hop and
no lock (:meth:`Service.quick`). A request it cannot take that way (an unknown firm, a
firm_id the batch's row checks would flag) goes through the whole core, under the lock.
What every decision on the snapshot shares (firms index, eligible receivables, core
lines, industry medians...) is the core's own
:class:`~scf_engine.credit.decide.DecisionContext`, built once per loaded state. The caches keep what the core answered for a request
(key: the request's rows), so a repeated request costs a dictionary look-up instead of a
run of the core; they belong to one loaded state and go with it on reload, so an answer
never outlives the models and snapshot it came from.

The core runs under one lock: pandas objects shared by every call (the snapshot's
tables, lazily built index engines) are not documented as safe for concurrent use, and on
two cores a second concurrent run would only compete for the same interpreter lock.
"""

from __future__ import annotations

import gc
import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from scf_engine import tracking
from scf_engine.ingest.requests import requests_frame
from scf_engine.memo.context import Provenance, memo_contexts
from scf_engine.memo.render import render_html
from scf_engine.credit.decide import BatchOptions, DecisionContext, Precomputed, decide_rows, records
from scf_engine.pipelines.score import (Loaded, check_programme, decide_loaded, decision_context, load_for_decisions,
                                       precompute_loaded, programme_record, read_earmarks, read_programme)


class LRU:
    """A bounded, thread-safe mapping that forgets the least recently used entry."""

    def __init__(self, size: int):
        self.size = int(size)
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                self.hits += 1
                return self._d[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)


def plain_records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: NaN as null, numpy scalars as Python numbers."""
    out = []
    for row in frame.astype(object).to_dict("records"):
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else (v.item() if hasattr(v, "item") else v))
                    for k, v in row.items()})
    return out


@dataclass
class State:
    """One loaded snapshot with its models, and the answers computed on it."""

    loaded: Loaded
    context: DecisionContext  # the snapshot's shared work, built once at load
    precomputed: Precomputed  # every firm's request-independent part of a decision, once at load
    loaded_at: float
    answers: LRU
    firm_answers: LRU  # firm_id -> the batch-of-one Decisions' reasons view (JSON bytes)
    memos: LRU
    lock: threading.Lock = field(default_factory=threading.Lock)
    options: BatchOptions = BatchOptions()  # the programme's whitelist (名单制), re-read at each load
    whitelist: dict | None = None  # that whitelist's sha256 and list name, recorded with every request answered on it

    @property
    def as_of(self) -> str:
        return str(self.loaded.data.as_of.date())

    @property
    def versions(self) -> dict:
        return {k: v["version"] for k, v in self.loaded.versions.items()}


def request_key(firms) -> tuple:
    """The cache key of a request: its rows in order (a repeat or an order change is a
    different batch)."""
    return tuple((f, None if a is None else float(a)) for f, a in firms)


def _requests(firms) -> pd.DataFrame:
    """The request rows as ``batch.csv`` text, through the batch's own row checks."""
    return requests_frame(pd.DataFrame({"firm_id": [f for f, _ in firms],
                                        "requested_amount": ["" if a is None else repr(float(a)) for _, a in firms]}))


def _settle() -> None:
    """Take what was just loaded out of the cyclic garbage collector's sight.

    A loaded snapshot with its models is ~370,000 tracked Python objects, and a full
    (generation 2) collection walks all of them: 0.2-0.8 s with every thread stopped,
    which under load came every few seconds and was the cached answers' p99.
    ``gc.freeze`` moves every object alive now to a permanent generation the collector
    skips (they are still freed by reference counting when the state is dropped). Before
    freezing, the previous freeze is undone and collected once, so reference cycles of a
    state dropped by a reload are collected at the next reload, not kept for ever: one
    pause per reload, not one every few seconds."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Service:
    """The loaded state and how it is reloaded: when the champion alias moves (polled) or
    on request."""

    def __init__(self, data_dir, *, serve_policy, as_of=None, consents=None, tracking_uri=None, alias="champion",
                 progress=None, audit_log=None, report_path=None, whitelist=None, whitelist_list=None):
        self.args = dict(data_dir=data_dir, as_of=as_of, consents=consents, tracking_uri=tracking_uri, alias=alias,
                         report_path=report_path)
        self.whitelist = whitelist  # path of the programme's list: a firm off it is answered as a batch would
        self.whitelist_list = whitelist_list  # the programme picked from it (None: every row)
        self.policy = serve_policy
        self.audit_log = audit_log  # the batches' earmarks are read from it at each (re)load
        self.alias = alias
        self.progress = progress
        self._reload_lock = threading.Lock()
        self.last_reload_error: str | None = None
        self.state: State = self._load()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def _load(self) -> State:
        # re-read at each load (the list may have changed); a wrong file or list name: one line before the load
        programme = read_programme(self.whitelist, self.whitelist_list)
        loaded = load_for_decisions(**self.args, progress=self.progress)
        options = check_programme(loaded, programme)
        p = self.policy
        # receivables behind batches' limits at this snapshot back no answer here either
        earmarks = read_earmarks(self.audit_log, loaded.data.as_of, loaded.pols, None) if self.audit_log else None
        context = decision_context(loaded, earmarks)
        if self.progress:
            self.progress(f"precomputing the decisions' request-independent part for {len(loaded.dataset.firms):,} firms")
        state = State(loaded, context, precompute_loaded(loaded, context), time.time(), LRU(p["answer_cache_entries"]),
                      LRU(p["answer_cache_entries"]), LRU(p["memo_cache_entries"]), options=options,
                      whitelist=programme_record(programme) or None)
        _settle()
        return state

    # ------------------------------------------------------------------------- reload

    def champion_versions(self) -> dict | None:
        """``{kind: version}`` behind the alias in the registry now (None if unreachable)."""
        store = self.state.loaded.store
        found = {k: store.model_version(k, self.alias) for k in tracking.MODEL_KINDS}
        if any(v is None for v in found.values()):
            return None
        return {k: v["version"] for k, v in found.items()}

    def reload(self, *, only_if_moved: bool = False) -> bool:
        """Load again (models by alias, dataset, snapshot) and swap atomically; requests in
        flight finish on the state they started with. Returns whether it swapped."""
        with self._reload_lock:
            if only_if_moved:
                now = self.champion_versions()
                if now is None or now == self.state.versions:
                    return False
            self.state = self._load()
            self.last_reload_error = None
            return True

    def watch(self, every: float) -> None:
        """Poll the alias every ``every`` seconds in a background thread; a failed reload
        keeps the state loaded before and is reported by ``/readyz``."""
        if every <= 0 or self._watcher is not None:
            return

        def loop():
            while not self._stop.wait(every):
                try:
                    self.reload(only_if_moved=True)
                except Exception as exc:  # keep serving the previous state
                    self.last_reload_error = f"{type(exc).__name__}: {exc}"

        self._watcher = threading.Thread(target=loop, name="scf-champion-watch", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------------ answers

    def quick(self, firms) -> tuple[State, bytes] | None:
        """The answer to ``firms`` from the precomputed table and the request step alone
        (:func:`~scf_engine.credit.decide.decide_rows`), or None when the request needs
        the whole core: a firm the table lacks (unknown), or a row the batch's own row
        checks (``requests_frame``) would flag (an empty or padded firm_id, a repeat, an
        amount that is not a finite number >= 0). Numpy on read-only arrays: no lock."""
        state = self.state
        ids = [f for f, _ in firms]
        table = state.precomputed
        if len(set(ids)) < len(ids) or any(not f or f != f.strip() or f not in table.index for f in ids):
            return None
        if any(a is not None and not (math.isfinite(a) and a >= 0) for _, a in firms):
            return None
        amounts = np.array([math.nan if a is None else float(a) for _, a in firms], dtype=float)
        cols, _ = decide_rows([table], ids, amounts, None, state.loaded.pols, state.options, basis=False)
        body = json.dumps(records(cols), ensure_ascii=False, allow_nan=False).encode("utf-8")
        state.answers.put(request_key(firms), body)
        return state, body

    def decisions(self, firms) -> tuple[State, bytes, bool]:
        """The JSON array of decisions for ``firms`` (``[(firm_id, amount or None)]``), the
        state it was decided on, and whether it came from the cache."""
        state = self.state
        key = request_key(firms)
        hit = state.answers.get(key)
        if hit is not None:
            return state, hit, True
        with state.lock:
            hit = state.answers.get(key)
            if hit is not None:
                return state, hit, True
            decisions = decide_loaded(state.loaded, _requests(firms), state.options, context=state.context,
                                      precomputed=state.precomputed)
        body = json.dumps(plain_records(decisions.limits), ensure_ascii=False, allow_nan=False).encode("utf-8")
        state.answers.put(key, body)
        return state, body, False

    def firm(self, firm_id: str):
        """The firm's decision as a batch of one without an amount (what ``scf explain``
        gives): ``(state, decisions)``."""
        state = self.state
        with state.lock:
            return state, decide_loaded(state.loaded, _requests([(firm_id, None)]), state.options, context=state.context,
                                        precomputed=state.precomputed)

    def reasons(self, firm_id: str) -> tuple[State, bytes]:
        state = self.state
        hit = state.firm_answers.get(firm_id)
        if hit is not None:
            return state, hit
        state, d = self.firm(firm_id)
        row = plain_records(d.limits)[0]
        view = {k: row[k] for k in ("firm_id", "as_of", "pd", "score", "grade", "limit_cny", "decision", "pd_source")}
        view["scored"] = bool(d.scored.iloc[0])
        view["not_scored_because"] = None if view["scored"] else row["reasons"]
        view["reasons"] = [{**r.to_dict(), "text": r.text()} for r in d.reasons.iloc[0]]
        body = json.dumps(view, ensure_ascii=False, allow_nan=False, default=float).encode("utf-8")
        state.firm_answers.put(firm_id, body)
        return state, body

    def memo(self, firm_id: str) -> tuple[State, str | None, str]:
        """``(state, html, why)``: the firm's credit memo as HTML, or None and the reason
        it has none (not scored: unknown, no consent, in default...)."""
        state = self.state
        hit = state.memos.get(firm_id)
        if hit is not None:
            return state, hit[0], hit[1]
        state, d = self.firm(firm_id)
        if not d.scored.iloc[0]:
            out = (None, str(d.limits["reasons"].iloc[0]))
        else:
            ld = state.loaded
            prov = Provenance(ld.versions, None, None, ld.store.uri)
            with state.lock:
                ctx = next(iter(memo_contexts(d, ld.data, ld.models, prov, ld.dataset.report)))
            out = (render_html(ctx), "")
        state.memos.put(firm_id, out)
        return state, out[0], out[1]


__all__ = ["LRU", "State", "Service", "plain_records", "request_key"]
