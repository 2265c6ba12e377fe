"""``sso-middleware demo``: a local provider, a sample application and the proxy.

Everything listens on 127.0.0.1. oidc-provider-mock takes its issuer from the URL
that reached it, so the middleware and the browser must both use 127.0.0.1, never
``localhost``, or the issuer check fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import html
import importlib.util
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO

import httpx
import uvicorn

from ._cli import StoppableServer, server_config
from ._proxy import Receive, Scope, Send, build_proxy
from ._settings import Settings
from ._user import IDENTITY_HEADERS

logger = logging.getLogger("sso_middleware")

HOST = "127.0.0.1"

# The predefined user of the provider: the login page shows a button for it.
DEMO_USER = {
    "sub": "alice",
    "email": "alice@example.com",
    "name": "Alice Example",
    "preferred_username": "alice",
    "groups": ["staff"],
}

# Seconds to wait for the provider's discovery document. Starting the provider
# imports Flask, Authlib and pydantic, which takes a few seconds on a slow disk.
PROVIDER_START_TIMEOUT = 30.0
PROVIDER_STOP_TIMEOUT = 5.0


def run_demo(port: int, *, log_level: str = "info") -> int:
    """Run the demo until Ctrl-C, and return the exit status."""
    if importlib.util.find_spec("oidc_provider_mock") is None:
        print(
            "sso-middleware demo: the oidc-provider-mock package is missing. "
            "Install it with: pip install 'sso-middleware[demo]'",
            file=sys.stderr,
        )
        return 1
    try:
        proxy_socket = _listen(port)
    except OSError as error:
        print(
            f"sso-middleware demo: cannot listen on {HOST}:{port}: {error}. "
            "Choose another port with --port.",
            file=sys.stderr,
        )
        return 1

    app_socket = _listen(0)
    provider_port = _free_port()
    with (
        proxy_socket,
        app_socket,
        tempfile.NamedTemporaryFile(
            "w+", prefix="sso-middleware-demo-provider-", suffix=".log"
        ) as provider_log,
        _provider(provider_port, provider_log) as provider,
    ):
        try:
            return asyncio.run(
                _serve(
                    port,
                    proxy_socket,
                    app_socket,
                    provider,
                    provider_port,
                    provider_log,
                    log_level,
                )
            )
        except KeyboardInterrupt:
            # Ctrl-C before the servers started: the provider is stopped on exit.
            return 130


@contextlib.contextmanager
def _provider(port: int, log: IO[str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run oidc-provider-mock in a child process, and stop it on exit."""
    command = [
        sys.executable,
        "-m",
        "oidc_provider_mock",
        "--host",
        HOST,
        "--port",
        str(port),
        "--user-claims",
        json.dumps(DEMO_USER),
    ]
    # A session of its own keeps Ctrl-C in the terminal from reaching the
    # provider, so that it stops after the proxy that depends on it.
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1"},
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(PROVIDER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "The demo provider did not stop in %s seconds: killing process %d",
                    PROVIDER_STOP_TIMEOUT,
                    process.pid,
                )
                process.kill()
                process.wait()


async def _serve(
    port: int,
    proxy_socket: socket.socket,
    app_socket: socket.socket,
    provider: subprocess.Popen[bytes],
    provider_port: int,
    provider_log: IO[str],
    log_level: str,
) -> int:
    issuer = f"http://{HOST}:{provider_port}"
    if not await _wait_for_provider(issuer, provider):
        provider_log.seek(0)
        print(
            f"sso-middleware demo: the provider did not start. Its output "
            f"({provider_log.name}):\n{provider_log.read()}",
            file=sys.stderr,
        )
        return 1

    app_url = f"http://{HOST}:{app_socket.getsockname()[1]}"
    site = f"http://{HOST}:{port}"
    settings = Settings(
        issuer=issuer,
        client_id="demo",
        client_secret="demo-secret",
        secret_key=secrets.token_urlsafe(32),
        redirect_uri=f"{site}/_sso/callback",
    )
    proxy_app = build_proxy(settings, app_url)

    # Only the proxy's server handles Ctrl-C; the sample application stops after it.
    app_server = _ServerWithoutSignals(
        uvicorn.Config(
            sample_app,
            lifespan="off",
            log_level=log_level,
            log_config=None,
            server_header=False,
        )
    )
    # Both servers share the "uvicorn.access" logger, and access_log=False would
    # silence the proxy too (uvicorn 0.55), so the sample application's lines are
    # filtered out instead: each proxied request is logged once.
    logging.getLogger("uvicorn.access").addFilter(_not_from_sample_app)
    # Both servers also log their start and stop to "uvicorn.error", and the
    # records do not name the server, so only the proxy's lines are kept.
    logging.getLogger("uvicorn.error").addFilter(_quiet_sample_server)
    proxy_server = StoppableServer(server_config(proxy_app, HOST, port, log_level))
    app_task = asyncio.create_task(_serve_sample_app(app_server, app_socket))
    proxy_task = asyncio.create_task(proxy_server.serve(sockets=[proxy_socket]))
    try:
        while not (app_server.started and proxy_server.started):
            if app_task.done() or proxy_task.done():
                # A server failed to start and logged why: stop the other one.
                proxy_server.should_exit = True
                break
            await asyncio.sleep(0.05)
        else:
            _print_banner(site, issuer, app_url, provider_log.name)
        await proxy_task
    finally:
        app_server.should_exit = True
        await app_task
        for close in (
            getattr(proxy_app, "aclose", None),
            getattr(getattr(proxy_app, "app", None), "aclose", None),
        ):
            if close is not None:
                await close()
    return 0


