"""A real browser on another origin: upload with fetch() and an API key, then use signed links.

Debian's Chromium (``/usr/bin/chromium``, installed by ``.ci/run``) driven by Playwright; the page
is served from its own loopback port, so every request to filegate is cross-origin and CORS must
let exactly what the page needs through.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import shutil
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from tests.conftest import SIGNING_SECRET as SECRET
from tests.servers import HOST, Service, free_port

CHROMIUM = Path("/usr/bin/chromium")
KEY = "browser-key-0123456789"
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def tiny_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def chromium() -> str:
    assert CHROMIUM.exists(), "Debian's chromium is needed: apt-get install chromium (.ci/run)"
    return str(CHROMIUM)


@pytest.fixture
def page_origin(tmp_path: Path) -> Iterator[str]:
    """An empty page on an origin of its own (another port of the loopback address)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<!doctype html><title>app</title><img id=photo>")
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(site)
    )  # quiet enough: it logs to stderr, which pytest captures
    server = http.server.ThreadingHTTPServer((HOST, free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{HOST}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def service(tmp_path: Path, page_origin: str) -> Iterator[Service]:
    keys = [{"name": "web", "key": KEY, "scopes": ["read", "write"]}]
    service = Service(
        {
            "LOCAL_ROOT": str(tmp_path / "data"),
            "API_KEYS": json.dumps(keys),
            "SIGNING_SECRET": SECRET,
            "CORS_ALLOW_ORIGINS": page_origin,
        }
    )
    service.start(tmp_path)
    yield service
    service.stop()


SCRIPT = """
async ([api, key, png]) => {
  const form = new FormData();
  form.append("folder", "browser");
  form.append("file", new Blob(["hello from the page"], {type: "text/plain"}), "hello.txt");
  const up = await fetch(`${api}/files/upload`, {method: "POST", body: form, headers: {"X-API-Key": key}});
  const attach = await up.json();

  const anonymous = await fetch(`${api}/files/upload`, {method: "POST", body: form});
  const refused = {status: anonymous.status, body: await anonymous.json()};

  const linked = await fetch(`${api}/files/${attach.file_id}/link`, {
    method: "POST",
    headers: {"Authorization": `Bearer ${key}`, "Content-Type": "application/json"},
    body: JSON.stringify({expires_in: 300, filename: "greeting.txt"}),
  });
  const link = await linked.json();
  const got = await fetch(link.url);  // no key: the signature is the permission
  const download = {
    status: got.status,
    text: await got.text(),
    disposition: got.headers.get("Content-Disposition"),
    etag: got.headers.get("ETag"),
    length: got.headers.get("Content-Length"),
  };
  const ranged = await fetch(link.url, {headers: {"Range": "bytes=0-4"}});
  const range = {status: ranged.status, text: await ranged.text(),
                 contentRange: ranged.headers.get("Content-Range")};

  const bytes = Uint8Array.from(atob(png), c => c.charCodeAt(0));
  const image = await fetch(`${api}/files/upload/dot.png`, {
    method: "PUT", body: bytes, headers: {"X-API-Key": key, "Content-Type": "image/png"},
  });
  const imageId = (await image.json()).file_id;
  const imageLink = await (await fetch(`${api}/files/${imageId}/link`, {
    method: "POST", headers: {"X-API-Key": key, "Content-Type": "application/json"},
    body: JSON.stringify({inline: true}),
  })).json();
  const img = document.getElementById("photo");
  const shown = await new Promise((resolve) => {
    img.onload = () => resolve({width: img.naturalWidth, height: img.naturalHeight});
    img.onerror = () => resolve({error: true});
    img.src = imageLink.url;
  });
  return {upload: {status: up.status, attach}, refused, link, download, range, shown};
}
"""


async def test_a_page_on_another_origin_uploads_and_downloads_through_a_signed_link(
    service: Service, page_origin: str, tmp_path: Path, chromium: str
) -> None:
    png = tiny_png(3, 2)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{page_origin}/index.html")
            result = await page.evaluate(SCRIPT, [service.url, KEY, base64.b64encode(png).decode()])
        finally:
            await browser.close()

    assert result["upload"]["status"] == 201, result
    file_id = result["upload"]["attach"]["file_id"]
    assert file_id.startswith("local:files/browser/")
    stored = tmp_path / "data" / "files" / file_id.removeprefix("local:files/")
    assert stored.read_bytes() == b"hello from the page"

    assert result["refused"]["status"] == 401  # readable by the page: CORS covers errors too
    assert result["refused"]["body"]["code"] == "unauthorized"

    assert result["link"]["url"].startswith(f"{service.url}/files/")
    assert result["download"] == {
        "status": 200,
        "text": "hello from the page",
        "disposition": "attachment; filename=\"greeting.txt\"; filename*=UTF-8''greeting.txt",
        "etag": result["upload"]["attach"]["etag"],
        "length": "19",
    }
    assert result["range"] == {"status": 206, "text": "hello", "contentRange": "bytes 0-4/19"}
    assert result["shown"] == {"width": 3, "height": 2}


# --- tus-js-client: a 30 MiB resumable upload survives a killed server ---------------------

TUS_JS_VERSION = "4.3.1"
NPM_CACHE = Path.home() / ".cache" / "filegate-ci" / "npm"


def npm_package(package: str, version: str, file: str) -> Path:
    """``file`` of an npm package at ``version``, from the registry (kept in a cache directory)."""
    prefix = NPM_CACHE / f"{package}-{version}"
    path = prefix / "node_modules" / package / file
    if not path.exists():
        npm = shutil.which("npm")
        assert npm, f"npm is needed for {package}: apt-get install npm (.ci/run)"
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(prefix),
             f"{package}@{version}"],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    return path


@pytest.fixture(scope="session")
def tus_js() -> Path:
    """tus-js-client's browser bundle."""
    return npm_package("tus-js-client", TUS_JS_VERSION, "dist/tus.min.js")


TUS_SCRIPT = """
([api, key, block]) => {
  const base = Uint8Array.from(atob(block), c => c.charCodeAt(0));
  const parts = [];
  for (let i = 0; i < 30; i++) {  // each MiB differs: the block rotated by i bytes
    const part = new Uint8Array(base.length);
    part.set(base.subarray(i), 0);
    part.set(base.subarray(0, i), base.length - i);
    parts.push(part);
  }
  window.state = {progress: 0, retries: 0, fileId: null, done: false, error: null};
  const upload = new tus.Upload(new Blob(parts), {
    endpoint: `${api}/files/tus`,
    chunkSize: 4 * 1024 * 1024,
    retryDelays: [250, 500, 1000, 1000, 2000, 2000, 2000, 3000, 3000, 3000, 5000, 5000],
    headers: {"X-API-Key": key},
    metadata: {filename: "Отчёт из браузера.bin", filetype: "application/octet-stream",
               folder: "browser"},
    onProgress: (sent) => { window.state.progress = sent; },
    onShouldRetry: () => { window.state.retries += 1; return true; },
    onAfterResponse: (req, res) => {
      const id = res.getHeader("File-Id");  // percent-encoded, as in a URL (docs/tus.md)
      if (id) window.state.fileId = decodeURIComponent(id);
    },
    onSuccess: () => { window.state.done = true; },
    onError: (error) => { window.state.error = String(error); },
  });
  upload.start();
}
"""


def _tus_block() -> bytes:
    import random

    return random.Random(20261125).randbytes(1024 * 1024)


async def test_tus_js_client_resumes_after_the_server_is_killed(
    service: Service, page_origin: str, tmp_path: Path, chromium: str, tus_js: Path
) -> None:
    """A page uploads 30 MiB with tus-js-client at 4 MiB/s (Chromium's own throttling); filegate
    is killed (SIGKILL) a third of the way and started again on the same port; the client
    retries, asks where to resume, and completes. The stored file is byte-identical, and the page
    reads its id, with a non-ASCII name, from the percent-encoded ``File-Id``."""
    site = Path(tmp_path / "site")
    shutil.copy(tus_js, site / "tus.min.js")
    (site / "tus.html").write_text('<!doctype html><script src="tus.min.js"></script>')
    block = _tus_block()
    expected = b"".join(block[i:] + block[:i] for i in range(30))
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            cdp = await page.context.new_cdp_session(page)
            await cdp.send("Network.enable")
            await cdp.send(
                "Network.emulateNetworkConditions",
                {"offline": False, "latency": 0, "downloadThroughput": -1,
                 "uploadThroughput": 4 * 1024 * 1024},
            )  # fmt: skip
            await page.goto(f"{page_origin}/tus.html")
            await page.evaluate(TUS_SCRIPT, [service.url, KEY, base64.b64encode(block).decode()])
            await page.wait_for_function(
                "window.state.progress >= 10 * 1024 * 1024", timeout=60_000
            )
            assert service.process is not None
            service.process.kill()  # SIGKILL: no chance to tidy up
            service.process.wait()
            state = await page.evaluate("window.state")
            assert not state["done"], state
            service.start(tmp_path)  # the same port, the same storage
            await page.wait_for_function("window.state.done || window.state.error", timeout=120_000)
            state = await page.evaluate("window.state")
        finally:
            await browser.close()
    assert state["error"] is None, state
    assert state["retries"] >= 1, state
    file_id = state["fileId"]
    assert file_id.startswith("local:files/browser/") and file_id.endswith("_Отчёт из браузера.bin")
    stored = tmp_path / "data" / "files" / file_id.removeprefix("local:files/")
    assert stored.read_bytes() == expected
