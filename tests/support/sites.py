"""Protected sample applications served over loopback HTTP, for both adapters."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx

from sso_middleware import Settings, SSOMiddleware
from tests.support import servers
from tests.support.apps import create_flask_app, create_starlette_app
from tests.support.browser import NAVIGATION_HEADERS, login
from tests.support.threads import serve_asgi, serve_wsgi

JSON = {"Accept": "application/json"}
INTERFACES = ("wsgi", "asgi")


@dataclass
class Site:
    """An application behind the middleware, served over HTTP on loopback."""

    url: str
    client: httpx.Client
    interface: str
    middleware: Any

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(self.url + path, **kwargs)

    def navigate(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**NAVIGATION_HEADERS, **kwargs.pop("headers", {})}
        return self.client.get(self.url + path, headers=headers, **kwargs)

    def login(self, path: str = "/whoami", user: str = "alice") -> Any:
        """Log in through oidc-provider-mock's sign-in form."""
        return login(self.client, self.url + path, user=user)

    def follow_login(self, path: str = "/whoami") -> httpx.Response:
        """Log in through a provider that redirects back at once, such as
        ``HostileProvider``: every redirect is followed."""
        return self.client.get(
            self.url + path, headers=NAVIGATION_HEADERS, follow_redirects=True
        )

    def session_cookie(self) -> str | None:
        return self.client.cookies.get("sso_session")

    def new_client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(trust_env=False, timeout=10, **kwargs)


def build_site(
    stack: ExitStack,
    interface: str,
    issuer: str,
    *,
    client_id: str = servers.CLIENT_ID,
    client_secret: str = servers.CLIENT_SECRET,
    transport: Any = None,
    **overrides: Any,
) -> Site:
    """Wrap a Flask (WSGI) or Starlette (ASGI) sample app and serve it in a thread."""
    values = {
        "issuer": issuer,
        "client_id": client_id,
        "client_secret": client_secret,
        "secret_key": servers.SECRET_KEY,
    }
    settings = Settings(**{**values, **overrides})
    if interface == "wsgi":
        middleware = SSOMiddleware(create_flask_app(), settings, transport=transport)
        url = stack.enter_context(serve_wsgi(middleware))
    else:
        middleware = SSOMiddleware(
            create_starlette_app(), settings, transport=transport
        )
        url = stack.enter_context(serve_asgi(middleware))
    client = stack.enter_context(httpx.Client(trust_env=False, timeout=10))
    return Site(url, client, interface, middleware)
