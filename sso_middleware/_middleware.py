"""``SSOMiddleware``: one name for the WSGI and the ASGI middleware."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import httpx

from ._flow import Core
from ._settings import Settings

logger = logging.getLogger("sso_middleware")


class SSOMiddleware:
    """OpenID Connect single sign-on in front of a WSGI or ASGI application.

    ``SSOMiddleware(app)`` returns a WSGI middleware when ``app`` is a WSGI
    application and an ASGI middleware when it is an ASGI application, so it works
    as ``app.wsgi_app = SSOMiddleware(app.wsgi_app)`` in Flask and as
    ``app.add_middleware(SSOMiddleware, issuer=...)`` in Starlette.

    :param app: the application to protect.
    :param settings: the configuration. When omitted it is read with
        :meth:`Settings.from_env`.
    :param interface: ``"wsgi"`` or ``"asgi"`` to skip detection.
    :param transport: an httpx transport for the calls to the provider, for tests.
    :param overrides: setting names and values, applied over ``settings`` or the
        environment.

    The WSGI middleware sets ``environ["sso.user"]`` and ``REMOTE_USER``; the ASGI
    middleware sets ``scope["user"]``. Both remove client-sent identity headers and
    the middleware's own cookies before the application receives the request.
    """

    settings: Settings
    core: Core

    # The return type is the base class, because __new__ picks the WSGI or the ASGI
    # subclass from the application's type.
    def __new__(  # noqa: PYI034
        cls,
        app: Any,
        /,
        settings: Settings | None = None,
        *,
        interface: str | None = None,
        transport: Any = None,
        **overrides: Any,
    ) -> SSOMiddleware:
        if cls is not SSOMiddleware:
            return super().__new__(cls)
        kind = interface or detect_interface(app)
        if kind == "asgi":
            from ._asgi import ASGIMiddleware

            return super().__new__(ASGIMiddleware)
        if kind == "wsgi":
            from ._wsgi import WSGIMiddleware

            return super().__new__(WSGIMiddleware)
        raise ValueError(f"interface must be 'wsgi' or 'asgi', not {kind!r}")

    def __init__(
        self,
        app: Any,
        /,
        settings: Settings | None = None,
        *,
        interface: str | None = None,
        transport: Any = None,
        **overrides: Any,
    ) -> None:
        if settings is None:
            settings = Settings.from_env(**overrides)
        elif overrides:
            settings = settings.replace(**overrides)
        self.app = app
        self.settings = settings
        self.core = Core(settings)
        self.timeout = httpx.Timeout(settings.http_timeout)
        if not settings.redirect_uri:
            logger.warning(
                "SSO_REDIRECT_URI is not set: the callback URL is derived from each "
                "request's host and %s. Set it explicitly in production.",
                settings.redirect_path,
            )
        if settings.issuer.startswith("http:"):
            logger.warning(
                "SSO_ISSUER %s uses plain http: use https outside local development",
                settings.issuer,
            )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Serve one request: ``(environ, start_response)`` for WSGI, or
        ``(scope, receive, send)`` for ASGI. The subclass that ``SSOMiddleware(app)``
        returns defines it; this signature lets type checkers accept the instance
        wherever a WSGI or an ASGI application is expected.
        """
        raise NotImplementedError


def detect_interface(app: Any) -> str:
    """Return ``"asgi"`` for an ASGI application and ``"wsgi"`` otherwise."""
    if inspect.iscoroutinefunction(app):
        return "asgi"
    # An instance whose class defines ``async def __call__``, such as a Starlette
    # application or an ASGI SSOMiddleware.
    if callable(app) and inspect.iscoroutinefunction(type(app).__call__):
        return "asgi"
    return "wsgi"
