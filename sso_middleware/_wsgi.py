"""The WSGI adapter: runs the core with a blocking ``httpx.Client``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

import httpx

from ._effects import Flow, ReadBody, StoreCall
from ._http import SPOOFABLE_HEADERS, Forward, Outcome, Reply, Request
from ._middleware import SSOMiddleware
from ._user import User

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

# The environ keys of the spoofable headers: WSGI servers turn "-" into "_", so
# "X-Forwarded_User" lands on the same key.
SPOOFABLE_KEYS = tuple(
    "HTTP_" + name.upper().replace("-", "_") for name in sorted(SPOOFABLE_HEADERS)
)


class WSGIMiddleware(SSOMiddleware):
    """The WSGI form of :class:`SSOMiddleware`."""

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
        self.client = httpx.Client(
            timeout=self.timeout, transport=transport, follow_redirects=False
        )
        self.store = None
        if self.core.uses_store:
            import redis

            self.store = redis.Redis.from_url(
                self.settings.session_store, socket_timeout=2, socket_connect_timeout=2
            )
        self._forwards = self.core.forwards
        self._endpoints = self.core.endpoints

    def __call__(
        self, environ: Environ, start_response: StartResponse
    ) -> Iterable[bytes]:
        cookie = environ.get("HTTP_COOKIE")
        if cookie is not None:
            # The hot path: a Cookie header already verified, on a path that is not
            # one of the middleware's endpoints. See Core.forwards.
            hit = self._forwards.get(cookie)
            if (
                hit is not None
                and hit[2] > time.time()
                and environ.get("PATH_INFO", "") not in self._endpoints
            ):
                return self._forward(environ, start_response, hit[0], hit[1], ())
            if environ.get("PATH_INFO", "") not in self._endpoints:
                verified = self.core.verify_cookie_header(cookie)
                if verified is not None:
                    session, cleaned = verified
                    self.core.remember(cookie, session, cleaned)
                    return self._forward(
                        environ, start_response, session.user, cleaned, ()
                    )
        request = request_from_environ(environ)
        outcome = self._run(self.core.handle(request), environ)
        if isinstance(outcome, Forward):
            return self._forward(
                environ,
                start_response,
                outcome.user,
                outcome.cookie,
                outcome.set_cookies,
            )
        return self._reply(environ, start_response, outcome)

    def _forward(
        self,
        environ: Environ,
        start_response: StartResponse,
        user: Any,
        cookie: str | None,
        set_cookies: Iterable[str],
    ) -> Iterable[bytes]:
        for key in SPOOFABLE_KEYS:
            environ.pop(key, None)
        if cookie is None:
            environ.pop("HTTP_COOKIE", None)
        else:
            environ["HTTP_COOKIE"] = cookie
        environ["sso.user"] = user
        if isinstance(user, User):
            environ["REMOTE_USER"] = user.sub
        else:
            environ.pop("REMOTE_USER", None)
        if set_cookies:
            extra = [("Set-Cookie", value) for value in set_cookies]

            def start_with_cookies(
                status: str, headers: list[tuple[str, str]], exc_info: Any = None
            ) -> Any:
                return start_response(status, headers + extra, exc_info)

            return self.app(environ, start_with_cookies)  # type: ignore[no-any-return]
        return self.app(environ, start_response)  # type: ignore[no-any-return]

    def _reply(
        self, environ: Environ, start_response: StartResponse, reply: Reply
    ) -> Iterable[bytes]:
        headers = list(reply.headers)
        headers.append(("Content-Length", str(len(reply.body))))
        start_response(f"{reply.status} {_reason(reply.status)}", headers)
        if environ.get("REQUEST_METHOD") == "HEAD":
            return [b""]
        return [reply.body]

    def _run(self, flow: Flow[Outcome], environ: Environ) -> Outcome:
        try:
            effect = next(flow)
            while True:
                try:
                    result = self._perform(effect, environ)
                except (httpx.HTTPError, ConnectionError) as exc:
                    effect = flow.throw(exc)
                else:
                    effect = flow.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _perform(self, effect: Any, environ: Environ) -> Any:
        if isinstance(effect, httpx.Request):
            return self.client.send(effect)
        if isinstance(effect, StoreCall):
            import redis

            try:
                return getattr(self.store, effect.method)(*effect.args, **effect.kwargs)
            except redis.RedisError as exc:
                raise ConnectionError(str(exc)) from exc
        if isinstance(effect, ReadBody):
            return _read_body(environ, effect.limit)
        raise TypeError(f"unknown effect {effect!r}")

    def close(self) -> None:
        self.client.close()


def request_from_environ(environ: Environ) -> Request:
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].lower().replace("_", "-")] = value
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    # PEP 3333 carries the path as latin-1 decoded bytes.
    path = _wsgi_str(environ.get("PATH_INFO", "")) or "/"
    query = environ.get("QUERY_STRING", "")
    target = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if not target:
        raw_path = quote(
            _wsgi_str(environ.get("SCRIPT_NAME", "")) + path, safe="/;=,:@!$&'()*+~"
        )
        target = raw_path + ("?" + query if query else "")
    if "host" not in headers:
        headers["host"] = (
            f"{environ.get('SERVER_NAME', 'localhost')}:"
            f"{environ.get('SERVER_PORT', '80')}"
        )
    return Request(
        method=environ.get("REQUEST_METHOD", "GET").upper(),
        scheme=environ.get("wsgi.url_scheme", "http"),
        path=path,
        target=target,
        query=query,
        headers=headers,
        client=environ.get("REMOTE_ADDR"),
    )


def _wsgi_str(value: str) -> str:
    return value.encode("latin-1").decode("utf-8", "replace")


def _read_body(environ: Environ, limit: int) -> bytes | None:
    """Read the request body, or return None when it is longer than ``limit``."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    length = environ.get("CONTENT_LENGTH") or ""
    if not length and environ.get("wsgi.input_terminated"):
        # A chunked body: the server ends the stream, so it is read to the end.
        body: bytes = stream.read(limit + 1)
        return None if len(body) > limit else body
    try:
        size = int(length or 0)
    except ValueError:
        return b""
    if size > limit:
        return None
    return stream.read(size) if size > 0 else b""


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
