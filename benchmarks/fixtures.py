"""Shared inputs of the benchmarks: settings, claims, cookies, requests and a provider.

The provider is an ``httpx.MockTransport`` handler that serves discovery, the JWKS,
the token endpoint and userinfo from memory, so a login completes without a socket.
Every URL names 127.0.0.1 on port 9, where nothing listens, so a request that
escaped the mock transport would fail at once instead of leaving the machine.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from sso_middleware import Settings

ISSUER = "https://127.0.0.1:9/bench"
CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-client-secret-0123456789abcdef"
SECRET_KEY = "bench-secret-key-0123456789abcdef0123456789"
REDIRECT_URI = "http://127.0.0.1:8000/_sso/callback"
COOKIE_NAME = "sso_session"
KEY_ID = "bench-key-1"
HOST = "127.0.0.1:8000"

# The request headers of a browser's page load, apart from Cookie. Every variant
# of a benchmark sends the same ones, so their parsing cost cancels out.
BROWSER_HEADERS: tuple[tuple[str, str], ...] = (
    ("host", HOST),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"),
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("accept-language", "en-US,en;q=0.5"),
    ("accept-encoding", "gzip, deflate, br"),
    ("sec-fetch-mode", "navigate"),
)


def settings(**overrides: Any) -> Settings:
    """Return the settings every benchmark uses, with ``overrides`` applied."""
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "secret_key": SECRET_KEY,
        "redirect_uri": REDIRECT_URI,
        "cookie_name": COOKIE_NAME,
    }
    values.update(overrides)
    return Settings(**values)


def settings_env() -> dict[str, str]:
    """Return the ``SSO_*`` variables that give the same settings to a server."""
    return {
        "SSO_ISSUER": ISSUER,
        "SSO_CLIENT_ID": CLIENT_ID,
        "SSO_CLIENT_SECRET": CLIENT_SECRET,
        "SSO_SECRET_KEY": SECRET_KEY,
        "SSO_REDIRECT_URI": REDIRECT_URI,
        "SSO_COOKIE_NAME": COOKIE_NAME,
    }


def claims(index: int = 0) -> dict[str, Any]:
    """Return the claims of a typical enterprise user, distinct for each ``index``."""
    return {
        "sub": f"user_{index:08d}",
        "iss": ISSUER,
        "email": f"user{index}@example.com",
        "email_verified": True,
        "name": f"Bench User {index}",
        "preferred_username": f"user{index}",
        "groups": ["engineering", "staff", "vpn-users"],
        "sid": f"sid_{index:012d}",
        "organization_id": "org_1234567890",
    }


def session_cookie_value(codec: Any, index: int = 0) -> str:
    """Return a valid session cookie value, signed by ``codec`` (a CookieCodec)."""
    return str(codec.dump_session(codec.new_session_payload(claims(index))))


def cookie_header(value: str, name: str = COOKIE_NAME) -> str:
    """Return a Cookie header with the session and two cookies of the application."""
    return f"_ga=GA1.1.123456789.1700000000; {name}={value}; theme=dark"


# ASGI and WSGI requests


def asgi_scope(
    path: str = "/dashboard",
    cookie: str | None = None,
    headers: tuple[tuple[str, str], ...] = BROWSER_HEADERS,
    query: str = "",
) -> dict[str, Any]:
    """Return the scope of an HTTP/1.1 GET as uvicorn builds it."""
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    if cookie is not None:
        raw.append((b"cookie", cookie.encode("latin-1")))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 51000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": path,
        "raw_path": path.encode("ascii"),
        "query_string": query.encode("ascii"),
        "headers": raw,
        "state": {},
    }


def wsgi_environ(
    path: str = "/dashboard",
    cookie: str | None = None,
    headers: tuple[tuple[str, str], ...] = BROWSER_HEADERS,
    query: str = "",
) -> dict[str, Any]:
    """Return the environ of an HTTP/1.1 GET as a WSGI server builds it."""
    import io
    import sys

    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    return environ


# Trivial applications: the work every benchmark subtracts as its baseline.


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Respond to every HTTP request with 200 ``ok``."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    # New message objects on every call, as real applications send: middleware
    # such as Starlette's SessionMiddleware changes the headers list in place.
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Respond to every request with 200 ``ok``."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


async def asgi_receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def asgi_discard(message: Any) -> None:
    return None


def wsgi_start_response(status: str, headers: Any, exc_info: Any = None) -> None:
    return None


class ResponseRecorder:
    """An ASGI ``send`` that keeps the status and headers of the last response."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))

    def header_values(self, name: bytes) -> list[str]:
        return [value.decode("latin-1") for key, value in self.headers if key == name]


