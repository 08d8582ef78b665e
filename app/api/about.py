"""``GET /access``: what the presented key may do here, and where: the question a client (the
web console among them) asks before it offers an action, so that it offers only what the API would
allow (docs/api.md, "What a key may do")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app.access import OPEN_WARNING, Principal, Scope
from app.api.auth import PrincipalDep
from app.api.deps import FilesDep
from app.api.errors import declare
from app.storage.ids import BackendName
from app.storage.service import FileService

router = APIRouter(tags=["operations"])


@dataclass(frozen=True, slots=True)
class Deployment:
    """What the settings say that ``/access`` reports (built once by the lifespan)."""

    storage_mode: str
    links: bool
    link_max_expires: int
    max_file_size: int | None
    tus: bool


class KeyView(BaseModel):
    name: str = Field(description="The key's name (anonymous when no keys are configured).")
    scopes: list[Scope]
    buckets: list[str] | None = Field(description="null: every allowed bucket.")
    folders: list[str] | None = Field(description="null: every folder.")


class Root(BaseModel):
    prefix: str = Field(description="A prefix this key may list, in file-id form.")
    backend: BackendName
    bucket: str


class Access(BaseModel):
    key: KeyView
    open: bool = Field(description="No API keys are configured: anyone may do anything.")
    warning: str | None = Field(description="The warning the log shows when the service is open.")
    storage_mode: str
    upload_backend: BackendName
    backends: list[BackendName] = Field(description="The backends this mode serves.")
    roots: list[Root] = Field(description="Where this key may list (FastDFS cannot list).")
    links: bool = Field(description="Signed links are configured (SIGNING_SECRET).")
    link_max_expires: int = Field(description="The longest a signed link may live, in seconds.")
    max_file_size: int | None = Field(description="MAX_FILE_SIZE in bytes; null: no limit.")
    tus: bool = Field(description="Resumable uploads (tus) are served at /files/tus.")


def _roots(files: FileService, principal: Principal) -> list[Root]:
    roots: list[Root] = []
    for backend, target in files.routes.targets.items():
        if backend == "fastdfs" or not target.readable:
            continue
        buckets = sorted(target.buckets) or [target.default_bucket]
        if target.default_bucket in buckets:  # the default first
            buckets.remove(target.default_bucket)
            buckets.insert(0, target.default_bucket)
        for bucket in buckets:
            if principal.buckets is not None and bucket not in principal.buckets:
                continue
            for folder in principal.folders or ("",):
                prefix = f"{backend}:{bucket}/" + (f"{folder}/" if folder else "")
                roots.append(Root(prefix=prefix, backend=backend, bucket=bucket))
    return roots


async def _deployment(request: Request) -> Deployment:
    deployment: Deployment = request.state.deployment
    return deployment


@router.get("/access", operation_id="get_access", response_model=Access, responses=declare())
async def get_access(
    principal: PrincipalDep,
    files: FilesDep,
    deployment: Annotated[Deployment, Depends(_deployment)],
    request: Request,
) -> Access:
    """What the presented key may do (scopes, buckets, folders), where it may list, and what this
    deployment offers (signed links, resumable uploads, the size limit)."""
    is_open = request.state.keyring.open
    routes = files.routes
    return Access(
        key=KeyView(
            name=principal.name,
            scopes=sorted(principal.scopes),
            buckets=None if principal.buckets is None else sorted(principal.buckets),
            folders=None if principal.folders is None else list(principal.folders),
        ),
        open=is_open,
        warning=OPEN_WARNING if is_open else None,
        storage_mode=deployment.storage_mode,
        upload_backend=routes.upload_to,
        backends=list(routes.targets),
        roots=_roots(files, principal),
        links=deployment.links,
        link_max_expires=deployment.link_max_expires,
        max_file_size=deployment.max_file_size,
        tus=deployment.tus,
    )
