"""Property-based tests: hypothesis sends hostile requests to both adapters.

The middleware runs in this process, called directly as a WSGI and as an ASGI
application, so thousands of requests take seconds. It still fetches discovery and
exchanges codes over HTTP with the real mock provider, which stays up, so no
response may be a 5xx.

Every response must keep these properties:

- its status is below 500 and its body shows no traceback;
- it sets no ``sso_session`` cookie with a value, because no request here carries a
  verified ID token except the logins that ``test_next_fuzz`` completes;
- its ``Location`` is the provider's authorization or end-session endpoint, or a
  path that a browser resolves to this site;
- no header name or value contains CR or LF, and every one is latin-1, as servers
  must send it.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import string
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes, urlencode, urljoin, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sso_middleware import Settings, SSOMiddleware
from sso_middleware._http import compile_globs, normalize_path, safe_return_path
from sso_middleware._session import CookieCodec
from tests.support import servers
from tests.support.apps import create_flask_app, create_starlette_app
from tests.support.browser import query_params
from tests.support.servers import Provider

SITE = "https://site.example/"
PUBLIC_PATTERNS = ("/public/*", "/healthz")
COOKIE = "sso_session"
TRACEBACK = re.compile(rb"Traceback \(most recent call last\)|File \"[^\"]+\", line")

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def budget(examples: int) -> settings:
    """Return the settings for ``examples`` examples per adapter.

    The budgets keep the whole file under a minute on two cores.
    """
    return settings(FUZZ, max_examples=examples)


# --- an in-process client --------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def get_list(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]

    @property
    def location(self) -> str | None:
        values = self.get_list("location")
        return values[0] if values else None


class Driver:
    """Send requests straight to a middleware, as a server would, with raw bytes.

    ``target`` is the request target as it appears on the request line (ASCII,
    percent-encoded). The WSGI environ follows PEP 3333: the path is decoded once
    and carried as latin-1. The ASGI scope follows uvicorn: the path is decoded as
    UTF-8 with replacement characters.
    """

    def __init__(self, interface: str, settings_: Settings) -> None:
        self.interface = interface
        self.middleware: Any
        if interface == "wsgi":
            self.middleware = SSOMiddleware(create_flask_app(), settings_)
        else:
            self.middleware = SSOMiddleware(create_starlette_app(), settings_)
            self.loop = asyncio.new_event_loop()

    def send(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
    ) -> Reply:
        raw_path, _, query = target.partition("?")
        if self.interface == "wsgi":
            return self._send_wsgi(method, target, raw_path, query, headers, body)
        return self.loop.run_until_complete(
            self._send_asgi(method, raw_path, query, headers, body)
        )

    def _send_wsgi(
        self,
        method: str,
        target: str,
        raw_path: str,
        query: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> Reply:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"),
            "QUERY_STRING": query,
            "REQUEST_URI": target,
            "SERVER_NAME": "site.example",
            "SERVER_PORT": "443",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "site.example",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in headers:
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            if key in environ and key != "HTTP_HOST":
                separator = "; " if key == "HTTP_COOKIE" else ", "
                environ[key] += separator + text
            else:
                environ[key] = text
        if "HTTP_CONTENT_TYPE" in environ:
            environ["CONTENT_TYPE"] = environ.pop("HTTP_CONTENT_TYPE")
        reply = Reply(0, [], b"")

        def start_response(
            status: str, response_headers: Any, exc_info: Any = None
        ) -> Any:
            reply.status = int(status.split()[0])
            reply.headers = list(response_headers)

        chunks = self.middleware(environ, start_response)
        try:
            reply.body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return reply

    async def _send_asgi(
        self,
        method: str,
        raw_path: str,
        query: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> Reply:
        scope_headers = [(b"host", b"site.example")]
        scope_headers += [(name.lower(), value) for name, value in headers]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "https",
            "path": unquote(raw_path),
            "raw_path": raw_path.encode("ascii"),
            "query_string": query.encode("ascii"),
            "root_path": "",
            "headers": scope_headers,
            "client": ("127.0.0.1", 50000),
            "server": ("site.example", 443),
        }
        reply = Reply(0, [], b"")
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                reply.status = message["status"]
                reply.headers = [
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in message.get("headers", [])
                ]
            elif message["type"] == "http.response.body":
                reply.body += message.get("body", b"")

        await self.middleware(scope, receive, send)
        return reply

    def close(self) -> None:
        if self.interface == "wsgi":
            self.middleware.close()
        else:
            self.loop.run_until_complete(self.middleware.aclose())
            self.loop.close()


@dataclass
class Target:
    driver: Driver
    authorize_url: str
    end_session_url: str


@pytest.fixture(scope="module", params=["wsgi", "asgi"])
def target(request: pytest.FixtureRequest, provider: Provider) -> Iterator[Target]:
    values: dict[str, Any] = {
        "issuer": provider.issuer,
        "client_id": servers.CLIENT_ID,
        "client_secret": servers.CLIENT_SECRET,
        "secret_key": servers.SECRET_KEY,
        "public_paths": ",".join(PUBLIC_PATTERNS),
    }
    settings_ = Settings(**values)
    driver = Driver(request.param, settings_)
    discovery = provider.discovery()
    try:
        yield Target(
            driver,
            discovery["authorization_endpoint"],
            discovery.get("end_session_endpoint") or "",
        )
    finally:
        driver.close()


# --- the properties --------------------------------------------------------------


def browser_destination(location: str) -> str:
    """Resolve a Location value as a browser would, from ``https://site.example/``."""
    cleaned = location.strip("".join(chr(code) for code in range(0x21)))
    for character in "\t\r\n":
        cleaned = cleaned.replace(character, "")
    return urljoin(SITE, cleaned.replace("\\", "/"))


