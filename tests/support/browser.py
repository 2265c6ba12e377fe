"""Login drivers: plain HTTP with httpx, and a headless Chromium through chromedriver.

The HTTP driver follows the authorization code flow the way a browser does, and
depends only on the mock provider's pages, never on the middleware's internals:

1. GET the start URL and follow the application's redirects until one points at
   the provider's ``/oauth2/authorize``.
2. GET that URL and check that the provider shows its sign-in form.
3. POST ``sub=<user>`` to the same URL. The provider redirects to the
   ``redirect_uri`` with ``code`` and ``state``.
4. GET that callback on the application with the same cookies, and follow the
   application's redirects on its own origin.

Every request sends ``Accept: text/html`` so that the application treats it as a
navigation.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx

from tests.support.servers import Process, free_port, require_binary

AUTHORIZE_PATH = "/oauth2/authorize"
NAVIGATION_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
}
MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

_Result = TypeVar("_Result")


class LoginError(AssertionError):
    """A step of the login did not get the response a browser would expect."""


@dataclass(frozen=True)
class HttpStep:
    """One request of the login flow, sent by a sync or an async driver."""

    method: str
    url: str
    data: dict[str, str] | None = None


@dataclass(frozen=True)
class LoginResult:
    """The final response of a login and the values seen on the way."""

    response: httpx.Response
    authorize_url: str
    authorize_params: dict[str, str]
    callback_url: str
    callback_params: dict[str, str]
    callback_response: httpx.Response
    visited: list[str] = field(default_factory=list)


# The flow is written once as generators that yield an HttpStep and receive its
# response. _run_sync and _run_async perform the steps with either client.
_Flow = Generator[HttpStep, httpx.Response, _Result]


def query_params(url: str) -> dict[str, str]:
    """Return the query parameters of ``url``, the first value of each."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        params.setdefault(name, value)
    return params


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _redirect_location(response: httpx.Response) -> str | None:
    if response.status_code not in REDIRECT_STATUSES:
        return None
    location: str | None = response.headers.get("location")
    if location is None:
        return None
    return urljoin(str(response.url), location)


def _excerpt(response: httpx.Response, limit: int = 300) -> str:
    return response.text[:limit].replace("\n", " ")


def _path_of(url: str) -> str:
    # Error messages show the path only: a callback URL carries the
    # authorization code.
    return urlsplit(url).path


def _flow_to_provider(start_url: str, visited: list[str]) -> _Flow[str]:
    url = start_url
    for _ in range(MAX_REDIRECTS):
        visited.append(url)
        response = yield HttpStep("GET", url)
        location = _redirect_location(response)
        if location is None:
            raise LoginError(
                f"GET {url} returned {response.status_code} instead of a redirect "
                f"towards the provider's {AUTHORIZE_PATH}: {_excerpt(response)}"
            )
        url = location
        if urlsplit(url).path.endswith(AUTHORIZE_PATH):
            return url
    raise LoginError(
        f"no redirect to {AUTHORIZE_PATH} within {MAX_REDIRECTS} redirects "
        f"from {start_url}"
    )


def _flow_at_provider(authorize_url: str, user: str, visited: list[str]) -> _Flow[str]:
    visited.append(authorize_url)
    form = yield HttpStep("GET", authorize_url)
    if form.status_code != 200:
        raise LoginError(
            f"GET {authorize_url} returned {form.status_code} instead of the "
            f"provider's sign-in form: {_excerpt(form)}"
        )
    if 'name="sub"' not in form.text:
        raise LoginError(
            f"GET {authorize_url} returned a page without the sign-in form's "
            f"'sub' field: {_excerpt(form)}"
        )

    visited.append(authorize_url)
    answer = yield HttpStep("POST", authorize_url, {"sub": user})
    callback_url = _redirect_location(answer)
    if callback_url is None:
        raise LoginError(
            f"POST {authorize_url} returned {answer.status_code} instead of a "
            f"redirect to the redirect_uri: {_excerpt(answer)}"
        )
    params = query_params(callback_url)
    if "code" not in params:
        raise LoginError(
            f"the provider redirected to {_path_of(callback_url)} without a code: "
            f"error={params.get('error')!r} "
            f"error_description={params.get('error_description')!r}"
        )
    return callback_url


def _flow_at_callback(
    callback_url: str, visited: list[str]
) -> _Flow[tuple[httpx.Response, httpx.Response]]:
    visited.append(callback_url)
    callback_response = yield HttpStep("GET", callback_url)
    response = callback_response
    origin = _origin(callback_url)
    for _ in range(MAX_REDIRECTS):
        location = _redirect_location(response)
        # A redirect to another origin (the provider again, for example) is
        # returned as the final response for the test to inspect.
        if location is None or _origin(location) != origin:
            break
        visited.append(location)
        response = yield HttpStep("GET", location)
    return callback_response, response


