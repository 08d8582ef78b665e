"""Operational endpoints."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", operation_id="healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up and serving."""
    return Health()
