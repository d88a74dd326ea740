"""Point-in-time flow features, computed from the catalogue's SQL.

Flows only: no core rating, no receivables registry, no graph built from ratings. The
input is a :class:`~scf_engine.dataset.Snapshot`, which holds only flows booked before
the as-of date T, so no feature can see a record dated T or later.

How (all declarative DuckDB SQL, so the same definitions run on a cluster engine: the
statements go through an engine, :class:`scf_engine.sqlengine.DuckDBEngine` as written or
:class:`scf_engine.spark.SparkEngine` transpiled to Spark SQL by sqlglot):

1. *legs*: each flow of the last 24 months becomes one leg per firm it touches
   (``dir`` in/out, ``cpty`` the other party) with ``k``, the number of whole months
   before T (k = 0 is the month just before T; months are counted by day of month).
2. *panel* ``p``: one row per firm and month k from its first *reported* month to k = 0,
   with sums by purpose and direction. A month is reported when the firm's own account
   reached the platform: it has a flow with an external (``EXT-``) party, which only the
   firm's own account can show. Before a firm joins the platform, or in a month its
   account was not reported, the platform still sees its flows with firms that do share
   (a core paying it), but not its payroll, tax or customers: such a month is unknown
   (its sums NULL), never a month of missed payments and zero trade. Obligation features
   count misses over reported months only; open gaps count reported months. Flows with
   no outside party at all (a platform of members' payments to each other only) cannot
   tell the two apart: there every month from a firm's first flow is reported. An
   obligation no firm paid in the snapshot's months (the platform does not carry it) is
   unknown, never missed.
3. the catalogue's ``panel``, ``cpty`` and ``firm`` expressions aggregate per firm;
   ``derived`` expressions combine them; ``rank`` features are percentiles within the
   firm's industry; two ``code`` groups (counterparty concentration, authenticity)
   are computed here too.
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from scf_engine.catalogue import Catalogue, load_catalogue
from scf_engine.contract import PURPOSES
from scf_engine.dataset import Snapshot
from scf_engine.duck import MONEY, register_money
from scf_engine.sqlengine import DuckDBEngine, key_bounds, key_range
from scf_engine.features.closed_loop import closed_loop_features
from scf_engine.features.authenticity import ZERO_WHEN_NONE, ShapeSearch, authenticity_features, load_policy
from scf_engine.ingest.rules import sql_list
from scf_engine.membership import isin
from scf_engine.release import give_back

LOOKBACK_MONTHS = 24
OBLIGATIONS = ("payroll", "tax", "social_insurance", "housing_fund", "utilities")
YOY_COLUMNS = ("in_trade", "tax", "utilities")
OPEN_GAPS = ("payroll", "tax", "social_insurance", "housing_fund", "loan_interest")
CURED = ("payroll", "tax", "social_insurance")  # obligations whose missed months can be caught up (typical, prev, next)
MIN_INDUSTRY_GROUP = 10  # smaller industry divisions are ranked within their section
PANEL_PARTS = 2  # the firm-month panel is aggregated in this many ranges of firms at once (flow_features)
READ_MONTHS = 12  # the months of legs every statement but the panel reads (k < 12): FlowPass keeps only these


LEGS_UNION_SQL = f"""
    WITH f AS (SELECT _i, booked_on, payer_id, payee_id, amount,
                      TRY_CAST(purpose AS ENUM{sql_list(PURPOSES)}) AS purpose FROM {{flows}}),
    legs AS (
        SELECT _i, payee_id AS firm_id, payer_id AS cpty, 'in'::ENUM('in', 'out') AS dir, booked_on, amount, purpose
        FROM f WHERE payee_id IN (SELECT firm_id FROM {{firms}})
        UNION ALL
        SELECT _i, payer_id AS firm_id, payee_id AS cpty, 'out'::ENUM('in', 'out') AS dir, booked_on, amount, purpose
        FROM f WHERE payer_id IN (SELECT firm_id FROM {{firms}})
    )"""


def _window_sql(T: str, legs: str = "legs", months: int = LOOKBACK_MONTHS) -> str:
    """The legs of the last ``months`` months before T with ``k``, the whole months
    before T (``legs``: a table or CTE of legs with booked_on)."""
    return f"""
    SELECT * FROM (
        SELECT *, (year(DATE '{T}') * 12 + month(DATE '{T}')) - (year(booked_on) * 12 + month(booked_on))
                  - CASE WHEN day(booked_on) >= day(DATE '{T}') THEN 1 ELSE 0 END AS k
        FROM {legs}
    ) WHERE k >= 0 AND k < {int(months)}
    """


def _legs_sql(T: str) -> str:
    return LEGS_UNION_SQL.format(flows="flows", firms="firms") + _window_sql(T)


@dataclass
class TradeTransfers:
    """A pass's trade transfers, one per ``_i`` in ``_i`` order (:meth:`FlowPass.transfers`):
    payer and payee as party codes (``party[code]`` is the party), the booking day as days
    since 1970-01-01, the amount; and the booking's calendar month (months since January
    1970) and day of the month, made once, from which each as-of counts its k."""

    i: np.ndarray
    payer: np.ndarray
    payee: np.ndarray
    day: np.ndarray
    amount: np.ndarray
    party: pa.Array
    month: np.ndarray = field(init=False)
    mday: np.ndarray = field(init=False)
    ordered: bool = field(init=False)  # booking days in date order (the dataset's flows were)

    def __post_init__(self):
        days = self.day.astype("datetime64[D]")
        months = days.astype("datetime64[M]")
        self.month = months.astype(np.int32)
        self.mday = ((days - months).astype(np.int64) + 1).astype(np.int8)
        self.ordered = len(self.day) < 2 or bool((self.day[1:] >= self.day[:-1]).all())

    def firms(self, names) -> np.ndarray:
        """Per party code: whether the party is one of ``names`` (:func:`_is_firm`)."""
        return _is_firm(self.party, names)


def _bucket_sql(d: int) -> str:
    """A leg's month bucket for as-of dates on day ``d`` of the month: its month counted
    as ``year * 12 + month``, plus one from day ``d`` on, so that T's month minus the
    bucket is the leg's k at T (:func:`_window_sql`) for every such T."""
    return f"year(booked_on) * 12 + month(booked_on) + CASE WHEN day(booked_on) >= {d} THEN 1 ELSE 0 END"