def is_same_site_path(location: str) -> bool:
    return (
        location.startswith("/")
        and not location.startswith(("//", "/\\"))
        and urlsplit(location).scheme == ""
        and urlsplit(browser_destination(location)).hostname == "site.example"
    )


def check_reply(target: Target, reply: Reply) -> None:
    assert reply.status < 500
    assert TRACEBACK.search(reply.body) is None
    for name, value in reply.headers:
        assert "\r" not in name + value
        assert "\n" not in name + value
        # A server must encode every header as latin-1 (PEP 3333, ASGI).
        assert all(ord(character) < 256 for character in name + value)
    for cookie in reply.get_list("set-cookie"):
        assert not cookie.startswith(COOKIE + "=") or cookie.startswith(COOKIE + "=;")
    location = reply.location
    if location is None:
        return
    to_provider = location.startswith(target.authorize_url + "?") or (
        bool(target.end_session_url)
        and location.startswith(target.end_session_url + "?")
    )
    assert to_provider or is_same_site_path(location)


# --- strategies ------------------------------------------------------------------

# Any Unicode text without surrogates, which UTF-8 cannot encode.
TEXT = st.text(st.characters(codec="utf-8"), max_size=60)
# Characters a header value may carry over HTTP/1.1 (RFC 9110 5.5): no CR, LF or NUL.
HEADER_TEXT = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=60
)
SHORT_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
TOKEN_TEXT = st.text(string.ascii_letters + string.digits + "-_.", max_size=12)


def header_bytes(text: str) -> bytes:
    # NOTE: values are UTF-8, as browsers send them. Bytes that are not UTF-8 make
    # werkzeug's cookie parser raise; test_attacks covers that case on its own.
    return text.encode("utf-8")


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | SHORT_TEXT,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(SHORT_TEXT, children, max_size=4)
    ),
    max_leaves=8,
)
CLAIM_NAMES = st.sampled_from(
    ["sub", "email", "name", "groups", "roles", "sid", "preferred_username", "iss"]
)
SESSION_LIKE = st.fixed_dictionaries(
    {
        "c": st.dictionaries(CLAIM_NAMES, JSON_VALUES, max_size=6),
        "iat": JSON_VALUES,
        "exp": st.one_of(JSON_VALUES, st.just(int(time.time()) + 3600)),
    }
)


