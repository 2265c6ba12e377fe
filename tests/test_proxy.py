"""``sso-middleware proxy`` as a real subprocess, in front of the echoing upstream.

The proxy runs as ``python -m sso_middleware proxy``, configured by ``SSO_*``
variables that point at the real oidc-provider-mock process. The upstream is
``tests.support.apps:echo_upstream`` under uvicorn, which returns every request it
receives as JSON, so each test can see exactly what the proxy forwarded.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sso_middleware._proxy import ProxyApp
from tests.support import servers
from tests.support.browser import NAVIGATION_HEADERS, login
from tests.support.servers import AppServer, Provider

StartCli = Callable[..., AppServer]
StartUvicorn = Callable[..., AppServer]

JSON = {"Accept": "application/json"}
PUBLIC_PATHS = "/public/*"
ALICE_HEADERS = {
    "x-forwarded-user": "alice",
    "x-forwarded-email": "alice@example.com",
    "x-forwarded-preferred-username": "alice",
    "x-forwarded-groups": "staff,admins",
}
REQUEST_TIMEOUT = 20.0


@dataclass(frozen=True)
class ProxySite:
    """The proxy subprocess and the upstream behind it."""

    url: str
    upstream: AppServer
    server: AppServer

    @property
    def port(self) -> int:
        return self.server.port


def proxy_command(upstream_url: str) -> list[str]:
    """Return the proxy's arguments, in which start_cli replaces ``{port}``."""
    return [
        "proxy",
        "--upstream",
        upstream_url,
        "--listen",
        "127.0.0.1:{port}",
        "--public-paths",
        PUBLIC_PATHS,
    ]


@pytest.fixture(scope="module")
def proxy(provider: Provider, echo_upstream: AppServer) -> Iterator[ProxySite]:
    """Start one proxy for the module, because no test changes the proxy's state."""
    port = servers.free_port()
    env = servers.settings_env(
        provider, redirect_uri=f"http://127.0.0.1:{port}/_sso/callback"
    )
    command = proxy_command(echo_upstream.url)
    with servers.cli_server(command, env, port=port) as server:
        yield ProxySite(server.url, echo_upstream, server)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT) as session:
        yield session


@pytest.fixture
def alice(proxy: ProxySite, client: httpx.Client) -> httpx.Client:
    """A client signed in as alice through the proxy."""
    result = login(client, proxy.url + "/whoami")
    assert result.response.status_code == 200
    return client


def session_cookie(client: httpx.Client) -> str:
    value = client.cookies.get("sso_session")
    assert value, "the login set no sso_session cookie"
    return value


def echoed(response: httpx.Response) -> dict[str, Any]:
    """Return the echo upstream's description of the request it received."""
    assert response.status_code == 200, response.text[:300]
    document: dict[str, Any] = response.json()
    assert document["app"] == "echo"
    return document


def header_values(document: dict[str, Any], name: str) -> list[str]:
    """Return every value of header ``name`` that reached the upstream."""
    lower_name = name.lower()
    return [value for key, value in document["headers"] if key.lower() == lower_name]


def header_names(document: dict[str, Any]) -> set[str]:
    return {key.lower() for key, _ in document["headers"]}


