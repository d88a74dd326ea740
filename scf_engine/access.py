"""A record of every access to firm data (完整记录数据访问、操作).

The data rules banks work under say data touching trade secrets is used only with the
firm's authorisation, and that systems keep logs that fully record every data access and
operation (domain notes, Jiangyin data rules). Every command that reads firm data
(validate, import, train, compare, score, explain; later monitor and the service)
appends one entry to the hash-chained audit log (:mod:`scf_engine.audit`) through
:func:`record`:

* ``actor``: ``--actor``, else ``$SCF_ACTOR``, else the OS user;
* ``command`` and ``purpose`` (why the data was read);
* ``firms``: how many firms' data the command read and the sha256 of their sorted ids
  (``firms_count``, ``firms_sha256``); commands about named firms (score, explain) also
  list the ids, so ``scf audit show --firm`` finds them directly;
* ``inputs``: the sha256 of each input file.

:func:`show` answers compliance's two questions, "who read this firm's data, when and
why" and "what did this person read": a person is also the holder of an API key, whose
reads through ``scf serve`` sit inside the service's entries (appended under the
operator who runs it), so those are listed too, marked as coming through the service. A whole-dataset read (validate, train) records
only the count and hash of the ids (a million ids per entry would swamp the log); given
the dataset, :func:`show` proves membership by recomputing that hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from scf_engine import audit
from scf_engine.errors import AuditError

DEFAULT_LOG = Path("audit/audit.jsonl")
SHOW_COLUMNS = ["seq", "timestamp", "actor", "via", "action", "purpose", "firms_count", "named", "match"]


def actor_name(actor: str | None = None) -> str:
    """Who is acting: the ``--actor`` given, else ``$SCF_ACTOR``, else the OS user."""
    if actor and actor.strip():
        return actor.strip()
    env = os.environ.get("SCF_ACTOR", "").strip()
    return env or audit.os_user()


def log_path(path: str | Path | None = None) -> Path:
    """The audit log: the path given, else ``$SCF_AUDIT_LOG``, else ``audit/audit.jsonl``."""
    return Path(path or os.environ.get("SCF_AUDIT_LOG") or DEFAULT_LOG)


def firms_digest(firm_ids: Iterable[str]) -> dict:
    """``{"firms_count", "firms_sha256"}`` of a set of firm ids (sorted, distinct)."""
    ids = sorted({str(f) for f in firm_ids})
    return {"firms_count": len(ids), "firms_sha256": hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()}


def record(log: str | Path | None, actor: str | None, command: str, purpose: str, firm_ids: Iterable[str], *,
           inputs: dict | None = None, name_firms: bool = False, precondition=None, **details) -> dict:
    """Append the access entry of ``command`` and return it (``precondition``: see
    :func:`scf_engine.audit.append`)."""
    ids = [str(f) for f in firm_ids]
    body = {"command": command, "purpose": purpose, **firms_digest(ids), "inputs": dict(inputs or {}), **details}
    if name_firms:
        body["firms"] = ids
    return audit.append(log_path(log), actor_name(actor), command, body, precondition=precondition)


def entries(log: str | Path | None = None) -> list[dict]:
    """Every entry of the log, oldest first (the chain is checked by ``scf audit verify``)."""
    path = log_path(log)
    if not path.is_file():
        raise AuditError(f"{path}: no such audit log")
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise AuditError(f"{path}: line {n} is not JSON; run scf audit verify") from None
    return out


def _match(details: dict, firm: str, dataset_digests: set[str]) -> str:
    """How an entry touched ``firm``: ``named`` (its id is listed), ``dataset`` (it read a
    whole set of firms whose hash matches a dataset that holds the firm), or ""."""
    if firm in (details.get("firms") or []):
        return "named"
    if details.get("firms_sha256") in dataset_digests:
        return "dataset"
    return ""


def _served(entry: dict, firm: str | None, actor: str | None) -> list[dict] | None:
    """The requests of a ``scf serve`` entry that ``show`` lists: those that read ``firm``
    (any when None) and were made by ``actor`` (any when None). A request is made by the
    holder of the API key it came with (the service records the key's name), and by the
    operator who ran the service (the entry's actor), who answers for all of them. None
    when the entry is not the service's (it groups no requests)."""
    reqs = (entry.get("details") or {}).get("requests")
    if not isinstance(reqs, list):
        return None
    by_operator = actor is None or entry.get("actor") == actor
    return [r for r in reqs if isinstance(r, dict) and (firm is None or firm in (r.get("firms") or []))
            and (by_operator or r.get("key") == actor)]


def _served_row(reqs: list[dict]) -> dict:
    """What the service's requests ``reqs`` read, and why: each as ``METHOD PATH (key
    NAME)`` (the endpoint is the purpose, the key's holder the caller the service acted
    for), the key holders in ``via``, the firms they read counted."""
    said, keys, firms = [], [], set()
    for r in reqs:
        what = f"{r.get('method', '')} {r.get('path', '')} (key {r.get('key') or '-'})".strip()
        if what not in said:
            said.append(what)
        if (r.get("key") or "-") not in keys:
            keys.append(r.get("key") or "-")
        firms.update(r.get("firms") or [])
    return {"via": f"service, key {', '.join(keys)}", "purpose": "; ".join(said), "firms_count": len(firms),
            "named": len(firms)}


def show(log: str | Path | None = None, *, firm: str | None = None, actor: str | None = None,
         dataset_firms: Iterable[str] | None = None) -> pd.DataFrame:
    """Entries that read ``firm``'s data and/or were made by ``actor``, oldest first.

    ``dataset_firms``: the firm ids of the dataset a whole-dataset read used (the firms
    of ``scf audit show --data DIR``); an entry whose firm-set hash equals theirs read the
    firm when the firm is among them. A ``scf serve`` entry groups HTTP requests: it is
    listed when one of its requests matches (``actor`` is the key's holder, or the
    operator who ran the service), with ``via`` naming the keys and the purpose, counts
    and firms of the matching requests only; ``via`` is empty for a command run directly."""
    digests = set()
    if dataset_firms is not None:
        ids = [str(f) for f in dataset_firms]
        if firm is None or firm in set(ids):
            digests.add(firms_digest(ids)["firms_sha256"])
    rows = []
    for e in entries(log):
        d = e.get("details") or {}
        base = {"seq": e.get("seq"), "timestamp": e.get("timestamp"), "actor": e.get("actor"), "action": e.get("action")}
        served = _served(e, firm, actor)
        if served is not None:
            if served:
                rows.append({**base, **_served_row(served), "match": "named" if firm else ""})
            continue
        how = _match(d, firm, digests) if firm else ""
        if (firm and not how) or (actor and e.get("actor") != actor):
            continue
        count = d.get("firms_count", len(d["firms"]) if isinstance(d.get("firms"), list) else None)
        rows.append({**base, "via": "", "purpose": d.get("purpose") or "", "firms_count": count,
                     "named": len(d.get("firms") or []), "match": how})
    return pd.DataFrame(rows, columns=SHOW_COLUMNS)


__all__ = ["actor_name", "log_path", "firms_digest", "record", "entries", "show", "DEFAULT_LOG"]
