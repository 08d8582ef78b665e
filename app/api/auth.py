"""How a request says who it is: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

The key is read straight from the headers by one dependency; the OpenAPI document declares both
schemes on every operation that takes a key (``app.api.openapi``), so generated clients send it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request

from app.access import Keyring, LinkSigner, Principal
from app.errors import Unauthorized

API_KEY_HEADER = "x-api-key"


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key the request carries, if any. Two different keys (X-API-Key and a bearer token) are
    refused: which one was meant is a guess, and one of them is wrong."""
    key = headers.get(API_KEY_HEADER) or None
    authorization = headers.get("authorization")
    if authorization is None:
        return key
    scheme, _, credentials = authorization.partition(" ")
    bearer = credentials.strip() or None if scheme.lower() == "bearer" else None
    if key is not None and bearer is not None and bearer != key:
        raise Unauthorized("Two different API keys were sent (X-API-Key and Authorization).")
    return key or bearer


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
