"""Headless Chromium for the admin UI tests: Debian's ``/usr/bin/chromium`` driven by Playwright for Python
(``executable_path``; Playwright's own browser downloads are never used), with background networking off and
an empty profile. ``tests/setup/chromium.sh`` installs the browser."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.async_api import BrowserContext, ConsoleMessage, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@dataclass
class BrowserPage:
    page: Page
    context: BrowserContext
    console_errors: list[str] = field(default_factory=list)

    def unexpected_errors(self, *allowed: str) -> list[str]:
        """Console errors and uncaught exceptions, less those containing one of ``allowed``."""
        return [e for e in self.console_errors if not any(a in e for a in allowed)]


@asynccontextmanager
async def chromium_page(profile: Path, viewport: dict[str, int] | None = None) -> AsyncIterator[BrowserPage]:
    """A page in a fresh Chromium profile that records console errors and page exceptions."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=ARGS, viewport=viewport or DESKTOP)
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(15_000)
            result = BrowserPage(page, context)

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    result.console_errors.append(message.text)

            page.on("console", on_console)
            page.on("pageerror", lambda error: result.console_errors.append(f"uncaught: {error}"))
            yield result
        finally:
            await context.close()