async def _wait_for_provider(issuer: str, provider: subprocess.Popen[bytes]) -> bool:
    """Poll the provider's discovery document until it returns 200."""
    url = issuer + "/.well-known/openid-configuration"
    deadline = time.monotonic() + PROVIDER_START_TIMEOUT
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline and provider.poll() is None:
            try:
                response = await client.get(url)
            except httpx.HTTPError:
                pass
            else:
                if response.status_code == 200:
                    return True
            await asyncio.sleep(0.1)
    return False


def _print_banner(site: str, issuer: str, app_url: str, provider_log: str) -> None:
    print(
        f"\nsso-middleware demo is running.\n\n"
        f"  Open {site}/ in your browser.\n\n"
        f"  The login page of the mock provider ({issuer}) asks who\n"
        f"  signs in: click the predefined user 'alice', or type the subject alice\n"
        f"  and press Authorize. Any other subject signs in too, with an email\n"
        f"  claim only.\n\n"
        f"  Sample application, without the proxy: {app_url}\n"
        f"  Provider log: {provider_log}\n\n"
        f"Press Ctrl-C to stop.\n",
        flush=True,
    )


class _ServerWithoutSignals(uvicorn.Server):
    """A uvicorn server that leaves signals alone: another server stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise
    return sock


def _free_port() -> int:
    # NOTE: another process may take the port between this check and the
    # provider's start; the provider then fails and the demo reports it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# The sample application


# Set while the sample application handles a request. uvicorn writes the access
# log line from within the application's send(), so the line includes the value.
_IN_SAMPLE_APP: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "_IN_SAMPLE_APP", default=False
)


# Set in the task that runs the sample application's server, and so in the
# tasks and callbacks that it starts, which copy its context.
_IN_SAMPLE_SERVER: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "_IN_SAMPLE_SERVER", default=False
)


def _not_from_sample_app(record: logging.LogRecord) -> bool:
    return not _IN_SAMPLE_APP.get()


def _quiet_sample_server(record: logging.LogRecord) -> bool:
    """Drop the sample application server's INFO lines, and label its warnings."""
    if not _IN_SAMPLE_SERVER.get():
        return True
    if record.levelno < logging.WARNING:
        return False
    record.msg = f"sample application server: {record.msg}"
    return True


async def _serve_sample_app(server: uvicorn.Server, sock: socket.socket) -> None:
    # The task has a context of its own, so the value stays in this task.
    _IN_SAMPLE_SERVER.set(True)
    await server.serve(sockets=[sock])


async def sample_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Greet the user that the proxy's identity headers name, as a plain ASGI app."""
    if scope["type"] != "http":
        return
    # uvicorn runs each request in a task of its own, so this value stays there.
    _IN_SAMPLE_APP.set(True)
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers[name.decode("latin-1")] = value.decode("utf-8", "replace")
    body = _render_page(headers).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _render_page(headers: dict[str, str]) -> str:
    email = headers.get("x-forwarded-email")
    greeting = (
        f"Hello, {html.escape(email)}!"
        if email
        else "Hello! No identity headers reached this application."
    )
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th>"
        f"<td>{html.escape(headers.get(name, '(not sent)'))}</td></tr>"
        for name in IDENTITY_HEADERS
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sso-middleware demo</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;
padding:0 1rem;color:#222}}th{{text-align:left;padding-right:1rem;font-weight:600}}
td,th{{font-family:ui-monospace,monospace;font-size:.9rem}}
button{{font:inherit;padding:.4rem 1rem}}</style></head>
<body>
<h1>{greeting}</h1>
<p>This page comes from the sample application. The proxy in front of it
checked the session and sent these request headers:</p>
<table>{rows}</table>
<p>The middleware's own endpoint <a href="/_sso/userinfo">/_sso/userinfo</a> shows
the session's user as JSON.</p>
<form method="post" action="/_sso/logout"><button type="submit">Sign out</button></form>
</body></html>
"""
