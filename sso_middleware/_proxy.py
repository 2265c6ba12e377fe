"""An authenticating reverse proxy: an ASGI application that forwards to an upstream.

:class:`ProxyApp` forwards each HTTP request to one upstream server and streams both
bodies, so memory use does not grow with their size. :func:`build_proxy` puts
:class:`~sso_middleware.SSOMiddleware` in front of it, which is what
``sso-middleware proxy`` serves.
"""

from __future__ import annotations

import html
import ipaddress
import itertools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from http.cookiejar import Cookie, CookieJar
from typing import Any, cast
from urllib.parse import quote, unquote_to_bytes, urlsplit

import anyio
import httpx

from ._http import html_page, is_spoofable, json_reply
from ._middleware import SSOMiddleware
from ._settings import Settings
from ._user import User, identity_headers

logger = logging.getLogger("sso_middleware")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_UPSTREAM_TIMEOUT = 60.0
# 16 pools of 8 idle connections keep up to 128 connections open to the upstream.
POOLS = 16
KEEPALIVE_PER_POOL = 8
# The same default as nginx's client_body_timeout.
DEFAULT_CLIENT_BODY_TIMEOUT = 60.0

# Hop-by-hop headers apply to one connection only and are never forwarded
# (RFC 9110, section 7.6.1). Proxy-* headers are meant for this proxy itself.
# The ASGI server handles Expect: it sends "100 Continue" to the client when the
# body is first read.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"http2-settings",
    }
)

# Headers in which a client could claim an address, host or scheme of its own.
# They are kept only when the connecting peer is a trusted proxy.
_FORWARDING_HEADERS = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-real-ip",
    }
)

# Headers that a Connection header cannot make hop-by-hop. The proxy reads the
# client's Host to send it upstream and to set X-Forwarded-Host, and RFC 9110
# (section 7.6.1) forbids listing a header that is meant for every recipient.
_END_TO_END = frozenset({b"host"})

# Response headers that the ASGI server in front writes itself. uvicorn 0.55 adds
# Date, and Server unless server_header is off, without looking at the
# application's headers, so the upstream's copies would be sent twice. nginx's
# proxy module also hides the upstream's Date and Server by default.
_SET_BY_SERVER = frozenset({b"date", b"server"})

_NON_ASCII = re.compile(rb"[\x80-\xff]")


class _ClientDisconnected(Exception):
    """The client closed the connection before it sent the whole request body."""


class _ClientBodyTimeout(Exception):
    """The client sent no request body data for ``client_body_timeout`` seconds."""


class _DiscardingCookieJar(CookieJar):
    """A cookie jar that stores nothing.

    The proxy shares one httpx client among all users, so a cookie that the upstream
    sets for one user must never be kept and sent with another user's request.
    """

    def set_cookie(self, cookie: Cookie) -> None:
        return None

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


