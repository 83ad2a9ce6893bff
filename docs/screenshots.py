"""Take docs/playground.png, docs/playground-tools.png and docs/dashboard.png: a live chatforge
(the bundled model, a fresh database) gets a few minutes of real traffic from two accounts' keys
across the dialects, a rate-limited key included, then Debian's chromium shows both pages.

    PYTHONPATH=src .venv/bin/python docs/screenshots.py        # about ten minutes on two cores
    PYTHONPATH=src .venv/bin/python docs/screenshots.py tools  # playground-tools.png alone (no traffic)
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from playwright.sync_api import expect, sync_playwright

from chatforge.api.app import create_app
from chatforge.platform import accounts, keys
from chatforge.platform.db import create_engine
from chatforge.platform.migrations import upgrade
from chatforge.settings import load_settings

DOCS = Path(__file__).parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Name three primary colours.",
             "How many legs does a spider have?", "Say hello in Spanish.", "What is 12 times 12?"]


async def seed(url: str) -> dict[str, str]:
    """Accounts acme and globex, their products and deployments, and keys: `ops` sees both
    accounts, `acme` is limited to 5 requests a minute."""
    await upgrade(url)
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for name in ("acme", "globex"):
                await accounts.create_account(conn, name)
            ops, _ = await keys.create_key(conn, ["acme", "globex"], name="ops")
            acme, _ = await keys.create_key(conn, ["acme"], name="acme-app", rpm=5)
            globex, _ = await keys.create_key(conn, ["globex"], name="globex-app")
            await accounts.create_product(conn, 10775, "acme", ["smollm2"], name="acme chat")
            await accounts.create_product(conn, 20002, "globex", ["smollm2"], name="globex assistant")
            await accounts.create_deployment(conn, "support-bot", "globex", "smollm2")
    finally:
        await engine.dispose()
    return {"ops": ops, "acme": acme, "globex": globex}


def serve(app) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def traffic(url: str, key: dict[str, str], rounds: int, pause_s: float) -> None:
    """Each round: acme on the OpenAI route and its product, globex on its product and its
    deployment, and a burst of acme's past its limit (refused with 429) every other round."""
    with httpx.Client(base_url=url, timeout=300) as http:
        for n in range(rounds):
            q = QUESTIONS[n % len(QUESTIONS)]
            turn = [{"role": "user", "content": q}]
            acme, globex = {"Authorization": f"Bearer {key['acme']}"}, {"Authorization": f"Bearer {key['globex']}"}
            calls = [
                ("/v1/chat/completions", acme, {"model": "smollm2", "messages": turn, "max_tokens": 12 + 4 * (n % 3)}),
                ("/1/llm/10775", acme, {"messages": turn, "max_new_tokens": 16}),
                ("/1/ai/20002/openai/chat/completions", globex, {"model": "smollm2", "messages": turn, "max_tokens": 24}),
                ("/v4/models/support-bot/chat-completions", {"x-api-key": key["globex"]},
                 {"chat_history": [], "prompt": q, "max_tokens": 8 + 8 * (n % 2)}),
            ]
            if n % 3 == 2:
                calls += calls[:2] * 2  # a burst: acme past 5 a minute
            for path, headers, body in calls:
                r = http.post(path, json=body, headers=headers)
                print(f"round {n}: {path} {r.status_code}", file=sys.stderr)
            time.sleep(pause_s)


WEATHER = ('{"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, '
           '"unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}')


def open_playground(browser, url: str, key: str):
    page = browser.new_context(base_url=url, viewport={"width": 1440, "height": 960}).new_page()
    page.set_default_timeout(300_000)
    page.goto("/playground")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.fill("#key", key)
    page.keyboard.press("Tab")
    expect(page.locator("#model")).not_to_have_value("")
    return page


def shoot_tools(browser, url: str, key: str) -> None:
    """A function called by name, its result sent back as a tool message, and the answer after it."""
    page = open_playground(browser, url, key)
    page.fill("#openai-temperature", "0")
    page.fill("#openai-max_tokens", "48")
    page.click("#openai-tools .add-tool")
    tool = page.locator("#openai-tools fieldset.tool").first
    tool.locator('[data-part="name"]').fill("get_weather")
    tool.locator('[data-part="description"]').fill("Current weather in a city")
    tool.locator('[data-part="parameters"]').fill(WEATHER)
    page.select_option("#openai-tool_choice", "function:get_weather")
    page.fill("#composer", "What is the weather in Paris?")
    page.click("#send")
    expect(page.locator("#status")).to_have_text("Done.")
    page.locator(".call-answer textarea").fill('{"temperature": 21, "sky": "clear"}')
    page.click(".add-result")
    page.select_option("#openai-tool_choice", "none")
    page.click("#send")
    expect(page.locator("#status")).to_have_text("Done.")
    page.evaluate("document.querySelector('[data-field=\"tools\"]').scrollIntoView(); window.scrollTo(0, 0)")
    page.screenshot(path=str(DOCS / "playground-tools.png"))


def shoot(url: str, key: str, only_tools: bool = False) -> None:
    expect.set_options(timeout=300_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        shoot_tools(browser, url, key)
        if only_tools:
            browser.close()
            return
        page = open_playground(browser, url, key)
        page.fill("#system", "You are a helpful assistant. Answer briefly.")
        page.fill("#openai-temperature", "0")
        page.fill("#openai-max_tokens", "24")
        page.check("#openai-logprobs")
        page.fill("#openai-top_logprobs", "4")
        for question in ("What is the capital of France?", "And of Italy?"):
            page.fill("#composer", question)
            page.click("#send")
            expect(page.locator("#status")).to_have_text("Done.")
        page.get_by_role("button", name="Show token probabilities").last.click()
        page.evaluate("window.scrollTo(0, 0); document.querySelector('.side').scrollTo(0, 0)")
        page.locator(".tok").nth(4).hover()
        page.screenshot(path=str(DOCS / "playground.png"))

        page.goto("/dashboard?by=product&window=15m")
        expect(page.locator("body")).to_have_attribute("data-loaded", "1")
        page.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)
        browser.close()


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="chatforge-docs-"))
    url = f"sqlite:///{folder / 'chatforge.db'}"
    key = asyncio.run(seed(url))
    settings = load_settings(database_url=url, prices={"smollm2": {"input": 0.2, "output": 0.6}},
                             engine={"threads": 1})
    only_tools = sys.argv[1:] == ["tools"]
    base, server, thread = serve(create_app(settings))
    try:
        if not only_tools:
            traffic(base, key, rounds=14, pause_s=10)
        shoot(base, key["ops"], only_tools)
    finally:
        server.should_exit = True
        thread.join(30)


if __name__ == "__main__":
    main()
