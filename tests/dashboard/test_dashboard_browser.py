"""The dashboard in real headless Chromium (Debian's ``chromium``, driven by Playwright's Python package).

Logs in with the admin key, deploys and invokes a function through the API, and waits for the page
to show it, its numbers and a plotly chart; the screenshot goes to the test's tmp dir and to
/tmp/dashboard.png.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TidalServer, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SOURCE = """
import tidal

@tidal.function(name="dash_ui_echo")
def dash_ui_echo(payload):
    print("dashboard saw", payload)
    if payload.get("fail"):
        raise ValueError("asked to fail")
    return payload
"""
CALLS = 6

sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")


def shown(page, selector: str) -> int:  # type: ignore[no-untyped-def]
    """The number the page shows in ``selector`` (0 while it shows none)."""
    text = (page.text_content(selector) or "").strip()
    return int(text) if text.isdigit() else 0


@pytest.fixture
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed: `make browser` installs it")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: the tests may run as root, where Chromium's own sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def test_the_dashboard_shows_a_deployed_function_live(
    tidal_server: TidalServer,
    write_module,  # type: ignore[no-untyped-def]
    browser,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    expect = sync_api.expect
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            page_errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    page.goto(tidal_server.url + "/")

    # Nothing without the key: a wrong one is refused and the data stays hidden.
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()
    page.fill("#key", "not-the-admin-key")
    page.click("#login-form button")
    expect(page.locator("#login-error")).to_contain_text("refused that key (401)")
    page.fill("#key", tidal_server.admin_key)
    page.click("#login-form button")
    expect(page.locator("#main")).to_be_visible()

    result = tidal_server.deploy(write_module(SOURCE, "dash_ui_echo.py"))
    assert result.returncode == 0, result.stderr
    row = page.locator('#functions tr[data-function="dash_ui_echo"]')
    expect(row).to_be_visible(timeout=15_000)
    row.click()
    expect(page.locator("#detail-name")).to_have_text("dash_ui_echo")
    # Two rounds of calls, the second once the page showed the first: the numbers follow live.
    for round_calls in (CALLS // 2, CALLS):
        for number in range(CALLS // 2):
            assert tidal_server.client.post("/fn/dash_ui_echo", json={"n": number}).status_code == 200
        wait_for(lambda: shown(page, "#stat-requests") >= round_calls, 15, f"{round_calls} requests shown")  # noqa: B023
    assert tidal_server.client.post("/fn/dash_ui_echo", json={"fail": True}).status_code == 500
    wait_for(lambda: shown(page, "#stat-errors") >= 1, 15, "the failed call counted as an error")
    expect(page.locator("#activations tbody tr.failed").first).to_contain_text("error (ValueError)")
    expect(row.locator("td.state")).to_have_text("ready", timeout=15_000)
    expect(page.locator("#stat-cold")).not_to_have_text("0")
    # Cost to date from GET /v1/usage (refreshed every few seconds), or "n/a" where a gateway lacks it.
    expect(page.locator("#stat-cost")).to_have_text(re.compile(r"^(\$0\.0*[1-9]\d*|n/a)$"), timeout=15_000)
    # plotly drew the charts (its SVG), with the requests line in it.
    expect(page.locator("#chart-rps .main-svg").first).to_be_visible()
    expect(page.locator("#chart-instances .legendtext", has_text="cold starts")).to_be_visible()
    expect(page.locator("#traffic tbody tr")).to_have_count(1)
    expect(page.locator("#traffic tbody")).to_contain_text("100%")

    # A second revision, then an even split: the traffic table follows.
    source_two = SOURCE.replace("dashboard saw", "dashboard (v2) saw")
    result = tidal_server.deploy(write_module(source_two, "dash_ui_echo.py"), "--no-traffic")
    assert result.returncode == 0, result.stderr
    split = {
        "targets": [
            {"revision": "dash_ui_echo-00001", "percent": 50},
            {"revision": "dash_ui_echo-00002", "percent": 50, "tag": "v2"},
        ]
    }
    assert tidal_server.client.put("/v1/functions/dash_ui_echo/traffic", json=split).status_code == 200
    expect(page.locator("#traffic tbody tr")).to_have_count(2)
    expect(page.locator("#traffic tbody tr", has_text="dash_ui_echo-00002")).to_contain_text("50%")

    page.locator("#activations tbody tr").first.click()  # the failed call, newest first
    expect(page.locator("#logs")).to_contain_text("dashboard saw {'fail': True}")
    expect(page.locator("#logs")).to_contain_text("ValueError: asked to fail")

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copy(shot, "/tmp/dashboard.png")
    print(f"screenshot: {shot} (copied to /tmp/dashboard.png)")
    assert shot.stat().st_size > 10_000
    assert page_errors == []


def test_without_plotly_the_page_says_how_to_get_charts(tidal_server: TidalServer, browser) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    # As if the dashboard extra were missing: the gateway would answer 404 for plotly.min.js.
    page.route("**/plotly.min.js", lambda route: route.fulfill(status=404, body="not installed"))
    page.goto(tidal_server.url + "/")
    page.fill("#key", tidal_server.admin_key)
    page.click("#login-form button")
    expect = sync_api.expect
    expect(page.locator("#no-charts")).to_be_visible()
    expect(page.locator("#no-charts")).to_contain_text("pip install 'tidal[dashboard]'")
    expect(page.locator("#refreshed")).to_contain_text("updated")  # the tables still refresh