def raw_get(
    port: int, target: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Send a GET with ``target`` exactly as written, and return status and body.

    httpx resolves dot segments in URLs before it sends them, as browsers do, so
    paths that only a hand-written client sends go through http.client.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        connection.request("GET", target, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# Identity headers


@pytest.mark.parametrize(
    ("name", "value"),
    [pytest.param(name, value, id=name) for name, value in ALICE_HEADERS.items()],
)
def test_upstream_gets_identity_header(
    proxy: ProxySite, client: httpx.Client, name: str, value: str
) -> None:
    result = login(client, proxy.url + "/whoami")
    document = echoed(result.response)
    assert header_values(document, name) == [value]


def test_login_returns_to_path(proxy: ProxySite, client: httpx.Client) -> None:
    result = login(client, proxy.url + "/reports/2026?tab=1")
    document = echoed(result.response)
    assert document["path"] == "/reports/2026"
    assert document["query"] == "tab=1"


def test_upstream_sees_host_and_client(proxy: ProxySite, alice: httpx.Client) -> None:
    document = echoed(alice.get(proxy.url + "/whoami"))
    assert header_values(document, "host") == [f"127.0.0.1:{proxy.port}"]
    assert header_values(document, "x-forwarded-for") == ["127.0.0.1"]
    assert header_values(document, "x-forwarded-proto") == ["http"]


SPOOFED_HEADERS = [
    pytest.param("X-Forwarded-User", id="user"),
    pytest.param("X-Forwarded-Email", id="email"),
    pytest.param("X-Forwarded-Preferred-Username", id="preferred-username"),
    pytest.param("X-Forwarded-Groups", id="groups"),
    pytest.param("X_Forwarded_Email", id="underscore-email"),
    pytest.param("X_Forwarded_User", id="underscore-user"),
    pytest.param("x-forwarded-groups", id="lower-case-groups"),
    pytest.param("X-Forwarded_Preferred-Username", id="mixed-separators"),
]


def spoofed_names_seen(document: dict[str, Any]) -> list[str]:
    """Return the forwarded header names that would read as an identity header."""
    return [
        key
        for key, value in document["headers"]
        if key.lower().replace("_", "-") in ALICE_HEADERS and "mallory" in value
    ]


@pytest.mark.parametrize("name", SPOOFED_HEADERS)
def test_spoofed_header_dropped_signed_in(
    proxy: ProxySite, alice: httpx.Client, name: str
) -> None:
    response = alice.get(proxy.url + "/whoami", headers={name: "mallory@evil.example"})
    document = echoed(response)
    assert spoofed_names_seen(document) == []
    assert header_values(document, "x-forwarded-email") == ["alice@example.com"]


@pytest.mark.parametrize("name", SPOOFED_HEADERS)
def test_spoofed_header_dropped_on_public_path(
    proxy: ProxySite, client: httpx.Client, name: str
) -> None:
    response = client.get(
        proxy.url + "/public/page", headers={name: "mallory@evil.example"}
    )
    document = echoed(response)
    assert spoofed_names_seen(document) == []
    assert header_names(document).isdisjoint(ALICE_HEADERS)


def test_spoofed_header_dropped_signed_in_public(
    proxy: ProxySite, alice: httpx.Client
) -> None:
    response = alice.get(
        proxy.url + "/public/page",
        headers=[
            ("X-Forwarded-Email", "mallory@evil.example"),
            ("X-Forwarded-Email", "mallory@second.example"),
            ("X_Forwarded_Groups", "mallory-admins"),
        ],
    )
    document = echoed(response)
    assert spoofed_names_seen(document) == []
    assert header_values(document, "x-forwarded-email") == ["alice@example.com"]
    assert header_values(document, "x-forwarded-groups") == ["staff,admins"]


def test_spoofed_header_never_bypasses_login(
    proxy: ProxySite, client: httpx.Client
) -> None:
    response = client.get(
        proxy.url + "/whoami",
        headers={**JSON, "X-Forwarded-User": "alice", "Remote-User": "alice"},
    )
    assert response.status_code == 401


# Cookies


def test_own_cookies_not_forwarded(proxy: ProxySite, alice: httpx.Client) -> None:
    cookie = session_cookie(alice)
    header = (
        f"theme=dark; sso_session={cookie}; sso_session.state.abc=x; "
        "sso_session.idt=y; lang=en"
    )
    # A fresh client, so the Cookie header is exactly the one written here.
    with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT) as fresh:
        response = fresh.get(proxy.url + "/whoami", headers={"Cookie": header})
    document = echoed(response)
    assert header_values(document, "cookie") == ["theme=dark; lang=en"]
    assert header_values(document, "x-forwarded-user") == ["alice"]


def test_only_own_cookie_removes_header(proxy: ProxySite, alice: httpx.Client) -> None:
    cookie = session_cookie(alice)
    with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT) as fresh:
        response = fresh.get(
            proxy.url + "/whoami", headers={"Cookie": f"sso_session={cookie}"}
        )
    document = echoed(response)
    assert header_values(document, "cookie") == []


def test_cookies_kept_on_public_path(proxy: ProxySite, client: httpx.Client) -> None:
    response = client.get(
        proxy.url + "/public/page",
        headers={"Cookie": "theme=dark; sso_session=forged"},
    )
    document = echoed(response)
    assert header_values(document, "cookie") == ["theme=dark"]


