"""How a request says who it is: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

The key is read straight from the headers by one dependency; the OpenAPI document declares both
schemes on every operation that takes a key (``app.api.openapi``), so generated clients send it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request

from app.access import Keyring, LinkSigner, Principal

API_KEY_HEADER = "x-api-key"


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key the request carries, if any (X-API-Key wins when both are sent)."""
    key = headers.get(API_KEY_HEADER)
    if key:
        return key
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


async def get_principal(request: Request) -> Principal:
    """The caller; 401 before anything else happens if the key is missing or unknown."""
    keyring: Keyring = request.state.keyring
    return keyring.authenticate(presented_key(request.headers))


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def keyring_of(request: Request) -> Keyring:
    keyring: Keyring = request.state.keyring
    return keyring


def signer_of(request: Request) -> LinkSigner:
    signer: LinkSigner = request.state.links
    return signer