def _flow_login(start_url: str, user: str) -> _Flow[LoginResult]:
    visited: list[str] = []
    authorize_url = yield from _flow_to_provider(start_url, visited)
    callback_url = yield from _flow_at_provider(authorize_url, user, visited)
    callback_response, response = yield from _flow_at_callback(callback_url, visited)
    return LoginResult(
        response=response,
        authorize_url=authorize_url,
        authorize_params=query_params(authorize_url),
        callback_url=callback_url,
        callback_params=query_params(callback_url),
        callback_response=callback_response,
        visited=visited,
    )


def _run_sync(client: httpx.Client, flow: _Flow[_Result]) -> _Result:
    step = next(flow)
    while True:
        response = client.request(
            step.method,
            step.url,
            data=step.data,
            headers=NAVIGATION_HEADERS,
            follow_redirects=False,
        )
        try:
            step = flow.send(response)
        except StopIteration as stop:
            result: _Result = stop.value
            return result


async def _run_async(client: httpx.AsyncClient, flow: _Flow[_Result]) -> _Result:
    step = next(flow)
    while True:
        response = await client.request(
            step.method,
            step.url,
            data=step.data,
            headers=NAVIGATION_HEADERS,
            follow_redirects=False,
        )
        try:
            step = flow.send(response)
        except StopIteration as stop:
            result: _Result = stop.value
            return result


def login(client: httpx.Client, start_url: str, user: str = "alice") -> LoginResult:
    """Log ``user`` in through the whole flow, starting with a GET of ``start_url``.

    Raises ``LoginError`` (an ``AssertionError``) naming the step that failed.
    """
    return _run_sync(client, _flow_login(start_url, user))


async def login_async(
    client: httpx.AsyncClient, start_url: str, user: str = "alice"
) -> LoginResult:
    """Log ``user`` in like :func:`login`, with an ``httpx.AsyncClient``."""
    return await _run_async(client, _flow_login(start_url, user))


def find_authorize_url(client: httpx.Client, start_url: str) -> str:
    """Follow the application's redirects from ``start_url`` to the provider.

    Returns the authorization URL without requesting it.
    """
    return _run_sync(client, _flow_to_provider(start_url, []))


def authorize_at_provider(
    client: httpx.Client, authorize_url: str, user: str = "alice"
) -> str:
    """Sign ``user`` in at the provider and return the callback URL.

    The callback is not requested, so a test can replay or alter it.
    """
    return _run_sync(client, _flow_at_provider(authorize_url, user, []))


# --- headless Chromium -------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # Traffic goes straight to the loopback servers even when the environment
    # names a proxy.
    "--no-proxy-server",
)
DEFAULT_WINDOW_SIZE = (1280, 800)
BROWSER_TIMEOUT = 60.0
# The key of an element reference in the W3C WebDriver protocol.
ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"


def chromium_binary() -> str:
    """Return the path of the Chromium executable."""
    return require_binary("chromium")


def _window_size_flag(window_size: tuple[int, int]) -> str:
    width, height = window_size
    return f"--window-size={width},{height}"


