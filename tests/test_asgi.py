"""ASGI specifics: websockets, lifespan, interface detection and add_middleware."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from sso_middleware import Settings, SSOMiddleware, User
from sso_middleware._asgi import ASGIMiddleware
from sso_middleware._wsgi import WSGIMiddleware
from tests.support import servers
from tests.support.apps import create_flask_app
from tests.support.browser import login
from tests.support.servers import Provider
from tests.support.threads import serve_asgi


async def whoami(request: Request) -> PlainTextResponse:
    return PlainTextResponse(
        request.user.display_name if request.user.is_authenticated else "anonymous"
    )


async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(f"hello {websocket.scope['user'].sub}")
    await websocket.close()


def settings_for(provider: Provider, **changes: Any) -> Settings:
    return Settings(
        issuer=provider.issuer,
        client_id=servers.CLIENT_ID,
        client_secret=servers.CLIENT_SECRET,
        secret_key=servers.SECRET_KEY,
        **changes,
    )


@pytest.fixture
def starlette_site(provider: Provider) -> Iterator[tuple[str, httpx.Client]]:
    app = Starlette(
        routes=[Route("/", whoami), WebSocketRoute("/ws", socket)],
        middleware=[Middleware(SSOMiddleware, settings=settings_for(provider))],
    )
    with ExitStack() as stack:
        url = stack.enter_context(serve_asgi(app))
        client = stack.enter_context(httpx.Client(trust_env=False, timeout=10))
        yield url, client


def test_add_middleware_gives_request_user(
    starlette_site: tuple[str, httpx.Client],
) -> None:
    url, client = starlette_site
    result = login(client, url + "/")
    assert result.response.text == "Alice Example"


def test_websocket_without_session_refused(
    starlette_site: tuple[str, httpx.Client],
) -> None:
    url, _ = starlette_site
    with pytest.raises(InvalidStatus) as caught:
        connect(url.replace("http", "ws") + "/ws", open_timeout=5)
    assert caught.value.response.status_code == 403


def test_websocket_with_session_gets_user(
    starlette_site: tuple[str, httpx.Client],
) -> None:
    url, client = starlette_site
    login(client, url + "/")
    cookie = f"sso_session={client.cookies['sso_session']}"
    with connect(
        url.replace("http", "ws") + "/ws",
        additional_headers={"Cookie": cookie},
        open_timeout=5,
    ) as ws:
        assert ws.recv(timeout=5) == "hello alice"


def test_keyword_overrides_build_settings(provider: Provider) -> None:
    app = Starlette(
        middleware=[
            Middleware(
                SSOMiddleware,
                issuer=provider.issuer,
                client_id="kw-client",
                client_secret="kw-secret",
                secret_key="s" * 40,
            )
        ]
    )
    stack = app.build_middleware_stack()
    while not isinstance(stack, SSOMiddleware):
        stack = stack.app
    assert stack.settings.client_id == "kw-client"


def test_interface_detected(provider: Provider) -> None:
    settings = settings_for(provider)
    assert isinstance(SSOMiddleware(Starlette(), settings), ASGIMiddleware)
    assert isinstance(SSOMiddleware(create_flask_app(), settings), WSGIMiddleware)
    forced = SSOMiddleware(create_flask_app(), settings, interface="asgi")
    assert isinstance(forced, ASGIMiddleware)


def test_unknown_interface_rejected(provider: Provider) -> None:
    with pytest.raises(ValueError, match="interface"):
        SSOMiddleware(Starlette(), settings_for(provider), interface="cgi")


def test_settings_from_environment(
    provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in servers.settings_env(provider).items():
        monkeypatch.setenv(name, value)
    middleware = SSOMiddleware(Starlette())
    assert middleware.settings.issuer == provider.issuer


def test_lifespan_passes_through(provider: Provider) -> None:
    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        message = await receive()
        events.append(message["type"])
        await send({"type": "lifespan.startup.complete"})

    middleware = SSOMiddleware(app, settings_for(provider))
    sent: list[Any] = []

    async def receive() -> dict[str, str]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(middleware({"type": "lifespan"}, receive, send))
    assert events == ["lifespan.startup"]
    assert sent == [{"type": "lifespan.startup.complete"}]


def test_user_is_immutable() -> None:
    user = User.from_claims({"sub": "a", "groups": ["x"]})
    with pytest.raises(AttributeError):
        user.sub = "b"  # type: ignore[misc]
    with pytest.raises(TypeError):
        user.claims["sub"] = "b"  # type: ignore[index]
    assert user.identity == "a"
    assert user.is_authenticated is True
