"""Sample applications that the tests wrap or put behind the proxy.

uvicorn subprocesses import them by name, for example
``tests.support.apps:starlette_wrapped``:

- ``flask_app`` (WSGI) and ``starlette_app`` (ASGI) return, for every path, a JSON
  description of the request: the identity that the middleware passed on and every
  header received.
- ``echo_upstream`` is a plain ASGI application for the reverse proxy. It echoes
  the method, path, query, headers and body, and also serves ``/stream`` (a chunked
  response), ``/slow`` (responds after 5 s) and ``/status/<code>``.
- ``flask_wrapped``, ``starlette_wrapped`` and ``starlette_add_middleware`` wrap
  the sample applications with ``SSOMiddleware`` configured from ``SSO_*``
  variables. They are built on first access, so importing this module needs
  neither the middleware nor its settings.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
SLOW_SECONDS = 5.0
STREAM_CHUNK_COUNT = 5
STREAM_INTERVAL_SECONDS = 0.2


def describe_user(user: Any) -> dict[str, Any] | None:
    """Return the identity fields of a user object as JSON, or None without one.

    Attributes are read with defaults so that any object the middleware passes
    on can be described, including a wrong one.
    """
    if user is None:
        return None
    claims = getattr(user, "claims", None) or {}
    return {
        "type": type(user).__name__,
        "is_authenticated": getattr(user, "is_authenticated", None),
        "sub": getattr(user, "sub", None),
        "email": getattr(user, "email", None),
        "name": getattr(user, "name", None),
        "preferred_username": getattr(user, "preferred_username", None),
        "display_name": getattr(user, "display_name", None),
        "groups": list(getattr(user, "groups", ()) or ()),
        "roles": list(getattr(user, "roles", ()) or ()),
        "claims": dict(claims),
    }


# --- Flask (WSGI) ----------------------------------------------------------------


def create_flask_app() -> flask.Flask:
    """Build a Flask application that describes each request as JSON.

    ``/`` and ``/whoami`` are the paths tests use, but every path responds, so
    public-path patterns can be checked on any URL.
    """
    app = flask.Flask("sample_flask_app")

    def describe() -> flask.Response:
        request = flask.request
        environ = request.environ
        return flask.jsonify(
            {
                "app": "flask",
                "method": request.method,
                "path": request.path,
                "query": environ.get("QUERY_STRING", ""),
                "user": describe_user(environ.get("sso.user")),
                "remote_user": environ.get("REMOTE_USER"),
                "headers": {name.lower(): value for name, value in request.headers},
                "body": request.get_data(as_text=True),
            }
        )

    app.add_url_rule("/", "root", describe, methods=ALL_METHODS)
    app.add_url_rule("/whoami", "whoami", describe, methods=ALL_METHODS)
    app.add_url_rule(
        "/<path:path>", "any", lambda path: describe(), methods=ALL_METHODS
    )
    return app


# --- Starlette (ASGI) --------------------------------------------------------------


async def _describe_starlette_request(request: Request) -> JSONResponse:
    # request.user asserts that an authentication middleware set scope["user"],
    # so the scope is read directly to describe a request that has none.
    body = await request.body()
    return JSONResponse(
        {
            "app": "starlette",
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "user": describe_user(request.scope.get("user")),
            "headers": {name: value for name, value in request.headers.items()},
            "body": body.decode("utf-8", errors="replace"),
        }
    )


def create_starlette_app() -> Starlette:
    """Build a Starlette application that describes each request as JSON."""
    route = Route("/{path:path}", _describe_starlette_request, methods=ALL_METHODS)
    return Starlette(routes=[route])


# --- plain upstream (ASGI, no framework) -------------------------------------------


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body
        chunk: bytes = message.get("body", b"")
        body += chunk
        if not message.get("more_body", False):
            return body


async def _send_json(send: Send, status: int, document: dict[str, Any]) -> None:
    payload = json.dumps(document).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if status in (204, 304):
        # These responses have no content (RFC 9110, sections 15.3.5 and 15.4.5).
        payload = b""
        headers = []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _describe_scope(scope: Scope, body: bytes) -> dict[str, Any]:
    # Headers stay a list of pairs in arrival order, so duplicates are visible.
    return {
        "app": "echo",
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": scope.get("raw_path", b"").decode("latin-1"),
        "query": scope["query_string"].decode("latin-1"),
        "scheme": scope["scheme"],
        "http_version": scope["http_version"],
        "client": list(scope["client"]) if scope.get("client") else None,
        "headers": [
            [name.decode("latin-1"), value.decode("latin-1")]
            for name, value in scope["headers"]
        ],
        "body": body.decode("utf-8", errors="replace"),
        "body_length": len(body),
    }


def _query_number(scope: Scope, name: str, default: float) -> float:
    values = parse_qs(scope["query_string"].decode("latin-1")).get(name)
    if not values:
        return default
    try:
        return float(values[0])
    except ValueError:
        return default


async def _stream(scope: Scope, send: Send) -> None:
    # No content-length, so uvicorn sends the chunks with chunked transfer
    # encoding (RFC 9112, section 7.1) as they are produced.
    count = int(_query_number(scope, "count", STREAM_CHUNK_COUNT))
    interval = _query_number(scope, "interval", STREAM_INTERVAL_SECONDS)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    for index in range(count):
        chunk = f"chunk {index}\n".encode()
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await asyncio.sleep(interval)
    await send({"type": "http.response.body", "body": b""})


async def _serve_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def echo_upstream(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo each request as JSON, with a few paths that test the proxy's streaming.

    ``/stream?count=5&interval=0.2`` sends ``count`` chunks ``interval`` seconds
    apart. ``/slow?seconds=5`` responds after a delay. ``/status/<code>`` echoes
    with that status.
    """
    if scope["type"] == "lifespan":
        await _serve_lifespan(receive, send)
        return
    if scope["type"] != "http":
        # NOTE: WebSocket connections are not echoed. A closing message before
        # acceptance makes the server reject the handshake with 403.
        await send({"type": "websocket.close"})
        return

    path = scope["path"]
    if path == "/stream":
        await _stream(scope, send)
        return

    body = await _read_body(receive)
    status = 200
    if path == "/slow":
        await asyncio.sleep(_query_number(scope, "seconds", SLOW_SECONDS))
    elif path.startswith("/status/"):
        code = path.removeprefix("/status/")
        status = int(code) if code.isdigit() and 200 <= int(code) <= 599 else 400
    await _send_json(send, status, _describe_scope(scope, body))