def chromium_screenshot(
    url: str,
    path: Path | str,
    *,
    window_size: tuple[int, int] = DEFAULT_WINDOW_SIZE,
    timeout: float = BROWSER_TIMEOUT,
) -> Path:
    """Load ``url`` in a new headless Chromium and save a PNG screenshot to ``path``."""
    path = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        args = [
            chromium_binary(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            _window_size_flag(window_size),
            f"--screenshot={path}",
            url,
        ]
        # Chromium starts helper processes, so the whole group is killed when the
        # screenshot hangs or is done.
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            raise TimeoutError(
                f"chromium took more than {timeout} s to screenshot {url}: "
                f"{output.decode(errors='replace')[-2000:]}"
            ) from None
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(
            f"chromium exited with status {process.returncode} without writing "
            f"{path}: {output.decode(errors='replace')[-2000:]}"
        )
    return path


class WebDriverError(RuntimeError):
    """A WebDriver command failed, with the error code chromedriver returned."""

    def __init__(self, command: str, status: int, error: str, message: str) -> None:
        super().__init__(f"{command} failed with {status} {error}: {message}")
        self.error = error


@dataclass(frozen=True)
class ChromeDriver:
    """A running chromedriver, reached through its W3C WebDriver HTTP API."""

    url: str
    process: Process = field(repr=False, compare=False)


def _chromedriver_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            response = httpx.get(f"{url}/status", timeout=2.0, trust_env=False)
            return bool(response.json()["value"]["ready"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return False

    return check


@contextmanager
def start_chromedriver(port: int | None = None) -> Iterator[ChromeDriver]:
    """Run chromedriver on loopback. Each :func:`open_browser` starts a Chromium."""
    binary = require_binary("chromedriver")
    port = port if port is not None else free_port()
    url = f"http://127.0.0.1:{port}"
    args = [binary, f"--port={port}"]
    with Process(args, name="chromedriver", ready=_chromedriver_ready(url)) as process:
        yield ChromeDriver(url=url, process=process)


class Browser:
    """One WebDriver session: a headless Chromium with a fresh profile."""

    def __init__(self, http: httpx.Client, session_url: str) -> None:
        self._http = http
        self._session_url = session_url

    def command(self, method: str, path: str, payload: Any = None) -> Any:
        """Send a WebDriver command for this session and return its ``value``."""
        response = self._http.request(method, self._session_url + path, json=payload)
        return _webdriver_value(f"{method} {path}", response)

    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait for the page to load."""
        self.command("POST", "/url", {"url": url})

    @property
    def current_url(self) -> str:
        url: str = self.command("GET", "/url")
        return url

    @property
    def title(self) -> str:
        title: str = self.command("GET", "/title")
        return title

    def execute(self, script: str, *args: Any) -> Any:
        """Run ``script`` as a function body in the page and return its result."""
        return self.command("POST", "/execute/sync", {"script": script, "args": args})

    def page_text(self) -> str:
        """Return the rendered text of the page body."""
        text: str = self.execute("return document.body ? document.body.innerText : '';")
        return text

    def page_source(self) -> str:
        source: str = self.command("GET", "/source")
        return source

    def find(self, css_selector: str) -> str:
        """Return the WebDriver id of the first element matching ``css_selector``."""
        element = self.command(
            "POST", "/element", {"using": "css selector", "value": css_selector}
        )
        element_id: str = element[ELEMENT_KEY]
        return element_id

    def type_text(self, css_selector: str, text: str) -> None:
        """Type ``text`` into the element matching ``css_selector``."""
        element_id = self.find(css_selector)
        self.command("POST", f"/element/{element_id}/value", {"text": text})

    def click(self, css_selector: str) -> None:
        """Click the element matching ``css_selector``."""
        element_id = self.find(css_selector)
        self.command("POST", f"/element/{element_id}/click", {})

    def cookies(self) -> list[dict[str, Any]]:
        """Return the cookies visible to the current page."""
        cookies: list[dict[str, Any]] = self.command("GET", "/cookie")
        return cookies

    def screenshot(self, path: Path | str) -> Path:
        """Save a PNG screenshot of the viewport to ``path``."""
        path = Path(path)
        encoded: str = self.command("GET", "/screenshot")
        path.write_bytes(base64.b64decode(encoded))
        return path

    def wait_until(
        self, condition: Callable[[], bool], timeout: float = 15.0, what: str = ""
    ) -> None:
        """Poll ``condition`` until it is true, or raise ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"timed out after {timeout} s waiting for {what or 'a condition'}"
                    f" at {self.current_url}"
                )
            time.sleep(0.05)

    def quit(self) -> None:
        """End the session, which closes Chromium."""
        self._http.request("DELETE", self._session_url)


def _webdriver_value(command: str, response: httpx.Response) -> Any:
    try:
        value = response.json()["value"]
    except (ValueError, KeyError) as exc:
        raise WebDriverError(
            command, response.status_code, "invalid response", response.text[:300]
        ) from exc
    if response.status_code != 200:
        error = value.get("error", "unknown error") if isinstance(value, dict) else ""
        message = value.get("message", "") if isinstance(value, dict) else str(value)
        raise WebDriverError(command, response.status_code, error, message)
    return value


@contextmanager
def open_browser(
    driver: ChromeDriver,
    *,
    window_size: tuple[int, int] = DEFAULT_WINDOW_SIZE,
) -> Iterator[Browser]:
    """Start a headless Chromium with a new profile directory, and close it after."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options = {
            "binary": chromium_binary(),
            "args": [
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                _window_size_flag(window_size),
            ],
        }
        capabilities = {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": {"pageLoad": 30_000, "script": 10_000, "implicit": 0},
            "goog:chromeOptions": options,
        }
        with httpx.Client(timeout=BROWSER_TIMEOUT, trust_env=False) as http:
            response = http.post(
                f"{driver.url}/session",
                json={"capabilities": {"alwaysMatch": capabilities}},
            )
            session = _webdriver_value("POST /session", response)
            browser = Browser(http, f"{driver.url}/session/{session['sessionId']}")
            try:
                yield browser
            finally:
                browser.quit()


def browser_login(
    browser: Browser, start_url: str, user: str = "alice", timeout: float = 15.0
) -> str:
    """Open ``start_url``, sign ``user`` in on the provider's form, return the page text.

    The page is the one the application shows after its callback redirects.
    """
    browser.open(start_url)
    browser.wait_until(
        lambda: urlsplit(browser.current_url).path.endswith(AUTHORIZE_PATH),
        timeout,
        what="the provider's sign-in form",
    )
    browser.type_text('input[name="sub"]', user)
    # The form with the text field has its own submit button. The other forms
    # deny the request or pick a predefined user.
    browser.click('form:has(input[name="sub"]) button[type="submit"]')
    browser.wait_until(
        lambda: not urlsplit(browser.current_url).path.endswith(AUTHORIZE_PATH),
        timeout,
        what="the redirect back to the application",
    )
    browser.wait_until(
        lambda: browser.execute("return document.readyState;") == "complete",
        timeout,
        what="the page to load",
    )
    return browser.page_text()
