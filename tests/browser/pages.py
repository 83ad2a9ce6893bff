"""What the browser tests do on the pages, by the pages' own ids and roles."""

from __future__ import annotations

import json
import re

from playwright.sync_api import Page, expect

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"
# The field that caps the answer's length, per wire.
MAX_FIELD = {"openai": "max_tokens", "successor": "max_tokens", "legacy": "max_new_tokens", "egp": "max_tokens"}
WIRE = {"openai": "openai", "deepinfra": "openai", "legacy": "legacy", "successor": "successor", "egp": "egp"}
ENDED = re.compile(r"^(Done|Refused|Stopped|The answer)")


def open_playground(page: Page, dialect: str | None = None) -> None:
    page.goto("/playground")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    if dialect is not None:
        page.select_option("#dialect", dialect)
    expect(page.locator("body")).to_have_attribute("data-listing", "loaded")


def field(page: Page, dialect: str, name: str):
    """The input of a wire field in the panel shown for `dialect`."""
    return page.locator(f"#{WIRE[dialect]}-{name.replace('.', '-')}")


def greedy(page: Page, dialect: str, tokens: int) -> None:
    field(page, dialect, "temperature").fill("0")
    field(page, dialect, MAX_FIELD[WIRE[dialect]]).fill(str(tokens))


def send(page: Page, text: str, expect_status: str | re.Pattern = "Done.") -> None:
    page.fill("#composer", text)
    page.click("#send")
    expect(page.locator("#status")).to_have_text(ENDED)
    expect(page.locator("#status")).to_have_text(expect_status)


def last_answer(page: Page):
    return page.locator("li.turn-assistant").last


def code(page: Page, tab: str) -> str:
    """The request panel's text under one tab: "curl", "openai", "scale-gp", "httpx", "body"."""
    page.click(f"#tab-{tab}")
    expect(page.locator(f"#tab-{tab}")).to_have_attribute("aria-selected", "true")
    return page.locator("#code").inner_text()


def curl_body(snippet: str) -> dict:
    """The JSON body of a curl command line (`-d '...'`, single quotes escaped the shell's way)."""
    quoted = snippet[snippet.index("-d '") + 4:snippet.rindex("'")]
    return json.loads(quoted.replace("'\\''", "'"))


def stat(page: Page, name: str) -> str:
    return page.locator(f'[data-stat="{name}"]').inner_text()


def usd(text: str) -> float:
    """The number in "$0.0000235 (usage row)"."""
    return float(re.match(r"^\$([0-9.e+-]+)", text).group(1))
