"""Fixtures that start the real components: the OpenID provider, Redis, nginx,
uvicorn servers and Chromium.

Servers that tests only read from are started once per session. The factories
(``start_uvicorn``, ``start_cli``, ``start_nginx``) start servers that a single test
configures, and stop them when that test ends.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    # Tests import helpers as ``tests.support``, whatever the working directory.
    sys.path.insert(0, str(REPO_ROOT))

from tests.support import servers
from tests.support.browser import (
    Browser,
    ChromeDriver,
    open_browser,
    start_chromedriver,
)
from tests.support.servers import AppServer, NginxServer, Provider

# The hostile provider's fixtures, shared by the conformance and attack tests.
pytest_plugins = ["tests.support.hostile_provider"]

StartUvicorn = Callable[..., AppServer]
StartCli = Callable[..., AppServer]
StartNginx = Callable[..., NginxServer]


@pytest.fixture(scope="session")
def provider() -> Iterator[Provider]:
    """The mock OpenID provider, with the users alice and bob."""
    with servers.start_provider() as running:
        yield running


@pytest.fixture
def sso_env(provider: Provider) -> dict[str, str]:
    """``SSO_*`` variables for the provider, a new dict for each test to change."""
    return servers.settings_env(provider)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The ``redis://`` URL of an in-memory redis-server shared by the session."""
    with servers.start_redis() as url:
        yield url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis URL, with its database emptied before the test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server


@pytest.fixture(scope="session")
def echo_upstream() -> Iterator[AppServer]:
    """The echoing upstream application, for proxy tests."""
    with servers.uvicorn_server("tests.support.apps:echo_upstream") as server:
        yield server


@pytest.fixture
def start_uvicorn() -> Iterator[StartUvicorn]:
    """Start ``uvicorn_server(app_spec, env, ...)``; stopped when the test ends."""
    with ExitStack() as stack:

        def start(
            app_spec: str,
            env: Mapping[str, str] | None = None,
            port: int | None = None,
            *,
            factory: bool = False,
            interface: str = "auto",
            extra_args: Sequence[str] = (),
        ) -> AppServer:
            server = servers.uvicorn_server(
                app_spec,
                env,
                port,
                factory=factory,
                interface=interface,
                extra_args=extra_args,
            )
            return stack.enter_context(server)

        yield start


@pytest.fixture
def start_cli() -> Iterator[StartCli]:
    """Start ``python -m sso_middleware ARGS``; ``{port}`` in ARGS is its port."""
    with ExitStack() as stack:

        def start(
            args: Sequence[str],
            env: Mapping[str, str] | None = None,
            *,
            port: int | None = None,
        ) -> AppServer:
            return stack.enter_context(servers.cli_server(args, env, port=port))

        yield start


@pytest.fixture
def start_nginx() -> Iterator[StartNginx]:
    """Start nginx with a configuration template; stopped when the test ends."""
    with ExitStack() as stack:

        def start(
            body: str, *, port: int | None = None, **values: object
        ) -> NginxServer:
            return stack.enter_context(servers.start_nginx(body, port=port, **values))

        yield start


@pytest.fixture(scope="session")
def chromedriver() -> Iterator[ChromeDriver]:
    with start_chromedriver() as driver:
        yield driver


@pytest.fixture
def browser(chromedriver: ChromeDriver) -> Iterator[Browser]:
    """A headless Chromium with a new profile, so no cookies carry over."""
    with open_browser(chromedriver) as session:
        yield session
