"""The README's screenshots of the console, made from the demo so that they stay true.

    python scripts/screenshots.py            # writes docs/console-feeds.png, docs/console-file.png,
                                             # docs/console-playground.png
    python scripts/screenshots.py FOLDER     # the same pictures into FOLDER (the test does)

Runs `usageplace-batch demo` into a temporary workspace (every sample through the service against
the sandbox), serves the console on it on a free loopback port in this process, and photographs
the feeds page, the file page of the sample with invalid records (filtered to them) and the
mapping playground (an edit of that sample's mapping and its diff over the archived file, not
saved) with Debian's Chromium (/usr/bin/chromium, driven by Playwright; nothing is downloaded).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batch.console.app import InThread, bind, create_app  # noqa: E402
from batch.sandbox.demo import find_examples, run_demo  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
DOCS = ROOT / "docs"


def main(out: Path = DOCS) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="console-screenshots-") as folder:
        workspace = Path(folder) / "demo"
        run_demo(workspace, examples=find_examples(ROOT), echo=lambda text: None)
        console = InThread(create_app(workspace / "service.yaml"), bind("127.0.0.1", 0))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(console.url)
                page.wait_for_selector("table#feeds")
                shoot(page, out / "console-feeds.png")
                link = page.locator("tr.feed[data-feed=invalid_records] a").first
                file_url = console.url.rstrip("/") + str(link.get_attribute("href"))
                page.goto(file_url + "?outcome=invalid")
                page.wait_for_selector("table#events")
                shoot(page, out / "console-file.png")
                # the playground: an edit of the invalid_records mapping (a default description
                # reworded, a usage place code pattern loosened) and its diff over the archived file
                page.goto(console.url + "playground/feed/invalid_records")
                page.wait_for_selector("#playground[data-checked='valid']")
                text = page.locator("#mapping-text").input_value()
                edited = text.replace("Käyttöpaikka katkaistu", "Katkaistu (yön ajossa)").replace(
                    r"pattern: '\d{18}'", r"pattern: '\d{16,18}'")
                assert edited != text, "the demo's invalid_records mapping changed: update this script's edit"
                page.fill("#mapping-text", edited)
                page.wait_for_selector("#playground[data-checked='valid']")
                page.click("#diff-button")
                page.wait_for_selector("#diff-summary")
                shoot(page, out / "console-playground.png")
                browser.close()
        finally:
            console.stop()


def shoot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    if not re.match(r"^3\.(1[0-9]|[2-9][0-9])", sys.version.split()[0]):
        raise SystemExit("Python 3.10 or later")
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS)
