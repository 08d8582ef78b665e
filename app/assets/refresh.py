"""Refresh the vendored browser assets from the npm registry:
``uv run python -m app.assets.refresh``.

Each package is fetched at the exact version below with ``npm pack`` (npm checks the tarball
against the registry's integrity), the files filegate serves are copied out of it into
``app/assets/vendor/`` with the package's licence, and ``vendor/manifest.json`` records, for each
file, where it came from and its SHA-384 (Subresource Integrity form). filegate serves a vendored
file only while it matches its recorded hash, and ``tests/test_console.py`` fails when one does
not. Nothing is fetched at run time: the files are in the repository (docs/console.md, "Assets").

To move to a new version: change it here, run this, look at the diff, run the browser tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VENDOR = Path(__file__).parent / "vendor"
MANIFEST = VENDOR / "manifest.json"

PACKAGES: dict[str, tuple[str, dict[str, str]]] = {
    # package: (version, {file in the package: name served under /assets/})
    "tus-js-client": ("4.3.1", {"dist/tus.min.js": "tus.min.js"}),
    "swagger-ui-dist": (
        "5.36.0",
        {"swagger-ui-bundle.js": "swagger-ui-bundle.js", "swagger-ui.css": "swagger-ui.css"},
    ),
    "redoc": ("2.5.4", {"bundles/redoc.standalone.js": "redoc.standalone.js"}),
}
LICENCES = ("LICENSE", "LICENSE.md", "LICENSE.txt")


def integrity(data: bytes) -> str:
    """The Subresource Integrity value of ``data`` (``sha384-<base64>``)."""
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def _pack(npm: str, spec: str, into: Path) -> tuple[Path, str]:
    out = subprocess.run(
        [npm, "pack", spec, "--json", "--pack-destination", str(into)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    packed = json.loads(out.stdout)[0]
    return into / packed["filename"], packed["integrity"]


def refresh() -> dict[str, object]:
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("npm is needed (apt-get install npm)")
    manifest: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for package, (version, files) in PACKAGES.items():
            tarball, tarball_integrity = _pack(npm, f"{package}@{version}", Path(scratch))
            entry: dict[str, object] = {"version": version, "tarball": tarball_integrity}
            served: dict[str, object] = {}
            with tarfile.open(tarball) as tar:
                for inside, name in files.items():
                    member = tar.extractfile(f"package/{inside}")
                    assert member is not None, f"{package}@{version} has no {inside}"
                    data = member.read()
                    (VENDOR / name).write_bytes(data)
                    served[name] = {"from": inside, "integrity": integrity(data)}
                for licence in LICENCES:
                    try:
                        member = tar.extractfile(f"package/{licence}")
                    except KeyError:
                        continue
                    if member is not None:
                        (VENDOR / f"{package}.LICENSE").write_bytes(member.read())
                        break
            entry["files"] = served
            manifest[package] = entry
    MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


if __name__ == "__main__":
    for package, entry in refresh().items():
        print(package, entry["version"], ", ".join(entry["files"]))  # type: ignore[index]
