"""Operational endpoints: liveness, readiness, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.access import key_matches
from app.api.auth import presented_key
from app.api.deps import FilesDep
from app.api.schemas import Health
from app.errors import Unauthorized

router = APIRouter(tags=["operations"])
READINESS_TIMEOUT = 2.0
"""Seconds each backend has to answer a readiness check."""


class BackendStatus(BaseModel):
    ok: bool
    latency_ms: float
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
    responses={503: {"model": Readiness, "description": "A backend is down"}},
)
async def readyz(files: FilesDep) -> JSONResponse:
    """Every configured backend answers (checked now, each within 2 s)."""
    results = await files.readiness(READINESS_TIMEOUT)
    backends = {
        name: BackendStatus(ok=ok, latency_ms=round(ms, 1), error=problem)
        for name, (ok, ms, problem) in results.items()
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
    return Response(
        request.app.state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
