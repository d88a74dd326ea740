"""``scf serve``: credit decisions over HTTP, on the decision core and the audit log.

* :mod:`.keys` - ``keys.csv`` (``name, role, key_sha256``), checked like every input;
* :mod:`.state` - the champion models and snapshot loaded by the batch pipeline's own
  loader, answers cached per loaded state, reload when the alias moves or on request;
* :mod:`.audit_writer` - every request in the hash-chained audit log, group-committed;
* :mod:`.app` - the FastAPI application;
* :func:`run` - load, then serve with uvicorn until stopped.
"""

from __future__ import annotations

from pathlib import Path

from scf_engine import access, policies
from scf_engine.ingest.quarantine import QUARANTINE, publish_beside
from scf_engine.serve.audit_writer import AuditWriter
from scf_engine.serve.keys import ApiKey, key_sha256, read_keys
from scf_engine.serve.state import Service


def build(data_dir, keys_path, *, as_of=None, consents=None, tracking_uri=None, alias="champion",
          audit_log: Path | str | None = None, actor=None, cache_entries: int | None = None, progress=None,
          out: Path | str | None = None, whitelist: Path | str | None = None, whitelist_list: str | None = None):
    """Everything checked and loaded before a port is opened: ``(app, service, writer)``.
    A bad keys file, dataset, policy or registry is one :class:`~scf_engine.errors.ScfError`.
    ``out``: the folder for the dataset's quarantine report (the rows the service decides
    without): written there when rows were set aside, as every command does, and when the
    dataset turns out unusable. ``whitelist``: the programme's list (名单制), as ``scf score
    --whitelist`` takes it; a firm off it is answered as the batch would decide it;
    ``whitelist_list``: the programme picked from it (``--list``). Its sha256 and list name
    are recorded with every request answered on it."""
    from scf_engine.serve.app import create_app

    pol = policies.load("serve")
    if cache_entries is not None:
        pol = policies.Policy(pol.name, pol.path, {**pol.data, "answer_cache_entries": int(cache_entries)}, pol.sha256)
    keys = read_keys(keys_path, pol["roles"])
    report_path = Path(out) / QUARANTINE if out is not None else None
    service = Service(data_dir, serve_policy=pol, as_of=as_of, consents=consents, tracking_uri=tracking_uri, alias=alias,
                      progress=progress, audit_log=access.log_path(audit_log), report_path=report_path, whitelist=whitelist,
                      whitelist_list=whitelist_list)
    if out is not None:
        publish_beside(service.state.loaded.report, Path(out))
    # the same log and actor every other command records in ($SCF_AUDIT_LOG, $SCF_ACTOR)
    writer = AuditWriter(access.log_path(audit_log), access.actor_name(actor))
    return create_app(service, keys, writer), service, writer


def run(app, service: Service, writer: AuditWriter, *, host="127.0.0.1", port=8000, poll_seconds=None) -> None:
    """Watch the champion alias and serve until interrupted, then write the audit
    records still queued."""
    import uvicorn

    poll = service.policy["reload_poll_seconds"] if poll_seconds is None else poll_seconds
    service.watch(float(poll))
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        service.close()
        writer.close()


__all__ = ["build", "run", "Service", "AuditWriter", "ApiKey", "key_sha256", "read_keys"]
