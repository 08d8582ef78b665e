"""Operational endpoints: liveness, readiness, metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.access import key_matches
from app.api.auth import presented_key
from app.api.deps import FilesDep, files_of
from app.api.schemas import Health
from app.errors import Unauthorized
from app.server import draining

router = APIRouter(tags=["operations"])
READINESS_TIMEOUT = 2.0
"""Seconds each backend has to answer a readiness check."""


class BackendStatus(BaseModel):
    ok: bool
    latency_ms: float
    breaker: Literal["closed", "open", "half-open"] = Field(
        description="open: the backend kept failing and requests to it are refused for a while"
    )
    error: str | None = None


class Readiness(BaseModel):
    status: str
    backends: dict[str, BackendStatus]


@router.get("/healthz", operation_id="healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up and serving."""
    return Health()


@router.get(
    "/readyz",
    operation_id="readyz",
    response_model=Readiness,
    responses={
        503: {"model": Readiness, "description": "A backend is down, or the process is draining"}
    },
)
async def readyz(files: FilesDep) -> JSONResponse:
    """Every configured backend answers (checked now, each within 2 s), and the process is not
    draining before a shutdown (``SHUTDOWN_DRAIN_SECONDS``)."""
    if draining.is_set():
        return JSONResponse({"status": "draining", "backends": {}}, status_code=503)
    results = await files.readiness(READINESS_TIMEOUT)
    backends = {
        name: BackendStatus(
            ok=health.ok,
            latency_ms=round(health.latency_ms, 1),
            breaker=health.breaker,
            error=health.problem,
        )
        for name, health in results.items()
    }
    ready = all(status.ok for status in backends.values())
    body = Readiness(status="ok" if ready else "unavailable", backends=backends)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503)


@router.get("/metrics", operation_id="metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text format), summed over every worker; METRICS_API_KEY guards it."""
    required: str | None = request.state.metrics_key
    if required is not None and not key_matches(presented_key(request.headers), required):
        raise Unauthorized("/metrics needs METRICS_API_KEY.")
    metrics = request.app.state.metrics
    for name, target in files_of(request).routes.targets.items():
        metrics.breaker_open.labels(name).set(1 if target.breaker.state == "open" else 0)
        metrics.breaker_rejected.labels(name).set(target.breaker.rejected)
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