# Bodies


BODY_SIZE = 4 * 1024 * 1024
CHUNK_SIZE = 64 * 1024


def body_of_size(size: int) -> bytes:
    # Printable bytes, so the echo's text body can be compared byte for byte.
    return os.urandom(size // 2).hex().encode("ascii")


def in_chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK_SIZE):
        yield data[start : start + CHUNK_SIZE]


@pytest.mark.parametrize(
    "chunked",
    [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")],
)
def test_large_post_echoed_intact(
    proxy: ProxySite, alice: httpx.Client, chunked: bool
) -> None:
    data = body_of_size(BODY_SIZE)
    content: bytes | Iterator[bytes] = in_chunks(data) if chunked else data
    response = alice.post(
        proxy.url + "/upload",
        content=content,
        headers={"Content-Type": "application/octet-stream"},
    )
    document = echoed(response)
    assert document["method"] == "POST"
    assert document["body_length"] == len(data)
    assert document["body"] == data.decode("ascii")


def test_put_without_body(proxy: ProxySite, alice: httpx.Client) -> None:
    document = echoed(alice.put(proxy.url + "/item"))
    assert document["method"] == "PUT"
    assert document["body_length"] == 0


def test_stream_arrives_in_chunks(proxy: ProxySite, alice: httpx.Client) -> None:
    count, interval = 5, 0.4
    arrivals: list[float] = []
    received = b""
    start = time.monotonic()
    with alice.stream(
        "GET", proxy.url + f"/stream?count={count}&interval={interval}"
    ) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            arrivals.append(time.monotonic() - start)
            received += chunk
    expected = "".join(f"chunk {index}\n" for index in range(count))
    assert received.decode() == expected
    assert len(arrivals) >= 3
    # The first chunk arrives before the upstream has produced the rest.
    assert arrivals[0] < arrivals[-1] - 2 * interval


# Hop-by-hop headers


HOP_BY_HOP_REQUEST = {
    "Connection": "keep-alive, X-Hop-Token",
    "X-Hop-Token": "listed in Connection",
    "Keep-Alive": "timeout=5",
    "TE": "trailers",
    "Trailer": "X-Checksum",
    "Proxy-Authorization": "Basic dXNlcjpwYXNz",
    "Proxy-Connection": "keep-alive",
    "X-End-To-End": "kept",
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name.lower(), id=name.lower())
        for name in HOP_BY_HOP_REQUEST
        if name not in ("Connection", "X-End-To-End")
    ],
)
def test_hop_by_hop_header_removed(
    proxy: ProxySite, alice: httpx.Client, name: str
) -> None:
    document = echoed(alice.get(proxy.url + "/whoami", headers=HOP_BY_HOP_REQUEST))
    assert header_values(document, name) == []


def test_end_to_end_header_kept(proxy: ProxySite, alice: httpx.Client) -> None:
    document = echoed(alice.get(proxy.url + "/whoami", headers=HOP_BY_HOP_REQUEST))
    assert header_values(document, "x-end-to-end") == ["kept"]


def test_connection_tokens_not_forwarded(proxy: ProxySite, alice: httpx.Client) -> None:
    document = echoed(alice.get(proxy.url + "/whoami", headers=HOP_BY_HOP_REQUEST))
    forwarded = ",".join(header_values(document, "connection")).lower()
    assert "x-hop-token" not in forwarded


HOP_BY_HOP_RESPONSE = [
    ("Content-Type", "text/plain"),
    ("Content-Length", "2"),
    ("Connection", "X-Hop-Token"),
    ("X-Hop-Token", "listed in Connection"),
    ("Keep-Alive", "timeout=9"),
    ("Proxy-Authenticate", "Basic"),
    ("X-End-To-End", "kept"),
]


def hop_by_hop_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", HOP_BY_HOP_RESPONSE)
    return [b"ok"]


