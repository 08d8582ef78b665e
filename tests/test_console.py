"""The web console (/console) in a real browser against filegate as a real process.

Debian's Chromium driven by Playwright, as in tests/test_browser.py. Every test asserts on what the
page shows and on what the storage holds (read back through the API), in local and S3 (SeaweedFS)
modes, with and without API keys. Every page is also watched for Content-Security-Policy
violations and script errors: there must be none.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import shutil
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Request,
    async_playwright,
    expect,
)

from tests.conftest import SIGNING_SECRET, created_bucket
from tests.servers import SeaweedFS, Service
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, npm_package, tiny_png

ADMIN = "console-admin-key-0123456789"
READER = "console-reader-key-0123456789"
KEYS = [
    {"name": "admin", "key": ADMIN, "scopes": ["read", "write", "delete"]},
    {"name": "viewer", "key": READER, "scopes": ["read"]},
]
AXE_VERSION = "4.14.1"
MiB = 1024 * 1024
WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""
NAMES = {
    "Отчёт.pdf": b"%PDF-1.4\n% not much of a report\n",
    "报告.docx": b"PK\x03\x04 a docx in name only " * 10,
    "notes 'quoted' \"too\".txt": "Привет, 世界 👋\nline two\n".encode(),
    "😀 emoji name.txt": b"emoji",
}


@dataclass
class Console:
    service: Service
    mode: str
    keys: bool
    bucket: str
    pages: list[Page] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def root(self) -> str:
        return f"{self.mode}:{self.bucket}/"

    def api(self, key: str | None = ADMIN) -> httpx.Client:
        headers = {"X-API-Key": key} if self.keys and key else {}
        return httpx.Client(base_url=self.service.url, headers=headers, timeout=60)

    def upload(self, name: str, data: bytes, folder: str = "") -> str:
        with self.api() as api:  # the raw PUT: the name travels percent-encoded, quotes too
            answer = api.put(
                f"/files/upload/{quote(name, safe='')}",
                content=data,
                params={"folder": folder} if folder else {},
            )
        assert answer.status_code == 201, answer.text
        file_id: str = answer.json()["file_id"]
        return file_id

    def read(self, file_id: str) -> bytes:
        with self.api() as api:
            answer = api.get(f"/files/{file_id}/download")
        assert answer.status_code == 200, answer.text
        return answer.content

    def listed(self, folder: str, delimiter: str = "") -> dict[str, str]:
        """Name → id of every file under ``folder`` (recursively by default)."""
        with self.api() as api:
            answer = api.get(
                "/files",
                params={"prefix": self.root + folder, "delimiter": delimiter, "limit": 1000},
            )
        assert answer.status_code == 200, answer.text
        return {item["file_name"]: item["file_id"] for item in answer.json()["files"]}


@pytest.fixture
def chromium() -> str:
    assert CHROMIUM.exists(), "Debian's chromium is needed: apt-get install chromium (.ci/run)"
    return str(CHROMIUM)


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture(scope="session")
def axe_js() -> str:
    """axe-core (a test tool only, not served by filegate)."""
    return npm_package("axe-core", AXE_VERSION, "axe.min.js").read_text()


def _environment(
    mode: str, keys: bool, bucket: str, seaweed: SeaweedFS | None, root: Path
) -> dict[str, str]:
    env = {"SIGNING_SECRET": SIGNING_SECRET, "MAX_BATCH_FILES": "1000"}
    if keys:
        env["API_KEYS"] = json.dumps(KEYS)
    if mode == "s3":
        assert seaweed is not None
        env.update(seaweed.service_env(bucket))
    else:
        env["LOCAL_ROOT"] = str(root / "data")
    return env


@pytest.fixture
def start_console(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    started: list[Console] = []

    async def start(mode: str, keys: bool, **extra: str) -> Console:
        seaweed: SeaweedFS | None = request.getfixturevalue("seaweed") if mode == "s3" else None
        bucket = await created_bucket(seaweed.endpoint) if seaweed is not None else "files"
        env = _environment(mode, keys, bucket, seaweed, tmp_path)
        service = Service({**env, **extra})
        service.start(tmp_path)
        console = Console(service, mode, keys, bucket)
        started.append(console)
        return console

    yield start
    for console in started:
        console.service.stop()


async def open_console(
    browser: Browser,
    console: Console,
    key: str | None = ADMIN,
    width: int = 1440,
    height: int = 900,
) -> Page:
    context = await browser.new_context(
        viewport={"width": width, "height": height}, accept_downloads=True
    )
    await context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=console.service.url
    )
    await context.add_init_script(WATCH)
    page = await context.new_page()
    page.on("pageerror", lambda error: console.errors.append(f"pageerror: {error}"))

    def on_console(message: ConsoleMessage) -> None:
        # "Failed to load resource": a 401 or 404 that the page handles (Chromium logs each one)
        if message.type == "error" and "Failed to load resource" not in message.text:
            console.errors.append(f"console: {message.text}")

    page.on("console", on_console)
    console.pages.append(page)
    await page.goto(f"{console.service.url}/console/")
    if console.keys:
        dialog = page.get_by_role("dialog", name="API key")
        await expect(dialog).to_be_visible()
        await dialog.get_by_label("API key").fill(key or "")
        await dialog.get_by_role("button", name="Use this key").click()
        await expect(dialog).to_be_hidden()
    await expect(page.locator("#page-info")).not_to_contain_text("loading")
    return page


async def assert_clean(console: Console) -> None:
    """No CSP violation and no script error on any page the test opened."""
    for page in console.pages:
        if not page.is_closed():
            assert await page.evaluate("window.__csp") == []
    assert console.errors == []


def rows(first: str, last: str, total: str) -> str:
    """The pager's text: "Rows 1 to 100 of 5,000", with an en dash for "to"."""
    return f"Rows {first}\u2013{last} of {total}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _choose(page: Page, button: str, files: Path | list[Path]) -> None:
    async with page.expect_file_chooser() as chooser:
        await page.get_by_role("button", name=button, exact=True).click()
    await (await chooser.value).set_files(files)


