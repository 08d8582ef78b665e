"""How the web console copes with a large folder, in Chromium: ``uv run python -m bench.console``.

Starts filegate in memory mode (stores fast, so the run measures the page), stores 5,000 and then
50,000 small files in one folder through the batch upload, and for each size opens the console
on that folder and reports: the seconds until the first page of rows shows the full count (every
listing request made and the table drawn), the milliseconds of a redraw (a page turn or a
checkbox), of a sort by size and of a filter, the rows in the document and the JavaScript heap.
Wall-clock figures: they move with the machine's load (docs/console.md, "Browsing").
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import httpx
from playwright.async_api import async_playwright, expect

from tests.servers import Service
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

MEASURE = """() => {
  const ms = (work) => { const t = performance.now(); work(); return performance.now() - t; };
  const redraw = ms(() => { for (let i = 0; i < 10; i++) draw(); }) / 10;
  const sort = ms(() => { state.sort = {by: "size", dir: -1}; draw(); });
  const filter = ms(() => { state.filter = "file-0042"; draw(); });
  return {redraw, sort, filter, rows: document.querySelectorAll("#rows tr").length,
          heap: performance.memory ? performance.memory.usedJSHeapSize : 0};
}"""


async def measure(url: str, count: int) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        page = await browser.new_page()
        started = time.perf_counter()
        await page.goto(f"{url}/console/#memory%3Afiles%2Fmany%2F")
        await expect(page.locator("#page-info")).to_have_text(
            f"Rows 1\u2013100 of {count:,}", timeout=300_000
        )
        listed = time.perf_counter() - started
        rows = await page.locator("#rows tr").count()
        found = await page.evaluate(MEASURE)
        print(
            f"{count:>6,} files: listed and drawn in {listed:.2f} s ({rows} rows in the document);"
            f" redraw {found['redraw']:.1f} ms, sort by size {found['sort']:.1f} ms,"
            f" filter {found['filter']:.1f} ms; JS heap {found['heap'] / 1e6:.1f} MB"
        )
        await browser.close()


async def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        service = Service(
            {"STORAGE_MODE": "memory", "MAX_BATCH_FILES": "1000", "MEMORY_MAX_SIZE": "1GiB"}
        )
        service.start(Path(scratch))
        try:
            async with httpx.AsyncClient(base_url=service.url, timeout=120) as api:
                for batch in range(50):
                    files = [
                        ("files", (f"file-{i:05d}.txt", b"x" * (i % 300 + 1)))
                        for i in range(batch * 1000, (batch + 1) * 1000)
                    ]
                    answer = await api.post(
                        "/files/batch-upload", files=files, data={"folder": "many"}
                    )
                    answer.raise_for_status()
                    if batch == 4:
                        await measure(service.url, 5_000)
            await measure(service.url, 50_000)
        finally:
            service.stop()


if __name__ == "__main__":
    asyncio.run(main())