def cookie_codec() -> CookieCodec:
    """Return the middleware's cookie signer, with the key of the fuzzed sites."""
    values: dict[str, Any] = {
        "issuer": "http://127.0.0.1:9",
        "client_id": servers.CLIENT_ID,
        "client_secret": servers.CLIENT_SECRET,
        "secret_key": servers.SECRET_KEY,
    }
    return CookieCodec(Settings(**values))


CODEC = cookie_codec()


@st.composite
def signed_values(draw: st.DrawFn) -> str:
    """A value signed with the real key that the middleware never issued."""
    kind = draw(st.sampled_from(["session", "state", "id-token", "session-id"]))
    if kind == "session":
        payload = draw(
            st.one_of(SESSION_LIKE, st.dictionaries(SHORT_TEXT, JSON_VALUES))
        )
        return CODEC.dump_session(payload)
    if kind == "state":
        # The state, nonce and verifier are ASCII tokens wherever they come from.
        state, nonce, verifier = draw(st.tuples(TOKEN_TEXT, TOKEN_TEXT, TOKEN_TEXT))
        _, value = CODEC.new_state(
            state, nonce, verifier, draw(SHORT_TEXT), draw(SHORT_TEXT)
        )
        return value
    if kind == "id-token":
        return CODEC.dump_id_token(draw(SHORT_TEXT))
    return CODEC.dump_session_id(draw(SHORT_TEXT))


COOKIE_NAMES = st.one_of(
    st.sampled_from(
        [
            COOKIE,
            COOKIE + ".idt",
            COOKIE + ".state.",
            "__Host-" + COOKIE,
            "__host-" + COOKIE,
            "theme",
            "",
        ]
    ),
    st.builds(lambda text: COOKIE + ".state." + text, SHORT_TEXT),
    HEADER_TEXT,
)
COOKIE_VALUES = st.one_of(HEADER_TEXT, signed_values(), st.just(""))


@st.composite
def cookie_headers(draw: st.DrawFn) -> bytes:
    pairs = draw(st.lists(st.tuples(COOKIE_NAMES, COOKIE_VALUES), max_size=6))
    separator = draw(st.sampled_from(["; ", ";", ", ", " ; "]))
    text = separator.join(f"{name}={value}" for name, value in pairs)
    if draw(st.booleans()):
        text = draw(HEADER_TEXT) + text
    return header_bytes(text)


PATHS = st.sampled_from(
    [
        "/whoami",
        "/public/x",
        "/healthz",
        "/_sso/login",
        "/_sso/callback",
        "/_sso/logout",
        "/_sso/userinfo",
        "/_sso/check",
        "/_sso/health",
        "/_sso/backchannel-logout",
    ]
)
METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
SEGMENTS = st.sampled_from(
    [
        "public",
        "PUBLIC",
        "admin",
        "healthz",
        "_sso",
        "login",
        "callback",
        "logout",
        "..",
        ".",
        "",
        "..;",
        ";x",
        "x;y=1",
        "%2e%2e",
        "%2E.",
        "%2f",
        "%5c",
        "%00",
        "%25",
        "%ef%bc%8f",
        "%c3%a9",
        "x%20y",
        "%3f",
        "%23",
    ]
)


@st.composite
def raw_paths(draw: st.DrawFn) -> str:
    """An ASCII request path from segments that confuse path matchers."""
    segments = draw(st.lists(SEGMENTS, min_size=1, max_size=6))
    return "/" + "/".join(segments)


ACCEPTS = st.one_of(
    st.sampled_from(
        [
            "text/html",
            "application/json",
            "*/*",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "",
        ]
    ),
    HEADER_TEXT,
)
FETCH_SITES = st.one_of(
    st.sampled_from(["same-origin", "same-site", "cross-site", "none"]), HEADER_TEXT
)
FETCH_MODES = st.one_of(
    st.sampled_from(["navigate", "cors", "no-cors", "same-origin", "websocket"]),
    HEADER_TEXT,
)
ORIGINS = st.one_of(
    st.sampled_from(
        ["https://site.example", "https://evil.example", "null", "http://site.example"]
    ),
    HEADER_TEXT,
)