async def _done(page: Page, name: str, wait_ms: float = 120_000) -> str:
    row = page.locator("#upload-list li", has=page.locator("strong", has_text=name))
    await expect(row).to_have_attribute("data-status", "done", timeout=wait_ms)
    file_id = await row.get_attribute("data-file-id")
    assert file_id
    return file_id


async def _select(page: Page, *names: str) -> None:
    for name in names:
        await page.get_by_role("checkbox", name=f"Select {name}", exact=True).check()


# --- Every action, in local and S3 modes, with and without keys -----------------------------


@pytest.mark.parametrize(
    ("mode", "keys"),
    [("local", False), ("local", True), ("s3", False), ("s3", True)],
    ids=["local-open", "local-keys", "s3-open", "s3-keys"],
)
async def test_every_action_of_the_console(
    mode: str, keys: bool, start_console: Any, browser: Browser, tmp_path: Path
) -> None:
    console: Console = await start_console(mode, keys)
    ids = {name: console.upload(name, data, "docs") for name, data in NAMES.items()}
    page = await open_console(browser, console)
    if keys:
        await expect(page.locator("#warning")).to_be_hidden()
        await expect(page.locator("#who")).to_contain_text("admin")
    else:  # the log's own warning
        await expect(page.locator("#warning")).to_have_text(
            "No API keys configured (API_KEYS, API_KEYS_FILE): "
            "anyone who can reach this service may read, write and delete files."
        )

    # Browse: the folder, then its files by name, in any script.
    await page.get_by_role("button", name="docs/").click()
    for name in NAMES:
        await expect(page.get_by_role("button", name=name, exact=True)).to_be_visible()
    await expect(page.locator("#summary")).to_contain_text("4 files")
    await expect(page.get_by_role("navigation", name="Breadcrumb")).to_contain_text("docs")

    # Upload 50 MiB over tus, with metadata, into the folder shown.
    big = tmp_path / "Большой файл 报告.bin"
    big.write_bytes(random.Random(50).randbytes(50 * MiB))
    await page.locator("#meta-box summary").click()
    await page.locator("#meta").fill("owner=ops\nproject=Проект ✓")
    await _choose(page, "Upload files", big)
    big_id = await _done(page, big.name)
    assert big_id.startswith(f"{console.root}docs/")
    assert _sha(console.read(big_id)) == _sha(big.read_bytes())
    with console.api() as api:
        info = api.get(f"/files/{big_id}/info").json()
    assert info["metadata"] == {"owner": "ops", "project": "Проект ✓"}
    await expect(page.locator("#total-text")).to_contain_text("1 of 1 file done")
    await expect(page.get_by_role("button", name=big.name, exact=True)).to_be_visible()

    # Upload a folder: its relative paths become folders.
    album = tmp_path / "album"
    (album / "Фото").mkdir(parents=True)
    (album / "Фото" / "снимок 1.txt").write_bytes(b"first photo, in words")
    (album / "b c.txt").write_bytes(b"second")
    await page.locator("#meta").fill("")
    await _choose(page, "Upload folder", album)
    await _done(page, "снимок 1.txt")
    await _done(page, "b c.txt")
    stored = console.listed("docs/album/")
    assert set(stored) == {"снимок 1.txt", "b c.txt"}
    assert console.read(stored["снимок 1.txt"]) == b"first photo, in words"
    assert stored["снимок 1.txt"].startswith(f"{console.root}docs/album/Фото/")

    # Details with a text preview, then a download of that one file.
    text_name = "notes 'quoted' \"too\".txt"
    await page.get_by_role("button", name=text_name, exact=True).click()
    details = page.get_by_role("dialog", name=text_name)
    await expect(details).to_be_visible()
    await expect(details.locator("#facts")).to_contain_text(f"{len(NAMES[text_name])} bytes")
    await expect(details.locator("#facts")).to_contain_text(ids[text_name])
    await expect(details.locator("#preview pre")).to_contain_text("Привет, 世界 👋")
    async with page.expect_download() as download:
        await details.get_by_role("button", name="Download").click()
    saved = await (await download.value).path()
    assert saved.read_bytes() == NAMES[text_name]

    # A share link, copied, opened in a fresh context without a key.
    await details.get_by_role("button", name="Share link").click()
    await details.get_by_label("Link expires in").select_option(label="1 hour")
    await details.get_by_role("button", name="Make link").click()
    link = details.get_by_label("Share link", exact=True)
    await expect(link).to_have_value(re.compile(r"^http://.*/download\?expires=\d+&signature="))
    url = await link.input_value()
    await details.get_by_role("button", name="Copy link").click()
    await expect(details.locator("#share-note")).to_have_text("Copied.")
    assert await page.evaluate("navigator.clipboard.readText()") == url
    stranger = await browser.new_context()
    fetched = await stranger.request.get(url)
    assert fetched.status == 200
    assert await fetched.body() == NAMES[text_name]
    await stranger.close()
    await page.keyboard.press("Escape")
    await expect(details).to_be_hidden()

    # A PDF is shown on request (its viewer would take the focus), served inline.
    await page.get_by_role("button", name="Отчёт.pdf", exact=True).click()
    details = page.get_by_role("dialog", name="Отчёт.pdf")
    await details.get_by_role("button", name="Show the PDF here").click()
    frame = details.locator("iframe[title='Preview of Отчёт.pdf']")
    await expect(frame).to_have_attribute("src", re.compile(r"inline=true"))
    shown = await page.request.get(await frame.get_attribute("src") or "")
    assert shown.status == 200 and await shown.body() == NAMES["Отчёт.pdf"]
    assert shown.headers["content-disposition"].startswith("inline")
    await page.keyboard.press("Escape")
    await expect(details).to_be_hidden()

    # A selection as one zip.
    await _select(page, "Отчёт.pdf", "报告.docx")
    await expect(page.locator("#selected-count")).to_contain_text("2 files selected")
    async with page.expect_download() as download:
        await page.get_by_role("button", name="Download as zip").click()
    with zipfile.ZipFile(await (await download.value).path()) as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == {
            "Отчёт.pdf": NAMES["Отчёт.pdf"],
            "报告.docx": NAMES["报告.docx"],
        }

    # The folder as one zip.
    await page.get_by_role("button", name="Clear selection").click()
    async with page.expect_download() as download:
        await page.get_by_role("button", name="Download folder as zip").click()
    with zipfile.ZipFile(await (await download.value).path()) as archive:
        assert set(archive.namelist()) == {
            *NAMES,
            big.name,
            "album/Фото/снимок 1.txt",
            "album/b c.txt",
        }
        assert archive.read("album/b c.txt") == b"second"

    # Move one file to another folder.
    await _select(page, "报告.docx")
    await page.get_by_role("button", name="Copy or move").click()
    mover = page.get_by_role("dialog", name="Copy or move")
    await mover.get_by_label("Move").check()
    await mover.get_by_label("Folder").fill("moved/here")
    await mover.get_by_role("button", name="Move").click()
    await expect(mover).to_be_hidden()
    moved = console.listed("moved/here/")
    assert console.read(moved["报告.docx"]) == NAMES["报告.docx"]
    with console.api() as api:
        assert api.get(f"/files/{ids['报告.docx']}/info").status_code == 404
    await expect(page.get_by_role("button", name="报告.docx", exact=True)).to_be_hidden()

    # Delete two files, after a confirmation that says how many and how much.
    await _select(page, "Отчёт.pdf", "😀 emoji name.txt")
    await page.locator("#selection").get_by_role("button", name="Delete").click()
    confirm = page.get_by_role("dialog", name="Delete 2 files?")
    total = len(NAMES["Отчёт.pdf"]) + len(NAMES["😀 emoji name.txt"])
    await expect(confirm).to_contain_text(f"2 files, {total} B in all")
    await confirm.get_by_role("button", name="Delete 2 files").click()
    await expect(page.get_by_role("button", name="Отчёт.pdf", exact=True)).to_be_hidden()
    with console.api() as api:
        for name in ("Отчёт.pdf", "😀 emoji name.txt"):
            assert api.get(f"/files/{ids[name]}/info").status_code == 404

    # Delete a folder: the confirmation counts its files.
    await page.get_by_role("button", name="album/").click()
    await page.get_by_role("button", name="Delete folder").click()
    confirm = page.get_by_role("dialog", name="Delete this folder?")
    await expect(confirm).to_contain_text("holds 2 files")
    await confirm.get_by_role("button", name="Delete 2 files").click()
    await expect(page.locator("#crumbs [aria-current]")).to_have_text("docs")
    assert console.listed("docs/album/") == {}
    assert set(console.listed("docs/")) == {text_name, big.name}

    await assert_clean(console)


