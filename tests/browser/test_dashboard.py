"""The playground with keys, then `/dashboard` in the same tab: the key lives in the tab's session
storage only, each key chats on what it may use, a rate limit's refusal reads as the dialect sent
it, and the dashboard plots exactly what each key's accounts just did, refusals included.

The cast (api/platform_fixtures.seed): key `both` of alice and bob, limited here to 1 request a
minute; key `carol`; product 2 and deployment d-carol of carol.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import Page, expect

from api.conftest import LiveServer
from api.platform_fixtures import seed
from chatforge.api.app import create_app

from .conftest import browser_settings
from .pages import MODEL, QUESTION, greedy, open_playground, send


@pytest.fixture(scope="module")
def keyed(browser_catalog, tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('keyed') / 'chatforge.db'}"
    # Playwright's sync API holds this thread's event loop: the seeding runs on a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        cast = pool.submit(asyncio.run, seed(url, rpm=1)).result()
    with LiveServer(create_app(browser_settings(url), browser_catalog)) as live:
        yield live, cast


def use_key(page: Page, key: str) -> None:
    page.fill("#key", key)
    page.keyboard.press("Tab")  # the field commits on change


def bars(page: Page, plot: str) -> list[tuple[str, float]]:
    found = page.locator(f"#plot-{plot} rect.bar")
    return sorted((found.nth(i).get_attribute("data-group"), float(found.nth(i).get_attribute("data-value")))
                  for i in range(found.count()))


def loaded(page: Page, times: int) -> None:
    expect(page.locator("body")).to_have_attribute("data-loaded", str(times))


def total(page: Page, name: str) -> str:
    return page.locator(f'[data-total="{name}"]').inner_text()


def test_each_key_sees_its_own_usage_plotted(keyed, page_at, console):
    live, cast = keyed
    console.allow(401, 429)
    page = page_at(live)
    open_playground(page, "openai")
    expect(page.locator("#scope-error .error-head code")).to_have_text("invalid_api_key")  # keys exist now

    use_key(page, cast.carol)
    expect(page.locator("#model")).to_have_value(MODEL)
    expect(page.locator("#scope-error")).to_be_empty()
    assert page.evaluate("[sessionStorage.getItem('chatforge.key'), localStorage.length]") == [cast.carol, 0]
    page.select_option("#dialect", "successor")
    expect(page.locator("body")).to_have_attribute("data-listing", "loaded")
    expect(page.locator("#product")).to_have_value("2")  # carol's only product
    greedy(page, "successor", 4)
    send(page, QUESTION)
    page.select_option("#dialect", "egp")
    expect(page.locator("body")).to_have_attribute("data-listing", "loaded")
    expect(page.locator("#deployment")).to_have_value("d-carol")
    expect(page.locator("#deployment-model")).to_have_text(f"Serves {MODEL}.")
    greedy(page, "egp", 4)
    send(page, QUESTION)

    use_key(page, cast.both)
    page.select_option("#dialect", "openai")
    greedy(page, "openai", 4)
    send(page, QUESTION)
    send(page, "And Germany?", "Refused: 429.")
    expect(page.locator("#error .error-head code")).to_have_text("rate_limit_exceeded")

    page.goto("/dashboard?by=key&window=1h")  # the same tab: the key came along
    loaded(page, 1)
    expect(page.locator("#key")).to_have_value(cast.both)
    assert bars(page, "requests") == [(cast.both_prefix, 1)]
    assert bars(page, "refusals") == [(cast.both_prefix, 1)]
    assert [g for g, _ in bars(page, "tokens")] == [cast.both_prefix]
    assert (total(page, "requests"), total(page, "rate_limited")) == ("1", "1")
    expect(page.locator("#table tbody th")).to_have_text([cast.both_prefix])
    expect(page.locator("#plot-latency circle")).to_have_count(3)  # p50, p90 and p99 of one minute

    use_key(page, cast.carol)
    loaded(page, 2)
    page.select_option("#by", "product")
    loaded(page, 3)
    assert bars(page, "requests") == [("(no product)", 1), ("2", 1)]
    assert bars(page, "refusals") == []
    expect(page.locator("#plot-refusals")).to_contain_text("No refusals in this window.")
    assert total(page, "requests") == "2"
    assert page.evaluate("location.search") == "?by=product&window=1h"

    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


def test_a_new_tab_starts_without_the_key(keyed, page_at, console):
    live, cast = keyed
    console.allow(401)
    page = page_at(live)
    page.goto("/dashboard")
    loaded_or_refused = page.locator("#error .error-head code")
    expect(loaded_or_refused).to_have_text("invalid_api_key")
    expect(page.locator("#key")).to_have_value("")