@st.composite
def fetch_headers(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    candidates = {
        b"accept": ACCEPTS,
        b"origin": ORIGINS,
        b"sec-fetch-site": FETCH_SITES,
        b"sec-fetch-mode": FETCH_MODES,
        b"sec-fetch-dest": st.sampled_from(["document", "empty", "iframe"]),
        b"sec-fetch-user": st.sampled_from(["?1", "?0"]),
        b"access-control-request-method": st.sampled_from(["PUT", "GET"]),
        b"content-type": HEADER_TEXT,
        b"x-request-id": HEADER_TEXT,
        b"x-forwarded-host": HEADER_TEXT,
        b"x-forwarded-proto": HEADER_TEXT,
    }
    chosen = draw(
        st.sets(st.sampled_from(sorted(candidates)), max_size=len(candidates))
    )
    return [(name, header_bytes(draw(candidates[name]))) for name in sorted(chosen)]


# --- the callback ----------------------------------------------------------------


@dataclass
class Login:
    """A login started in-process: where it sends the browser, and its state entry."""

    authorize_url: str
    state: str
    cookie: bytes


def begin_login(target: Target, next_value: str | None = None) -> Login:
    path = "/_sso/login"
    if next_value is not None:
        path += "?next=" + quote(next_value, safe="")
    reply = target.driver.send("GET", path, [(b"accept", b"text/html")])
    check_reply(target, reply)
    assert reply.status == 302
    assert reply.location is not None
    state = query_params(reply.location)["state"]
    [cookie] = [c for c in reply.get_list("set-cookie") if "Max-Age=600" in c]
    return Login(reply.location, state, cookie.split(";", 1)[0].encode("ascii"))


CALLBACK_PARAMS = st.dictionaries(
    st.sampled_from(["code", "state", "iss", "error", "error_description", "x"]),
    TEXT,
    max_size=6,
)


@budget(150)
@given(
    params=CALLBACK_PARAMS,
    state_source=st.sampled_from(["login", "params"]),
    raw_query=st.one_of(
        st.none(),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80),
    ),
    accept=st.sampled_from([b"text/html", b"application/json"]),
)
def test_callback_fuzz(
    target: Target,
    params: dict[str, str],
    state_source: str,
    raw_query: str | None,
    accept: bytes,
) -> None:
    """Fuzzed callback parameters, with this browser's real state entry or none."""
    headers = [(b"accept", accept)]
    if state_source == "login":
        login = begin_login(target)
        params = {**params, "state": login.state}
        headers.append((b"cookie", login.cookie))
    query = raw_query if raw_query is not None else urlencode(params, quote_via=quote)
    reply = target.driver.send("GET", "/_sso/callback?" + query, headers)
    check_reply(target, reply)
    assert reply.status >= 400


# --- cookies ---------------------------------------------------------------------


@budget(400)
@given(
    cookie=cookie_headers(),
    method=st.sampled_from(["GET", "POST"]),
    path=PATHS,
    accept=st.sampled_from([b"text/html", b"application/json"]),
    state=st.one_of(st.none(), HEADER_TEXT.filter(lambda text: ";" not in text)),
)
def test_cookie_fuzz(
    target: Target,
    cookie: bytes,
    method: str,
    path: str,
    accept: bytes,
    state: str | None,
) -> None:
    """Fuzzed Cookie headers, with a callback whose state names a fuzzed cookie."""
    if state is not None:
        # A state cookie whose name the callback's state parameter finds.
        name = COOKIE + ".state." + state[:16]
        cookie = header_bytes(name + "=x; ") + cookie
        path = "/_sso/callback?code=x&state=" + quote(state, safe="")
    headers = [(b"cookie", cookie), (b"accept", accept)]
    reply = target.driver.send(method, path, headers)
    check_reply(target, reply)


