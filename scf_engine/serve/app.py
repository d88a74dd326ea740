"""The HTTP face of ``scf serve`` (FastAPI on uvicorn).

FastAPI because the request bodies are pydantic models (a ``422`` that names the field
comes for free and the OpenAPI document at ``/docs`` is generated from the same models);
uvicorn because it is the ASGI server FastAPI is built and tested with.

Endpoints: ``POST /v1/decisions``, ``GET /v1/firms/{id}/reasons``, ``GET
/v1/firms/{id}/memo`` (HTML), ``POST /v1/reload``, ``GET /healthz``, ``GET /readyz``,
``/docs`` and ``/openapi.json``. Keys in ``X-API-Key`` (401 without a valid one), a
permission per role (403), bodies over ``max_body_bytes`` refused (413) before parsing.
Every request but the probes is recorded in the audit log before its answer leaves
(:mod:`scf_engine.serve.audit_writer`); an error inside a handler is a 500 for that
request only, and the service keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import datetime, timezone

import anyio
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from scf_engine.errors import ScfError
from scf_engine.serve.audit_writer import AuditWriter
from scf_engine.serve.keys import ApiKey, key_sha256
from scf_engine.serve.state import Service, request_key

log = logging.getLogger("scf.serve")


class FirmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    firm_id: str = Field(min_length=1, max_length=64, description="The firm's unified social credit code.")
    requested_amount: float | None = Field(None, ge=0, allow_inf_nan=False, description="CNY; optional.")


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    firms: list[FirmRequest] = Field(min_length=1, description="Decided together, as one batch.csv would be.")


class DecisionResponse(BaseModel):
    as_of: str
    decisions: list[dict] = Field(description="One limits.csv row per requested firm, in request order.")


# --------------------------------------------------------------------------- middleware


class BodyTooLarge(Exception):
    pass


class AuditAndLimit:
    """Pure ASGI middleware: refuses bodies over the limit (413) and holds each response
    until the request's audit record is on disk (503 when the log cannot take it)."""

    def __init__(self, app, *, writer: AuditWriter, max_body: int, skip: set):
        self.app, self.writer, self.max_body, self.skip = app, writer, max_body, skip

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.skip:
            return await self.app(scope, receive, send)
        record = {"request_id": uuid.uuid4().hex[:16],
                  "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                  "method": scope["method"], "path": scope["path"], "key": None, "role": None}
        scope["scf_audit"] = record
        held: list = []
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await self._refuse(record, send, 413, f"request body over {self.max_body} bytes")
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise BodyTooLarge
            return message

        async def holding_send(message):
            held.append(message)

        try:
            await self.app(scope, counted_receive, holding_send)
        except BodyTooLarge:
            return await self._refuse(record, send, 413, f"request body over {self.max_body} bytes")
        except Exception:
            log.exception("request %s %s failed", scope["method"], scope["path"])
            return await self._refuse(record, send, 500, "internal error (recorded; the service keeps serving)")
        status = next((m["status"] for m in held if m["type"] == "http.response.start"), 500)
        if not await self._record(record, status):
            return await self._plain(send, 503, "the audit log cannot be appended to: no answer without a record")
        for message in held:
            await send(message)

    async def _record(self, record: dict, status: int) -> bool:
        record["status"] = status
        try:
            await asyncio.wrap_future(self.writer.submit(record))
            return True
        except Exception:
            log.exception("audit append failed")
            return False

    async def _refuse(self, record, send, status: int, detail: str):
        ok = await self._record(record, status)
        await self._plain(send, status if ok else 503, detail if ok else "the audit log cannot be appended to")

    @staticmethod
    async def _plain(send, status: int, detail: str):
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------ the app


def _access(keys: dict[str, ApiKey], roles: dict[str, set]):
    """``allowed(permission)``: a dependency that answers 401 without a valid key and 403
    when the key's role lacks the permission, and names the caller in the audit record."""

    # async: a plain ``def`` dependency is run by FastAPI in its thread pool, two thread
    # hops per request for a dictionary look-up
    async def caller(request: Request) -> ApiKey:
        presented = request.headers.get("x-api-key")
        found = keys.get(key_sha256(presented)) if presented else None
        if found is None:
            raise HTTPException(401, "a valid API key is required in the X-API-Key header",
                                headers={"WWW-Authenticate": "X-API-Key"})
        rec = request.scope.get("scf_audit")
        if rec is not None:
            rec["key"], rec["role"] = found.name, found.role
        return found

    def allowed(permission: str):
        async def check(key: ApiKey = Depends(caller)) -> ApiKey:
            if permission not in roles.get(key.role, ()):
                raise HTTPException(403, f"key {key.name!r} (role {key.role!r}) lacks the {permission!r} permission")
            return key
        return check

    return allowed


def _note(request: Request, state, firms) -> None:
    """Which firms the request read, at which as-of, with which models and which
    whitelist (its sha256 and list: the list is re-read at each reload) (audit record)."""
    rec = request.scope.get("scf_audit")
    if rec is not None:
        rec.update(firms=list(firms), as_of=state.as_of, model_versions=state.versions)
        if state.whitelist is not None:
            rec["whitelist"] = state.whitelist


def create_app(service: Service, keys: dict[str, ApiKey], writer: AuditWriter) -> FastAPI:
    policy = service.policy
    allowed = _access(keys, {r: set(p) for r, p in policy["roles"].items()})
    max_firms = int(policy["max_firms_per_request"])
    app = FastAPI(title="scf-engine", version="1", summary="Credit decisions for supply-chain finance, as `scf score` gives them.")

    @app.exception_handler(ScfError)
    async def scf_error(request: Request, exc: ScfError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/healthz", include_in_schema=True)
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        st = service.state
        ready = st is not None and st.loaded.models and st.loaded.data is not None
        body = {"ready": bool(ready), "as_of": st.as_of, "model_versions": st.versions,
                "last_reload_error": service.last_reload_error}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.post("/v1/decisions", response_model=DecisionResponse)
    async def decisions(body: DecisionRequest, request: Request, key: ApiKey = Depends(allowed("decide"))):
        if len(body.firms) > max_firms:
            raise HTTPException(422, [{"loc": ["body", "firms"], "type": "too_long",
                                       "msg": f"at most {max_firms} firms per request (a larger batch: scf score)"}])
        firms = [(f.firm_id, f.requested_amount) for f in body.firms]
        state = service.state
        decided = state.answers.get(request_key(firms))  # a cached answer: no thread hop
        if decided is None:
            quick = service.quick(firms)  # precomputed firms: the request step only, in the loop
            if quick is not None:
                state, decided = quick
            else:
                state, decided, _ = await anyio.to_thread.run_sync(service.decisions, firms)
        _note(request, state, [f for f, _ in firms])
        payload = b'{"as_of":"' + state.as_of.encode() + b'","decisions":' + decided + b"}"
        return Response(payload, media_type="application/json")

    @app.get("/v1/firms/{firm_id}/reasons")
    async def reasons(firm_id: str, request: Request, key: ApiKey = Depends(allowed("reasons"))):
        state, body = await anyio.to_thread.run_sync(service.reasons, firm_id)
        _note(request, state, [firm_id])
        return Response(body, media_type="application/json")

    @app.get("/v1/firms/{firm_id}/memo", response_class=HTMLResponse)
    async def memo(firm_id: str, request: Request, key: ApiKey = Depends(allowed("memo"))):
        state, html, why = await anyio.to_thread.run_sync(service.memo, firm_id)
        _note(request, state, [firm_id])
        if html is None:
            raise HTTPException(404, f"no memo for {firm_id}: {why}")
        return HTMLResponse(html)

    @app.post("/v1/reload")
    async def reload(request: Request, key: ApiKey = Depends(allowed("reload"))):
        swapped = await anyio.to_thread.run_sync(lambda: service.reload())
        st = service.state
        return {"reloaded": swapped, "as_of": st.as_of, "model_versions": st.versions}

    app.add_middleware(AuditAndLimit, writer=writer, max_body=int(policy["max_body_bytes"]),
                       skip=set(policy.get("audit_skip_paths", [])))
    return app


__all__ = ["create_app", "FirmRequest", "DecisionRequest", "AuditAndLimit"]
