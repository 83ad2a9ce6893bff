"""The playground and the dashboard in a real browser: Debian's chromium driven by Playwright
(never a downloaded browser), against live chatforge servers with the bundled model.

One chromium for the whole folder; each test gets a fresh context (its own session storage) and
a page whose console is watched: any error or warning, or uncaught exception, fails the test. A
test that makes the server refuse a request on purpose names the statuses it expects, since
chromium logs each refused fetch ("Failed to load resource: ... status of 400").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from api.conftest import PRICE_IN, PRICE_OUT, LiveServer
from chatforge.api.app import create_app
from chatforge.settings import load_settings

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]
# The model answers on one core that other tests may share: waits are for minutes, not seconds.
expect.set_options(timeout=120_000)
_REFUSED = re.compile(r"^Failed to load resource: the server responded with a status of (\d{3})\b")


def browser_settings(database_url: str):
    return load_settings(database_url=database_url, prices={"smollm2": {"input": PRICE_IN, "output": PRICE_OUT}},
                         engine={"threads": 1, "max_num_seqs": 8, "kv_cache_mb": 128})


@pytest.fixture(scope="package")
def browser() -> Browser:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"chromium is not installed at {CHROMIUM}: `make system-deps` installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="package")
def browser_catalog(tmp_path_factory):
    """The bundled model, loaded once for the folder (its own engine, freed after it)."""
    from chatforge.service.loading import load_catalog

    catalog = load_catalog(browser_settings(f"sqlite:///{tmp_path_factory.mktemp('unused') / 'x.db'}"))
    yield catalog
    for m in catalog.models:
        m.engine.shutdown(0)


@pytest.fixture(scope="module")
def open_server(browser_catalog, tmp_path_factory):
    """A server in open mode (no key exists) with a database of its own."""
    settings = browser_settings(f"sqlite:///{tmp_path_factory.mktemp('open') / 'chatforge.db'}")
    with LiveServer(create_app(settings, browser_catalog)) as live:
        yield live


@dataclass
class Console:
    """What the page said: console errors and warnings, uncaught exceptions."""

    messages: list[str] = field(default_factory=list)
    allowed: set[int] = field(default_factory=set)  # statuses the test provokes on purpose

    def allow(self, *statuses: int) -> None:
        self.allowed.update(statuses)

    def unexpected(self) -> list[str]:
        def expected(text: str) -> bool:
            refused = _REFUSED.match(text)
            return refused is not None and int(refused.group(1)) in self.allowed

        return [m for m in self.messages if not expected(m.split(": ", 1)[1])]


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page_at(browser, console):
    """A factory: `page_at(server, width=1280)` opens a fresh browser context on that server;
    after the test, the page's console must hold nothing unexpected."""
    contexts = []

    def open_page(server: LiveServer, width: int = 1280, height: int = 900) -> Page:
        context = browser.new_context(base_url=server.url, viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(120_000)  # the model answers on one loaded core
        page.on("console", lambda m: m.type in ("error", "warning") and console.messages.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.messages.append(f"pageerror: {e}"))
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert console.unexpected() == [], "the page logged errors"
