"""Run a WSGI application under an ASGI server, behind the ASGI middleware.

``sso-middleware serve`` wraps WSGI applications with :class:`WsgiToAsgiWithUser`
and puts :class:`~sso_middleware.SSOMiddleware` in front of it as ASGI middleware,
so one uvicorn process serves any Python web application.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, cast

from asgiref.sync import sync_to_async
from asgiref.wsgi import WsgiToAsgiInstance

from ._middleware import SSOMiddleware, detect_interface
from ._proxy import ASGIApp, Receive, Scope, Send
from ._settings import Settings
from ._user import User

logger = logging.getLogger("sso_middleware")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

DEFAULT_THREADS = 8


class WsgiToAsgiWithUser:
    """An ASGI application that runs a WSGI application in a pool of threads.

    The WSGI application receives ``environ["sso.user"]``, the ``scope["user"]`` that
    the middleware set (a :class:`~sso_middleware.User`, or the anonymous user on a
    public path), and ``environ["REMOTE_USER"]``, the user's ``sub``, when signed
    in. ASGI lifespan events are acknowledged, and WebSocket connections are
    closed, because WSGI has neither.

    Requests run in a dedicated pool of ``threads`` threads. asgiref's own
    :class:`~asgiref.wsgi.WsgiToAsgi` (version 3.13) runs them one at a time in a
    single shared thread, and the event loop's default pool is left to DNS lookups.

    :param wsgi_application: the WSGI application.
    :param threads: the number of requests the WSGI application handles at once.
    """

    def __init__(
        self, wsgi_application: WSGIApp, *, threads: int = DEFAULT_THREADS
    ) -> None:
        self.wsgi_application = wsgi_application
        self.executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="sso-middleware-wsgi"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await _WsgiInstance(self.wsgi_application, self.executor)(
                scope, receive, send
            )
        elif scope["type"] == "lifespan":
            await _acknowledge_lifespan(receive, send, on_shutdown=self.close)
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect
            logger.warning(
                "WebSocket request for %s rejected: a WSGI application "
                "cannot accept WebSocket connections",
                scope.get("path", ""),
            )
            await send({"type": "websocket.close", "code": 1011})

    def close(self) -> None:
        """Stop the thread pool once the requests in progress have finished."""
        self.executor.shutdown(wait=False)


class _WsgiInstance(WsgiToAsgiInstance):
    """One request: asgiref's environ and body handling, with the user and a pool."""

    def __init__(self, wsgi_application: WSGIApp, executor: ThreadPoolExecutor) -> None:
        super().__init__(wsgi_application)  # type: ignore[no-untyped-call]
        self.executor = executor

    def build_environ(self, scope: Scope, body: BinaryIO) -> dict[str, Any]:
        build = super().build_environ
        environ: dict[str, Any] = build(scope, body)  # type: ignore[no-untyped-call]
        user = scope.get("user")
        environ["sso.user"] = user
        if isinstance(user, User):
            environ["REMOTE_USER"] = user.sub
        return environ

    async def run_wsgi_app(self, body: BinaryIO) -> None:
        await sync_to_async(
            self._run_wsgi_app_sync, thread_sensitive=False, executor=self.executor
        )(body)

    def _run_wsgi_app_sync(self, body: BinaryIO) -> None:
        # Runs in a worker thread. asgiref's version of this method (3.13) never
        # calls the iterable's close(), which WSGI requires (PEP 3333) and which
        # Flask and Django use to end the request.
        try:
            environ = self.build_environ(self.scope, body)
        except ValueError:
            # asgiref raises ValueError for too many repeated headers.
            self._send_bad_request()
            return

        result = self.wsgi_application(environ, self.start_response)
        try:
            sent = 0
            for chunk in result:
                if not self.response_started:
                    self.response_started = True
                    self.sync_send(self.response_start)
                limit = self.response_content_length
                if limit is not None:
                    # Never send more bytes than the application's Content-Length.
                    chunk = chunk[: max(limit - sent, 0)]
                if chunk:
                    self.sync_send(
                        {"type": "http.response.body", "body": chunk, "more_body": True}
                    )
                    sent += len(chunk)
                if limit is not None and sent >= limit:
                    break
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

        if not self.response_started:
            self.response_started = True
            self.sync_send(self.response_start)
        self.sync_send({"type": "http.response.body", "body": b""})

    def _send_bad_request(self) -> None:
        body = b"Bad Request: too many repeated headers"
        self.sync_send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode("ascii")),
                ],
            }
        )
        self.sync_send({"type": "http.response.body", "body": body})


async def _acknowledge_lifespan(
    receive: Receive, send: Send, *, on_shutdown: Callable[[], None]
) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


def wrap_for_serving(
    app: Any,
    settings: Settings,
    interface: str = "auto",
    *,
    threads: int = DEFAULT_THREADS,
) -> ASGIApp:
    """Return ``app`` behind SSOMiddleware, as one ASGI application.

    A WSGI application runs under :class:`WsgiToAsgiWithUser`.
    """
    if interface == "auto":
        interface = detect_interface(app)
    if interface == "wsgi":
        app = WsgiToAsgiWithUser(app, threads=threads)
    return cast(ASGIApp, SSOMiddleware(app, settings, interface="asgi"))
