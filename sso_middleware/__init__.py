"""OpenID Connect single sign-on in front of any WSGI or ASGI application."""

from __future__ import annotations

from ._middleware import SSOMiddleware
from ._settings import Settings
from ._user import User

__all__ = ["SSOMiddleware", "Settings", "User"]