def _month_start(ym: int) -> pd.Timestamp:
    """The first day of month ``ym`` counted as ``year * 12 + month`` (as the SQL counts)."""
    return pd.Timestamp(year=(ym - 1) // 12, month=(ym - 1) % 12 + 1, day=1)


class FlowPass:
    """The legs of every flow a pass over several as-of dates can read, built once
    (``scf monitor``: a batch date and twelve monthly as-of dates re-built the same legs
    thirteen times, each from all the flows before its date).

    Built over the dataset's flows booked in the calendar month ``LOOKBACK_MONTHS + 1``
    months before the earliest date or later, and before the latest date, for every firm
    of the dataset; :meth:`legs_sql` gives an as-of's legs from them: its flows before T
    (nothing dated T or later), its firms only (those founded before T), ``k`` as
    :func:`_legs_sql` counts it; :meth:`panel_rows_sql` its monthly panel, from each firm's
    months made once per day of month (:meth:`_build_panel`). The same rows, and ``_i`` numbers the flows in the same
    order (the dataset's), so every feature is the same as :func:`flow_features` without
    it gives (``tests/test_monitor.py`` compares the two passes value for value).

    Only the month sums need ``LOOKBACK_MONTHS`` of legs: every other statement reads
    the last ``READ_MONTHS`` (k < 12), so the pass keeps the legs of those months of its
    dates only (from the calendar month ``READ_MONTHS`` before the earliest), and an
    as-of's legs are those months' (the same rows, in the same order, for every
    statement that reads them). Before, the pass's table held 37 months of legs for a
    year of dates and each as-of copied 24 months of them into its own ``legs`` table,
    half of which no statement read; the flows are sliced, not copied, when in date
    order (as :meth:`scf_engine.dataset.Dataset.as_of` does).
    DuckDB only: the cluster engine builds its legs per as-of. Its tables live as long as
    the connection (the pass closes it).

    The tables are held compressed: they live in an in-memory database of their own
    attached with DuckDB's ``COMPRESS`` option and are checkpointed once built, which
    stores the party ids by dictionary and FSST and the dates and amounts bit-packed
    (DuckDB's temporary tables are never compressed). The pass holds them from its first
    date to its last: at 100,000 firms over a batch and two as-of dates 1.62 GB as
    temporary tables, 0.39 GB compressed (0.27 -> 0.05 GB at 10,000 firms over 13 dates),
    for ~1.5 s of CPU at 10,000 firms to compress them and read them back. The same rows
    in the same order."""

    TABLE = "_pass_legs"  # in the pass's own database (``self.TABLE``: qualified with its name)
    _attached = 0  # passes built in this process: each attaches a database of its own name
    # Month sums of this many months (buckets) a statement, not of every month at once: a
    # (firm, month) sum holds ~20 aggregates, and DuckDB's hash aggregate over all ~37
    # months of a year of dates held ~4.7 GB above the pass at 100,000 firms (0.7 GB at
    # 10,000; 0.45 GB a year at a time). A bucket's sums come from its own flows only,
    # so the rows are the same; their order in the table is the aggregate's, which no
    # reader depends on (the panel is ordered by firm and month before it is read in order).
    SUM_MONTHS = 12

    def __init__(self, con, flows: pd.DataFrame, firm_ids, dates):
        dates = [pd.Timestamp(t) for t in dates]
        first = min(dates) - pd.DateOffset(months=LOOKBACK_MONTHS + 1)
        lo = pd.Timestamp(year=first.year, month=first.month, day=1)
        booked = flows["booked_on"]
        ordered = bool(booked.is_monotonic_increasing)
        if ordered:  # a slice, not a copy of every string column
            at = np.searchsorted(booked.to_numpy(), np.array([lo, max(dates)], dtype="datetime64[s]"), "left")
            within = flows.iloc[int(at[0]):int(at[1])]
        else:
            within = flows[(booked >= lo) & (booked < max(dates))]
        self.dates, self.eng = dates, DuckDBEngine(con)
        FlowPass._attached += 1
        self.db = f"_scf_pass_{FlowPass._attached}"
        try:
            con.execute(f"ATTACH ':memory:' AS {self.db} (COMPRESS)")
        except duckdb.Error as exc:  # COMPRESS is DuckDB 1.4's: before it, the same tables uncompressed
            warnings.warn(f"DuckDB refused a compressed in-memory database ({str(exc).splitlines()[0]}); the "
                          "pass's tables are held uncompressed: larger, same results", RuntimeWarning, stacklevel=2)
            con.execute(f"ATTACH ':memory:' AS {self.db}")
        self.TABLE = f"{self.db}.{FlowPass.TABLE}"
        days = within["booked_on"].to_numpy()

        def flows_from(start: pd.Timestamp, end: pd.Timestamp) -> None:
            """``_pass_flows``: the flows booked in [start, end) (all of them when out of
            date order: the statements filter them too), ``_i`` numbering each by its
            place in ``within`` (what ``row_number() OVER ()`` over all of them gives)."""
            i, j = (np.searchsorted(days, np.array([start, end], dtype="datetime64[s]"), "left") if ordered
                    else (0, len(within)))
            part = within.iloc[int(i):int(j)][["booked_on", "payer_id", "payee_id", "amount", "purpose"]]
            self.eng.register("_pass_flows", part.assign(_i=np.arange(int(i) + 1, int(j) + 1, dtype=np.int64)),
                              money=("amount",))

        self.eng.register("_pass_firms", pd.DataFrame({"firm_id": pd.Series(firm_ids, dtype=object).to_numpy()}))
        every = f"({LEGS_UNION_SQL.format(flows='_pass_flows', firms='_pass_firms')} SELECT * FROM legs)"
        # the month sums once per day of month: a flow's month before T is (T's month) minus
        # its bucket, the same bucket for every date on that day of the month; summed
        # SUM_MONTHS buckets a statement (see SUM_MONTHS), each from the flows of its
        # calendar months (a bucket holds flows of its month and the one before)
        first, last = lo.year * 12 + lo.month, max(dates).year * 12 + max(dates).month + 1
        for d in sorted({t.day for t in dates}):
            bucket = _bucket_sql(d)
            for b in range(first, last + 1, self.SUM_MONTHS):
                flows_from(_month_start(b - 1), _month_start(b + self.SUM_MONTHS))
                some = (f"(SELECT * FROM (SELECT *, {bucket} AS bucket FROM {every}) "
                        f"WHERE bucket >= {b} AND bucket < {b + self.SUM_MONTHS})")
                con.execute((f"CREATE TABLE {self.TABLE}_monthly_{d} AS " if b == first else
                             f"INSERT INTO {self.TABLE}_monthly_{d} ") + _monthly_sql(some, "bucket"))
        for d in sorted({t.day for t in dates}):
            self._build_panel(d, max(t.year * 12 + t.month for t in dates if t.day == d))
        con.execute(f"CHECKPOINT {self.db}")  # compresses what was written
        # the legs the as-of dates read, SUM_MONTHS calendar months a statement, each
        # compressed before the next is written: uncompressed, a year of dates' legs were
        # ~2.8 GB at 100,000 firms before the checkpoint compressed them
        begin = start = pd.Timestamp(self._read_from(min(dates)))
        while start < max(dates):
            end = start + pd.DateOffset(months=self.SUM_MONTHS)
            flows_from(start, end)
            sql = (f"SELECT * FROM {every} WHERE booked_on >= DATE '{start.date()}' "
                   f"AND booked_on < DATE '{end.date()}'")
            con.execute((f"CREATE TABLE {self.TABLE} AS " if start == begin else f"INSERT INTO {self.TABLE} ") + sql)
            con.execute(f"CHECKPOINT {self.db}")
            start = end
        self.eng.unregister("_pass_flows")  # the tables hold what the pass needs
        self.eng.unregister("_pass_firms")
        self._shapes: ShapeSearch | None = None
        self._cpty: dict[int, tuple] = {}  # per day of month: the plan its counterparty counts were built for
        self._transfers: TradeTransfers | None = None

    def transfers(self) -> TradeTransfers:
        """Every trade transfer of the pass once, in ``_i`` order (built on first use):
        the shape search reads them all (:meth:`shape_search`) and each as-of takes its
        trade legs from them (:meth:`trade_legs`). Parties are numbered in name order
        over every party of the pass's legs; the party of each code is kept."""
        if self._transfers is None:
            # one row per transfer: its payer's leg (``out``) when the payer is a firm of
            # the pass (a firm with legs), else its payee's (the only one it has). Not
            # DISTINCT ON (_i) ... ORDER BY _i: that hashed and sorted every trade leg
            # with its party ids, ~1.3 GB above the pass at 100,000 firms over a year of
            # dates, for the same transfers; sorted below by _i, as integers
            self.eng.create("_pass_parties", _parties_sql(self.TABLE))
            t = self.eng.df(
                "SELECT t._i, a.code AS payer, b.code AS payee, t.amount, t.day FROM (SELECT _i, "
                "CASE WHEN dir = 'out' THEN firm_id ELSE cpty END AS payer, "
                "CASE WHEN dir = 'out' THEN cpty ELSE firm_id END AS payee, amount, "
                f"date_diff('day', DATE '1970-01-01', booked_on)::INTEGER AS day FROM {self.TABLE} "
                f"WHERE purpose = 'trade' AND (dir = 'out' OR cpty NOT IN (SELECT DISTINCT firm_id "
                f"FROM {self.TABLE}))) t JOIN _pass_parties a ON t.payer = a.party JOIN _pass_parties b ON t.payee = b.party")
            party = self.eng.con.sql("SELECT party FROM _pass_parties ORDER BY code").to_arrow_table()["party"]
            self.eng.drop("_pass_parties")
            order = np.argsort(t["_i"].to_numpy(np.int64), kind="stable")
            self._transfers = TradeTransfers(
                *(t[c].to_numpy(dtype).take(order) for c, dtype in
                  (("_i", np.int64), ("payer", np.int32), ("payee", np.int32), ("day", np.int32), ("amount", np.float64))),
                party=party.combine_chunks())
            del t, order
        return self._transfers

    def trade_legs(self, T: str, firm_ids) -> tuple[pd.DataFrame, pa.Array]:
        """The trade legs at T of the firms ``firm_ids`` (the snapshot's), as
        :func:`_trade_legs` reads them from ``legs`` (the last 12 months, k < 12, in
        ``_i, dir`` order), taken from the pass's transfers (:meth:`transfers`) instead of
        scanned, joined to party codes and sorted again each as-of (~4 s an as-of at
        100,000 firms); and the party of each code."""
        t = self.transfers()
        T = self._date(T)
        # k as _window_sql counts it: T's month minus the leg's, less one when the leg's
        # day of the month is on or after T's
        k = np.int32((T.year - 1970) * 12 + T.month - 1) - t.month - (t.mday >= T.day)
        start = np.datetime64(self._read_from(T), "D").astype(np.int64)
        chosen = np.flatnonzero((k >= 0) & (k < READ_MONTHS) & (t.day >= start))
        del k
        firm = t.firms(firm_ids)  # per party code: a firm of this as-of
        payer, payee = t.payer[chosen], t.payee[chosen]
        has_in, has_out = firm[payee], firm[payer]
        n = has_in.astype(np.int64) + has_out
        leg = np.repeat(np.arange(len(chosen)), n)  # per leg, its transfer among ``chosen``: _i order
        is_out = np.ones(len(leg), dtype=bool)
        is_out[(np.cumsum(n) - n)[has_in]] = False  # a transfer's in-leg comes first (ENUM('in', 'out') order)
        p, q = payer[leg], payee[leg]
        # copy=False: each column is an array made here, kept as its own block; the
        # default stacks the int32 columns into one 2-D block, a copy of them (1.7 s an
        # as-of at 100,000 firms on a VM that charges for fresh pages)
        trade = pd.DataFrame({
            "_i": t.i[chosen][leg], "firm_id": np.where(is_out, p, q), "cpty": np.where(is_out, q, p),
            "dir": pd.Categorical.from_codes(is_out.astype(np.int8), ["in", "out"]),
            "amount": t.amount[chosen][leg], "day": t.day[chosen][leg]}, copy=False)
        return trade, t.party

    def shape_search(self, policy) -> ShapeSearch:
        """The authenticity shapes (rings, round trips, onward hops, amount chains) among
        every trade transfer of the pass, searched once on first use
        (:class:`scf_engine.features.authenticity.ShapeSearch`): each as-of keeps those
        inside its own 12 months, the same shapes its own search would find, at a fifth
        of the cost of searching its ~540,000 transfers (10,000 firms) again each date.
        Transfers are named by ``_i``, as each as-of's trade legs name them."""
        if self._shapes is None:
            t = self.transfers()
            self._shapes = ShapeSearch(t.payer.astype(np.int64), t.payee.astype(np.int64), t.day.astype(np.int64),
                                       t.amount, t.i, policy)
        return self._shapes

    @staticmethod
    def _read_from(T: pd.Timestamp) -> str:
        """The first day of the calendar month ``READ_MONTHS`` before T's: a leg booked
        earlier is at least ``READ_MONTHS`` whole months before T (k >= 12)."""
        t = pd.Timestamp(T) - pd.DateOffset(months=READ_MONTHS)
        return f"{t.year:04d}-{t.month:02d}-01"

    def _date(self, T: str) -> pd.Timestamp:
        """T as a date of this pass (the pass built nothing for any other)."""
        t = pd.Timestamp(T)
        if t not in self.dates:
            raise ValueError(f"as-of {T} is not a date of this pass")
        return t

    def legs_sql(self, T: str) -> str:
        """The legs at T of the last ``READ_MONTHS`` months (k < 12, all that the
        statements reading ``legs`` use): the pass's legs booked before T of T's firms
        (the view ``firms`` flow_features registers), with k."""
        t = self._date(T)
        own = (f"(SELECT * FROM {self.TABLE} WHERE booked_on >= DATE '{self._read_from(t)}' AND booked_on < DATE '{T}' "
               "AND firm_id IN (SELECT firm_id FROM firms))")
        return _window_sql(T, own, READ_MONTHS)

    def create_legs(self, T: str) -> None:
        """``legs`` at T (:meth:`legs_sql`) as a view over the pass's table, not a copy:
        the six statements that read it each filter the pass's legs again (an as-of's 12
        months are ~11 million legs at 100,000 firms, a table of over 1 GB that each
        as-of built and dropped); the same rows in the same order (insertion order is
        kept), and every statement reading them aggregates or orders them itself."""
        self.eng.con.execute(f"CREATE OR REPLACE TEMP VIEW legs AS {self.legs_sql(T)}")

    def drop_legs(self) -> None:
        self.eng.con.execute("DROP VIEW IF EXISTS legs")

    # the firms' months of a panel table built at once, in this many ranges of firm ids
    # (each range's window functions and sort hold memory for its firms only; uncompressed,
    # the table of 100,000 firms over a year of dates is ~1 GB, ~0.1 GB once checkpointed)
    PANEL_BUILD_PARTS = 4

    def _build_panel(self, d: int, last: int) -> None:
        """``{TABLE}_panel_{d}``: every pass firm's months (buckets of day ``d``, see
        ``__init__``) from its first month with flows to ``last`` (the month of the pass's
        last date on that day), densified, with the raw month sums (NULL where the firm had
        no flow that month), ``r`` (the month's ``reported``, NULL then), and each month's
        neighbours as :func:`_panel_features` reads them: the month before (``_rprev``),
        after (``_rnext``) and a year before (``_rly``), over the whole series; stored by
        firm and month, latest first (k ascending at any date). The month sums it is
        made of are dropped: nothing else reads them.

        Why: each as-of densified its 24 months and ran the same window functions over
        them again (~6 s an as-of at 100,000 firms, the largest part of a snapshot); the
        neighbours of a month do not depend on the date, only whether the date's window
        still holds them, which :meth:`panel_rows_sql` decides. A neighbour after the
        as-of's month (the future) is stored but never read: it is masked there."""
        monthly, table = f"{self.TABLE}_monthly_{d}", f"{self.TABLE}_panel_{d}"
        near = (["lag(r) OVER w AS r_prev", "lead(r) OVER w AS r_next", "lag(r, 12) OVER w AS r_ly"]
                + [f"lag({o}) OVER w AS {o}_rprev" for o in CURED] + [f"lead({o}) OVER w AS {o}_rnext" for o in CURED]
                + [f"lag({c}, 12) OVER w AS {c}_rly" for c in YOY_COLUMNS])
        ids = self.eng.con.sql(f"SELECT DISTINCT firm_id FROM {monthly}").fetchnumpy()["firm_id"]
        bounds = [None, *key_bounds(ids, self.PANEL_BUILD_PARTS), None]
        for j, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            where, params = key_range("firm_id", lo, hi)
            sql = (f"WITH m AS (SELECT * FROM {monthly} WHERE {where}), "
                   f"span AS (SELECT firm_id, min(bucket) AS b0 FROM m GROUP BY firm_id), "
                   f"dense AS (SELECT firm_id, unnest(range(b0, {last} + 1)) AS bucket FROM span) "
                   f"SELECT firm_id, bucket, m.reported AS r, {', '.join('m.' + c for c in PANEL_COLUMNS)}, {', '.join(near)} "
                   f"FROM dense LEFT JOIN m USING (firm_id, bucket) WINDOW w AS (PARTITION BY firm_id ORDER BY bucket) "
                   f"ORDER BY firm_id, bucket DESC")
            self.eng.con.execute((f"CREATE TABLE {table} AS " if j == 0 else f"INSERT INTO {table} ") + sql, params)
            self.eng.con.execute(f"CHECKPOINT {self.db}")  # each range compressed before the next is written
        self.eng.con.execute(f"DROP TABLE {monthly}")

    def panel_rows_sql(self, T: str) -> str:
        """The query of the panel ``p2`` at T that :func:`_panel_features` reads (T's firms
        only, in firm and month order): the same rows and values as densifying T's months
        and running the window functions over them (:func:`_panel_sql`, then
        ``_panel_features``), from the pass's panel table (:meth:`_build_panel`).

        The months 0 <= k < LOOKBACK_MONTHS before T (bucket <= T's month: booked before
        T) from the firm's earliest reported one in them (``first_k``) to T; the platform's
        flags (no outside party at all, obligations no firm paid) from those months,
        asked here and written into the query as constants; a neighbour kept only where
        the window holds its month (k + 1 <= first_k, k >= 1: never a month at or after
        T, k + 12 <= first_k); the firm's typical payment and latest paid month over its
        months in the window."""
        t = self._date(T)
        table = f"{self.TABLE}_panel_{t.day}"
        now, k = t.year * 12 + t.month, f"({t.year * 12 + t.month} - bucket)"
        window = f"bucket <= {now} AND bucket > {now} - {LOOKBACK_MONTHS} AND firm_id IN (SELECT firm_id FROM firms)"
        flags = self.eng.con.execute(f"SELECT {_platform_flags('r')} FROM {table} WHERE {window}").fetchall()[0]
        no_ext = "true" if flags[0] else "false"
        carries = {c: "true" if f else "false" for c, f in zip(OBLIGATIONS, flags[1:])}

        def value(c: str, r: str, raw: str) -> str:
            return _known_sum(raw, f"coalesce({r}, false)", no_ext, carries.get(c))

        typical = ", ".join(f"median(({value(o, 'r', o)})::DOUBLE) FILTER (WHERE {value(o, 'r', o)} > 0) AS {o}_typical"
                            for o in CURED)
        last = ", ".join(f"min({k}) FILTER (WHERE {value(o, 'r', o)} > 0) AS {o}_last_k" for o in OPEN_GAPS)
        per_firm = (f"SELECT firm_id, max({k}) FILTER (WHERE r OR ({no_ext} AND r IS NOT NULL)) AS first_k, "
                    f"{typical}, {last} FROM {table} WHERE {window} GROUP BY firm_id")
        rows = (["w.firm_id", f"{k} AS k", f"coalesce(r, false) OR {no_ext} AS reported"]
                + [f"{value(c, 'r', c)} AS {c}" for c in PANEL_COLUMNS]
                + [f"CASE WHEN {k} + 1 <= first_k THEN {value(o, 'r_prev', o + '_rprev')} END AS {o}_prev" for o in CURED]
                + [f"CASE WHEN {k} >= 1 THEN {value(o, 'r_next', o + '_rnext')} END AS {o}_next" for o in CURED]
                + [f"CASE WHEN {k} + 12 <= first_k THEN {value(c, 'r_ly', c + '_rly')} END AS {c}_ly" for c in YOY_COLUMNS]
                + [f"f.{o}_last_k" for o in OPEN_GAPS] + [f"f.{o}_typical" for o in CURED])
        return (f"SELECT {', '.join(rows)} FROM {table} w JOIN ({per_firm}) f ON w.firm_id = f.firm_id "
                f"WHERE bucket <= {now} AND bucket >= {now} - first_k ORDER BY w.firm_id, k")

    def cpty_counts_sql(self, T: str, specs) -> str | None:
        """The query of the catalogue's ``cpty`` features at T (T's firms: the view
        ``firms``), as :func:`_cpty_sql` counts them over T's legs, from counts made for
        every date of the pass at once (:meth:`_build_cpty`, on the first date of each day
        of the month that asks); None when a spec is not a count of distinct
        counterparties whose condition reads ``k`` only as an upper bound
        (:func:`_pass_cpty_plan`): then the as-of counts its own legs.

        Why: the statement grouped ~11 million legs by (firm, counterparty) at every
        as-of (3.8 s of a 100,000-firm as-of's ~20 s); a pair is counted at T when one of
        its flagged months lies in T's window, which the pass finds from each flagged
        month and the next one once. A firm with legs in T's 12 months (a month in the
        pass's panel with flows) and no flagged pair counts 0, as there; a firm with no
        legs has no row."""
        plan = _pass_cpty_plan(specs)
        if plan is None:
            return None
        t = self._date(T)
        if self._cpty.get(t.day) != plan:
            self._build_cpty(t.day, plan)
        now = t.year * 12 + t.month
        counts = ", ".join(f"coalesce(c.{name}, 0) AS {name}" for name, _, _ in plan)
        return (f"SELECT f.firm_id, {counts} FROM (SELECT DISTINCT firm_id FROM {self.TABLE}_panel_{t.day} "
                f"WHERE bucket <= {now} AND bucket > {now} - {READ_MONTHS} AND r IS NOT NULL "
                f"AND firm_id IN (SELECT firm_id FROM firms)) f "
                f"LEFT JOIN (SELECT * FROM {self.TABLE}_cpty_{t.day} WHERE now = {now}) c ON c.firm_id = f.firm_id")

    def _build_cpty(self, d: int, plan: tuple) -> None:
        """``{TABLE}_cpty_{d}``: per firm and month ``now`` of the pass's dates on day
        ``d``, the number of counterparties with a leg meeting each plan condition in the
        ``w`` months before (buckets now - w < bucket <= now, as :meth:`_build_panel`
        counts months). First, per (firm, counterparty, month), whether some leg met each
        condition (months with none dropped), SUM_MONTHS months a statement; then each
        flagged month covers the dates from it to the earlier of w - 1 months later and
        the month before the pair's next flagged one, so each pair covers a date at
        most once, and the dates covered are counted per firm."""
        nows = sorted({t.year * 12 + t.month for t in self.dates if t.day == d})
        lo, hi = nows[0] - READ_MONTHS + 1, nows[-1]
        grouped, table = f"{self.TABLE}_cptyg_{d}", f"{self.TABLE}_cpty_{d}"
        bucket = _bucket_sql(d)
        flags = ", ".join(f"bool_or({cond}) AS _f{j}" for j, (_, cond, _) in enumerate(plan))
        some = " OR ".join(f"_f{j}" for j in range(len(plan)))
        for j, b in enumerate(range(lo, hi + 1, self.SUM_MONTHS)):
            e = min(b + self.SUM_MONTHS, hi + 1)
            sql = (f"SELECT * FROM (SELECT firm_id, cpty, bucket, {flags} FROM (SELECT *, {bucket} AS bucket "
                   f"FROM {self.TABLE} WHERE booked_on >= DATE '{_month_start(b - 1).date()}' "
                   f"AND booked_on < DATE '{_month_start(e).date()}') WHERE bucket >= {b} AND bucket < {e} "
                   f"GROUP BY firm_id, cpty, bucket) WHERE {some}")
            self.eng.con.execute((f"CREATE OR REPLACE TABLE {grouped} AS " if j == 0 else f"INSERT INTO {grouped} ") + sql)
        covers = " UNION ALL ".join(
            f"SELECT firm_id, {j} AS j, bucket AS b, least(bucket + {w - 1}, coalesce(lead(bucket) OVER "
            f"(PARTITION BY firm_id, cpty ORDER BY bucket) - 1, bucket + {w - 1})) AS e FROM {grouped} WHERE _f{j}"
            for j, (_, _, w) in enumerate(plan))
        counts = ", ".join(f"count(*) FILTER (WHERE j = {j}) AS {name}" for j, (name, _, _) in enumerate(plan))
        self.eng.con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT firm_id, n.now, {counts} FROM ({covers}) r "
                             f"JOIN (SELECT unnest({list(nows)}) AS now) n ON n.now BETWEEN r.b AND r.e "
                             "GROUP BY firm_id, n.now")
        self.eng.con.execute(f"DROP TABLE {grouped}")
        self.eng.con.execute(f"CHECKPOINT {self.db}")
        self._cpty[d] = plan


