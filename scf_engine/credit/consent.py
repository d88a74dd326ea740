"""Data-use authorisation (授权): is a firm's consent valid on the scoring date?

Flow data from the fund-flow sharing platform and other data touching trade secrets may
be queried and used only with the firm's authorisation (domain notes, Jiangyin data
rules). A bank that keeps its authorisations may hand the engine an optional
``consents.csv``:

=============  =================================================================
``firm_id``    the firm that signed
``granted_on`` first day the authorisation is valid (``YYYY-MM-DD``)
``expires_on`` last day it is valid (``YYYY-MM-DD``); empty means open-ended
=============  =================================================================

A firm may have several rows (renewals); the best one counts, in the order ``ok`` >
``not_yet_valid`` (a renewal signed, starting later) > ``expired`` > ``missing``. Extra
columns are ignored (the file is read by :func:`scf_engine.ingest.requests.read_consents`). A file the engine cannot trust (missing column, a date that is not
a date, an expiry before the grant) stops the run with a one-line
:class:`~scf_engine.errors.DatasetError`, never a silent "no consent" that would
send every firm to review.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

STATUSES = ("ok", "missing", "expired", "not_yet_valid")
_RANK = {"ok": 3, "not_yet_valid": 2, "expired": 1, "missing": 0}


def consent_status(firm_ids: Iterable[str], consents: pd.DataFrame | None, as_of) -> pd.Series:
    """Per firm (Series indexed by firm_id, in the order given): ``ok`` when an
    authorisation covers ``as_of`` (``granted_on <= as_of <= expires_on``), else
    ``not_yet_valid`` / ``expired`` / ``missing``. ``consents=None`` (no file) makes
    every firm ``missing``; the limit policy decides what that means."""
    return consent_lookup(firm_ids, consent_table(consents, as_of))


def consent_lookup(firm_ids: Iterable[str], table: pd.Series | None) -> pd.Series:
    """:func:`consent_status` from a :func:`consent_table` computed beforehand."""
    ids = pd.Index([str(f) for f in firm_ids], name="firm_id")
    if table is None:
        return pd.Series("missing", index=ids, name="consent_status", dtype=object)
    by_rank = {v: k for k, v in _RANK.items()}
    out = table.reindex(ids).fillna(_RANK["missing"]).astype(int).map(by_rank)
    out.index.name = "firm_id"
    return out.rename("consent_status").astype(object)


def consent_table(consents: pd.DataFrame | None, as_of) -> pd.Series | None:
    """The best authorisation rank of every firm in ``consents`` at ``as_of`` (by firm_id;
    None without consents): the whole-file part of :func:`consent_status`, which a
    service computes once per snapshot."""
    if consents is None or consents.empty:
        return None
    t = pd.Timestamp(as_of).normalize()
    c = consents
    granted = pd.to_datetime(c["granted_on"])
    expires = pd.to_datetime(c["expires_on"])
    rank = np.where(granted > t, _RANK["not_yet_valid"],
                    np.where(expires.notna() & (expires < t), _RANK["expired"], _RANK["ok"]))
    rank = pd.Series(rank.astype(np.int64), index=c["firm_id"].astype(str).to_numpy())
    return rank.groupby(level=0).max()


def consent_ok(status: pd.Series) -> pd.Series:
    """The ``consent_ok`` column the limit policy reads: True only for ``ok``."""
    return (status == "ok").rename("consent_ok")
