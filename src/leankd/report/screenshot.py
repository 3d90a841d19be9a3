"""A PNG of a report page, taken with headless Chromium (the system's /usr/bin/chromium driven by playwright;
nothing is downloaded, and the page may make no request: any that is not a local file is aborted).

    python -m leankd.report.screenshot runs/report.html docs/findings/report.png [--width 1400] [--viewport]

Needs `pip install playwright` (in the `test` extra) and a Chromium (Debian: `apt-get install chromium`).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch(playwright, executable: str = CHROMIUM):
    """A headless Chromium browser from a `sync_playwright()` context."""
    return playwright.chromium.launch(executable_path=executable, args=ARGS, headless=True)


def screenshot(html: str | Path, png: str | Path, width: int = 1400, full_page: bool = True) -> list[str]:
    """Write a PNG of the page `html` (the whole page unless `full_page` is False); return the URLs of requests
    the page tried to make outside local files (aborted; an empty list for a self-contained page)."""
    from playwright.sync_api import sync_playwright

    blocked: list[str] = []

    def route(r):
        if r.request.url.startswith("file:"):
            return r.continue_()
        blocked.append(r.request.url)
        return r.abort()

    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": width, "height": 900}, device_scale_factor=1)
        page.route("**/*", route)
        page.goto(Path(html).resolve().as_uri())
        page.screenshot(path=str(png), full_page=full_page)
        browser.close()
    return blocked


def main() -> None:
    ap = argparse.ArgumentParser(description="PNG screenshot of a leankd report page (headless Chromium)")
    ap.add_argument("html", help="the report page, e.g. runs/report.html")
    ap.add_argument("png", help="where to write the PNG")
    ap.add_argument("--width", type=int, default=1400, help="viewport width in CSS pixels (default 1400)")
    ap.add_argument("--viewport", action="store_true", help="only the first screen, not the whole page")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    blocked = screenshot(args.html, args.png, args.width, full_page=not args.viewport)
    log.info("wrote %s%s", args.png, f"; blocked requests: {blocked}" if blocked else "")


if __name__ == "__main__":
    main()