MONTHLY_SQL = """
    SELECT firm_id, {key},
        CAST(sum(amount) FILTER (WHERE dir = 'in' AND purpose = 'trade') AS {money}) AS in_trade,
        count(*) FILTER (WHERE dir = 'in' AND purpose = 'trade') AS n_in_trade,
        CAST(sum(amount) FILTER (WHERE dir = 'out' AND purpose = 'trade') AS {money}) AS out_trade,
        CAST(sum(amount) FILTER (WHERE dir = 'in') AS {money}) AS in_total,
        CAST(sum(amount) FILTER (WHERE dir = 'out') AS {money}) AS out_total,
        CAST(sum(amount) FILTER (WHERE dir = 'in' AND purpose = 'loan_drawdown') AS {money}) AS in_loan_draw,
        count(*) FILTER (WHERE dir = 'in' AND purpose = 'loan_drawdown') AS n_loan_draw,
        CAST(sum(amount) FILTER (WHERE dir = 'out' AND purpose = 'loan_repayment') AS {money}) AS out_loan_rep,
        count(*) FILTER (WHERE dir = 'out' AND purpose = 'loan_repayment') AS loan_interest,
        {obligations},
        count(*) FILTER (WHERE dir = 'in' AND purpose = 'trade' AND amount >= 10000 AND amount % 10000 = 0) AS n_round_in,
        CAST(sum(amount) FILTER (WHERE dir = 'in' AND purpose = 'trade' AND month(booked_on) IN (3, 6, 9, 12)
                                 AND day(booked_on) >= day(last_day(booked_on)) - 2) AS {money}) AS in_period_end,
        count(*) FILTER (WHERE cpty LIKE 'EXT-%') > 0 AS reported
    FROM {legs} GROUP BY firm_id, {key}
"""

