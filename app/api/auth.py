"""How a request says who it is: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

Declared through FastAPI's security classes, so the OpenAPI document names both schemes and
generated clients send the key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.access import Keyring, LinkSigner, Principal

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key as a bearer token (when the service has keys configured).",
)
_api_key = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="apiKey",
    description="An API key (when the service has keys configured).",
)


async def presented_key(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key)],
) -> str | None:
    """The key the request carries, if any (X-API-Key wins when both are sent)."""
    return api_key or (bearer.credentials if bearer else None)


PresentedKeyDep = Annotated[str | None, Depends(presented_key)]


async def get_keyring(request: Request) -> Keyring:
    keyring: Keyring = request.state.keyring
    return keyring


KeyringDep = Annotated[Keyring, Depends(get_keyring)]


async def get_principal(keyring: KeyringDep, presented: PresentedKeyDep) -> Principal:
    """The caller; 401 before anything else happens if the key is missing or unknown."""
    return keyring.authenticate(presented)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_signer(request: Request) -> LinkSigner:
    signer: LinkSigner = request.state.links
    return signer


SignerDep = Annotated[LinkSigner, Depends(get_signer)]