# --- 5,000 files in one folder ---------------------------------------------------------------


async def test_five_thousand_files_page_sort_and_filter(
    start_console: Any, browser: Browser
) -> None:
    console: Console = await start_console("local", False)
    sizes = {}
    with console.api() as api:
        for batch in range(5):
            files = []
            for i in range(batch * 1000, (batch + 1) * 1000):
                name = f"file-{i:04d}.txt"
                sizes[name] = (i * 7919) % 5000 + 1
                files.append(("files", (name, b"x" * sizes[name])))
            answer = api.post("/files/batch-upload", files=files, data={"folder": "many"})
            assert answer.status_code == 201, answer.text
    page = await open_console(browser, console)
    await page.get_by_role("button", name="many/").click()
    await expect(page.locator("#page-info")).to_have_text(rows("1", "100", "5,000"))
    await expect(page.locator("#summary")).to_contain_text(
        f"5,000 files, {sum(sizes.values()) / MiB:.1f} MiB"
    )
    assert await page.locator("#rows tr").count() == 100  # a window of rows, not 5,000
    await page.get_by_role("button", name="Next page").click()
    await expect(page.locator("#page-info")).to_have_text(rows("101", "200", "5,000"))
    await expect(page.locator("#rows tr").first).to_contain_text("file-0100.txt")

    await page.get_by_role("button", name="Size", exact=True).click()
    await page.get_by_role("button", name="Size", exact=True).click()  # largest first
    await expect(page.locator("th[data-sort=size]")).to_have_attribute("aria-sort", "descending")
    largest = max(sizes, key=lambda n: (sizes[n], n))
    await expect(page.locator("#page-info")).to_have_text(rows("1", "100", "5,000"))
    first = page.locator("#rows tr").first
    await expect(first).to_contain_text(largest.split(".")[0])

    await page.get_by_label("Filter by name").fill("file-042")
    await expect(page.locator("#page-info")).to_have_text(rows("1", "10", "10"))
    await page.get_by_label("Filter by name").fill("FILE-4999")
    await expect(page.locator("#page-info")).to_have_text(rows("1", "1", "1"))
    await assert_clean(console)


