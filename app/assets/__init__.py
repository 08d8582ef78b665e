"""The browser assets filegate serves itself: the console's own files (``own/``) and the vendored
npm packages (``vendor/``, written by ``app.assets.refresh``), held in memory, each with its
gzip form, an ETag and a version for its URL (docs/console.md, "Assets").

A vendored file is served only while its bytes match the SHA-384 that ``vendor/manifest.json``
recorded when it was fetched; one that does not is left out, with an error in the log.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path

from app.assets.refresh import MANIFEST, VENDOR, integrity

log = logging.getLogger(__name__)
OWN = Path(__file__).parent / "own"
PAGES = ("console.html", "docs.html", "redoc.html")
"""Templates, not assets: ``{{name}}`` in them becomes the asset's versioned URL and
``{{sri:name}}`` its integrity."""
CONSOLE_ONLY = frozenset({"console.js", "console.css", "tus.min.js"})
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class Asset:
    name: str
    body: bytes
    gzipped: bytes
    media_type: str
    version: str
    """The first 16 hex digits of the body's SHA-256: the URL's ``?v=`` and the ETag."""
    integrity: str

    @property
    def url(self) -> str:
        return f"assets/{self.name}?v={self.version}"


def _asset(name: str, body: bytes) -> Asset:
    media_type = _TYPES.get(Path(name).suffix) or mimetypes.guess_type(name)[0]
    return Asset(
        name=name,
        body=body,
        gzipped=gzip.compress(body, 9, mtime=0),
        media_type=media_type or "application/octet-stream",
        version=hashlib.sha256(body).hexdigest()[:16],
        integrity=integrity(body),
    )


def vendored() -> dict[str, str]:
    """Each vendored file's recorded integrity, by the name it is served under."""
    manifest = json.loads(MANIFEST.read_text())
    return {
        name: entry["integrity"]
        for package in manifest.values()
        for name, entry in package["files"].items()
    }


def load_assets() -> dict[str, Asset]:
    """Every asset, by name: the own ones, and the vendored ones that match their hash."""
    assets = {
        path.name: _asset(path.name, path.read_bytes())
        for path in sorted(OWN.iterdir())
        if path.is_file() and path.name not in PAGES
    }
    for name, recorded in vendored().items():
        asset = _asset(name, (VENDOR / name).read_bytes())
        if asset.integrity != recorded:
            log.error(
                "Vendored asset %s does not match the hash in %s; not served "
                "(re-run: python -m app.assets.refresh).",
                name,
                MANIFEST,
            )
            continue
        assets[name] = asset
    return assets


@functools.cache
def served_assets() -> dict[str, Asset]:
    """``load_assets()``, once per process (about 0.1 s of hashing and gzip, 4 MiB held)."""
    return load_assets()


_PLACE = re.compile(r"\{\{(sri:)?([A-Za-z0-9_.-]+)\}\}")


def render_page(name: str, assets: dict[str, Asset], prefix: str = "") -> bytes:
    """A page template with its assets' versioned URLs (under ``prefix``) and integrities."""

    def place(match: re.Match[str]) -> str:
        asset = assets[match[2]]
        return asset.integrity if match[1] else prefix + asset.url

    return _PLACE.sub(place, (OWN / name).read_text()).encode()