@pytest.fixture
def hop_by_hop_response(
    start_cli: StartCli, sso_env: dict[str, str]
) -> Iterator[httpx.Response]:
    """The proxy's response for an upstream that sends hop-by-hop headers."""
    # werkzeug's server sends the application's headers unchanged, unlike
    # uvicorn, which would drop or rewrite some of them.
    with servers.serve_wsgi_in_thread(hop_by_hop_app) as upstream_url:
        proxy = start_cli(proxy_command(upstream_url), sso_env)
        with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT) as client:
            yield client.get(proxy.url + "/public/page")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("x-hop-token", id="connection-token"),
        pytest.param("keep-alive", id="keep-alive"),
        pytest.param("proxy-authenticate", id="proxy-authenticate"),
    ],
)
def test_hop_by_hop_response_header_removed(
    hop_by_hop_response: httpx.Response, name: str
) -> None:
    assert hop_by_hop_response.status_code == 200
    assert hop_by_hop_response.headers.get_list(name) == []


def test_end_to_end_response_header_kept(hop_by_hop_response: httpx.Response) -> None:
    assert hop_by_hop_response.headers.get_list("x-end-to-end") == ["kept"]
    assert hop_by_hop_response.text == "ok"


# Unauthenticated requests and the middleware's endpoints


def test_check_without_session_gets_401(proxy: ProxySite, client: httpx.Client) -> None:
    response = client.get(proxy.url + "/_sso/check")
    assert response.status_code == 401
    assert "x-forwarded-user" not in response.headers


@pytest.mark.parametrize(
    ("name", "value"),
    [pytest.param(name, value, id=name) for name, value in ALICE_HEADERS.items()],
)
def test_check_signed_in_has_identity(
    proxy: ProxySite, alice: httpx.Client, name: str, value: str
) -> None:
    response = alice.get(proxy.url + "/_sso/check")
    assert response.status_code == 200
    assert response.headers.get_list(name) == [value]


def test_userinfo_signed_in(proxy: ProxySite, alice: httpx.Client) -> None:
    response = alice.get(proxy.url + "/_sso/userinfo")
    assert response.status_code == 200
    assert response.json()["email"] == "alice@example.com"


def test_json_request_gets_401(proxy: ProxySite, client: httpx.Client) -> None:
    response = client.get(proxy.url + "/whoami", headers=JSON)
    assert response.status_code == 401
    assert "location" not in response.headers
    assert response.json()["error"] == "login_required"


def test_navigation_redirects_to_provider(
    proxy: ProxySite, client: httpx.Client, provider: Provider
) -> None:
    response = client.get(proxy.url + "/whoami", headers=NAVIGATION_HEADERS)
    assert response.status_code == 302
    assert response.headers["location"].startswith(provider.authorize_url + "?")


def test_health_returns_200(proxy: ProxySite, client: httpx.Client) -> None:
    response = client.get(proxy.url + "/_sso/health")
    assert response.status_code == 200
    assert response.text == "ok\n"


# Request targets


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/x/../whoami", id="dot-dot"),
        pytest.param("/x/./whoami", id="dot"),
        pytest.param("/x/%2e%2e/whoami", id="encoded-dot-dot"),
        pytest.param("/x/%2E/whoami", id="encoded-dot"),
        pytest.param("/x/..;/whoami", id="dot-dot-parameter"),
        pytest.param("/x/..%5cwhoami", id="encoded-backslash"),
    ],
)
def test_dot_segment_rejected_signed_in(
    proxy: ProxySite, alice: httpx.Client, target: str
) -> None:
    cookie = f"sso_session={session_cookie(alice)}"
    status, body = raw_get(proxy.port, target, {"Cookie": cookie, **JSON})
    assert status == 400
    assert json.loads(body)["error"] == "invalid_request"


def test_dot_segment_inside_public_rejected(proxy: ProxySite) -> None:
    # Both path forms are public, so the request reaches the proxy without a
    # session, and the proxy must not send the unnormalized path upstream.
    status, body = raw_get(proxy.port, "/public/x/%2e%2e/page", JSON)
    assert status == 400
    assert json.loads(body)["error"] == "invalid_request"


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/whoami/../public/page", id="dot-dot-into-public"),
        pytest.param("/whoami/%2e%2e/public/page", id="encoded-dots-into-public"),
        pytest.param("/whoami%2f..%2fpublic/page", id="encoded-slashes"),
        pytest.param("/whoami;x/..;y/public/page", id="matrix-parameters"),
    ],
)
def test_dot_segment_into_public_needs_login(proxy: ProxySite, target: str) -> None:
    # Only the normalized path is public. A public path must match in both forms,
    # because an application that does not resolve dot segments would route the
    # request by the path as received.
    status, body = raw_get(proxy.port, target, JSON)
    assert status == 401
    assert json.loads(body)["error"] == "login_required"


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/public/%2e%2e/whoami", id="encoded-dots"),
        pytest.param("/public/..;/whoami", id="dot-dot-parameter"),
        # The middleware does not treat a backslash as a separator, so this path
        # is not under /public/.
        pytest.param("/whoami%5c..%5cpublic/page", id="encoded-backslashes"),
    ],
)
def test_dot_segment_out_of_public_path(proxy: ProxySite, target: str) -> None:
    status, _ = raw_get(proxy.port, target, JSON)
    assert status == 401


