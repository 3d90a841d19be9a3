"""A PNG of a report page, taken with headless Chromium (a system Chromium or Chrome driven by playwright; nothing
is downloaded, and the page may make no request: any that is not a local file is aborted).

    python -m leankd.report.screenshot runs/report.html docs/findings/report.png [--width 1400] [--viewport]
        [--browser /path/to/chromium]

Without --browser the first of chromium, chromium-browser, google-chrome, google-chrome-stable on PATH is used, else
/usr/bin/chromium. Needs `pip install playwright` (in the `test` extra) and a Chromium (Debian: `apt-get install
chromium`).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from leankd.errors import EXIT_USER, UserError

log = logging.getLogger(__name__)

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")  # looked up on PATH, in order
CHROMIUM = "/usr/bin/chromium"  # the last resort (Debian's package)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class ScreenshotError(UserError):
    """No Chromium to drive (none given, none found), or no playwright to drive it with."""


def find_browser(path: str | None = None) -> str:
    """The browser executable: `path` when given (a file, or a name on PATH), else the first of BROWSERS on PATH,
    else CHROMIUM; ScreenshotError (one line: what was tried, and --browser) when there is none."""
    if path:
        found = path if Path(path).is_file() and os.access(path, os.X_OK) else shutil.which(path)
        if not found:
            raise ScreenshotError(f"--browser {path}: not an executable file or a command on PATH; give the path of a "
                                  "Chromium or Chrome binary")
        return found
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    if Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    raise ScreenshotError(f"no Chromium found: tried {', '.join(BROWSERS)} on PATH and {CHROMIUM}; install one "
                          "(Debian: apt-get install chromium) or pass --browser PATH")


def launch(playwright, executable: str | None = None):
    """A headless Chromium browser from a `sync_playwright()` context (`executable`: see find_browser)."""
    return playwright.chromium.launch(executable_path=find_browser(executable), args=ARGS, headless=True)


def screenshot(html: str | Path, png: str | Path, width: int = 1400, full_page: bool = True,
               browser: str | None = None) -> list[str]:
    """Write a PNG of the page `html` (the whole page unless `full_page` is False); return the URLs of requests
    the page tried to make outside local files (aborted; an empty list for a self-contained page)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise ScreenshotError("playwright is not installed: pip install playwright (it is in leankd's test extra)") \
            from None

    blocked: list[str] = []

    def route(r):
        if r.request.url.startswith("file:"):
            return r.continue_()
        blocked.append(r.request.url)
        return r.abort()

    executable = find_browser(browser)  # before starting playwright: a missing browser is one line, not a trace
    with sync_playwright() as p:
        chromium = launch(p, executable)
        page = chromium.new_page(viewport={"width": width, "height": 900}, device_scale_factor=1)
        page.route("**/*", route)
        page.goto(Path(html).resolve().as_uri())
        page.screenshot(path=str(png), full_page=full_page)
        chromium.close()
    return blocked


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="PNG screenshot of a leankd report page (headless Chromium)")
    ap.add_argument("html", help="the report page, e.g. runs/report.html")
    ap.add_argument("png", help="where to write the PNG")
    ap.add_argument("--width", type=int, default=1400, help="viewport width in CSS pixels (default 1400)")
    ap.add_argument("--viewport", action="store_true", help="only the first screen, not the whole page")
    ap.add_argument("--browser", default=None, metavar="PATH",
                    help=f"Chromium or Chrome executable (default: the first of {', '.join(BROWSERS)} on PATH, "
                         f"else {CHROMIUM})")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        blocked = screenshot(args.html, args.png, args.width, full_page=not args.viewport, browser=args.browser)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USER) from None
    log.info("wrote %s%s", args.png, f"; blocked requests: {blocked}" if blocked else "")


if __name__ == "__main__":
    main()