class ProxyApp:
    """An ASGI application that forwards HTTP requests to one upstream server.

    The upstream URL is the base URL plus the request's raw path and query string,
    so ``http://127.0.0.1:8080/app`` receives ``/x?y=1`` as ``/app/x?y=1``. Request
    and response bodies are streamed. Hop-by-hop headers are removed in both
    directions, the original ``Host`` is kept, and ``X-Forwarded-For``,
    ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are set. A request with both
    ``Transfer-Encoding`` and ``Content-Length`` is forwarded chunked, without its
    ``Content-Length`` (RFC 9112, section 6.3). The upstream's ``Date`` and
    ``Server`` response headers are removed, because the ASGI server in front adds
    its own. When ``scope["user"]`` is an authenticated
    :class:`~sso_middleware.User`, the identity headers (``X-Forwarded-User``,
    ``-Email``, ``-Preferred-Username``, ``-Groups``) carry it. Client-sent copies
    of those headers are always removed.

    An unreachable upstream, or any other failure to send the request upstream,
    gets ``502``. An upstream that times out gets ``504``, and a client that stops
    sending its request body ``408``. Each is an HTML page for browsers and JSON
    otherwise, with one WARNING log line.

    WebSocket connections are not supported through the proxy: the handshake is
    closed with code 1011 and logged.

    :param upstream: the base URL of the upstream server, ``http`` or ``https``.
    :param timeout: seconds to wait for the upstream to accept a connection, and
        then for each read or write. A streamed response that pauses longer than
        this is cut off.
    :param trusted_proxies: addresses or networks of proxies in front of this one.
        From those peers, client-sent ``X-Forwarded-*`` and ``Forwarded`` headers
        are kept and the peer is appended to ``X-Forwarded-For``. From any other
        peer they are replaced.
    :param client_body_timeout: seconds to wait for each next part of the request
        body from the client, like nginx's ``client_body_timeout``. uvicorn 0.55
        limits neither this wait nor the wait for the headers of a connection's
        first request.
    :raises ValueError: when ``upstream`` is not an http(s) URL without query or
        fragment.
    """

    def __init__(
        self,
        upstream: str,
        *,
        timeout: float = DEFAULT_UPSTREAM_TIMEOUT,
        trusted_proxies: Iterable[str] = (),
        client_body_timeout: float = DEFAULT_CLIENT_BODY_TIMEOUT,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"invalid upstream URL {upstream!r}: expected an http(s) URL such as "
                "http://127.0.0.1:8080"
            )
        if parts.query or parts.fragment:
            raise ValueError(
                f"invalid upstream URL {upstream!r}: it must have no query or fragment"
            )
        self.upstream = upstream
        self._base_url = httpx.URL(upstream)
        self._base_path = parts.path.rstrip("/").encode("ascii", "replace")
        self._trusted = tuple(
            ipaddress.ip_network(proxy, strict=False) for proxy in trusted_proxies
        )
        self._client_body_timeout = client_body_timeout
        # trust_env is off so that HTTP_PROXY and similar variables cannot send
        # the traffic meant for the upstream somewhere else. The pool has no
        # connection limit because every client request uses its own connection
        # while it streams. So only the ASGI server bounds the number of upstream
        # connections, by bounding the requests in progress: "sso-middleware
        # proxy --limit-concurrency" sets uvicorn's limit_concurrency.
        #
        # httpcore checks every connection of a pool, with a poll() call each, for
        # every request it sends, so one large pool costs more the busier it is.
        # Requests go round-robin to several small pools instead.
        self._clients = [
            httpx.AsyncClient(
                timeout=httpx.Timeout(timeout),
                limits=httpx.Limits(
                    max_connections=None, max_keepalive_connections=KEEPALIVE_PER_POOL
                ),
                cookies=_DiscardingCookieJar(),
                follow_redirects=False,
                trust_env=False,
            )
            for _ in range(POOLS)
        ]
        self._next_client = itertools.cycle(self._clients).__next__

    async def aclose(self) -> None:
        """Close the pooled connections to the upstream."""
        for client in self._clients:
            await client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._proxy_http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._reject_websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _reject_websocket(
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        await receive()  # websocket.connect
        logger.warning(
            "WebSocket request for %s rejected: the proxy does not forward WebSocket "
            "connections",
            _raw_path(scope).decode("latin-1"),
        )
        # 1011: the server met a condition that prevents it from fulfilling the
        # request (RFC 6455, section 7.4.1). Before the handshake is accepted,
        # uvicorn responds to a close with HTTP 403.
        await send({"type": "websocket.close", "code": 1011})

    async def _proxy_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        raw_path = _raw_path(scope)
        # Log lines show the path as sent, still percent-encoded, so that a decoded
        # line break cannot forge a log line. The query is left out because it may
        # contain secrets.
        path = raw_path.decode("latin-1")
        if not raw_path.startswith(b"/") or _has_dot_segment(raw_path):
            # A dot segment would be resolved by httpx, so the upstream would get
            # another path than the one the middleware checked against the public
            # paths. Browsers resolve dot segments before they send a request.
            logger.warning(
                "Rejected request target for %s %s: not a normalized absolute path",
                method,
                path,
            )
            await _send_error(
                scope, send, 400, "invalid_request", "The request path is not valid."
            )
            return

        target = self._base_path + _NON_ASCII.sub(_percent_encode, raw_path)
        query = scope.get("query_string", b"")
        if query:
            target += b"?" + _NON_ASCII.sub(_percent_encode, query)
        try:
            url = self._base_url.copy_with(raw_path=target)
        except httpx.InvalidURL:
            # For example a "#" in the request target, which browsers never send.
            logger.warning(
                "Rejected request target for %s %s: not a valid URL", method, path
            )
            await _send_error(
                scope, send, 400, "invalid_request", "The request URL is not valid."
            )
            return

        headers = self._request_headers(scope)
        body_state = _BodyState()
        content = (
            _request_body(receive, body_state, self._client_body_timeout)
            if _has_body(scope)
            else None
        )
        if content is None:
            body_state.done = True
        request = httpx.Request(method, url, headers=headers, content=content)

        try:
            response = await self._next_client().send(request, stream=True)
        except _ClientDisconnected:
            logger.info("Client disconnected while sending %s %s", method, path)
            return
        except _ClientBodyTimeout:
            logger.warning(
                "Client sent no request body data for %g seconds: %s %s",
                self._client_body_timeout,
                method,
                path,
            )
            # A 408 should carry the "close" connection option (RFC 7231, section
            # 6.5.7), and the rest of the body would not be read anyway.
            await _send_error(
                scope,
                send,
                408,
                "request_timeout",
                "The request body did not arrive in time.",
                close=True,
            )
            return
        except httpx.TimeoutException as error:
            logger.warning(
                "Upstream %s timed out for %s %s: %s",
                self.upstream,
                method,
                path,
                type(error).__name__,
            )
            await _send_error(
                scope,
                send,
                504,
                "upstream_timeout",
                "The application did not respond in time.",
            )
            return
        except httpx.HTTPError as error:
            logger.warning(
                "Upstream %s unreachable for %s %s: %s",
                self.upstream,
                method,
                path,
                _describe(error),
            )
            await _send_error(
                scope,
                send,
                502,
                "upstream_unavailable",
                "The application cannot be reached.",
            )
            return
        except Exception as error:
            # httpcore 1.0.9 lets some errors through unwrapped, such as h11's
            # LocalProtocolError for a body shorter than its Content-Length. The
            # traceback is logged at DEBUG only, because a client can cause it.
            logger.warning(
                "Forwarding %s %s to upstream %s failed: %s: %s",
                method,
                path,
                self.upstream,
                type(error).__name__,
                error,
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )
            await _send_error(
                scope,
                send,
                502,
                "upstream_unavailable",
                "The application cannot be reached.",
            )
            return

        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": _response_headers(response.headers.raw),
                }
            )
            await self._stream_response(path, response, receive, send, body_state)
        finally:
            await response.aclose()

    async def _stream_response(
        self,
        path: str,
        response: httpx.Response,
        receive: Receive,
        send: Send,
        body_state: _BodyState,
    ) -> None:
        async def send_body() -> None:
            try:
                async for chunk in response.aiter_raw():
                    await send(
                        {"type": "http.response.body", "body": chunk, "more_body": True}
                    )
            except httpx.HTTPError as error:
                # The status line is gone, so no error page can follow. Returning
                # without the final message makes the server close the connection,
                # and the client sees a truncated response instead of a short one.
                logger.warning(
                    "Upstream %s response for %s %s ended early: %s",
                    self.upstream,
                    response.request.method,
                    path,
                    _describe(error),
                )
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        if not body_state.done:
            # The upstream responded before it read the whole request body. Only the
            # body reader may call receive(), so no disconnect watch can start, and
            # the stream lasts as long as the upstream's response.
            await send_body()
            return

        async with anyio.create_task_group() as tasks:

            async def watch_disconnect() -> None:
                # Uvicorn drops messages sent after a disconnect, so a streamed
                # response with no end, such as server-sent events, would keep its
                # upstream connection open forever without this watch.
                while (await receive())["type"] != "http.disconnect":
                    pass
                tasks.cancel_scope.cancel()

            tasks.start_soon(watch_disconnect)
            await send_body()
            tasks.cancel_scope.cancel()

    def _request_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        raw: list[tuple[bytes, bytes]] = list(scope.get("headers", []))
        client = scope.get("client")
        peer = client[0] if client else None
        trusted = peer is not None and self._is_trusted(peer)
        dropped = _HOP_BY_HOP | (_connection_tokens(raw) - _END_TO_END)
        if not trusted:
            dropped = dropped | _FORWARDING_HEADERS
        if any(name.lower() == b"transfer-encoding" for name, _ in raw):
            # RFC 9112, section 6.3: Transfer-Encoding overrides Content-Length, and
            # a sender must remove the received Content-Length before it forwards
            # such a message. httpx sends the decoded body chunked again.
            dropped = dropped | {b"content-length"}

        headers: list[tuple[bytes, bytes]] = []
        forwarded_for: list[bytes] = []
        host = b""
        forwarded_headers: dict[bytes, bytes] = {}
        for name, value in raw:
            lower = name.lower()
            if lower in dropped or lower.startswith(b"proxy-"):
                continue
            if is_spoofable(lower.decode("latin-1")):
                continue
            if lower == b"host":
                host = value
            if lower == b"x-forwarded-for":
                forwarded_for.append(value)
                continue
            if lower in (b"x-forwarded-proto", b"x-forwarded-host"):
                forwarded_headers.setdefault(lower, value)
                continue
            headers.append((lower, value))

        if peer is not None:
            forwarded_for.append(peer.encode("latin-1"))
        if forwarded_for:
            headers.append((b"x-forwarded-for", b", ".join(forwarded_for)))
        scheme = str(scope.get("scheme", "http")).encode("latin-1")
        headers.append(
            (b"x-forwarded-proto", forwarded_headers.get(b"x-forwarded-proto", scheme))
        )
        forwarded_host = forwarded_headers.get(b"x-forwarded-host", host)
        if forwarded_host:
            headers.append((b"x-forwarded-host", forwarded_host))

        user = scope.get("user")
        if isinstance(user, User):
            headers.extend(identity_headers(user))
        return headers

    def _is_trusted(self, address: str) -> bool:
        if not self._trusted:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)