# --- An upload cut midway resumes after a reload ---------------------------------------------


@pytest.mark.parametrize("cut", ["network", "restart"])
async def test_an_upload_cut_midway_resumes_after_a_reload(
    cut: str, start_console: Any, browser: Browser, tmp_path: Path
) -> None:
    """network: the browser loses the connection mid-upload (its PATCHes fail), local mode.
    restart: the service is killed mid-upload and started again, S3 mode with keys."""
    mode, keys = ("local", False) if cut == "network" else ("s3", True)
    console: Console = await start_console(mode, keys)
    big = tmp_path / "Отчёт за год.bin"
    big.write_bytes(random.Random(7).randbytes(40 * MiB))
    page = await open_console(browser, console)

    patches: list[str] = []
    release = asyncio.Event()

    async def cut_after_two_chunks(route: Any) -> None:
        if route.request.method == "PATCH":
            patches.append(route.request.headers.get("upload-offset", ""))
            if len(patches) > 2:
                if cut == "restart":
                    await release.wait()  # held until the page that sent it is gone
                with contextlib.suppress(Exception):
                    await route.abort("connectionreset")
                return
        await route.continue_()

    await page.route("**/files/tus/**", cut_after_two_chunks)
    await _choose(page, "Upload files", big)
    for _ in range(600):
        if len(patches) > 2:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the third chunk never left: {patches}")
    if cut == "restart":
        assert console.service.process is not None
        console.service.process.kill()  # SIGKILL: no goodbye to anyone
        console.service.process.wait()
        console.service.start(tmp_path)
    await page.reload()  # the key stays: the tab's session storage
    await page.unroute("**/files/tus/**")
    release.set()
    unfinished = page.locator("#unfinished-list li", has=page.locator("strong", has_text=big.name))
    await expect(unfinished).to_contain_text("of 40.0 MiB stored", timeout=30_000)
    await expect(unfinished.locator(".status")).to_have_text(
        "16.0 MiB of 40.0 MiB stored; choose the file again to go on"
    )  # the two chunks that were answered
    stored = 16 * MiB

    offsets: list[int] = []

    def on_request(request: Request) -> None:
        if request.method == "PATCH":
            offsets.append(int(request.headers["upload-offset"]))

    page.on("request", on_request)
    async with page.expect_file_chooser() as chooser:
        await unfinished.get_by_role("button", name=f"Resume {big.name}…").click()
    await (await chooser.value).set_files(big)
    file_id = await _done(page, big.name)
    assert offsets and offsets[0] == stored  # went on from where it stopped, not from 0
    assert _sha(console.read(file_id)) == _sha(big.read_bytes())
    await expect(page.locator("#unfinished")).to_be_hidden()
    assert (
        await page.evaluate("Object.keys(localStorage).filter((k) => k.startsWith('tus::')).length")
        == 0
    )
    await assert_clean(console)