# A month is reported when it has a flow with an outside (EXT-) party. Flows with no outside
# party at all in the snapshot's months (a platform that shares only its members' payments
# to each other) cannot tell a reported month from an unreported one: there every month
# from a firm's first flow counts as reported (``no_ext``), or every flow feature would be
# empty for every firm. Likewise an obligation no firm paid in the snapshot's months (a
# platform that does not carry housing fund or payroll payments) is unknown in every month,
# not missed in every month by every firm. Read from the snapshot's own months, so nothing
# dated T or later.
PANEL_SQL = """
WITH monthly AS ({monthly}),
platform AS (SELECT {flags} FROM monthly),
span AS (SELECT firm_id, max(k) AS first_k FROM monthly WHERE reported OR (SELECT no_ext FROM platform)
         GROUP BY firm_id),
dense AS (SELECT firm_id, unnest(range(0, first_k + 1)) AS k FROM span)
SELECT d.firm_id, d.k, coalesce(m.reported, false) OR pl.no_ext AS reported, {coalesced}
FROM dense d CROSS JOIN platform pl LEFT JOIN monthly m USING (firm_id, k)
"""

PANEL_COLUMNS = ("in_trade", "n_in_trade", "out_trade", "in_total", "out_total", "in_loan_draw", "n_loan_draw",
                 "out_loan_rep", "loan_interest") + OBLIGATIONS + ("n_round_in", "in_period_end")


