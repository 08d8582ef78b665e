"""The console's screenshots in docs/console.md and the README: ``uv run python -m tests.screenshots``.

Starts filegate (local disk, with an API key and signed links) on a free loopback port, stores a
few files through the API, and photographs the main views with Debian's Chromium into
``docs/images/``. Run it again after changing how the console looks, and look at the pictures.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
from pathlib import Path
from urllib.parse import quote

import httpx
from playwright.async_api import Page, Route, async_playwright, expect

from tests.servers import Service
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, tiny_png

KEY = "screenshot-key-0123456789"
OUT = Path(__file__).resolve().parent.parent / "docs" / "images"
FILES = {
    "reports/2026": [
        ("Q3 report.pdf", 1_843_112),
        ("Отчёт за квартал.pdf", 912_331),
        ("报告 2026.docx", 48_220),
        ("budget (final) v2.xlsx", 23_991),
        ("notes.txt", 2_114),
    ],
    "reports": [("annual summary.pdf", 3_120_554)],
    "photos": [("beach 🌊.jpg", 2_311_009), ("team photo.png", 0)],
    "": [("README.md", 1_203), ("logo.svg", 4_120)],
}


async def _seed(url: str) -> None:
    rng = random.Random(1)
    headers = {"X-API-Key": KEY}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as api:
        for folder, files in FILES.items():
            for name, size in files:
                body = tiny_png(320, 180) if name.endswith(".png") else rng.randbytes(size)
                if name == "notes.txt":
                    body = "Meeting notes\n- move the legacy files to S3\n- Привет, 世界\n".encode()
                meta = {"X-Meta-Owner": "finance"} if folder.startswith("reports") else {}
                answer = await api.put(
                    f"/files/upload/{quote(name, safe='')}",
                    content=body,
                    params={"folder": folder} if folder else {},
                    headers=meta,
                )
                answer.raise_for_status()


async def _enter(page: Page) -> None:
    dialog = page.get_by_role("dialog", name="API key")
    await dialog.get_by_label("API key").fill(KEY)
    await dialog.get_by_role("button", name="Use this key").click()
    await expect(dialog).to_be_hidden()


async def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        keys = [{"name": "ops", "key": KEY, "scopes": ["read", "write", "delete"]}]
        service = Service(
            {
                "LOCAL_ROOT": str(work / "data"),
                "API_KEYS": json.dumps(keys),
                "SIGNING_SECRET": "s" * 40,
            }
        )
        service.start(work)
        try:
            await _seed(service.url)
            big = work / "site backup 2026-12.tar"
            big.write_bytes(random.Random(2).randbytes(96 * 1024 * 1024))
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
                )
                page = await browser.new_page(viewport={"width": 1440, "height": 900})
                await page.goto(f"{service.url}/console/")
                await page.screenshot(path=OUT / "console-key.png")
                await _enter(page)
                await page.get_by_role("button", name="reports/").click()
                await page.get_by_role("button", name="2026/").click()
                await page.get_by_role("checkbox", name="Select Q3 report.pdf").check()
                await page.get_by_role("checkbox", name="Select 报告 2026.docx").check()
                await expect(page.locator("#summary")).to_contain_text("5 files")
                await page.screenshot(path=OUT / "console-browse.png")

                await page.get_by_role("button", name="Clear selection").click()
                await page.route("**/files/tus/**", _slow)
                async with page.expect_file_chooser() as chooser:
                    await page.get_by_role("button", name="Upload files").click()
                await (await chooser.value).set_files(big)
                row = page.locator("#upload-list li").first
                await expect(row.locator(".status")).to_contain_text("MiB of 96.0 MiB")
                await page.wait_for_timeout(1500)
                await page.get_by_role("button", name="Pause", exact=True).click()
                await page.locator("#uploads").scroll_into_view_if_needed()
                await page.screenshot(path=OUT / "console-upload.png", full_page=True)
                await page.unroute_all(behavior="ignoreErrors")

                await page.goto(f"{service.url}/console/#{quote('local:files/photos/', safe='')}")
                await page.get_by_role("button", name="team photo.png").click()
                details = page.get_by_role("dialog", name="team photo.png")
                await details.get_by_role("button", name="Share link").click()
                await details.get_by_role("button", name="Make link").click()
                await expect(details.locator("#share-result")).to_be_visible()
                await page.screenshot(path=OUT / "console-details.png")
                await page.keyboard.press("Escape")

                phone = await browser.new_page(viewport={"width": 375, "height": 740})
                await phone.goto(f"{service.url}/console/")
                await _enter(phone)
                await phone.get_by_role("button", name="reports/").click()
                await phone.get_by_role("button", name="2026/").click()
                await expect(phone.locator("#summary")).to_contain_text("5 files")
                await phone.screenshot(path=OUT / "console-375px.png")
                await browser.close()
        finally:
            service.stop()
    for picture in sorted(OUT.glob("console-*.png")):
        print(picture.relative_to(OUT.parent.parent), picture.stat().st_size)


async def _slow(route: Route) -> None:
    """Holds each request a moment, so that the picture catches an upload under way."""
    await asyncio.sleep(0.4)
    await route.continue_()


if __name__ == "__main__":
    asyncio.run(main())