# --- A read-only key -------------------------------------------------------------------------


async def test_a_read_only_key_is_offered_no_upload_delete_or_move(
    start_console: Any, browser: Browser
) -> None:
    console: Console = await start_console("s3", True)
    file_id = console.upload("Отчёт.pdf", NAMES["Отчёт.pdf"], "docs")
    page = await open_console(browser, console, key=READER)
    await expect(page.locator("#who")).to_have_text("Key “viewer”: read")
    for name in ("Upload files", "Upload folder", "New folder", "Delete folder"):
        await expect(page.get_by_role("button", name=name)).to_have_count(0)
    await expect(page.locator("#meta-box")).to_be_hidden()
    await page.get_by_role("button", name="docs/").click()
    await _select(page, "Отчёт.pdf")
    selection = page.locator("#selection")
    await expect(selection.get_by_role("button", name="Download as zip")).to_be_visible()
    await expect(selection.get_by_role("button", name="Delete")).to_have_count(0)
    await expect(selection.get_by_role("button", name="Copy or move")).to_have_count(0)
    await page.get_by_role("button", name="Отчёт.pdf", exact=True).click()
    details = page.get_by_role("dialog", name="Отчёт.pdf")
    await expect(details.get_by_role("button", name="Download")).to_be_visible()
    await expect(details.get_by_role("button", name="Share link")).to_be_visible()
    await expect(details.get_by_role("button", name="Delete")).to_have_count(0)
    await expect(details.get_by_role("button", name="Copy or move")).to_have_count(0)
    async with page.expect_download() as download:
        await details.get_by_role("button", name="Download").click()
    assert (await (await download.value).path()).read_bytes() == NAMES["Отчёт.pdf"]
    assert console.read(file_id) == NAMES["Отчёт.pdf"]  # still there
    await page.keyboard.press("Escape")

    # An image preview through a signed inline link (the key cannot go in an <img>).
    console.upload("точка.png", tiny_png(3, 2), "docs")
    await page.reload()
    await page.get_by_role("button", name="точка.png", exact=True).click()
    image = page.get_by_role("img", name="Preview of точка.png")
    await expect(image).to_have_attribute("src", re.compile(r"signature="))
    await page.wait_for_function(
        "document.querySelector('#preview img')?.naturalWidth === 3", timeout=10_000
    )  # the bytes came, and decoded as the image
    await assert_clean(console)