def _monthly_sql(legs: str = "legs", key: str = "k") -> str:
    """The per-(firm, month) sums of ``legs`` grouped by ``key``."""
    obligations = ",\n        ".join(
        f"CAST(sum(amount) FILTER (WHERE dir = 'out' AND purpose = '{p}') AS {MONEY}) AS {p}" for p in OBLIGATIONS
    )
    return MONTHLY_SQL.format(obligations=obligations, legs=legs, key=key, money=MONEY)


def _panel_sql(monthly: str | None = None) -> str:
    """The dense panel ``p`` from ``monthly`` (a query of firm_id, k, ``reported`` and the
    sums; default the sums of this date's legs)."""
    coalesced = ", ".join(f"{_known_sum(f'm.{c}', 'm.reported', 'pl.no_ext', f'pl.carries_{c}' if c in OBLIGATIONS else None)} AS {c}"
                          for c in PANEL_COLUMNS)
    return PANEL_SQL.format(monthly=monthly or _monthly_sql(), coalesced=coalesced, flags=_platform_flags("reported"))


def _platform_flags(reported: str) -> str:
    """The platform's flags over a set of months (``reported``: the month's reported
    column), as :data:`PANEL_SQL` reads them: ``no_ext`` (no month has an outside party)
    and ``carries_{o}`` per obligation (some firm paid it in some month)."""
    carried = ", ".join(f"coalesce(max(CASE WHEN {c} > 0 THEN 1 ELSE 0 END), 0) = 1 AS carries_{c}" for c in OBLIGATIONS)
    return f"coalesce(max(CASE WHEN {reported} THEN 1 ELSE 0 END), 0) = 0 AS no_ext, {carried}"


def _known_sum(raw: str, reported: str, no_ext: str, carries: str | None) -> str:
    """A month's sum as the panel reads it: 0 where the firm had no such flow in a month
    that is known, and NULL (unknown, not a month of zeros) where the firm's own account
    did not report the month (unless the platform has no outside party: ``no_ext``) or,
    for an obligation, the platform carries no such payment (``carries``, None for other
    sums). Each argument is an SQL expression."""
    known = f"({reported} OR {no_ext})" + (f" AND {carries}" if carries else "")
    return f"CASE WHEN {known} THEN coalesce({raw}, 0) END"


def _panel_features(eng, panel: str | None, firm_ids, cat: Catalogue, *, rows: str | None = None) -> pd.DataFrame:
    """The catalogue's ``panel`` features per firm: the dense panel ``p`` (the query
    ``panel``), ``p2`` beside it with each month's neighbours and the firm's typical
    payments, then the per-firm aggregate; both tables dropped before returning, also
    on failure. ``rows``: the query of ``p2`` itself (a pass's,
    :meth:`FlowPass.panel_rows_sql`), read instead of building it from ``panel``."""
    # p2 is a table of the database, not of this connection (aggregate_in_parts' cursors read it):
    # a name of its own, so no other connection's or caller's table is replaced or dropped
    p2 = f"_scf_p2_{uuid.uuid4().hex}"
    try:
        if rows is None:
            eng.create("p", panel)
            eng.create(p2, _neighbours_sql("p"), shared=True)
        else:
            eng.create(p2, rows, shared=True)
        panel_exprs = [f"({s.expr}) AS {s.name}" for s in cat.of_kind("panel")]
        # slopes and deviations of doubles: each firm's on one thread, same bits every run
        # (scf_engine.duck); the firms in PANEL_PARTS ranges at once, split by name (not by
        # the machine's cores: the answers are the same on any machine), each range's
        # aggregates a few per statement (DuckDBEngine.AGGREGATES_PER_STATEMENT)
        out = eng.aggregate_in_parts(panel_exprs, p2, "firm_id", key_bounds(firm_ids, PANEL_PARTS)).set_index("firm_id")
    finally:
        # the panel is read by the statement above only: its tables go now, not after the code
        # features (~2.4 million firm-months of ~40 columns at 100,000 firms, ~1.2 GB held
        # uncompressed under the trade legs and the authenticity search, the as-of's peak)
        eng.drop(p2, "p")
    return out