# The provider


class MockProvider:
    """An OpenID provider served from memory through ``httpx.MockTransport``.

    ID tokens are signed ahead of time by :meth:`issue_code`, so the time spent in
    :meth:`handle` is only JSON and form parsing. That time is summed in
    ``handler_ns`` so that a benchmark can subtract it from its own.
    """

    def __init__(self) -> None:
        self.key: RSAPrivateKey = rsa.generate_private_key(
            public_exponent=65537, key_size=2048
        )
        public_jwk = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key())
        )
        public_jwk.update({"kid": KEY_ID, "use": "sig", "alg": "RS256"})
        self.discovery = json.dumps(
            {
                "issuer": ISSUER,
                "authorization_endpoint": ISSUER + "/authorize",
                "token_endpoint": ISSUER + "/token",
                "jwks_uri": ISSUER + "/jwks",
                "userinfo_endpoint": ISSUER + "/userinfo",
                "end_session_endpoint": ISSUER + "/logout",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "code_challenge_methods_supported": ["S256"],
            }
        ).encode()
        self.jwks = json.dumps({"keys": [public_jwk]}).encode()
        self._tokens: dict[str, bytes] = {}
        self._userinfo: dict[str, bytes] = {}
        self.handler_ns = 0
        self.requests = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def issue_code(self, code: str, nonce: str, index: int) -> None:
        """Sign an ID token for ``nonce`` and make ``code`` redeem it once."""
        now = int(time.time())
        user = claims(index)
        payload = {
            **user,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
        }
        id_token = jwt.encode(
            payload, self.key, algorithm="RS256", headers={"kid": KEY_ID}
        )
        access_token = f"at_{code}"
        self._tokens[code] = json.dumps(
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": id_token,
            }
        ).encode()
        self._userinfo[access_token] = json.dumps(user).encode()

    def handle(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter_ns()
        try:
            return self._route(request)
        finally:
            self.handler_ns += time.perf_counter_ns() - started
            self.requests += 1

    def _route(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/.well-known/openid-configuration"):
            return _json_response(self.discovery)
        if path.endswith("/jwks"):
            return _json_response(self.jwks)
        if path.endswith("/token"):
            form = parse_qs(request.content.decode("ascii"))
            body = self._tokens.pop(form["code"][0], None)
            if body is None:
                return _json_response(b'{"error": "invalid_grant"}', status=400)
            return _json_response(body)
        if path.endswith("/userinfo"):
            token = request.headers["authorization"].removeprefix("Bearer ")
            return _json_response(self._userinfo.pop(token))
        return httpx.Response(404)


def _json_response(body: bytes, status: int = 200) -> httpx.Response:
    return httpx.Response(
        status, content=body, headers={"content-type": "application/json"}
    )


def authorization_params(location: str) -> dict[str, str]:
    """Return the query parameters of an authorization redirect."""
    return {
        name: values[0] for name, values in parse_qs(urlsplit(location).query).items()
    }


def state_cookie_pair(set_cookies: list[str]) -> str:
    """Return ``name=value`` of the login state cookie among Set-Cookie values."""
    for value in set_cookies:
        pair = value.split(";", 1)[0]
        if pair.startswith(COOKIE_NAME + ".state."):
            return pair
    raise ValueError("the redirect set no state cookie")


def remembered_count(core: Any) -> int | None:
    """Return how many Cookie headers the core remembers, or None if not known.

    The attribute is internal to the package, so each name it has had is tried.
    """
    for name in ("forwards", "_forwards"):
        table = getattr(core, name, None)
        if isinstance(table, dict):
            return len(table)
    return None


def bypass_hot_path(middleware: Any) -> bool:
    """Make ``middleware`` look up remembered Cookie headers in a table that stays
    empty, so every request takes the full path. Return False when the internal
    attribute is not found and nothing was changed.
    """
    if isinstance(getattr(middleware, "_forwards", None), dict):
        middleware._forwards = {}
        return True
    return False