# --- Errors are the API's own words ----------------------------------------------------------


async def test_an_api_refusal_shows_the_apis_detail(
    start_console: Any, browser: Browser, tmp_path: Path
) -> None:
    console: Console = await start_console("local", True, FILE_BLACKLIST="exe")
    with console.api() as api:
        refused = api.post("/files/upload", files={"file": ("tool.exe", b"MZ")}).json()["detail"]
    tool = tmp_path / "tool.exe"
    tool.write_bytes(b"MZ\x90\x00")
    page = await open_console(browser, console)
    await _choose(page, "Upload files", tool)
    row = page.locator("#upload-list li", has=page.locator("strong", has_text="tool.exe"))
    await expect(row).to_have_attribute("data-status", "failed")
    await expect(row).to_contain_text(refused)
    await expect(page.get_by_role("alert")).to_contain_text(f"tool.exe: {refused}")
    assert console.listed("") == {}

    await page.goto(f"{console.service.url}/console/#{'local%3Afiles%2Fnope%2F'}")
    await page.get_by_role("button", name="Dismiss").click()
    await page.evaluate("sessionStorage.setItem('filegate.key', 'not-a-key-but-long-enough')")
    await page.reload()
    dialog = page.get_by_role("dialog", name="API key")
    await expect(dialog).to_be_visible()
    await dialog.get_by_label("API key").fill("still-not-a-valid-key")
    await dialog.get_by_role("button", name="Use this key").click()
    await expect(dialog.locator("#key-error")).to_have_text("Unknown API key.")
    await assert_clean(console)


# --- Accessible, keyboard operable, 375 px and 1,440 px --------------------------------------


async def _axe(page: Page, axe_js: str) -> list[str]:
    if not await page.evaluate("typeof axe !== 'undefined'"):
        await page.evaluate(axe_js)  # through the DevTools protocol: the page's CSP does not apply
    result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("width", [375, 1440])