def _neighbours_sql(p: str) -> str:
    """``p2``: the dense panel ``p`` with each month's neighbours and the firm's typical
    payments, in (firm, month) order."""
    # {o}_typical: the firm's median monthly payment, as a DOUBLE: DuckDB's median of an
    # even count of DECIMAL(18,2) cuts the mean of the middle two to cents (100.01 and 100.02
    # give 100.01) where Spark's gives 100.015, and a payment at 1.6x that boundary counted
    # as cured on one engine only (one firm in 100k at 20M flows); {o}_prev: the month before (k + 1)
    typical = ", ".join(f"median({o}::DOUBLE) FILTER (WHERE {o} > 0) AS {o}_typical" for o in CURED)
    prev = ", ".join(f"lead({o}) OVER (PARTITION BY firm_id ORDER BY k) AS {o}_prev" for o in CURED)
    # {o}_next: the month after (k - 1; NULL for the latest month or an unreported one), to
    # tell a missed month caught up the next month from one left open (uncured)
    nxt = ", ".join(f"lag({o}) OVER (PARTITION BY firm_id ORDER BY k) AS {o}_next" for o in CURED)
    # {c}_ly: the same calendar month a year earlier (NULL where not on record), for
    # year-on-year ratios over matched months; {o}_last_k: the latest month with a payment
    # (open gaps count the reported months since)
    ly = ", ".join(f"lead({c}, 12) OVER (PARTITION BY firm_id ORDER BY k) AS {c}_ly" for c in YOY_COLUMNS)
    last = ", ".join(f"min(CASE WHEN {o} > 0 THEN k END) OVER (PARTITION BY firm_id) AS {o}_last_k" for o in OPEN_GAPS)
    # stored in (firm, month) order: the one-thread aggregate reads each firm's months
    # in the same order every run
    return (f"SELECT {p}.*, {prev}, {nxt}, {ly}, {last}, {', '.join(f't.{o}_typical' for o in CURED)} FROM {p} "
            f"JOIN (SELECT firm_id, {typical} FROM {p} GROUP BY firm_id) t USING (firm_id) ORDER BY firm_id, k")

def flow_features(snapshot: Snapshot, catalogue: Catalogue | None = None, *, con=None, engine=None,
                  flow_pass: FlowPass | None = None) -> pd.DataFrame:
    """Every flow feature of the catalogue for every firm in the snapshot (index firm_id).

    A firm with no flow in the last 24 months has all panel features empty. ``engine``:
    where the SQL runs (default: DuckDB on ``con``, or on a new connection); the same
    statements on :class:`scf_engine.spark.SparkEngine` give the same features.
    ``flow_pass``: the legs of a pass over several dates, built on ``con``
    (:class:`FlowPass`), read instead of building this date's from the snapshot's flows.
    """
    cat = catalogue or load_catalogue()
    T = snapshot.as_of.strftime("%Y-%m-%d")
    eng = engine or DuckDBEngine(con)
    firms = snapshot.firms[["firm_id", "industry", "founded_on"]]
    eng.register("firms", firms)
    if flow_pass is not None:
        if engine is not None or con is None or flow_pass.eng.con is not con:
            raise ValueError("flow_pass: its legs live on the DuckDB connection it was built on; pass that as con")
        flow_pass.create_legs(T)
    else:
        eng.register("flows", snapshot.flows[["booked_on", "payer_id", "payee_id", "amount", "purpose"]],
                     money=("amount",), row_number="_i")
        eng.create("legs", _legs_sql(T))
    if flow_pass is not None:
        out = _panel_features(eng, None, firms["firm_id"], cat, rows=flow_pass.panel_rows_sql(T))
    else:
        out = _panel_features(eng, _panel_sql(), firms["firm_id"], cat)

    cpty_specs = cat.of_kind("cpty")
    if cpty_specs:
        counted = flow_pass.cpty_counts_sql(T, cpty_specs) if flow_pass is not None else None
        cpty = eng.df(counted or _cpty_sql(cpty_specs)).set_index("firm_id")
        out = beside(out, [cpty])

    firm_specs = cat.of_kind("firm")
    fr = eng.df(
        f"SELECT firm_id, {', '.join(f'({s.expr}) AS {s.name}' for s in firm_specs)} "
        f"FROM (SELECT *, DATE '{T}' AS as_of FROM firms)"
    ).set_index("firm_id").reindex(firms["firm_id"])  # the snapshot's order, whatever order an engine returns
    out = beside(fr, [out])  # every firm of the snapshot, flows or not
    out = _code_features(eng, out, cat, T, flow_pass)
    if "closed_loop" in {s.function for s in cat.of_kind("code")}:  # financings, receivables, accounts: pandas
        out = beside(out, [closed_loop_features(snapshot)])
    out = _derived(eng, out, cat)
    out = _ranks(out, snapshot.firms, cat)
    if engine is None:
        eng.close()
    computed = [s.name for s in cat.specs if s.name in out.columns]
    # one block (copy consolidates): the parts put side by side (:func:`beside`) are a block
    # or more each, and a frame of many blocks is slow to reindex and join downstream (the
    # snapshot's table passed pandas' "highly fragmented" mark in the monitor's frame)
    return out[computed].astype("float64").copy()


def _distinct_cpty_conditions(specs) -> list | None:
    """Per spec, its condition as a sqlglot tree (None: every leg), when every spec counts
    the firm's distinct counterparties under a condition (``count(DISTINCT cpty)
    [FILTER (WHERE ...)]``); None when one does anything else."""
    import sqlglot
    from sqlglot import exp

    conds = []
    for s in specs:
        tree = sqlglot.parse_one(s.expr, read="duckdb")
        agg, cond = (tree.this, tree.expression.this) if isinstance(tree, exp.Filter) else (tree, None)
        if not (isinstance(agg, exp.Count) and isinstance(agg.this, exp.Distinct)
                and len(agg.this.expressions) == 1 and isinstance(agg.this.expressions[0], exp.Column)
                and agg.this.expressions[0].name == "cpty" and not agg.this.expressions[0].table):
            return None
        conds.append(cond)
    return conds


LEG_COLUMNS = ("_i", "firm_id", "cpty", "dir", "booked_on", "amount", "purpose")  # a pass's legs, before k


def _pass_cpty_plan(specs) -> tuple | None:
    """Per spec (:func:`_distinct_cpty_conditions`): its name, its condition without
    ``k`` (SQL over a leg's own columns) and its window w in months (the condition's
    bound on k, ``k < w`` or ``k <= w - 1``, at most READ_MONTHS); None when a spec
    is no distinct-counterparty count, or its condition reads k otherwise (under OR,
    as a lower bound) or reads anything but the leg's columns: then no pass can count
    it for all dates at once."""
    from sqlglot import exp

    trees = _distinct_cpty_conditions(specs)
    if trees is None:
        return None
    plan = []
    for s, tree in zip(specs, trees):
        w, rest = READ_MONTHS, []
        for term in (tree.flatten() if isinstance(tree, exp.And) else [tree]) if tree is not None else []:
            if any(c.name == "k" for c in term.find_all(exp.Column)):
                bound = (term.expression if isinstance(term, (exp.LT, exp.LTE)) and isinstance(term.this, exp.Column)
                         and term.this.name == "k" and not term.this.table else None)
                if not (isinstance(bound, exp.Literal) and bound.is_int):
                    return None
                w = min(w, int(bound.this) + isinstance(term, exp.LTE))
            elif any(c.table or c.name not in LEG_COLUMNS for c in term.find_all(exp.Column)) or term.find(exp.Subquery):
                return None
            else:
                rest.append(term.sql(dialect="duckdb"))
        plan.append((s.name, " AND ".join(f"({r})" for r in rest) or "true", w))
    return tuple(plan)