# --- the return path -------------------------------------------------------------

REDIRECT_PIECES = st.sampled_from(
    [
        "/",
        "\\",
        "//",
        "%2f",
        "%2F",
        "%5c",
        "%09",
        "%0a",
        "%00",
        "\t",
        "\n",
        " ",
        "\u3000",
        "\u2215",
        "\uff0f",
        "\uff0e",
        ".",
        "..",
        "%2e",
        "@",
        ":",
        "?",
        "#",
        ";",
        "https:",
        "javascript:",
        "evil.example",
        "[::1]",
        "%c0%af",
    ]
)
RETURN_PATHS = st.one_of(
    st.lists(REDIRECT_PIECES, max_size=8).map("".join),
    TEXT,
)


@budget(3000)
@given(value=RETURN_PATHS)
@example(value="/\t/evil.example")
@example(value="/%5c%5cevil.example")
def test_return_path_fuzz(value: str) -> None:
    result = safe_return_path(value)
    assert result.isascii()
    assert result == "/" or is_same_site_path(result)


@budget(30)
@given(value=RETURN_PATHS)
def test_next_fuzz(target: Target, value: str) -> None:
    """A whole login with a fuzzed ``next`` ends on this site."""
    login = begin_login(target, value)
    with httpx.Client(trust_env=False, timeout=10) as client:
        answer = client.post(login.authorize_url, data={"sub": "alice"})
    callback = urlsplit(answer.headers["location"])
    reply = target.driver.send(
        "GET",
        callback.path + "?" + callback.query,
        [(b"cookie", login.cookie), (b"accept", b"text/html")],
    )
    assert reply.status == 302
    assert reply.location is not None
    assert is_same_site_path(reply.location)
    assert reply.location == safe_return_path(value)


# --- headers, methods and paths --------------------------------------------------


@budget(400)
@given(method=METHODS, path=PATHS, headers=fetch_headers())
def test_headers_fuzz(
    target: Target, method: str, path: str, headers: list[tuple[bytes, bytes]]
) -> None:
    reply = target.driver.send(method, path, headers)
    check_reply(target, reply)
    location = reply.location or ""
    if location.startswith(target.authorize_url):
        # Only a navigation is sent to the provider (GET or HEAD).
        assert method in ("GET", "HEAD")
    preflight = method == "OPTIONS" and {
        b"origin",
        b"access-control-request-method",
    } <= {name for name, _ in headers}
    if path == "/whoami" and preflight:
        # CORS preflights carry no credentials, so they reach the application.
        assert reply.status == 200
    elif path == "/whoami" and method not in ("GET", "HEAD"):
        assert reply.status == 401


@budget(400)
@given(
    path=raw_paths(),
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    accept=st.sampled_from([b"text/html", b"application/json"]),
)
def test_path_fuzz(target: Target, path: str, method: str, accept: bytes) -> None:
    reply = target.driver.send(method, path, [(b"accept", accept)])
    check_reply(target, reply)


PUBLIC = compile_globs(PUBLIC_PATTERNS)


def reached_app_anonymously(reply: Reply) -> bool:
    if reply.status != 200 or not reply.body.startswith(b"{"):
        return False
    user = json.loads(reply.body).get("user") or {}
    return user.get("is_authenticated") is False


@budget(300)
@given(path=raw_paths())
@example(path="/admin/../healthz")
def test_anonymous_path_is_public(target: Target, path: str) -> None:
    """The application gets a request without a session only on a public path.

    Both readings of the path must be public: as received (the application routes
    on it) and normalized (a server that resolves dot segments routes on that).
    """
    reply = target.driver.send("GET", path, [(b"accept", b"application/json")])
    if not reached_app_anonymously(reply):
        return
    assert PUBLIC is not None
    decoded = unquote(path)
    assert PUBLIC.fullmatch(decoded) is not None
    assert PUBLIC.fullmatch(normalize_path(decoded)) is not None