# --- the sample applications wrapped by the middleware -----------------------------


def create_flask_wrapped() -> Any:
    """Wrap the Flask application with ``SSOMiddleware`` configured from the environment."""
    from sso_middleware import SSOMiddleware

    return SSOMiddleware(create_flask_app())


def create_starlette_wrapped() -> Any:
    """Wrap the Starlette application with ``SSOMiddleware`` configured from the environment."""
    from sso_middleware import SSOMiddleware

    return SSOMiddleware(create_starlette_app())


def create_starlette_add_middleware() -> Starlette:
    """Add ``SSOMiddleware`` the Starlette way, with ``add_middleware``."""
    from sso_middleware import SSOMiddleware

    app = create_starlette_app()
    app.add_middleware(SSOMiddleware)
    return app


flask_app = create_flask_app()
starlette_app = create_starlette_app()

_WRAPPED_BUILDERS: dict[str, Callable[[], Any]] = {
    "flask_wrapped": create_flask_wrapped,
    "starlette_wrapped": create_starlette_wrapped,
    "starlette_add_middleware": create_starlette_add_middleware,
}
_wrapped: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    # A module-level __getattr__ (PEP 562) builds the wrapped applications on
    # first access, which is when uvicorn resolves "tests.support.apps:NAME".
    builder = _WRAPPED_BUILDERS.get(name)
    if builder is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _wrapped:
        _wrapped[name] = builder()
    return _wrapped[name]