def test_bad_target_page_is_html(proxy: ProxySite, alice: httpx.Client) -> None:
    headers = {"Cookie": f"sso_session={session_cookie(alice)}", **NAVIGATION_HEADERS}
    status, body = raw_get(proxy.port, "/x/../whoami", headers)
    assert status == 400
    assert b"<title>Bad request</title>" in body


# Upstream failures


@pytest.fixture
def doomed_upstream(
    start_uvicorn: StartUvicorn, start_cli: StartCli, sso_env: dict[str, str]
) -> tuple[AppServer, AppServer]:
    """An upstream of its own, which the test stops, and a proxy in front of it."""
    upstream = start_uvicorn("tests.support.apps:echo_upstream")
    proxy = start_cli(proxy_command(upstream.url), sso_env)
    return upstream, proxy


@pytest.mark.parametrize(
    ("headers", "content_type"),
    [
        pytest.param(NAVIGATION_HEADERS, "text/html", id="html"),
        pytest.param(JSON, "application/json", id="json"),
    ],
)
def test_upstream_down_gets_502(
    doomed_upstream: tuple[AppServer, AppServer],
    client: httpx.Client,
    headers: dict[str, str],
    content_type: str,
) -> None:
    upstream, proxy = doomed_upstream
    result = login(client, proxy.url + "/whoami")
    assert echoed(result.response)["path"] == "/whoami"

    upstream.process.stop()
    response = client.get(proxy.url + "/whoami", headers=headers)
    assert response.status_code == 502
    assert response.headers["content-type"].startswith(content_type)
    assert "The application cannot be reached." in response.text


def test_upstream_down_logged(
    doomed_upstream: tuple[AppServer, AppServer], client: httpx.Client
) -> None:
    upstream, proxy = doomed_upstream
    upstream.process.stop()
    response = client.get(proxy.url + "/public/page", headers=JSON)
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unavailable"
    log = proxy.process.log_text()
    assert f"Upstream {upstream.url} unreachable for GET /public/page" in log
    assert "Traceback" not in log


# Request framing, sent byte for byte


def raw_exchange(
    port: int, request: bytes, *, timeout: float = REQUEST_TIMEOUT
) -> tuple[int, bytes]:
    """Send ``request`` exactly as written, and return the status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


CHUNKED_WITH_CONTENT_LENGTH = (
    b"POST /public/x HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Accept: application/json\r\n"
    b"Content-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"3\r\nabc\r\n0\r\n\r\n"
)


@pytest.fixture
def chunked_with_length(proxy: ProxySite) -> tuple[int, bytes]:
    """The proxy's response to a chunked body that also declares Content-Length."""
    return raw_exchange(proxy.port, CHUNKED_WITH_CONTENT_LENGTH)


def test_chunked_with_length_forwarded(chunked_with_length: tuple[int, bytes]) -> None:
    status, body = chunked_with_length
    assert status == 200
    assert json.loads(body)["body"] == "abc"


def test_chunked_with_length_drops_length(
    chunked_with_length: tuple[int, bytes],
) -> None:
    # RFC 9112, section 6.3: Transfer-Encoding overrides Content-Length.
    document = json.loads(chunked_with_length[1])
    assert header_values(document, "content-length") == []


def test_chunked_with_length_no_traceback(
    chunked_with_length: tuple[int, bytes], proxy: ProxySite
) -> None:
    assert "Traceback" not in proxy.server.process.log_text()