async def test_accessible_and_usable_by_keyboard_at_375_and_1440_px(
    width: int, start_console: Any, browser: Browser, axe_js: str, tmp_path: Path
) -> None:
    console: Console = await start_console("local", True)
    for name, data in NAMES.items():
        console.upload(name, data, "docs")
    context = await browser.new_context(viewport={"width": width, "height": 800})
    await context.add_init_script(WATCH)
    page = await context.new_page()
    console.pages.append(page)
    await page.goto(f"{console.service.url}/console/")
    await expect(page.get_by_role("dialog", name="API key")).to_be_visible()
    problems = {"key dialog": await _axe(page, axe_js)}

    # The keyboard alone: the key, then into the folder, then a file's details, then out.
    await page.keyboard.type(ADMIN)  # the dialog's field has the focus
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("dialog", name="API key")).to_be_hidden()
    await expect(page.get_by_role("button", name="docs/")).to_be_visible()
    problems["list"] = await _axe(page, axe_js)
    for _ in range(40):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent") == "docs/":
            break
    else:
        raise AssertionError("Tab never reached the folder")
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"  # the focus is visible
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("button", name="Отчёт.pdf", exact=True)).to_be_visible()
    await page.get_by_role("button", name="Отчёт.pdf", exact=True).focus()
    await page.keyboard.press("Enter")
    details = page.get_by_role("dialog", name="Отчёт.pdf")
    await expect(details).to_be_visible()
    problems["details"] = await _axe(page, axe_js)
    await page.keyboard.press("Escape")
    await expect(details).to_be_hidden()
    assert await page.evaluate("document.activeElement.textContent") == "Отчёт.pdf"

    await page.get_by_role("checkbox", name="Select Отчёт.pdf").press("Space")
    await page.get_by_role("button", name="Copy or move").click()
    problems["copy dialog"] = await _axe(page, axe_js)
    await page.keyboard.press("Escape")
    await page.locator("#selection").get_by_role("button", name="Delete").click()
    problems["confirm dialog"] = await _axe(page, axe_js)
    await page.keyboard.press("Escape")
    assert (
        console.read(console.listed("docs/")["Отчёт.pdf"]) == NAMES["Отчёт.pdf"]
    )  # Escape kept it

    small = tmp_path / "small.txt"
    small.write_bytes(b"small")
    await _choose(page, "Upload files", small)
    await _done(page, "small.txt")
    problems["uploads"] = await _axe(page, axe_js)
    assert {view: found for view, found in problems.items() if found} == {}

    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0  # nothing pushes the page sideways
    await assert_clean(console)


# --- /docs and /redoc work offline -----------------------------------------------------------


async def test_api_docs_load_with_no_network(start_console: Any, browser: Browser) -> None:
    console: Console = await start_console("local", False, CONSOLE_ENABLED="false")
    context = await browser.new_context()
    await context.add_init_script(WATCH)
    elsewhere: list[str] = []

    async def only_here(route: Any) -> None:
        if route.request.url.startswith(console.service.url):
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    await context.route("**/*", only_here)
    page = await context.new_page()
    console.pages.append(page)
    page.on("pageerror", lambda error: console.errors.append(str(error)))
    await page.goto(f"{console.service.url}/docs")
    await expect(page.locator(".opblock").first).to_be_visible()
    assert await page.locator(".opblock").count() > 20
    await expect(page.locator("#operations-files-upload_file")).to_be_visible()
    await page.goto(f"{console.service.url}/redoc")
    await expect(page.get_by_role("heading", name="filegate").first).to_be_visible(timeout=30_000)
    assert elsewhere == []
    response = await page.goto(f"{console.service.url}/console/")
    assert response is not None and response.status == 404  # CONSOLE_ENABLED=false
    await assert_clean(console)


# --- Assets ----------------------------------------------------------------------------------


def test_vendored_assets_match_their_recorded_hashes() -> None:
    from app.assets import vendored
    from app.assets.refresh import PACKAGES, VENDOR, integrity

    recorded = vendored()
    assert set(recorded) == {name for _, files in PACKAGES.values() for name in files.values()}
    for name, value in recorded.items():
        assert integrity((VENDOR / name).read_bytes()) == value, f"{name} changed: re-vendor it"


