"""The HTTP API: health, readiness, metrics, studies, jobs (with retry) and STOW-RS.

`/healthz` answers anyone (is the process up); everything else needs a bearer token
from `api.tokens` with the right scope: read for status, jobs, studies and metrics;
store for STOW-RS; admin to retry jobs. Errors are JSON with a `detail` that says
what was wrong and what to do. No patient data leaves through this API: studies are
listed by UID, date and counts, never by name or ID.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints'
# annotations at run time, and the scoped dependencies are local to build_app.
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from node.api.auth import Caller, identify
from node.api.metrics import CONTENT_TYPE, NodeCollector, render
from node.audit import audit
from node.config import NodeConfig
from node.domain import Job, JobState
from node.store import DeliveryQueue, InstanceIndex, JobQueue
from node.store.retry import retry_job

log = structlog.get_logger("radnode.api")

DICOM_JSON = "application/dicom+json"
# A STOW-RS request: (source, content type, body, study UID or None, peer) ->
# (HTTP status, the response body as DICOM JSON, or {"detail": reason}).
StowHandler = Callable[[str, str, bytes, str | None, str], tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class ApiContext:
    """What the API reads and calls, wired by the CLI."""

    config: NodeConfig
    index: InstanceIndex
    root: Path
    receive_stow: StowHandler
    readiness: Callable[[], dict[str, str]]  # check -> problem ("" when fine)
    associations: Callable[[], int] = lambda: 0


def _job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state.value,
        "reason": job.reason,
        "model": job.model,
        "route": job.route,
        "study_uid": job.study_uid,
        "series_uid": job.series_uid,
        "generation": job.generation,
        "priority": job.priority,
        "attempts": job.attempts,
        "send_to": list(job.send_to),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }


def build_app(ctx: ApiContext) -> FastAPI:
    """The FastAPI application over the node's store."""
    app = FastAPI(
        title="Radnode",
        description="AI inference node: status, jobs, studies, metrics and STOW-RS ingest.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    collector = NodeCollector(ctx.index, ctx.root, ctx.associations)
    tokens = ctx.config.api.tokens
    max_body = ctx.config.api.max_body_mb * 2**20

    def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
        found = identify(authorization, tokens)
        request.state.caller = found  # for the audit trail
        if found is None:
            raise HTTPException(
                401,
                "a bearer token is needed (Authorization: Bearer TOKEN); ask IT for one "
                "listed under api.tokens",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return found

    def scoped(scope: str) -> Callable[[Caller], Caller]:
        def check(who: Annotated[Caller, Depends(caller)]) -> Caller:
            if not who.may(scope):
                raise HTTPException(
                    403, f"token {who.name!r} lacks the {scope!r} scope; add it under api.tokens"
                )
            return who

        return check

    Reader = Annotated[Caller, Depends(scoped("read"))]
    Admin = Annotated[Caller, Depends(scoped("admin"))]
    Sender = Annotated[Caller, Depends(scoped("store"))]

    @app.middleware("http")
    async def audit_calls(request: Request, call_next: Callable[[Request], Any]) -> Any:
        response = await call_next(request)
        if request.url.path != "/healthz":  # probes every few seconds: not security
            who = getattr(request.state, "caller", None)
            audit(
                "api_call",
                token=who.name if who is not None else None,
                method=request.method,
                path=request.url.path,  # UIDs at most; query strings are not kept
                status=response.status_code,
                peer=request.client.host if request.client else "",
            )
        return response

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(_: Reader) -> JSONResponse:
        problems = {k: v for k, v in ctx.readiness().items() if v}
        body = {"ready": not problems, "problems": problems}
        return JSONResponse(body, status_code=200 if not problems else 503)

    @app.get("/metrics")
    def metrics(_: Reader) -> Response:
        return Response(render(collector), media_type=CONTENT_TYPE)

    @app.get("/api/v1/studies")
    def studies(_: Reader, limit: int = 100) -> list[dict[str, Any]]:
        return [
            {
                "study_uid": s.study_uid,
                "state": s.state,
                "source": s.source,
                "study_date": s.study_date,
                "instances": s.instance_count,
                "first_received_at": s.first_received_at,
                "last_received_at": s.last_received_at,
                "series": [
                    {
                        "series_uid": r.series_uid,
                        "modality": r.modality,
                        "series_number": r.series_number,
                        "state": r.state,
                        "instances": r.instance_count,
                    }
                    for r in s.series
                ],
            }
            for s in ctx.index.list_studies(limit=min(max(limit, 1), 1000))
        ]

    @app.get("/api/v1/jobs")
    def jobs(_: Reader, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        wanted = None
        if state is not None:
            try:
                wanted = JobState(state)
            except ValueError:
                known = ", ".join(s.value for s in JobState)
                raise HTTPException(
                    400, f"state {state!r} is unknown; use one of {known}"
                ) from None
        found = JobQueue(ctx.index).recent(wanted, min(max(limit, 1), 1000))
        return [_job_json(job) for job in found]

    @app.get("/api/v1/jobs/{job_id}")
    def job(_: Reader, job_id: str) -> dict[str, Any]:
        queue = JobQueue(ctx.index)
        found = queue.get(job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id!r}; GET /api/v1/jobs lists them")
        deliveries = DeliveryQueue(ctx.index).for_job(found.id)
        return {
            **_job_json(found),
            "deliveries": [
                {
                    "destination": d.destination,
                    "state": d.state.value,
                    "attempts": d.attempts,
                    "confirmed": len(d.confirmed),
                    "reason": d.reason,
                    "due_at": d.due_at,
                    "delivered_at": d.delivered_at,
                }
                for d in deliveries
            ],
            "timeline": queue.timeline(found.id),
        }

    @app.post("/api/v1/jobs/{job_id}/retry")
    def retry(who: Admin, job_id: str) -> JSONResponse:
        outcome = retry_job(ctx.index, job_id, time.time())
        log.info("api_retry", token=who.name, job_id=job_id, done=outcome.done)
        if outcome.job is None:
            return JSONResponse({"detail": f"no job {job_id!r}"}, status_code=404)
        status = 200 if outcome.done else 409
        return JSONResponse(
            {"id": outcome.job.id, "retried": outcome.done, "detail": outcome.message},
            status_code=status,
        )

    async def stow(request: Request, who: Caller, source: str, study: str | None) -> Response:
        if ctx.config.source(source) is None:
            known = ", ".join(s.name for s in ctx.config.sources) or "none configured"
            raise HTTPException(
                404,
                f"{source!r} is not a configured source (known: {known}); the URL names "
                "the source: /dicomweb/{source}/studies",
            )
        peer = request.client.host if request.client else ""
        allowed = ctx.config.source(source)
        if allowed is not None and not allowed.allows_address(peer):
            log.warning("stow_refused", source=source, peer=peer, token=who.name)
            raise HTTPException(
                403, f"source {source!r} may not send from {peer}; add it to the source's hosts"
            )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            raise HTTPException(413, f"the body exceeds api.max_body_mb ({max_body // 2**20} MiB)")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_body:
                raise HTTPException(
                    413, f"the body exceeds api.max_body_mb ({max_body // 2**20} MiB)"
                )
        content_type = request.headers.get("content-type", "")
        status, payload = await run_in_threadpool(
            ctx.receive_stow, source, content_type, bytes(body), study, peer
        )
        if "detail" in payload:
            return JSONResponse(payload, status_code=status)
        return JSONResponse(payload, status_code=status, media_type=DICOM_JSON)

    @app.post("/dicomweb/{source}/studies")
    async def stow_studies(request: Request, who: Sender, source: str) -> Response:
        return await stow(request, who, source, None)

    @app.post("/dicomweb/{source}/studies/{study_uid}")
    async def stow_study(request: Request, who: Sender, source: str, study_uid: str) -> Response:
        return await stow(request, who, source, study_uid)

    return app
