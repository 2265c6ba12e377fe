"""The ASGI adapter: runs the core with a pooled ``httpx.AsyncClient``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx

from ._effects import Flow, ReadBody, StoreCall
from ._http import SPOOFABLE_HEADERS, Forward, Outcome, Reply, Request
from ._middleware import SSOMiddleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _spellings(name: str) -> set[bytes]:
    """Return every spelling of ``name`` with each "-" kept or made "_"."""
    spellings = {""}
    for char in name:
        choices = "-_" if char == "-" else char
        spellings = {prefix + choice for prefix in spellings for choice in choices}
    return {spelling.encode("ascii") for spelling in spellings}


# Header names the hot path stops at: the Cookie header and every spelling of the
# spoofable headers, since servers such as Django's merge "_" into "-". One set
# look-up per header keeps the scan cheap.
_WATCHED = frozenset(
    {b"cookie"}.union(*(_spellings(name) for name in SPOOFABLE_HEADERS))
)


class ASGIMiddleware(SSOMiddleware):
    """The ASGI form of :class:`SSOMiddleware`."""

    def __init__(
        self,
        app: Any,
        /,
        settings: Any = None,
        *,
        interface: str | None = None,
        transport: Any = None,
        **overrides: Any,
    ) -> None:
        super().__init__(app, settings, interface=interface, **overrides)
        self.client = httpx.AsyncClient(
            timeout=self.timeout, transport=transport, follow_redirects=False
        )
        self.store = None
        if self.core.uses_store:
            import redis.asyncio

            self.store = redis.asyncio.Redis.from_url(
                self.settings.session_store, socket_timeout=2, socket_connect_timeout=2
            )
        self._forwards = self.core.forwards
        self._endpoints = self.core.endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        cookie = None
        cookie_pair = None
        spoofed = False
        for pair in headers:
            if pair[0] in _WATCHED:
                if pair[0] != b"cookie":
                    spoofed = True
                elif cookie is None:
                    cookie, cookie_pair = pair[1], pair
                else:
                    # HTTP/2 may split the Cookie header. RFC 9113 8.2.3 joins the
                    # parts with "; ".
                    cookie, cookie_pair = cookie + b"; " + pair[1], None

        # The hot path, for a cookie without spoofed headers on a path that is not
        # one of the middleware's endpoints. A Cookie header already verified
        # costs one look-up (see Core.forwards), and a new one is verified here
        # without building a request for the core.
        if cookie is not None and not spoofed:
            hit = self._forwards.get(cookie)
            if scope["path"] not in self._endpoints:
                if hit is not None and hit[2] > time.time():
                    user, cleaned = hit[0], hit[1]
                else:
                    verified = self.core.verify_cookie_header(cookie.decode("latin-1"))
                    if verified is None:
                        user = None
                    else:
                        session, header = verified
                        user = session.user
                        cleaned = header.encode("latin-1") if header else None
                        self.core.remember(cookie, session, cleaned)
                if user is not None:
                    if cookie_pair is not None:
                        forwarded = list(headers)
                        forwarded.remove(cookie_pair)
                    else:
                        forwarded = [pair for pair in headers if pair[0] != b"cookie"]
                    if cleaned is not None:
                        forwarded.append((b"cookie", cleaned))
                    # The ASGI specification requires middleware to copy a scope it
                    # changes.
                    await self.app(
                        {**scope, "headers": forwarded, "user": user}, receive, send
                    )
                    return

        request = request_from_scope(scope)
        body_receiver = _BodyReader(receive)
        outcome = await self._run(self.core.handle(request), body_receiver)
        if isinstance(outcome, Forward):
            cleaned = outcome.cookie.encode("latin-1") if outcome.cookie else None
            if outcome.set_cookies:
                send = _with_cookies(send, outcome.set_cookies)
            await self.app(_forward_scope(scope, outcome.user, cleaned), receive, send)
            return
        if kind == "websocket":
            # Closing before accepting makes the server reject the handshake with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        await _send_reply(send, outcome, head=scope["method"] == "HEAD")

    async def _run(self, flow: Flow[Outcome], body: _BodyReader) -> Outcome:
        try:
            effect = next(flow)
            while True:
                try:
                    result = await self._perform(effect, body)
                except (httpx.HTTPError, ConnectionError) as exc:
                    effect = flow.throw(exc)
                else:
                    effect = flow.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _perform(self, effect: Any, body: _BodyReader) -> Any:
        if isinstance(effect, httpx.Request):
            return await self.client.send(effect)
        if isinstance(effect, StoreCall):
            import redis

            try:
                method = getattr(self.store, effect.method)
                return await method(*effect.args, **effect.kwargs)
            except redis.RedisError as exc:
                raise ConnectionError(str(exc)) from exc
        if isinstance(effect, ReadBody):
            return await body.read(effect.limit)
        raise TypeError(f"unknown effect {effect!r}")

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.store is not None:
            await self.store.aclose()


def _forward_scope(scope: Scope, user: Any, cookie: bytes | None) -> Scope:
    headers = [
        (name, value)
        for name, value in scope["headers"]
        # _WATCHED is the Cookie header and every spelling of a spoofable one.
        if name not in _WATCHED
    ]
    if cookie is not None:
        headers.append((b"cookie", cookie))
    forwarded = dict(scope)
    forwarded["headers"] = headers
    forwarded["user"] = user
    return forwarded


def _with_cookies(send: Send, cookies: list[str]) -> Send:
    extra = [(b"set-cookie", value.encode("latin-1")) for value in cookies]

    async def send_with_cookies(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return send_with_cookies


async def _send_reply(send: Send, reply: Reply, *, head: bool) -> None:
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in reply.headers
    ]
    headers.append((b"content-length", str(len(reply.body)).encode("ascii")))
    await send(
        {"type": "http.response.start", "status": reply.status, "headers": headers}
    )
    await send({"type": "http.response.body", "body": b"" if head else reply.body})


class _BodyReader:
    """Reads the request body for the endpoints that need it."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive

    async def read(self, limit: int) -> bytes | None:
        chunks = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def request_from_scope(scope: Scope) -> Request:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in headers:
            separator = "; " if name == "cookie" else ", "
            headers[name] = headers[name] + separator + value
        else:
            headers[name] = value
    query = scope.get("query_string", b"").decode("latin-1")
    raw_path = scope.get("raw_path")
    if raw_path:
        target = raw_path.decode("latin-1")
    else:
        from urllib.parse import quote

        target = quote(
            scope.get("root_path", "") + scope["path"], safe="/;=,:@!$&'()*+~"
        )
    if query:
        target += "?" + query
    client = scope.get("client")
    scheme = scope.get("scheme", "http")
    if scheme in ("ws", "wss"):
        scheme = "https" if scheme == "wss" else "http"
    if "host" not in headers:
        server = scope.get("server")
        headers["host"] = f"{server[0]}:{server[1]}" if server else "localhost"
    return Request(
        method=scope.get("method", "GET"),
        scheme=scheme,
        path=scope["path"] or "/",
        target=target,
        query=query,
        headers=headers,
        client=client[0] if client else None,
        websocket=scope["type"] == "websocket",
    )