def _cpty_sql(specs) -> str:
    """The catalogue's ``cpty`` aggregates over the last 12 months' legs, per firm.

    When every expression counts the firm's distinct counterparties under a condition
    (``count(DISTINCT cpty) [FILTER (WHERE ...)]``: lenders, payers, payees), the legs are
    first grouped by (firm, counterparty) with one flag per expression (some leg of the
    pair meets its condition), and each feature counts the flagged pairs: the same
    integers, from one grouping instead of one DISTINCT aggregate per feature, which made
    this the costliest statement of an as-of (~1.3 s of ~16 s an as-of at 20,000 firms;
    ``scf monitor`` pays it 13 times a pass). Any other expression: as written, over the
    legs. A monitoring pass counts them for all its dates at once instead
    (:meth:`FlowPass.cpty_counts_sql`)."""
    trees = _distinct_cpty_conditions(specs)
    if trees is None:
        return (f"SELECT firm_id, {', '.join(f'({s.expr}) AS {s.name}' for s in specs)} "
                "FROM legs WHERE k < 12 GROUP BY firm_id")
    conds = ["true" if c is None else c.sql(dialect="duckdb") for c in trees]
    flags = ", ".join(f"bool_or({c}) AS _f{j}" for j, c in enumerate(conds))
    counts = ", ".join(f"count(cpty) FILTER (WHERE _f{j}) AS {s.name}" for j, s in enumerate(specs))
    return (f"SELECT firm_id, {counts} FROM (SELECT firm_id, cpty, {flags} FROM legs WHERE k < 12 "
            "GROUP BY firm_id, cpty) GROUP BY firm_id")


def _code_features(eng, out: pd.DataFrame, cat: Catalogue, T: str, flow_pass: FlowPass | None = None) -> pd.DataFrame:
    """The catalogue's ``code`` features over flows: counterparty concentration and fan
    bursts (SQL), and the authenticity search (numpy, over the trade legs the engine
    hands back; a pass's shapes searched once, :meth:`FlowPass.shape_search`); the legs
    are let go before the search (the panel's tables went after the panel aggregate).

    In a pass the three SQL statements that read only trade legs (counterparty health,
    payer concentration, fan bursts) read this as-of's trade legs taken from the pass's
    transfers (:meth:`FlowPass.trade_legs`, which the authenticity search reads too),
    with parties as integer codes (:func:`_pass_trade_view`), instead of filtering every
    leg of the pass's table by date and firm name again, once per statement: the same
    statements, the same rows, the same answers."""
    code = {s.function for s in cat.of_kind("code")}
    trade, legs, named = None, "legs", None
    if flow_pass is not None and code & {"counterparty_health", "payer_concentration", "fan_bursts", "authenticity"}:
        trade = flow_pass.trade_legs(T, out.index)
        legs, named = _pass_trade_view(eng, T, trade[0]), trade[1]
    parts = []  # each statement's columns, put beside ``out`` once at the end (:func:`beside`)
    if "counterparty_health" in code:
        parts.append(_counterparty_health(eng, out, legs, named))
    if "payer_concentration" in code:
        parts.append(_named(_payer_concentration(eng, legs), named))
    auth_policy = load_policy() if code & {"authenticity", "fan_bursts"} else None
    if "fan_bursts" in code:
        parts.append(_named(_fan_bursts(eng, T, auth_policy["bursts"]["days"], legs), named))
    if "authenticity" in code and trade is None:
        trade = _trade_legs(eng)
    # the legs are done with: free the engine's memory before the pandas work below
    if flow_pass is not None:
        flow_pass.drop_legs()
        if named is not None:
            _drop_pass_trade_view(eng)
    else:
        eng.drop("legs")
    if "authenticity" in code:
        # what the statements above freed, before the search's arrays are made on top of it;
        # the young garbage only: a full collection walks every object the process holds,
        # per snapshot (a training assembles one per date) 0.17 s in a fresh command and
        # 0.55 s in a long-lived one (the test suite spent 61 s of its pipeline tests there)
        give_back(generation=1)
        search = flow_pass.shape_search(auth_policy) if flow_pass is not None else None
        auth = _authenticity(*trade, policy=auth_policy, search=search).reindex(out.index)
        has = out["history_months"].notna().to_numpy()
        for c in ZERO_WHEN_NONE:
            auth.loc[has, c] = auth.loc[has, c].fillna(0)
        parts.append(auth)
    return beside(out, parts)


def beside(out: pd.DataFrame, parts: list) -> pd.DataFrame:
    """``out`` with each frame of ``parts`` (indexed by firm) joined on its right, in
    order, as ``out.join(part, how="left")`` one after another would (the same columns,
    values and dtypes), in one concatenation: each join copied every column of ``out``
    (~90 by the end; at 100,000 firms the joins took ~0.5 s a snapshot, 13 snapshots a
    monitoring pass)."""
    if not parts:
        return out
    return pd.concat([out, *(p.reindex(out.index) for p in parts)], axis=1)


PASS_TRADE = "_pass_trade_legs"  # an as-of's trade legs from a pass, as the statements read them


def _pass_trade_view(eng, T: str, trade: pd.DataFrame) -> str:
    """The view :data:`PASS_TRADE` over ``trade`` (:meth:`FlowPass.trade_legs`: the
    as-of's trade legs of the last 12 months, parties as integer codes): the columns the
    trade-only statements read from ``legs`` (``purpose`` 'trade', money as exact
    decimals, ``booked_on`` and ``k`` as :func:`_window_sql` counts it). Codes are in
    name order, so a statement ordering by party orders as it does by name; its answers
    are per code (:func:`_named`)."""
    register_money(eng.con, PASS_TRADE + "_codes", trade[["firm_id", "cpty", "dir", "amount", "day"]], money=("amount",))
    eng.con.execute(f"CREATE OR REPLACE TEMP VIEW {PASS_TRADE} AS " + _window_sql(
        T, f"(SELECT firm_id, cpty, dir, 'trade' AS purpose, amount, DATE '1970-01-01' + day AS booked_on "
           f"FROM {PASS_TRADE}_codes)", READ_MONTHS))
    return PASS_TRADE


def _drop_pass_trade_view(eng) -> None:
    """Take back what :func:`_pass_trade_view` registered."""
    eng.con.execute(f"DROP VIEW IF EXISTS {PASS_TRADE}")
    eng.unregister(PASS_TRADE + "_codes")


def _party_codes(names, party: pa.Array) -> pa.Array:
    """The code of each of ``names`` among ``party`` (a pass's parties), null where a
    name is no party."""
    return pc.index_in(pa.array(np.asarray(names, dtype=object), pa.large_string()),
                       value_set=party.cast(pa.large_string()))


def _is_firm(party: pa.Array, names) -> np.ndarray:
    """Per party (a pass's parties, by code): whether it is one of ``names``
    (:func:`scf_engine.membership.isin` over the parties, which takes names held as Arrow
    text as they are; finding each name's code instead, :func:`_party_codes`, made each a
    Python string and an Arrow array again: 0.20 -> 0.07 s for 78,000 names among
    1,000,000 parties, at every as-of of a pass)."""
    return isin(pd.Index(pd.arrays.ArrowStringArray(party)), names)


def _named(frame: pd.DataFrame, party: pa.Array | None) -> pd.DataFrame:
    """``frame`` indexed by party code, indexed by the party's name (as it is when
    ``party`` is None: the statement read names)."""
    if party is None:
        return frame
    codes = pa.array(frame.index.to_numpy(dtype=np.int64))
    return frame.set_axis(pd.Index(party.take(codes).to_numpy(zero_copy_only=False), name="firm_id"))


def _parties_sql(legs: str) -> str:
    """Every party of ``legs`` (its firms and counterparties) numbered from 0 in name
    order: the codes an as-of's trade legs and a pass's transfers carry (the same order,
    so the features computed from either are the same)."""
    return ("SELECT party, (row_number() OVER (ORDER BY party) - 1)::INTEGER AS code "
            f"FROM (SELECT firm_id AS party FROM {legs} UNION SELECT cpty FROM {legs})")


