"""``sso-middleware demo`` in headless Chromium: sign in, sign out, an error page.

The demo runs as ``python -m sso_middleware demo``, which starts oidc-provider-mock,
a sample application and the proxy, and prints the address to open. Chromium is
driven through chromedriver, and each test saves a screenshot into its
``tmp_path`` for a person to look at when a test fails.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support import servers
from tests.support.browser import AUTHORIZE_PATH, Browser
from tests.support.servers import AppServer

BANNER_TIMEOUT = 30.0
PAGE_TIMEOUT = 20.0
BANNER_URL = re.compile(r"Open (http://127\.0\.0\.1:\d+/) in your browser")
GREETING = "Hello, alice@example.com!"
SUB_FIELD = 'input[name="sub"]'
# The provider's page has three forms. The one with the text field has its own
# submit button, and the others deny the request or pick a predefined user.
AUTHORIZE_BUTTON = 'form:has(input[name="sub"]) button[type="submit"]'
SIGN_OUT_BUTTON = 'form[action="/_sso/logout"] button[type="submit"]'
END_SESSION_PATH = "/oauth2/end_session"


@dataclass(frozen=True)
class Demo:
    """The running demo and the address that its banner prints."""

    url: str
    server: AppServer


def wait_for_banner(server: AppServer, timeout: float = BANNER_TIMEOUT) -> str:
    """Return the URL that the demo prints once all three servers run."""
    deadline = time.monotonic() + timeout
    while True:
        match = BANNER_URL.search(server.process.log_text())
        if match is not None:
            return match.group(1)
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"the demo printed no address within {timeout} s:\n"
                + server.process.log_tail()
            )
        time.sleep(0.05)


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    with servers.cli_server(["demo", "--port", "{port}"], {}) as server:
        yield Demo(wait_for_banner(server), server)


def path_of(browser: Browser) -> str:
    return urlsplit(browser.current_url).path


def wait_for_path(browser: Browser, path: str) -> None:
    browser.wait_until(
        lambda: path_of(browser) == path, PAGE_TIMEOUT, what=f"the page {path}"
    )


def wait_for_text(browser: Browser, text: str) -> None:
    browser.wait_until(
        lambda: text in browser.page_text(), PAGE_TIMEOUT, what=repr(text)
    )


def sign_in(browser: Browser, demo: Demo, user: str = "alice") -> None:
    """Open the demo, type ``user`` into the provider's form and submit it."""
    browser.open(demo.url)
    wait_for_path(browser, AUTHORIZE_PATH)
    browser.type_text(SUB_FIELD, user)
    browser.click(AUTHORIZE_BUTTON)
    wait_for_text(browser, GREETING)


def session_cookie(browser: Browser) -> str | None:
    for cookie in browser.cookies():
        if cookie["name"] == "sso_session":
            value: str = cookie["value"]
            return value
    return None


def test_demo_prints_loopback_url(demo: Demo) -> None:
    assert demo.url == f"http://127.0.0.1:{demo.server.port}/"


def test_demo_shows_provider_form(demo: Demo, browser: Browser) -> None:
    browser.open(demo.url)
    wait_for_path(browser, AUTHORIZE_PATH)
    assert "Authorize Client" in browser.page_text()
    assert browser.find(SUB_FIELD)


def test_demo_greets_alice(demo: Demo, browser: Browser, tmp_path: Path) -> None:
    sign_in(browser, demo)
    screenshot = browser.screenshot(tmp_path / "demo-signed-in.png")
    text = browser.page_text()
    assert browser.current_url == demo.url
    assert browser.title == "sso-middleware demo"
    assert GREETING in text
    assert "x-forwarded-groups\tstaff" in text
    assert screenshot.stat().st_size > 0


def test_demo_sign_out_ends_session(
    demo: Demo, browser: Browser, tmp_path: Path
) -> None:
    sign_in(browser, demo)
    cookie = session_cookie(browser)
    assert cookie is not None

    browser.click(SIGN_OUT_BUTTON)
    wait_for_path(browser, END_SESSION_PATH)
    browser.screenshot(tmp_path / "demo-signed-out.png")
    # Cookies are scoped to the host, not the port, so the demo's cookies are
    # visible on the provider's page too.
    assert session_cookie(browser) is None

    # The old cookie is rejected even when a client sends it again.
    with httpx.Client(trust_env=False, timeout=PAGE_TIMEOUT) as client:
        response = client.get(
            demo.url + "_sso/userinfo", headers={"Cookie": f"sso_session={cookie}"}
        )
    assert response.status_code == 401


def test_demo_sign_out_returns_to_login(demo: Demo, browser: Browser) -> None:
    sign_in(browser, demo)
    browser.click(SIGN_OUT_BUTTON)
    wait_for_path(browser, END_SESSION_PATH)

    # The provider's "End session" button returns to the demo, which redirects
    # to the provider's form again because the session is gone.
    browser.click('form button[type="submit"]')
    wait_for_path(browser, AUTHORIZE_PATH)
    assert browser.find(SUB_FIELD)


def test_forged_callback_page_readable(
    demo: Demo, browser: Browser, tmp_path: Path
) -> None:
    browser.open(demo.url + "_sso/callback?code=forged-code&state=forged-state")
    screenshot = browser.screenshot(tmp_path / "forged-callback.png")
    text = browser.page_text()
    assert browser.title == "Sign-in failed"
    assert "This sign-in attempt is unknown or has expired." in text
    assert "Sign in again" in text
    assert "Traceback" not in text
    assert screenshot.stat().st_size > 0


def test_forged_callback_offers_sign_in(demo: Demo, browser: Browser) -> None:
    browser.open(demo.url + "_sso/callback?code=forged-code&state=forged-state")
    browser.click("a")
    wait_for_path(browser, AUTHORIZE_PATH)
    assert browser.find(SUB_FIELD)


def test_forged_callback_sets_no_session(demo: Demo, browser: Browser) -> None:
    browser.open(demo.url + "_sso/callback?code=forged-code&state=forged-state")
    assert session_cookie(browser) is None
