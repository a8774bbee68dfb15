"""The HTTP API: health, readiness, metrics, studies, jobs (with retry), STOW-RS and
the status page.

`/healthz` answers anyone (is the process up); everything else needs a bearer token
from `api.tokens` with the right scope (on the status page, the token signed in
with, kept in a cookie): read for status, jobs, studies and metrics; store for
STOW-RS; admin to retry jobs. Errors are JSON with a `detail` that says
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
from urllib.parse import parse_qs

import structlog
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from node import __version__
from node.api.auth import Caller, identify
from node.api.metrics import CONTENT_TYPE, NodeCollector, render
from node.api.status_page import (
    DestinationView,
    JobView,
    key_image_thumbnail,
    render_login,
    render_status,
)
from node.audit import audit
from node.config import NodeConfig
from node.domain import Job, JobState
from node.store import DeliveryQueue, InstanceIndex, JobQueue
from node.store.files import OUTPUTS_DIR
from node.store.retry import retry_job

log = structlog.get_logger("radnode.api")

DICOM_JSON = "application/dicom+json"
SESSION_COOKIE = "radnode_token"
RECENT_JOBS = 20
THUMBNAIL_CACHE = 500

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
    # destination name -> (ok, message, when) of its last connectivity check
    destination_checks: Callable[[], dict[str, tuple[bool, str, float]]] = dict


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

    @app.exception_handler(StarletteHTTPException)
    async def precise_errors(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = (
                f"no such path {request.url.path!r}; the node serves /healthz, /readyz, "
                "/metrics, /status, /api/v1/studies, /api/v1/jobs[/{id}[/retry]] and "
                "/dicomweb/{source}/studies"
            )
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

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

    thumbnails: dict[str, str | None] = {}

    def thumbnail(job: Job) -> str | None:
        if job.result_relpath is None:  # no result (yet, or any more)
            return None
        if job.id in thumbnails:
            return thumbnails.get(job.id)  # (another request may clear the cache meanwhile)
        if len(thumbnails) > THUMBNAIL_CACHE:
            thumbnails.clear()
        image = key_image_thumbnail(ctx.root / job.result_relpath / OUTPUTS_DIR)
        thumbnails[job.id] = image
        return image

    def page_caller(request: Request) -> Caller | None:
        found = identify(request.headers.get("authorization"), tokens)
        if found is None:
            cookie = request.cookies.get(SESSION_COOKIE)
            found = identify(f"Bearer {cookie}", tokens) if cookie else None
        request.state.caller = found
        return found

    def status_page(who: Caller, message: str | None = None) -> HTMLResponse:
        queue, deliveries = JobQueue(ctx.index), DeliveryQueue(ctx.index)
        counts = ctx.index.counts("jobs.state")
        per_destination: dict[str, dict[str, int]] = {}
        for (name, state), n in deliveries.counts().items():
            per_destination.setdefault(name, {})[state] = n
        checks = ctx.destination_checks()
        views = [
            DestinationView(
                name=d.name,
                where=d.describe(),
                check_ok=checks[d.name][0] if d.name in checks else None,
                check_message=checks[d.name][1] if d.name in checks else "",
                checked_at=checks[d.name][2] if d.name in checks else None,
                deliveries=per_destination.get(d.name, {}),
            )
            for d in ctx.config.destinations
        ]

        def view(job: Job) -> JobView:
            return JobView(job, deliveries.for_job(job.id), queue.timeline(job.id), thumbnail(job))

        html = render_status(
            node_title=f"{ctx.config.node.ae_title} on port {ctx.config.node.port}",
            version=__version__,
            now=time.time(),
            counts={state.value: counts.get(state.value, 0) for state in JobState},
            destinations=views,
            failed=[view(j) for j in queue.recent(JobState.FAILED, 50)],
            recent=[view(j) for j in queue.recent(None, RECENT_JOBS)],
            can_retry=who.may("admin"),
            message=message,
        )
        return HTMLResponse(html)

    def with_session(response: HTMLResponse, token: str) -> HTMLResponse:
        response.set_cookie(
            SESSION_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=ctx.config.api.tls is not None,
            path="/status",
        )
        return response

    @app.get("/status", response_class=HTMLResponse)
    def status(request: Request) -> HTMLResponse:
        who = page_caller(request)
        if who is None:
            return HTMLResponse(render_login(), status_code=401)
        if not who.may("read"):
            return HTMLResponse(render_login(f"token {who.name!r} lacks the read scope"), 403)
        return status_page(who)

    @app.post("/status/login", response_class=HTMLResponse)
    async def login(request: Request) -> HTMLResponse:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        who = identify(f"Bearer {token}", tokens) if token else None
        request.state.caller = who
        if who is None or not who.may("read"):
            return HTMLResponse(render_login("this token is not valid here"), status_code=401)
        return with_session(status_page(who), token)

    @app.post("/status/jobs/{job_id}/retry", response_class=HTMLResponse)
    def retry_from_page(request: Request, job_id: str) -> HTMLResponse:
        who = page_caller(request)
        if who is None:
            return HTMLResponse(render_login(), status_code=401)
        if not who.may("admin"):
            return HTMLResponse(render_login(f"token {who.name!r} may not retry jobs"), 403)
        outcome = retry_job(ctx.index, job_id, time.time())
        name = outcome.job.id[:8] if outcome.job else job_id
        verb = "" if outcome.done else "not retried: "
        return status_page(who, f"job {name}: {verb}{outcome.message}")

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
    def jobs(
        _: Reader, state: str | None = None, limit: int = 100, timelines: bool = False
    ) -> list[dict[str, Any]]:
        wanted = None
        if state is not None:
            try:
                wanted = JobState(state)
            except ValueError:
                known = ", ".join(s.value for s in JobState)
                raise HTTPException(
                    400, f"state {state!r} is unknown; use one of {known}"
                ) from None
        queue = JobQueue(ctx.index)
        found = queue.recent(wanted, min(max(limit, 1), 1000))
        if not timelines:
            return [_job_json(job) for job in found]
        return [{**_job_json(job), "timeline": queue.timeline(job.id)} for job in found]

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
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise HTTPException(
                    413, f"the body exceeds api.max_body_mb ({max_body // 2**20} MiB)"
                )
            chunks.append(chunk)
        content_type = request.headers.get("content-type", "")
        status, payload = await run_in_threadpool(
            ctx.receive_stow, source, content_type, b"".join(chunks), study, peer
        )  # one copy of the body in memory, not two
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
