"""Who may do what: API keys with scopes and bucket/folder limits, and signed download links.

Keys are kept only as SHA-256 digests (a key may be configured as its digest in the first place)
and every presented key is compared with every configured digest in constant time. A signed link
is an HMAC-SHA256, under ``SIGNING_SECRET``, of the file id, the expiry and the download options.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Self
from urllib.parse import quote, urlencode

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from app.errors import Forbidden, InvalidArgument, LinkExpired, LinkInvalid, Unauthorized
from app.storage.ids import FileId
from app.storage.validation import check_folder

Scope = Literal["read", "write", "delete"]
ALL_SCOPES: frozenset[Scope] = frozenset({"read", "write", "delete"})
MIN_KEY_LENGTH = 16
_LINK_VERSION = "filegate-link-v1"


class KeySpec(BaseModel):
    """One entry of ``API_KEYS`` / ``API_KEYS_FILE``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    key: SecretStr | None = Field(default=None, description="The key itself (≥ 16 characters).")
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    scopes: frozenset[Scope] = Field(min_length=1)
    buckets: frozenset[str] | None = Field(default=None, description="None: every bucket.")
    folders: tuple[str, ...] | None = Field(default=None, description="None: every folder.")

    @field_validator("folders")
    @classmethod
    def _folders(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        try:
            cleaned = tuple(check_folder(folder) for folder in value)
        except InvalidArgument as exc:
            raise ValueError(exc.detail) from exc
        if "" in cleaned:
            raise ValueError("a folder must not be empty (leave 'folders' out for every folder)")
        return cleaned

    @model_validator(mode="after")
    def _one_key(self) -> Self:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"key {self.name!r}: give exactly one of 'key' and 'key_sha256'")
        if self.key is not None and len(self.key.get_secret_value()) < MIN_KEY_LENGTH:
            raise ValueError(f"key {self.name!r}: at least {MIN_KEY_LENGTH} characters")
        return self

    def digest(self) -> bytes:
        if self.key_sha256 is not None:
            return bytes.fromhex(self.key_sha256)
        assert self.key is not None
        return hashlib.sha256(self.key.get_secret_value().encode()).digest()


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a key (or a signed link) identifies, with what it may do and where.

    The service (``app.storage.service``) checks a principal before every file operation; routes
    only pass it on.
    """

    name: str
    scopes: frozenset[Scope]
    buckets: frozenset[str] | None = None
    """None: every bucket."""
    folders: tuple[str, ...] | None = None
    """None: every folder."""
    only: FileId | None = None
    """A signed link's principal may read this one file and nothing else."""

    @classmethod
    def for_link(cls, file_id: FileId) -> Principal:
        return cls("signed link", frozenset({"read"}), only=file_id)

    def require(self, scope: Scope) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"The key {self.name!r} lacks the {scope!r} scope.")

    def check(self, scope: Scope, file_id: FileId) -> None:
        """``Forbidden`` unless this caller may ``scope`` the file ``file_id``.

        A FastDFS group counts as the bucket; FastDFS has no folders, so a key limited to folders
        never reaches FastDFS files.
        """
        self.require(scope)
        raw = str(file_id)
        if self.only is not None and file_id != self.only:
            raise Forbidden("A signed link reads only the file it was made for.", file_id=raw)
        if self.buckets is not None and file_id.ref.bucket not in self.buckets:
            raise Forbidden(f"The key {self.name!r} may not use this bucket.", file_id=raw)
        if self.folders is not None:
            inside = file_id.backend != "fastdfs" and any(
                file_id.ref.key.startswith(f"{folder}/") for folder in self.folders
            )
            if not inside:
                raise Forbidden(f"The key {self.name!r} may not use this folder.", file_id=raw)


OPEN = Principal("anonymous", ALL_SCOPES)
"""Everyone, when no key is configured."""
OPEN_WARNING = (
    "No API keys configured (API_KEYS, API_KEYS_FILE): "
    "anyone who can reach this service may read, write and delete files."
)
"""Logged at start-up, and shown by the console, when the service is open."""


class Keyring:
    """The configured keys; with none, the service is open."""

    def __init__(self, specs: Iterable[KeySpec]) -> None:
        self._keys = [
            (spec.digest(), Principal(spec.name, spec.scopes, spec.buckets, spec.folders))
            for spec in specs
        ]

    @property
    def open(self) -> bool:
        return not self._keys

    def authenticate(self, presented: str | None) -> Principal:
        """The principal of ``presented``; ``Unauthorized`` if it is missing or unknown."""
        if self.open:
            return OPEN
        if not presented:
            raise Unauthorized("An API key is required: Authorization: Bearer <key> or X-API-Key.")
        digest = hashlib.sha256(presented.encode()).digest()
        found: Principal | None = None
        for known, principal in self._keys:  # no early exit: the time does not tell which
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            raise Unauthorized("Unknown API key.")
        return found


def key_matches(presented: str | None, secret: str) -> bool:
    """Constant-time comparison of a presented key with one secret (e.g. the metrics key)."""
    given = hashlib.sha256((presented or "").encode()).digest()
    return hmac.compare_digest(given, hashlib.sha256(secret.encode()).digest())


@dataclass(frozen=True, slots=True)
class LinkTerms:
    """What a signed link grants: one file, until ``expires`` (Unix seconds), served so."""

    file_id: str
    expires: int
    filename: str | None = None
    inline: bool = False


class LinkSigner:
    """Signs and verifies download links with ``SIGNING_SECRET``; without it, links are off."""

    def __init__(
        self,
        secret: str | None,
        *,
        max_expires_in: int = 7 * 24 * 3600,
        base_url: str | None = None,
    ) -> None:
        self._secret = secret.encode() if secret else None
        self.max_expires_in = max_expires_in
        self.base_url = base_url.rstrip("/") if base_url else None

    @property
    def enabled(self) -> bool:
        return self._secret is not None

    def _mac(self, terms: LinkTerms) -> bytes:
        assert self._secret is not None
        message = json.dumps(
            [_LINK_VERSION, terms.file_id, terms.expires, terms.filename, terms.inline],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hmac.new(self._secret, message.encode(), hashlib.sha256).digest()

    def sign(self, terms: LinkTerms) -> str:
        if self._secret is None:
            raise LinkInvalid("Signed links are not configured: set SIGNING_SECRET.")
        return base64.urlsafe_b64encode(self._mac(terms)).rstrip(b"=").decode()

    def url(self, terms: LinkTerms, request_base: str) -> str:
        """The download URL granting ``terms``, under ``PUBLIC_BASE_URL`` or the request's base."""
        query = {"expires": str(terms.expires)}
        if terms.filename:
            query["filename"] = terms.filename
        if terms.inline:
            query["inline"] = "true"
        query["signature"] = self.sign(terms)
        base = self.base_url or request_base.rstrip("/")
        path = quote(terms.file_id, safe=":/")
        return f"{base}/files/{path}/download?{urlencode(query, quote_via=quote)}"

    def verify(self, terms: LinkTerms, signature: str, now: float | None = None) -> None:
        """``LinkInvalid`` unless ``signature`` signs exactly ``terms``; ``LinkExpired`` after."""
        if self._secret is None:
            raise LinkInvalid("Signed links are not configured.", file_id=terms.file_id)
        try:
            given = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        except ValueError:
            given = b""
        if not hmac.compare_digest(given, self._mac(terms)):
            raise LinkInvalid("The link's signature does not match.", file_id=terms.file_id)
        if (time.time() if now is None else now) >= terms.expires:
            raise LinkExpired("The link has expired.", file_id=terms.file_id)