def build_proxy(
    settings: Settings,
    upstream: str,
    *,
    timeout: float = DEFAULT_UPSTREAM_TIMEOUT,
    client_body_timeout: float = DEFAULT_CLIENT_BODY_TIMEOUT,
) -> ASGIApp:
    """Build the authenticating reverse proxy: SSOMiddleware in front of a ProxyApp.

    Call ``aclose()`` on the returned middleware and on its ``app`` attribute (the
    :class:`ProxyApp`) when the server stops, unless the server sends the ASGI
    lifespan shutdown event.
    """
    proxy = ProxyApp(
        upstream,
        timeout=timeout,
        trusted_proxies=settings.trusted_proxies,
        client_body_timeout=client_body_timeout,
    )
    return cast(ASGIApp, SSOMiddleware(proxy, settings, interface="asgi"))


class _BodyState:
    """Whether the request body has been read to its end."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False


async def _request_body(
    receive: Receive, state: _BodyState, timeout: float
) -> AsyncIterator[bytes]:
    while True:
        try:
            with anyio.fail_after(timeout):
                message = await receive()
        except TimeoutError:
            raise _ClientBodyTimeout from None
        if message["type"] == "http.disconnect":
            raise _ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            state.done = True
            return


def _has_body(scope: Scope) -> bool:
    # Without Content-Length or Transfer-Encoding a request has no body
    # (RFC 9112, section 6.3). Sending an empty chunked body instead would give a
    # GET a body that some servers reject. Transfer-Encoding overrides
    # Content-Length, whichever comes first.
    headers = scope.get("headers", [])
    if any(name.lower() == b"transfer-encoding" for name, _ in headers):
        return True
    for name, value in headers:
        if name.lower() == b"content-length":
            return bool(value.strip() != b"0")
    return False


def _raw_path(scope: Scope) -> bytes:
    raw = scope.get("raw_path")
    if raw:
        return bytes(raw)
    # raw_path is optional in the ASGI specification.
    return quote(scope.get("path", ""), safe="/;=:@!$&'()*+,~").encode("ascii")


def _has_dot_segment(raw_path: bytes) -> bool:
    """Tell whether a path has a "." or ".." segment, raw or percent-encoded.

    Backslashes count as separators and ``;`` parameters are ignored, as some
    servers treat them so.
    """
    decoded = unquote_to_bytes(raw_path).replace(b"\\", b"/")
    for segment in decoded.split(b"/"):
        if segment.split(b";", 1)[0] in (b".", b".."):
            return True
    return False


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__


def _percent_encode(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match.group()[0]


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Return the header names that the Connection header lists as hop-by-hop."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(
                token.strip().lower() for token in value.split(b",") if token.strip()
            )
    return frozenset(tokens)


def _response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    raw = list(raw)
    dropped = _HOP_BY_HOP | _SET_BY_SERVER | _connection_tokens(raw)
    return [
        (name.lower(), value)
        for name, value in raw
        if name.lower() not in dropped and not name.lower().startswith(b"proxy-")
    ]


_ERROR_TITLES = {
    400: "Bad request",
    408: "Request timed out",
    502: "Application unavailable",
    504: "Application timed out",
}


async def _send_error(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    message: str,
    *,
    close: bool = False,
) -> None:
    accept = b", ".join(
        value for name, value in scope.get("headers", []) if name.lower() == b"accept"
    )
    if b"text/html" in accept:
        body = f"<p>{html.escape(message)}</p>"
        reply = html_page(status, _ERROR_TITLES[status], body)
    else:
        reply = json_reply(status, {"error": code, "error_description": message})
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in reply.headers
    ]
    headers.append((b"content-length", str(len(reply.body)).encode("ascii")))
    if close:
        headers.append((b"connection", b"close"))
    await send(
        {"type": "http.response.start", "status": reply.status, "headers": headers}
    )
    await send({"type": "http.response.body", "body": reply.body})
