"""Attacks on the middleware, each a table of hostile inputs.

Most cases go over real HTTP on loopback: a Flask application behind the WSGI
middleware, served by werkzeug, and a Starlette application behind the ASGI
middleware, served by uvicorn, with the mock OpenID provider. Cases whose bytes an
HTTP server rejects before the middleware receives them (CR or LF inside a header
value) call the adapters in-process, because the middleware must not rely on every
server in front of it doing that check.

A redirect target is judged the way a browser reads it: tabs and newlines are
removed, a backslash counts as a slash (WHATWG URL standard, "special" schemes),
and the result is resolved against ``https://site.example/``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import httpx
import pytest

from sso_middleware import Settings, SSOMiddleware
from sso_middleware._http import safe_return_path
from sso_middleware._session import CookieCodec
from tests.support import servers
from tests.support.apps import create_flask_app, create_starlette_app
from tests.support.browser import (
    NAVIGATION_HEADERS,
    LoginResult,
    authorize_at_provider,
    login,
    query_params,
)
from tests.support.servers import Provider
from tests.support.threads import serve_asgi, serve_wsgi

JSON = {"Accept": "application/json"}
SITE = "https://site.example/"
PUBLIC_PATHS = "/public/*,/healthz"
OTHER_KEY = "another-secret-key-that-is-long-enough-0123"
STATE_PREFIX = "sso_session.state."


# --- where a browser goes --------------------------------------------------------


def browser_destination(location: str) -> str:
    """Resolve a Location value as a browser would, from ``https://site.example/``.

    The WHATWG URL parser strips leading and trailing C0 controls and spaces,
    removes every tab and newline, and reads a backslash as a slash in http(s) URLs.
    """
    cleaned = location.strip("".join(chr(code) for code in range(0x21)))
    for character in "\t\r\n":
        cleaned = cleaned.replace(character, "")
    cleaned = cleaned.replace("\\", "/")
    return urljoin(SITE, cleaned)


def assert_same_site_path(location: str) -> None:
    assert location.startswith("/")
    assert not location.startswith("//")
    assert not location.startswith("/\\")
    assert urlsplit(location).scheme == ""
    assert urlsplit(browser_destination(location)).hostname == "site.example"


def has_header_break(headers: list[tuple[str, str]]) -> bool:
    return any(
        "\r" in name or "\n" in name or "\r" in value or "\n" in value
        for name, value in headers
    )


def session_set_cookies(response: httpx.Response) -> list[str]:
    """Return the Set-Cookie headers that give ``sso_session`` a value."""
    return [
        value
        for value in response.headers.get_list("set-cookie")
        if value.startswith("sso_session=") and not value.startswith("sso_session=;")
    ]


# --- signed values, forged with the key or another -------------------------------


def cookie_codec(secret_key: str) -> CookieCodec:
    """Return the middleware's cookie signer for ``secret_key``.

    Forged cookies are built with it, so they follow the cookie format of the
    middleware under test. Only the secret key matters to the signatures.
    """
    values: dict[str, Any] = {
        "issuer": "http://127.0.0.1:9",
        "client_id": servers.CLIENT_ID,
        "client_secret": servers.CLIENT_SECRET,
        "secret_key": secret_key,
    }
    return CookieCodec(Settings(**values))


CODEC = cookie_codec(servers.SECRET_KEY)
OTHER_CODEC = cookie_codec(OTHER_KEY)


@contextmanager
def signed_in_past(seconds: int) -> Iterator[None]:
    """Date the itsdangerous signatures made inside the block ``seconds`` ago.

    The servers of this module are idle while the block runs, so no verification
    reads the shifted clock.
    """

    class PastClock:
        @staticmethod
        def time() -> float:
            return time.time() - seconds

    # itsdangerous.timed reads the clock as time.time(), through its module global.
    with mock.patch("itsdangerous.timed.time", PastClock):
        yield


def session_payload(sub: str = "alice", *, lifetime: int = 3600) -> dict[str, Any]:
    payload = CODEC.new_session_payload({"sub": sub})
    payload["exp"] = payload["iat"] + lifetime
    return payload


def sign_session(
    payload: dict[str, Any], *, codec: CookieCodec = CODEC, age: int = 0
) -> str:
    with signed_in_past(age):
        return codec.dump_session(payload)


# --- the protected sites ---------------------------------------------------------


@dataclass
class Site:
    """An application behind the middleware, served over HTTP on loopback."""

    url: str
    interface: str
    middleware: Any
    client: httpx.Client

    def get(
        self,
        target: str,
        headers: Mapping[str, str] | Mapping[bytes, bytes] | None = None,
    ) -> httpx.Response:
        return self.client.get(self.url + target, headers=headers or JSON)

    def raw_get(self, target: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """GET ``target`` exactly as given, without httpx normalizing it."""
        return self.client.get(self.url, headers=headers, extensions={"target": target})

    def navigate(self, target: str, **headers: str) -> httpx.Response:
        return self.client.get(
            self.url + target, headers={**NAVIGATION_HEADERS, **headers}
        )

    def login(self, target: str = "/whoami", user: str = "alice") -> LoginResult:
        return login(self.client, self.url + target, user=user)


@dataclass
class Served:
    url: str
    middleware: Any


MakeSite = Callable[..., Site]


def base_settings(provider: Provider, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "issuer": provider.issuer,
        "client_id": servers.CLIENT_ID,
        "client_secret": servers.CLIENT_SECRET,
        "secret_key": servers.SECRET_KEY,
        "public_paths": PUBLIC_PATHS,
    }
    return Settings(**{**values, **overrides})


def protect(interface: str, settings: Settings) -> Any:
    app = create_flask_app() if interface == "wsgi" else create_starlette_app()
    return SSOMiddleware(app, settings)


@pytest.fixture(scope="module", params=["wsgi", "asgi"])
def interface(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def served(interface: str, provider: Provider) -> Iterator[Served]:
    """The default site of the module: public paths ``/public/*`` and ``/healthz``."""
    middleware = protect(interface, base_settings(provider))
    serve = serve_wsgi if interface == "wsgi" else serve_asgi
    with serve(middleware) as url:
        yield Served(url, middleware)


@pytest.fixture
def site(served: Served, interface: str) -> Iterator[Site]:
    """The default site with a new client, so no cookies carry over."""
    with httpx.Client(trust_env=False, timeout=10) as client:
        yield Site(served.url, interface, served.middleware, client)


@pytest.fixture
def make_site(interface: str, provider: Provider) -> Iterator[MakeSite]:
    """Serve a site with its own settings; stopped when the test ends."""
    with ExitStack() as stack:

        def make(**overrides: Any) -> Site:
            middleware = protect(interface, base_settings(provider, **overrides))
            serve = serve_wsgi if interface == "wsgi" else serve_asgi
            url = stack.enter_context(serve(middleware))
            client = stack.enter_context(httpx.Client(trust_env=False, timeout=10))
            return Site(url, interface, middleware, client)

        yield make


@pytest.fixture(scope="module")
def alice_cookie(served: Served) -> str:
    """A session cookie from a real login at the default site, never logged out."""
    with httpx.Client(trust_env=False, timeout=10) as client:
        login(client, served.url + "/whoami")
        value = client.cookies.get("sso_session")
    assert value is not None
    return value


# --- in-process calls, for bytes that HTTP servers reject --------------------------


@dataclass
class Captured:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header_names(self) -> list[str]:
        return [name.lower() for name, _ in self.headers]


def call_wsgi(
    middleware: Any, path: str, query: str, headers: dict[str, str], client: str
) -> Captured:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "site.example",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": client,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    captured = Captured(0)

    def start_response(status: str, response_headers: Any, exc_info: Any = None) -> Any:
        captured.status = int(status.split()[0])
        captured.headers = list(response_headers)

    captured.body = b"".join(middleware(environ, start_response))
    return captured


def call_asgi(
    middleware: Any, path: str, query: str, headers: dict[str, str], client: str
) -> Captured:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": quote(path).encode("ascii"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in headers.items()
        ],
        "client": (client, 50000),
        "server": ("site.example", 80),
    }
    captured = Captured(0)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            captured.status = message["status"]
            captured.headers = [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in message.get("headers", [])
            ]
        elif message["type"] == "http.response.body":
            captured.body += message.get("body", b"")

    async def run() -> None:
        try:
            await middleware(scope, receive, send)
        finally:
            await middleware.aclose()

    asyncio.run(run())
    return captured


def call_in_process(
    interface: str,
    settings: Settings,
    path: str,
    query: str = "",
    headers: dict[str, str] | None = None,
    client: str = "127.0.0.1",
) -> Captured:
    """Send one GET to a new middleware in this process, bypassing any server."""
    middleware = protect(interface, settings)
    call = call_wsgi if interface == "wsgi" else call_asgi
    return call(middleware, path, query, headers or {}, client)


# --- open redirect through the return path ---------------------------------------

# Each value and what safe_return_path turns it into: "/" for anything a browser
# could read as another origin, and otherwise the path, percent-encoded to ASCII.
OPEN_REDIRECTS = [
    pytest.param("//evil.example", "/", id="network-path"),
    pytest.param("/\\evil.example", "/", id="slash-backslash"),
    pytest.param("/%09/evil.example", "/", id="encoded-tab"),
    pytest.param("/%0a/evil.example", "/", id="encoded-newline"),
    pytest.param("/%0d/evil.example", "/", id="encoded-cr"),
    pytest.param("/./\\evil.example", "/", id="dot-backslash"),
    pytest.param("////evil.example", "/", id="four-slashes"),
    pytest.param("https:\\\\evil.example", "/", id="scheme-backslashes"),
    pytest.param("https:1029415385", "/", id="scheme-decimal-host"),
    pytest.param("https:/evil.example", "/", id="scheme-one-slash"),
    pytest.param("https:evil.example", "/", id="scheme-no-slash"),
    pytest.param("http://site@evil.example/", "/", id="userinfo"),
    pytest.param("//site.example@evil.example", "/", id="network-userinfo"),
    pytest.param("javascript:alert(1)", "/", id="javascript"),
    pytest.param("JaVaScRiPt:alert(1)", "/", id="javascript-mixed-case"),
    pytest.param("HtTpS://evil.example", "/", id="https-mixed-case"),
    pytest.param("data:text/html,x", "/", id="data"),
    pytest.param("vbscript:msgbox(1)", "/", id="vbscript"),
    pytest.param(
        "/\uff0e\uff0e/evil.example",
        "/%EF%BC%8E%EF%BC%8E/evil.example",
        id="fullwidth-dots-path",
    ),
    pytest.param("//evil\uff0eexample", "/", id="fullwidth-dot-host"),
    pytest.param(
        "/\uff0f\uff0fevil.example",
        "/%EF%BC%8F%EF%BC%8Fevil.example",
        id="fullwidth-slashes",
    ),
    pytest.param("\uff0f\uff0fevil.example", "/", id="fullwidth-slashes-bare"),
    pytest.param(" https://evil.example", "/", id="space-before-scheme"),
    pytest.param("\t//evil.example", "/", id="tab-before-slashes"),
    pytest.param("/\t/evil.example", "/", id="tab-between-slashes"),
    pytest.param("/\n/evil.example", "/", id="newline-between-slashes"),
    pytest.param("/\r/evil.example", "/", id="cr-between-slashes"),
    pytest.param("/\x0b/evil.example", "/", id="vertical-tab"),
    pytest.param("/\x0c/evil.example", "/", id="form-feed"),
    pytest.param("/ /evil.example", "/", id="space-between-slashes"),
    pytest.param("/%20/evil.example", "/", id="encoded-space"),
    pytest.param("/%2f%2fevil.example", "/", id="encoded-slashes"),
    pytest.param("/%2F/evil.example", "/", id="encoded-slash-upper"),
    pytest.param("%2f%2fevil.example", "/", id="encoded-slashes-bare"),
    pytest.param("/%5cevil.example", "/", id="encoded-backslash"),
    pytest.param("/%5C%5Cevil.example", "/", id="encoded-backslashes"),
    pytest.param("\\/\\/evil.example", "/", id="backslash-slash-pairs"),
    pytest.param("/\\/evil.example", "/", id="slash-backslash-slash"),
    pytest.param("///\\evil.example", "/", id="three-slashes-backslash"),
    pytest.param("/\u2215evil.example", "/%E2%88%95evil.example", id="division-slash"),
    pytest.param("\u2215\u2215evil.example", "/", id="division-slashes-bare"),
    pytest.param(
        "/\ufe68evil.example", "/%EF%B9%A8evil.example", id="small-reverse-solidus"
    ),
    pytest.param(
        "/\uff3cevil.example", "/%EF%BC%BCevil.example", id="fullwidth-backslash"
    ),
    pytest.param("/%00/evil.example", "/", id="encoded-nul"),
    pytest.param("/\x00/evil.example", "/", id="nul"),
    pytest.param("\x00//evil.example", "/", id="leading-nul"),
    pytest.param("/\x7f/evil.example", "/", id="delete-character"),
    pytest.param("/.%2e/evil.example", "/.%2e/evil.example", id="encoded-dot-dot"),
    pytest.param("/..//evil.example", "/..//evil.example", id="dot-dot-slashes"),
    pytest.param("//[::1]/", "/", id="ipv6-loopback"),
    pytest.param("//[::ffff:7f00:1]/", "/", id="ipv6-mapped"),
    pytest.param("http://[::1]@evil.example", "/", id="ipv6-userinfo"),
    pytest.param("/@evil.example", "/@evil.example", id="at-path"),
    pytest.param("/%c0%af/evil.example", "/%c0%af/evil.example", id="overlong-slash"),
    pytest.param("/%c0%ae%c0%ae/", "/%c0%ae%c0%ae/", id="overlong-dots"),
    pytest.param(
        "/%252f%252fevil.example", "/%252f%252fevil.example", id="double-encoded"
    ),
    pytest.param("/;//evil.example", "/;//evil.example", id="semicolon-slashes"),
    pytest.param("/?//evil.example", "/?//evil.example", id="query-slashes"),
    pytest.param("/#//evil.example", "/#//evil.example", id="fragment-slashes"),
    pytest.param("\u202e//evil.example", "/", id="right-to-left-override"),
    pytest.param(
        "/\u3000/evil.example", "/%E3%80%80/evil.example", id="ideographic-space"
    ),
    pytest.param("//evil.example%2f..", "/", id="network-path-dot-dot"),
    pytest.param("/" + "a" * 3000, "/", id="too-long"),
]


@pytest.mark.parametrize(("value", "expected"), OPEN_REDIRECTS)
def test_return_path_function(value: str, expected: str) -> None:
    result = safe_return_path(value)
    assert result == expected
    assert_same_site_path(result)


@pytest.mark.parametrize(("value", "expected"), OPEN_REDIRECTS)
def test_login_next_stays_on_site(site: Site, value: str, expected: str) -> None:
    result = site.login("/_sso/login?next=" + quote(value, safe=""))
    callback = result.callback_response
    assert callback.status_code == 302
    assert session_set_cookies(callback)
    location = callback.headers["location"]
    assert location == expected
    assert_same_site_path(location)


# The original URL of a navigation is the return address after login. These targets
# reach the server unchanged, as a crafted link or a raw client sends them.
NAVIGATION_TARGETS = [
    pytest.param(b"//evil.example/x", id="network-path"),
    pytest.param(b"/\\evil.example", id="backslash"),
    pytest.param(b"/%5cevil.example", id="encoded-backslash"),
    pytest.param(b"/%2f%2fevil.example", id="encoded-slashes"),
    pytest.param(b"/%09/evil.example", id="encoded-tab"),
    pytest.param(b"/a%0d%0aX-Injected:1", id="encoded-crlf"),
    pytest.param(b"/a%E5%98%8A%E5%98%8DX-Injected:1", id="utf8-crlf-lookalike"),
    pytest.param(b"/x?next=//evil.example", id="query"),
]


@pytest.mark.parametrize("target", NAVIGATION_TARGETS)
def test_original_url_stays_on_site(site: Site, target: bytes) -> None:
    start = site.raw_get(target, NAVIGATION_HEADERS)
    assert start.status_code == 302
    assert "x-injected" not in start.headers
    callback_url = authorize_at_provider(site.client, start.headers["location"])
    callback = site.client.get(callback_url, headers=NAVIGATION_HEADERS)
    assert callback.status_code == 302
    assert "x-injected" not in callback.headers
    assert_same_site_path(callback.headers["location"])


# --- header injection ------------------------------------------------------------

INJECTED_NEXT = [
    pytest.param("/a\r\nX-Injected: 1", "/", id="crlf"),
    pytest.param("/a\r\nX-Injected:1", "/", id="crlf-no-space"),
    pytest.param("/a\nX-Injected:1", "/", id="lf"),
    pytest.param("/a\rX-Injected:1", "/", id="cr"),
    pytest.param("/a%0d%0aX-Injected:1", "/", id="encoded-crlf"),
    pytest.param("/a%0D%0AX-Injected:1", "/", id="encoded-crlf-upper"),
    pytest.param("/a\u0085X-Injected:1", "/a%C2%85X-Injected:1", id="next-line"),
    pytest.param(
        "/a\u560a\u560dX-Injected:1",
        "/a%E5%98%8A%E5%98%8DX-Injected:1",
        id="utf8-crlf-lookalike",
    ),
    pytest.param(
        "/a\u2028X-Injected:1", "/a%E2%80%A8X-Injected:1", id="line-separator"
    ),
]


@pytest.mark.parametrize(("value", "expected"), INJECTED_NEXT)
def test_next_injects_no_header(site: Site, value: str, expected: str) -> None:
    result = site.login("/_sso/login?next=" + quote(value, safe=""))
    callback = result.callback_response
    assert callback.status_code == 302
    assert "x-injected" not in callback.headers
    assert callback.headers["location"] == expected


# Header values that carry CR or LF cannot arrive over HTTP/1.1 (RFC 9110 5.5), so
# these go to the adapters directly: the middleware must not echo them.
INJECTED_HOSTS = [
    pytest.param({"Host": "site.example\r\nX-Injected: 1"}, "", id="host-crlf"),
    pytest.param({"Host": "site.example\nX-Injected: 1"}, "", id="host-lf"),
    pytest.param(
        {"X-Forwarded-Host": "site.example\r\nX-Injected: 1"},
        "127.0.0.1",
        id="forwarded-host-crlf",
    ),
    pytest.param(
        {"X-Forwarded-Proto": "https\r\nX-Injected: 1"},
        "127.0.0.1",
        id="forwarded-proto-crlf",
    ),
]


@pytest.mark.parametrize(("headers", "trusted"), INJECTED_HOSTS)
@pytest.mark.parametrize("path", ["/whoami", "/_sso/logout", "/_sso/login"])
def test_host_injects_no_header(
    interface: str,
    provider: Provider,
    headers: dict[str, str],
    trusted: str,
    path: str,
) -> None:
    settings = base_settings(provider, trusted_proxies=trusted)
    request_headers = {
        "Accept": "text/html",
        "Sec-Fetch-Site": "same-origin",
        **headers,
    }
    captured = call_in_process(interface, settings, path, headers=request_headers)
    assert captured.status < 500
    assert not has_header_break(captured.headers)
    assert "x-injected" not in captured.header_names()


def test_callback_state_injects_no_header(interface: str, provider: Provider) -> None:
    state = "a\r\nX-Injected:1"
    captured = call_in_process(
        interface,
        base_settings(provider),
        "/_sso/callback",
        query="code=x&state=" + quote(state, safe=""),
        headers={"Cookie": f"{STATE_PREFIX}{state}=v", "Accept": "application/json"},
    )
    assert captured.status == 400
    assert not has_header_break(captured.headers)


def test_identity_claims_inject_no_header(site: Site, provider: Provider) -> None:
    """A user who names themselves with CR LF at the provider cannot add headers."""
    provider.set_user(
        "crlf-user",
        {
            "email": "crlf@example.com\r\nX-Injected: 1",
            "name": "Eve\r\nX-Injected: 1",
            "preferred_username": "eve\nX-Injected: 1",
            "groups": ["staff\r\nX-Injected: 1"],
        },
    )
    site.login(user="crlf-user")
    response = site.get("/_sso/check")
    assert response.status_code == 200
    assert "x-injected" not in response.headers
    assert response.headers["x-forwarded-user"] == "crlf-user"
    assert "x-forwarded-email" not in response.headers
    assert "x-forwarded-groups" not in response.headers


# --- spoofed identity ------------------------------------------------------------

SPOOFED_HEADERS = [
    pytest.param("X-Forwarded-User", id="user"),
    pytest.param("X-Forwarded-Email", id="email"),
    pytest.param("X-Forwarded-Groups", id="groups"),
    pytest.param("X-Forwarded-Preferred-Username", id="preferred-username"),
    pytest.param("X-Forwarded-Access-Token", id="access-token"),
    pytest.param("Remote-User", id="remote-user"),
    pytest.param("X-Remote-User", id="x-remote-user"),
    pytest.param("X-Auth-Request-User", id="auth-request-user"),
    pytest.param("X-Forwarded_User", id="underscore-user"),
    pytest.param("X_Forwarded_Email", id="underscores-email"),
    pytest.param("X-Forwarded_Preferred_Username", id="underscores-username"),
    pytest.param("Remote_User", id="underscore-remote-user"),
    pytest.param("x-forwarded-user", id="lower-case"),
    pytest.param("X-FORWARDED-GROUPS", id="upper-case"),
]


def normalized_names(headers: dict[str, str]) -> set[str]:
    return {name.lower().replace("_", "-") for name in headers}


@pytest.mark.parametrize("name", SPOOFED_HEADERS)
@pytest.mark.parametrize(
    ("path", "signed_in"),
    [
        pytest.param("/whoami", True, id="protected-signed-in"),
        pytest.param("/public/x", False, id="public-anonymous"),
        pytest.param("/public/x", True, id="public-signed-in"),
    ],
)
def test_spoofed_identity_never_reaches_app(
    site: Site, alice_cookie: str, name: str, path: str, signed_in: bool
) -> None:
    headers = {**JSON, name: "mallory"}
    if signed_in:
        headers["Cookie"] = f"sso_session={alice_cookie}"
    response = site.get(path, headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert name.lower().replace("_", "-") not in normalized_names(body["headers"])
    assert "mallory" not in str(body["headers"])
    assert body.get("remote_user") in (None, "alice")
    assert body["user"]["is_authenticated"] is signed_in


def test_spoofed_identity_in_process(interface: str, provider: Provider) -> None:
    """The adapters drop identity headers whatever the server did with the name."""
    headers = {name: "mallory" for name in ("X-Forwarded-User", "Remote-User")}
    captured = call_in_process(
        interface, base_settings(provider), "/public/x", headers={**JSON, **headers}
    )
    assert captured.status == 200
    assert b"mallory" not in captured.body


# X-Forwarded-Host and -Proto come from a proxy only when the peer is trusted. The
# derived redirect_uri in the authorization URL shows which origin was believed.
FORWARDED = {"X-Forwarded-Host": "proxy.example", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize(
    ("trusted", "headers", "believed"),
    [
        pytest.param("", FORWARDED, False, id="untrusted"),
        pytest.param("10.0.0.0/8", FORWARDED, False, id="other-network"),
        pytest.param("127.0.0.1", FORWARDED, True, id="trusted-address"),
        pytest.param("127.0.0.0/8", FORWARDED, True, id="trusted-network"),
        pytest.param(
            "",
            {"Forwarded": "for=1.2.3.4;host=proxy.example;proto=https"},
            False,
            id="rfc7239-untrusted",
        ),
        pytest.param(
            "10.0.0.0/8",
            {**FORWARDED, "X-Forwarded-For": "10.1.2.3"},
            False,
            id="forwarded-for-spoof",
        ),
    ],
)
def test_forwarded_host_needs_trust(
    make_site: MakeSite, trusted: str, headers: dict[str, str], believed: bool
) -> None:
    site = make_site(trusted_proxies=trusted)
    response = site.navigate("/whoami", **headers)
    assert response.status_code == 302
    params = query_params(response.headers["location"])
    state_cookie = response.headers["set-cookie"]
    if believed:
        assert params["redirect_uri"] == "https://proxy.example/_sso/callback"
        assert "Secure" in state_cookie
    else:
        assert params["redirect_uri"] == site.url + "/_sso/callback"
        assert "Secure" not in state_cookie


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("evil.example/x", id="path"),
        pytest.param("user@evil.example", id="userinfo"),
        pytest.param("evil.example:99999x", id="bad-port"),
        pytest.param("evil.example\\x", id="backslash"),
        pytest.param("", id="empty"),
    ],
)
def test_trusted_forwarded_host_is_validated(make_site: MakeSite, host: str) -> None:
    site = make_site(trusted_proxies="127.0.0.1")
    response = site.navigate("/whoami", **{"X-Forwarded-Host": host})
    if host:
        assert response.status_code == 400
        assert "location" not in response.headers
    else:
        # An empty X-Forwarded-Host is absent: the Host header is used.
        params = query_params(response.headers["location"])
        assert params["redirect_uri"] == site.url + "/_sso/callback"


# --- public-path bypass ----------------------------------------------------------

# Public paths are /public/* and /healthz. The application routes on the path as the
# server decoded it once, and a Java-style server resolves dot segments and drops
# ";" parameters, so a path is public only when both readings agree.
PUBLIC_BYPASSES = [
    pytest.param(b"/admin?x=/public/y", id="query"),
    pytest.param(b"/admin#/public/y", id="fragment"),
    pytest.param(b"/public/../admin", id="dot-dot"),
    pytest.param(b"/public/./../admin", id="dot-then-dot-dot"),
    pytest.param(b"/public/%2e%2e/admin", id="encoded-dots"),
    pytest.param(b"/public/%2E%2E/admin", id="encoded-dots-upper"),
    pytest.param(b"/public/.%2e/admin", id="half-encoded-dots"),
    pytest.param(b"/public%2F..%2Fadmin", id="encoded-slashes"),
    pytest.param(b"/public/..%2fadmin", id="encoded-slash-after-dots"),
    pytest.param(b"/public/..;/admin", id="matrix-dot-dot"),
    pytest.param(b"/public/.;/../admin", id="matrix-dot"),
    pytest.param(b"/public;x/../admin", id="matrix-on-public"),
    pytest.param(b"//public/../admin", id="leading-slashes"),
    pytest.param(b"/public/x/../../admin", id="two-levels-up"),
    pytest.param(b"/PUBLIC/x", id="upper-case"),
    pytest.param(b"/Public/x", id="mixed-case"),
    pytest.param(b"/public", id="no-trailing-slash"),
    pytest.param(b"/publicx/y", id="longer-segment"),
    pytest.param(b"/public%00/../admin", id="nul-then-dot-dot"),
    pytest.param(b"/admin%00/public/x", id="nul-before-public"),
    pytest.param(b"/public%5c..%5cadmin", id="encoded-backslashes"),
    pytest.param(b"/public%ef%bc%8f..%ef%bc%8fadmin", id="fullwidth-slashes"),
    pytest.param(b"/healthz/", id="exact-with-slash"),
    pytest.param(b"/healthz/x", id="exact-with-suffix"),
    pytest.param(b"/healthz.json", id="exact-with-extension"),
    pytest.param(b"/HEALTHZ", id="exact-upper-case"),
    pytest.param(b"/admin/../healthz", id="dot-dot-into-exact"),
    pytest.param(b"/admin/%2e%2e/healthz", id="encoded-dots-into-exact"),
    pytest.param(b"/admin%2f..%2fhealthz", id="encoded-slashes-into-exact"),
    pytest.param(b"/admin;/../healthz", id="matrix-into-exact"),
    pytest.param(b"/admin/x/../../public/y", id="dot-dot-into-public"),
    pytest.param(b"/healthz;x", id="matrix-on-exact"),
]


@pytest.mark.parametrize("target", PUBLIC_BYPASSES)
def test_public_path_not_bypassed(site: Site, target: bytes) -> None:
    response = site.raw_get(target, JSON)
    assert response.status_code == 401


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"/public/x", id="under-prefix"),
        pytest.param(b"/public/", id="prefix-itself"),
        pytest.param(b"/public/a/b/c", id="deep"),
        pytest.param(b"/public/./x", id="dot-inside"),
        pytest.param(b"/public/a/../b", id="dot-dot-inside"),
        pytest.param(b"/public/x;v=1", id="matrix-inside"),
        pytest.param(b"/healthz", id="exact"),
    ],
)
def test_public_path_served(site: Site, target: bytes) -> None:
    response = site.raw_get(target, JSON)
    assert response.status_code == 200
    assert response.json()["user"]["is_authenticated"] is False


# --- cookies ---------------------------------------------------------------------


def tamper_payload(value: str) -> str:
    # The payload comes first, and is far longer than 10 characters.
    replacement = "A" if value[10] != "A" else "B"
    return value[:10] + replacement + value[11:]


def tamper_signature(value: str) -> str:
    return value[:-1] + ("A" if value[-1] != "A" else "B")


def padded_payload(size: int) -> dict[str, Any]:
    """Return a session payload with a random name of ``size`` characters.

    Random text keeps its size whether or not the cookie format compresses.
    """
    payload = session_payload()
    payload["c"]["name"] = secrets.token_urlsafe(size)[:size]
    return payload


def state_entry_value() -> str:
    _, value = CODEC.new_state("s" * 43, "n", "v", "/", "http://127.0.0.1/")
    return value


# Each builder turns alice's real session cookie into a hostile one, or makes one.
HOSTILE_SESSIONS = [
    pytest.param(tamper_payload, id="tampered-payload"),
    pytest.param(tamper_signature, id="tampered-signature"),
    pytest.param(lambda v: v[: len(v) // 2], id="truncated"),
    pytest.param(lambda v: v.rsplit(".", 1)[0], id="signature-removed"),
    pytest.param(
        lambda v: sign_session(session_payload(), codec=OTHER_CODEC), id="other-key"
    ),
    pytest.param(lambda v: state_entry_value(), id="state-entry"),
    pytest.param(lambda v: CODEC.dump_id_token("a.b.c"), id="id-token-entry"),
    pytest.param(lambda v: CODEC.dump_session_id("a" * 43), id="session-id-entry"),
    pytest.param(
        lambda v: sign_session(session_payload(), age=9 * 3600),
        id="signature-expired",
    ),
    pytest.param(
        lambda v: sign_session(session_payload(lifetime=-10)), id="payload-expired"
    ),
    pytest.param(lambda v: sign_session(padded_payload(3650)), id="oversized-5000"),
    pytest.param(
        lambda v: sign_session({"c": {"sub": 7}, "iat": 0, "exp": 2**40}),
        id="sub-not-string",
    ),
    pytest.param(
        lambda v: sign_session({"c": ["alice"], "iat": 0, "exp": 2**40}),
        id="claims-not-object",
    ),
    pytest.param(lambda v: "", id="empty"),
    pytest.param(lambda v: "x" * 5000, id="junk-5000"),
]


@pytest.mark.parametrize("hostile", HOSTILE_SESSIONS)
@pytest.mark.parametrize("navigation", [False, True], ids=["json", "navigation"])
def test_hostile_session_is_no_session(
    site: Site,
    provider: Provider,
    alice_cookie: str,
    hostile: Callable[[str], str],
    navigation: bool,
) -> None:
    value = hostile(alice_cookie)
    headers = dict(NAVIGATION_HEADERS if navigation else JSON)
    headers["Cookie"] = f"sso_session={value}"
    response = site.get("/whoami", headers=headers)
    if navigation:
        assert response.status_code == 302
        assert response.headers["location"].startswith(provider.authorize_url)
    else:
        assert response.status_code == 401
        assert "location" not in response.headers


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(lambda v: v, id="original"),
        pytest.param(
            lambda v: sign_session(session_payload(), age=60), id="minute-old"
        ),
        pytest.param(lambda v: sign_session(session_payload()), id="minimal-payload"),
        pytest.param(lambda v: sign_session(padded_payload(2000)), id="large-payload"),
    ],
)
def test_forged_cookie_control(
    site: Site, alice_cookie: str, forged: Callable[[str], str]
) -> None:
    """Cookies signed with the real key are accepted, so the hostile ones above
    fail for the reason each names and not for the way they were built."""
    response = site.get(
        "/whoami", headers={**JSON, "Cookie": f"sso_session={forged(alice_cookie)}"}
    )
    assert response.status_code == 200
    assert response.json()["user"]["sub"] == "alice"


# Cookie headers built around alice's valid value V: none may pass V off under
# another name, and none may fail the request.
CONFUSING_COOKIES = [
    pytest.param("xsso_session={v}", 401, id="longer-name"),
    pytest.param("sso_sessionx={v}", 401, id="name-suffix"),
    pytest.param("SSO_SESSION={v}", 401, id="upper-case-name"),
    pytest.param("__Host-sso_session={v}", 401, id="host-prefix"),
    pytest.param("__host-sso_session={v}", 401, id="host-prefix-lower"),
    pytest.param("__Secure-sso_session={v}", 401, id="secure-prefix"),
    pytest.param('"sso_session"={v}', 401, id="quoted-name"),
    pytest.param("\u00a0sso_session={v}", 401, id="nbsp-before-name"),
    pytest.param("\u3000sso_session={v}", 401, id="ideographic-space-name"),
    pytest.param("sso_session\u00a0={v}", 401, id="nbsp-after-name"),
    pytest.param("a=b,sso_session={v}", 401, id="comma-separated"),
    pytest.param("sso_session.state.x={v}", 401, id="state-name"),
    pytest.param("sso_session.idt={v}", 401, id="id-token-name"),
    pytest.param('sso_session="{v}"', 200, id="quoted-value"),
    pytest.param('theme="a;b"; sso_session={v}', 200, id="quoted-semicolon"),
    pytest.param("theme=\u00e9; sso_session={v}", 200, id="utf8-value"),
    pytest.param(";; ;sso_session={v};;", 200, id="empty-pairs"),
]


@pytest.mark.parametrize(("template", "status"), CONFUSING_COOKIES)
def test_cookie_parser_not_confused(
    site: Site, alice_cookie: str, template: str, status: int
) -> None:
    cookie = template.format(v=alice_cookie).encode("utf-8")
    headers = {b"accept": b"application/json", b"cookie": cookie}
    response = site.get("/whoami", headers=headers)
    assert response.status_code == status


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param(b"theme=\xe9; sso_session=x", id="latin-1-value"),
        pytest.param(b"sso_session=\xff", id="session-value"),
        pytest.param(b"sso_session.state.x=\xe9", id="state-value"),
    ],
)
def test_non_utf8_cookie_is_no_session(site: Site, cookie: bytes) -> None:
    for target in ("/whoami", "/public/x", "/_sso/login"):
        headers = {b"accept": b"application/json", b"cookie": cookie}
        response = site.get(target, headers=headers)
        assert response.status_code < 500


def test_host_prefix_name_matched_exactly(
    make_site: MakeSite, alice_cookie: str
) -> None:
    """With a ``__Host-`` session cookie, the same name in another case is ignored.

    Browsers enforce the ``__Host-`` guarantees (Secure, Path=/, no Domain) only on
    names with that prefix, and those following RFC 6265bis drafts before 11
    compare it case-sensitively. A server that matched names without regard to case
    would accept a ``__host-`` cookie that a subdomain set without the guarantees.
    """
    site = make_site(cookie_name="__Host-sso_session")
    value = sign_session(session_payload())
    exact = site.get(
        "/whoami", headers={**JSON, "Cookie": f"__Host-sso_session={value}"}
    )
    assert exact.status_code == 200
    for name in ("__host-sso_session", "__HOST-sso_session", "sso_session"):
        response = site.get("/whoami", headers={**JSON, "Cookie": f"{name}={value}"})
        assert response.status_code == 401


# A Cookie header of about 10 KiB, under the 16 KiB that uvicorn's h11 accepts.
MANY_STATES = "; ".join(
    f"{STATE_PREFIX}{index:016d}=junk{index}" for index in range(200)
)


@pytest.mark.parametrize(
    ("target", "headers", "status"),
    [
        pytest.param("/whoami", JSON, 401, id="api"),
        pytest.param("/whoami", NAVIGATION_HEADERS, 302, id="navigation"),
        pytest.param("/_sso/login", NAVIGATION_HEADERS, 302, id="login"),
        pytest.param("/_sso/callback?code=x&state=forged", JSON, 400, id="callback"),
        pytest.param("/public/x", JSON, 200, id="public"),
    ],
)
def test_many_state_cookies_stay_fast(
    site: Site, target: str, headers: dict[str, str], status: int
) -> None:
    started = time.monotonic()
    response = site.get(target, headers={**headers, "Cookie": MANY_STATES})
    elapsed = time.monotonic() - started
    assert response.status_code == status
    assert elapsed < 2.0


def test_many_valid_states_are_evicted(site: Site) -> None:
    """A new login deletes the oldest state entries, leaving at most five."""
    names = []
    for index in range(40):
        state = f"{index:016d}" + "s" * 27
        with signed_in_past(40 - index):
            _, value = CODEC.new_state(
                state, "n", "v", "/", site.url + "/_sso/callback"
            )
        names.append(f"{STATE_PREFIX}{state[:16]}={value}")
    response = site.get(
        "/_sso/login", headers={**NAVIGATION_HEADERS, "Cookie": "; ".join(names)}
    )
    assert response.status_code == 302
    deleted = [c for c in response.headers.get_list("set-cookie") if "Max-Age=0" in c]
    added = [c for c in response.headers.get_list("set-cookie") if "Max-Age=600" in c]
    assert len(added) == 1
    assert len(deleted) == 40 - 4
    assert all(f"{index:016d}=" not in " ".join(deleted) for index in range(36, 40))


# --- state and code --------------------------------------------------------------


@dataclass
class PendingLogin:
    """A login sent to the provider, whose callback has not been requested yet."""

    state: str
    cookie_name: str
    cookie_value: str
    callback_url: str


def start_login(site: Site) -> PendingLogin:
    start = site.navigate("/whoami")
    state = query_params(start.headers["location"])["state"]
    name = STATE_PREFIX + state[:16]
    value = site.client.cookies.get(name)
    assert value is not None
    callback_url = authorize_at_provider(site.client, start.headers["location"])
    return PendingLogin(state, name, value, callback_url)


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    params = {name: values[0] for name, values in parse_qs(parts.query).items()}
    params.update(changes)
    query = "&".join(
        f"{name}={quote(value, safe='')}" for name, value in params.items()
    )
    return parts._replace(query=query).geturl()


def callback_with(site: Site, url: str, cookies: dict[str, str]) -> httpx.Response:
    cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
    headers = {**NAVIGATION_HEADERS}
    if cookie:
        headers["Cookie"] = cookie
    with httpx.Client(trust_env=False, timeout=10) as other:
        return other.get(url, headers=headers)


def resigned_state(
    login_: PendingLogin,
    *,
    codec: CookieCodec = CODEC,
    age: int = 0,
    state: str | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Sign the entry of ``login_`` again, with the changes given."""
    entry = CODEC.load_state(login_.cookie_value, login_.state)
    assert entry is not None
    with signed_in_past(age):
        _, value = codec.new_state(
            entry.state if state is None else state,
            entry.nonce if nonce is None else nonce,
            entry.verifier,
            entry.return_to,
            entry.redirect_uri,
        )
    return {login_.cookie_name: value}


def forged_state(login_: PendingLogin) -> dict[str, str]:
    return resigned_state(login_, codec=OTHER_CODEC)


def expired_state(login_: PendingLogin) -> dict[str, str]:
    return resigned_state(login_, age=11 * 60)


def session_as_state(login_: PendingLogin) -> dict[str, str]:
    return {login_.cookie_name: sign_session(session_payload())}


def other_state_inside(login_: PendingLogin) -> dict[str, str]:
    other = login_.state[:16] + "x" * (len(login_.state) - 16)
    return resigned_state(login_, state=other)


def other_nonce_inside(login_: PendingLogin) -> dict[str, str]:
    return resigned_state(login_, nonce="forged-nonce")


def no_state(login_: PendingLogin) -> dict[str, str]:
    return {}


def same_state(login_: PendingLogin) -> dict[str, str]:
    return {login_.cookie_name: login_.cookie_value}


# Each case rebuilds the state cookie sent with a real callback in a new browser.
HOSTILE_STATES = [
    pytest.param(no_state, {}, id="other-browser"),
    pytest.param(forged_state, {}, id="other-key"),
    pytest.param(expired_state, {}, id="expired"),
    pytest.param(session_as_state, {}, id="session-entry"),
    pytest.param(other_state_inside, {}, id="same-prefix-other-state"),
    pytest.param(other_nonce_inside, {}, id="nonce-swapped"),
    pytest.param(same_state, {"state": "forged"}, id="state-parameter-forged"),
    pytest.param(same_state, {"iss": "https://evil.example"}, id="iss-mix-up"),
    pytest.param(same_state, {"code": "forged"}, id="code-forged"),
]


@pytest.mark.parametrize(("cookies", "changes"), HOSTILE_STATES)
def test_hostile_state_rejected(
    site: Site,
    cookies: Callable[[PendingLogin], dict[str, str]],
    changes: dict[str, str],
) -> None:
    pending = start_login(site)
    url = with_query(pending.callback_url, **changes)
    response = callback_with(site, url, cookies(pending))
    assert response.status_code == 400
    assert not session_set_cookies(response)


@pytest.mark.parametrize(
    "cookies",
    [
        pytest.param(same_state, id="original"),
        pytest.param(lambda p: resigned_state(p, age=60), id="resigned-minute-old"),
    ],
)
def test_state_control_accepted(
    site: Site, cookies: Callable[[PendingLogin], dict[str, str]]
) -> None:
    """Valid state entries complete the login, so the cases above fail only for
    the change each makes."""
    pending = start_login(site)
    response = callback_with(site, pending.callback_url, cookies(pending))
    assert response.status_code == 302
    assert session_set_cookies(response)


def test_swapped_state_entries_rejected(site: Site) -> None:
    """The entry of one login cannot complete another login of the same browser."""
    first = start_login(site)
    second = start_login(site)
    response = callback_with(
        site, second.callback_url, {second.cookie_name: first.cookie_value}
    )
    assert response.status_code == 400
    assert not session_set_cookies(response)


def test_replayed_state_rejected(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    """A callback replayed with its state entry restored is refused.

    The first callback deletes the entry from the browser, so the replay puts it
    back the way a copied Cookie header would. The provider also refuses a used
    code, so the log shows that the middleware refused the state first.
    """
    pending = start_login(site)
    first = callback_with(site, pending.callback_url, same_state(pending))
    assert first.status_code == 302
    caplog.set_level(logging.WARNING, logger="sso_middleware")
    replay = callback_with(site, pending.callback_url, same_state(pending))
    assert replay.status_code == 400
    assert not session_set_cookies(replay)
    messages = [record.getMessage() for record in caplog.records]
    assert any("state replayed" in message for message in messages)


def test_replayed_code_rejected(site: Site) -> None:
    """A used authorization code fails with the state entry of a new login."""
    first = start_login(site)
    assert callback_with(site, first.callback_url, same_state(first)).status_code == 302
    second = start_login(site)
    code = query_params(first.callback_url)["code"]
    url = with_query(second.callback_url, code=code)
    response = callback_with(site, url, same_state(second))
    assert response.status_code == 400
    assert not session_set_cookies(response)


# --- logout ----------------------------------------------------------------------

LOGOUT_REQUESTS = [
    pytest.param(
        "GET", {"Sec-Fetch-Site": "cross-site"}, 200, False, id="get-cross-site"
    ),
    pytest.param(
        "GET", {"Sec-Fetch-Site": "same-site"}, 200, False, id="get-same-site"
    ),
    pytest.param("GET", {}, 200, False, id="get-no-metadata"),
    pytest.param(
        "GET", {"Origin": "https://evil.example"}, 200, False, id="get-origin"
    ),
    pytest.param(
        "POST", {"Origin": "https://evil.example"}, 403, False, id="post-origin"
    ),
    pytest.param("POST", {"Origin": "null"}, 403, False, id="post-null-origin"),
    pytest.param(
        "POST", {"Sec-Fetch-Site": "cross-site"}, 403, False, id="post-cross-site"
    ),
    pytest.param(
        "POST", {"Sec-Fetch-Site": "same-site"}, 403, False, id="post-same-site"
    ),
    pytest.param(
        "POST",
        {"Sec-Fetch-Site": "cross-site", "Origin": "{site}"},
        403,
        False,
        id="post-metadata-wins",
    ),
    pytest.param("POST", {"Origin": "{site}"}, 302, True, id="post-same-origin"),
    pytest.param(
        "POST", {"Sec-Fetch-Site": "same-origin"}, 302, True, id="post-metadata"
    ),
    pytest.param(
        "GET", {"Sec-Fetch-Site": "same-origin"}, 302, True, id="get-same-origin"
    ),
    pytest.param("GET", {"Sec-Fetch-Site": "none"}, 302, True, id="get-typed-url"),
]


@pytest.mark.parametrize(("method", "headers", "status", "ends"), LOGOUT_REQUESTS)
def test_logout_policy(
    site: Site, method: str, headers: dict[str, str], status: int, ends: bool
) -> None:
    site.login()
    sent = {name: value.format(site=site.url) for name, value in headers.items()}
    response = site.client.request(
        method, site.url + "/_sso/logout", headers={"Accept": "text/html", **sent}
    )
    assert response.status_code == status
    if status == 200:
        assert '<form method="post"' in response.text
    after = site.get("/whoami")
    assert (after.status_code == 401) is ends


# --- cache and referrer headers --------------------------------------------------


def login_start_response(site: Site) -> httpx.Response:
    return site.navigate("/whoami")


def callback_response(site: Site) -> httpx.Response:
    return site.login().callback_response


def failed_callback_response(site: Site) -> httpx.Response:
    pending = start_login(site)
    url = with_query(pending.callback_url, code="forged")
    return site.client.get(url, headers=NAVIGATION_HEADERS)


def logout_response(site: Site) -> httpx.Response:
    site.login()
    return site.client.post(site.url + "/_sso/logout", headers={"Origin": site.url})


@pytest.mark.parametrize(
    ("respond", "referrer"),
    [
        pytest.param(login_start_response, False, id="login-start"),
        pytest.param(callback_response, True, id="callback"),
        pytest.param(failed_callback_response, True, id="failed-callback"),
        pytest.param(logout_response, False, id="logout"),
    ],
)
def test_cookie_responses_not_cached(
    site: Site, respond: Callable[[Site], httpx.Response], referrer: bool
) -> None:
    response = respond(site)
    assert response.headers.get_list("set-cookie")
    assert response.headers["cache-control"] == "no-store"
    assert "Cookie" in response.headers["vary"]
    if referrer:
        # The callback URL carries the code and state (RFC 9700, "Credential
        # Leakage via Referer Headers").
        assert response.headers["referrer-policy"] == "no-referrer"


def test_session_cookie_attributes(site: Site) -> None:
    """The session cookie is HttpOnly, SameSite=Lax and scoped to the whole site."""
    callback = site.login().callback_response
    [cookie] = session_set_cookies(callback)
    attributes = [part.strip() for part in cookie.split(";")[1:]]
    assert "HttpOnly" in attributes
    assert "SameSite=Lax" in attributes
    assert "Path=/" in attributes
    assert not any(part.lower().startswith("domain=") for part in attributes)


def logout_confirmation(site: Site) -> httpx.Response:
    return site.navigate("/_sso/logout", **{"Sec-Fetch-Site": "cross-site"})


def json_refusal(site: Site) -> httpx.Response:
    return site.get("/whoami")


@pytest.mark.parametrize(
    ("respond", "page"),
    [
        pytest.param(logout_confirmation, True, id="logout-confirmation"),
        pytest.param(failed_callback_response, True, id="failed-callback"),
        pytest.param(json_refusal, False, id="json-401"),
    ],
)
def test_own_pages_run_no_script(
    site: Site, respond: Callable[[Site], httpx.Response], page: bool
) -> None:
    """The middleware's pages forbid scripts, so an escaping slip cannot run one."""
    response = respond(site)
    assert response.headers["x-content-type-options"] == "nosniff"
    if page:
        policy = response.headers["content-security-policy"]
        assert policy.startswith("default-src 'none'")
        assert "script-src" not in policy