def short_body_upstream(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


async def call_with_short_body(app: ProxyApp) -> list[dict[str, Any]]:
    """Call ``app`` with a body shorter than its Content-Length; return what it sent.

    An ASGI server never delivers such a body, so this reaches the handling of an
    error that the upstream connection raises while the body is sent.
    """
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "raw_path": b"/upload",
        "query_string": b"",
        "scheme": "http",
        "headers": [(b"host", b"127.0.0.1"), (b"content-length", b"5")],
        "client": ("127.0.0.1", 50000),
    }
    messages = [{"type": "http.request", "body": b"abc", "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(REQUEST_TIMEOUT)
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    try:
        await app(scope, receive, send)
    finally:
        await app.aclose()
    return sent


def test_body_send_error_gets_502(caplog: pytest.LogCaptureFixture) -> None:
    with servers.serve_wsgi_in_thread(short_body_upstream) as upstream_url:
        sent = asyncio.run(call_with_short_body(ProxyApp(upstream_url)))
    assert sent[0]["status"] == 502
    assert json.loads(sent[1]["body"])["error"] == "upstream_unavailable"
    assert "Forwarding POST /upload to upstream" in caplog.text


# Response headers that the server in front adds


def test_response_has_one_date(proxy: ProxySite, client: httpx.Client) -> None:
    response = client.get(proxy.url + "/public/page")
    assert response.status_code == 200
    assert len(response.headers.get_list("date")) == 1


def test_upstream_server_header_hidden(proxy: ProxySite, client: httpx.Client) -> None:
    response = client.get(proxy.url + "/public/page")
    assert response.headers.get_list("server") == []


# Connection options that name end-to-end headers


@pytest.mark.parametrize(
    "connection",
    [
        pytest.param("close, host", id="close-host"),
        pytest.param("Host", id="host"),
        pytest.param("host, x-forwarded-host", id="host-forwarded-host"),
    ],
)
def test_connection_listing_keeps_host(
    proxy: ProxySite, client: httpx.Client, connection: str
) -> None:
    response = client.get(
        proxy.url + "/public/page", headers={"Connection": connection}
    )
    document = echoed(response)
    assert header_values(document, "host") == [f"127.0.0.1:{proxy.port}"]
    assert header_values(document, "x-forwarded-host") == [f"127.0.0.1:{proxy.port}"]


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, id=name) for name in ALICE_HEADERS],
)
def test_connection_listing_keeps_identity(
    proxy: ProxySite, alice: httpx.Client, name: str
) -> None:
    response = alice.get(proxy.url + "/whoami", headers={"Connection": name})
    document = echoed(response)
    assert header_values(document, name) == [ALICE_HEADERS[name]]


# Slow clients


SLOW_UPLOAD = (
    b"POST /public/upload HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Accept: application/json\r\n"
    b"Content-Length: 1000\r\n"
    b"\r\n"
    b"abc"
)


def test_concurrency_limit_rejects_request(
    start_cli: StartCli, echo_upstream: AppServer, sso_env: dict[str, str]
) -> None:
    # uvicorn counts the new request's own connection: with a limit of 3, two slow
    # uploads leave no room for a third connection.
    args = [*proxy_command(echo_upstream.url), "--limit-concurrency", "3"]
    proxy = start_cli(args, sso_env)
    assert raw_get(proxy.port, "/public/page", JSON)[0] == 200
    # Let the server see that the previous connections have closed.
    time.sleep(0.3)
    with (
        socket.create_connection(("127.0.0.1", proxy.port)) as first,
        socket.create_connection(("127.0.0.1", proxy.port)) as second,
    ):
        first.sendall(SLOW_UPLOAD)
        second.sendall(SLOW_UPLOAD)
        time.sleep(0.3)
        status, _ = raw_get(proxy.port, "/public/page", JSON)
    assert status == 503


def test_slow_body_times_out(
    start_cli: StartCli, echo_upstream: AppServer, sso_env: dict[str, str]
) -> None:
    args = [*proxy_command(echo_upstream.url), "--client-body-timeout", "1"]
    proxy = start_cli(args, sso_env)
    start = time.monotonic()
    status, body = raw_exchange(proxy.port, SLOW_UPLOAD)
    elapsed = time.monotonic() - start
    assert status == 408
    assert json.loads(body)["error"] == "request_timeout"
    assert elapsed < 10
    assert "Client sent no request body data for 1 seconds" in proxy.process.log_text()