def test_a_changed_vendored_file_is_not_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.assets as assets
    from app.assets import refresh

    copy = tmp_path / "vendor"
    shutil.copytree(refresh.VENDOR, copy)
    tampered = copy / "tus.min.js"
    tampered.write_bytes(tampered.read_bytes() + b"\n;alert(1)")
    monkeypatch.setattr(assets, "VENDOR", copy)
    monkeypatch.setattr(assets, "MANIFEST", copy / "manifest.json")
    loaded = assets.load_assets()
    assert "tus.min.js" not in loaded
    assert "swagger-ui-bundle.js" in loaded


def test_pages_and_assets_are_cached_compressed_and_locked_down(tmp_path: Path) -> None:
    service = Service({"LOCAL_ROOT": str(tmp_path / "data")})
    service.start(tmp_path)
    try:
        with httpx.Client(base_url=service.url) as http:
            assert http.get("/").headers["location"] == "console/"
            page = http.get("/console/")
            assert page.status_code == 200
            csp = page.headers["content-security-policy"]
            script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
            assert script_src.strip() == "script-src 'self'"  # no inline script, no eval
            assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert page.headers["cache-control"] == "no-cache"
            again = http.get("/console/", headers={"If-None-Match": page.headers["etag"]})
            assert again.status_code == 304

            compressed = 0
            urls = [
                u.split('"')[0]
                for u in page.text.split('src="../')[1:] + page.text.split('href="../')[1:]
            ]
            assert len(set(urls)) == 4  # the icon, the stylesheet, two scripts
            for url in set(urls):
                answer = http.get(f"/{url}", headers={"Accept-Encoding": "gzip"})
                assert answer.status_code == 200
                assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
                assert answer.headers["x-content-type-options"] == "nosniff"
                compressed += int(answer.headers["content-length"])
                etag = answer.headers["etag"]
                revalidated = http.get(
                    f"/{url}", headers={"Accept-Encoding": "gzip", "If-None-Match": etag}
                )
                assert revalidated.status_code == 304
            assert compressed <= 300_000, compressed  # the console's whole weight, compressed
            unversioned = http.get("/assets/console.js")
            assert unversioned.headers["cache-control"] == "no-cache"
            assert http.get("/assets/../settings.py").status_code == 404
    finally:
        service.stop()
    assert "Traceback" not in (service.log_path.read_text() if service.log_path else "")


def test_access_says_what_the_key_may_do(tmp_path: Path) -> None:
    keys = [*KEYS, {"name": "scoped", "key": "scoped-key-0123456789", "scopes": ["read", "write"],
                    "folders": ["team/a"]}]  # fmt: skip
    service = Service({"LOCAL_ROOT": str(tmp_path / "data"), "API_KEYS": json.dumps(keys)})
    service.start(tmp_path)
    try:
        with httpx.Client(base_url=service.url) as http:
            assert http.get("/access").status_code == 401
            admin = http.get("/access", headers={"X-API-Key": ADMIN}).json()
            scoped = http.get("/access", headers={"Authorization": "Bearer scoped-key-0123456789"})
    finally:
        service.stop()
    assert admin["key"] == {"name": "admin", "scopes": ["delete", "read", "write"], "buckets": None,
                            "folders": None}  # fmt: skip
    assert admin["open"] is False and admin["warning"] is None
    assert admin["roots"] == [{"prefix": "local:files/", "backend": "local", "bucket": "files"}]
    assert admin["links"] is False and admin["tus"] is True
    assert scoped.json()["roots"] == [
        {"prefix": "local:files/team/a/", "backend": "local", "bucket": "files"}
    ]
    assert scoped.json()["key"]["scopes"] == ["read", "write"]


def test_assets_bundle_is_what_the_page_loads() -> None:
    """Every asset the console page names exists, and the page names no other origin."""
    from app.assets import load_assets, render_page

    assets = load_assets()
    page = render_page("console.html", assets, prefix="../").decode()
    assert "http://" not in page and "https://" not in page
    for name in ("console.js", "console.css", "tus.min.js"):
        assert f"../{assets[name].url}" in page
        assert assets[name].integrity in page