def _trade_legs(eng) -> tuple[pd.DataFrame, np.ndarray]:
    """The last 12 months' trade legs for the authenticity features, with parties as
    integer codes and ``dir`` as a category (as text, 20 million flows' legs took about
    5 GB more at this step: bench/bench_features.py), and the party of each code (codes
    in name order). A pass takes them from its transfers (:meth:`FlowPass.trade_legs`)."""
    eng.create("_trade", "SELECT _i, firm_id, cpty, dir, amount, "
               "date_diff('day', DATE '1970-01-01', booked_on)::INTEGER AS day FROM legs WHERE k < 12 AND purpose = 'trade'")
    eng.create("_parties", _parties_sql("_trade"))
    trade = eng.df("SELECT t._i, a.code AS firm_id, b.code AS cpty, t.dir, t.amount, t.day FROM _trade t "
                   "JOIN _parties a ON t.firm_id = a.party JOIN _parties b ON t.cpty = b.party "
                   "ORDER BY t._i, t.dir")
    party = np.asarray(eng.df("SELECT party FROM _parties ORDER BY code")["party"], dtype=object)
    eng.drop("_trade", "_parties")
    return trade, party


def _authenticity(trade: pd.DataFrame, party, policy, search: ShapeSearch | None = None) -> pd.DataFrame:
    auth = authenticity_features(trade, policy, search)
    codes = auth.index.to_numpy(dtype=np.int64)
    named = (np.asarray(party.take(pa.array(codes)).to_pylist(), dtype=object) if isinstance(party, pa.Array)
             else party[codes])
    auth.index = pd.Index(named, name="firm_id")
    return auth


def _counterparty_health(eng, out: pd.DataFrame, legs: str = "legs", party: pa.Array | None = None) -> pd.DataFrame:
    """Paying firms' health read from their own flows at the same as-of date (so nothing
    later than the firm's own features): the receipt share from payers that missed
    statutory or utility payments in the last 3 months, and the receipt-weighted trend of
    the payers' own trade inflow. The one sum of doubles adds a firm's receipts in
    (payer, amount) order, named in the aggregate: the legs were sorted before the join
    before, and the join kept that order only while DuckDB built its hash table on the
    payers' health; with more firms than receipts (dormant firms) it built it on the
    legs, and the order, hence the last bits, depended on the plan. ``legs``, ``party``:
    trade legs with parties as codes of ``party`` (a pass's, :func:`_pass_trade_view`;
    codes in name order): the payers' health is keyed by code too."""
    health = out[["obligations_missed_3m", "trade_in_slope_12m"]].rename_axis("firm_id").reset_index()
    if party is not None:
        at = _party_codes(health["firm_id"], party)
        known = at.is_valid()  # a firm with no trade leg is no party of the pass: nobody's payer
        health = health[known.to_numpy(zero_copy_only=False)].assign(firm_id=at.filter(known).to_numpy())
    eng.register("_cpty_health", health)
    with eng.deterministic():
        res = eng.df(f"""
            SELECT l.firm_id,
                   sum(l.amount) FILTER (WHERE h.obligations_missed_3m > 0) AS in_arrears, sum(l.amount) AS total,
                   sum(l.amount * h.trade_in_slope_12m ORDER BY l.cpty, l.amount)
                       FILTER (WHERE h.trade_in_slope_12m IS NOT NULL) AS slope_sum,
                   sum(l.amount) FILTER (WHERE h.trade_in_slope_12m IS NOT NULL) AS slope_weight
            FROM (SELECT firm_id, cpty, amount FROM {legs} WHERE dir = 'in' AND purpose = 'trade' AND k < 12) l
            JOIN _cpty_health h ON l.cpty = h.firm_id
            GROUP BY l.firm_id ORDER BY l.firm_id""").set_index("firm_id")
    eng.unregister("_cpty_health")
    res = _named(res, party)
    return pd.DataFrame({"payer_arrears_share_12m": res["in_arrears"].fillna(0.0) / res["total"],
                         "payer_trade_slope_12m": res["slope_sum"] / res["slope_weight"]}, index=res.index)


def _fan_bursts(eng, T: str, days: int, legs: str = "legs") -> pd.DataFrame:
    """Distinct trade payers (payees) in the busiest window of ``days`` days of the last 12
    months (windows counted back from T). A ratio to the firm's average window was tried
    and dropped: an account used once, for one burst, has a ratio of 1."""
    return eng.df(f"""
        WITH w AS (SELECT firm_id, dir, (date_diff('day', booked_on, DATE '{T}') - 1) // {int(days)} AS win,
                          count(DISTINCT cpty) AS n
                   FROM {legs} WHERE k < 12 AND purpose = 'trade' GROUP BY firm_id, dir, win)
        SELECT firm_id, coalesce(max(n) FILTER (WHERE dir = 'in'), 0)::DOUBLE AS fan_in_burst_12m,
               coalesce(max(n) FILTER (WHERE dir = 'out'), 0)::DOUBLE AS fan_out_burst_12m
        FROM w GROUP BY firm_id
    """).set_index("firm_id")


def _payer_concentration(eng, legs: str = "legs") -> pd.DataFrame:
    """HHI and top share of trade receipts by payer, and the share of recent receipts from
    new payers. The HHI adds the squared shares in sorted order: a plain ``sum`` of
    doubles would depend on how threads split a firm's payers (see scf_engine.duck)."""
    return eng.df(f"""
        WITH s AS (SELECT firm_id, cpty, sum(amount) AS amt FROM {legs}
                   WHERE dir = 'in' AND purpose = 'trade' AND k < 12 GROUP BY firm_id, cpty),
        sh AS (SELECT firm_id, amt / sum(amt) OVER (PARTITION BY firm_id) AS share FROM s),
        recent AS (SELECT firm_id, cpty, sum(amount) AS amt FROM {legs}
                   WHERE dir = 'in' AND purpose = 'trade' AND k < 3 GROUP BY firm_id, cpty),
        before AS (SELECT DISTINCT firm_id, cpty FROM {legs} WHERE dir = 'in' AND purpose = 'trade' AND k >= 3 AND k < 12),
        churn AS (SELECT r.firm_id, sum(r.amt) FILTER (WHERE b.cpty IS NULL) / sum(r.amt) AS payer_churn_3m
                  FROM recent r LEFT JOIN before b USING (firm_id, cpty) GROUP BY r.firm_id)
        SELECT firm_id, list_sum(list_sort(list(share * share))) AS payer_hhi_12m, max(share) AS top_payer_share_12m,
               any_value(c.payer_churn_3m) AS payer_churn_3m
        FROM sh LEFT JOIN churn c USING (firm_id) GROUP BY firm_id
    """).set_index("firm_id").assign(payer_churn_3m=lambda d: d["payer_churn_3m"].fillna(0.0))


def _derived(eng, out: pd.DataFrame, cat: Catalogue) -> pd.DataFrame:
    specs = cat.of_kind("derived")
    if not specs:
        return out
    eng.register("_feat", out.reset_index())
    query = "SELECT * FROM _feat"
    for s in specs:  # one layer per feature: later ones may use earlier ones
        query = f"SELECT *, ({s.expr}) AS {s.name} FROM ({query})"
    # only the new columns come back: the whole frame through DuckDB and Arrow (~90
    # columns) was most of this function's time; the others are ``out``'s own
    names = ", ".join(s.name for s in specs)
    res = eng.df(f"SELECT firm_id, {names} FROM ({query})").set_index("firm_id").reindex(out.index)
    eng.unregister("_feat")
    return beside(out, [res])


def industry_group(firms: pd.DataFrame) -> pd.Series:
    """A firm's industry group for ranking: its GB/T 4754 division, or its section letter
    where the division has fewer than MIN_INDUSTRY_GROUP firms."""
    div = firms.set_index("firm_id")["industry"]
    size = div.map(div.value_counts())
    return div.where(size >= MIN_INDUSTRY_GROUP, div.str[0])


def _ranks(out: pd.DataFrame, firms: pd.DataFrame, cat: Catalogue) -> pd.DataFrame:
    specs = cat.of_kind("rank")
    if not specs:
        return out
    scored = firms[~firms["is_core"] & ~firms["defaulted"]]
    group = industry_group(scored).reindex(out.index)
    for s in specs:
        vals = out[s.of].where(group.notna())
        out[s.name] = vals.groupby(group).rank(pct=True, method="average")
    return out


__all__ = ["flow_features", "FlowPass", "load_catalogue", "Catalogue", "industry_group"]
