"""ASGI application factories that the loopback benchmarks serve with uvicorn.

Run as ``uvicorn --factory --app-dir benchmarks servers:NAME``. The settings are
those of ``fixtures.settings()``, so a cookie signed by the benchmark process is
valid in the server.
"""

from __future__ import annotations

import os
from typing import Any

import fixtures

from sso_middleware import SSOMiddleware


def bare() -> Any:
    """Return the trivial application alone. It is also the proxy's upstream."""
    return fixtures.asgi_app


def protected() -> Any:
    """Return the trivial application behind the ASGI middleware."""
    return SSOMiddleware(fixtures.asgi_app, fixtures.settings(), interface="asgi")


def proxy() -> Any:
    """Return the authenticating reverse proxy in front of ``BENCH_UPSTREAM``.

    Used only when the package has no ``python -m sso_middleware proxy`` command.
    """
    from sso_middleware._proxy import build_proxy

    return build_proxy(fixtures.settings(), os.environ["BENCH_UPSTREAM"])
