"""The HTTP side of filegate-client: one httpx client, and the service's errors as exceptions.

Nothing here imports the server's code: the client speaks only the HTTP contract (docs/api.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TUS = {"Tus-Resumable": "1.0.0"}


class Failure(Exception):
    """Something the user must hear about in one line; exit status 1."""

    def __init__(self, detail: str, code: str = "error") -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


def failure_of(response: httpx.Response) -> Failure:
    """The service's own ``code`` and ``detail``, or the HTTP status when it said nothing."""
    try:
        body = response.json()
        return Failure(str(body["detail"]), str(body["code"]))
    except (ValueError, KeyError, TypeError):
        return Failure(f"HTTP {response.status_code} from {response.request.url}", "http_error")


@dataclass
class Settings:
    url: str
    api_key: str | None

    @classmethod
    def from_env(cls, url: str | None, api_key: str | None) -> Settings:
        return cls(
            (url or os.environ.get("FILEGATE_URL") or DEFAULT_URL).rstrip("/"),
            api_key or os.environ.get("FILEGATE_API_KEY") or None,
        )


def file_path(file_id: str, suffix: str = "") -> str:
    """``/files/<id><suffix>`` with the id percent-encoded (any id is safe in a URL)."""
    return f"/files/{quote(file_id, safe='')}{suffix}"


class Api:
    """The service, with the key on every request."""

    def __init__(self, settings: Settings, *, timeout: float = 60) -> None:
        headers = {"X-API-Key": settings.api_key} if settings.api_key else {}
        self.settings = settings
        self.http = httpx.Client(
            base_url=settings.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10),
            follow_redirects=False,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Failure(f"{self.settings.url} cannot be reached ({exc})", "unreachable") from exc
        if response.status_code >= 400:
            raise failure_of(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def info(self, file_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.json("GET", file_path(file_id, "/info"))
        return result

    def walk(self, prefix: str | None, *, recursive: bool) -> Any:
        """Every entry under ``prefix``, page after page: (files, folders) of each page."""
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"delimiter": "" if recursive else "/", "limit": 1000}
            if prefix:
                params["prefix"] = prefix
            if cursor:
                params["cursor"] = cursor
            page = self.json("GET", "/files", params=params)
            yield page["files"], page["folders"]
            cursor = page["next_cursor"]
            if not cursor:
                return
