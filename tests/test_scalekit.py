"""Scalekit's enterprise SSO: organization and connection routing, IdP-initiated login.

Scalekit sends the browser to the login endpoint with ``idp_initiated_login``, a JWT
signed with the environment's keys that names the organization, the connection, a
login hint and a relay state. The middleware verifies it and starts an ordinary
login with its own state, nonce and PKCE.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.support.browser import NAVIGATION_HEADERS
from tests.support.hostile_provider import HostileProvider
from tests.support.sites import INTERFACES, Site, build_site


@pytest.fixture(params=INTERFACES)
def site(
    request: pytest.FixtureRequest,
    hostile_provider: HostileProvider,
) -> Iterator[Site]:
    with ExitStack() as stack:
        yield build_site(
            stack,
            request.param,
            hostile_provider.issuer,
            client_id=hostile_provider.client_id,
            client_secret=hostile_provider.client_secret,
        )


def login_token(provider: HostileProvider, **changes: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": provider.issuer,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "organization_id": "org_123",
        "connection_id": "conn_456",
        "login_hint": "alice@example.com",
        "relay_state": "/reports?year=2026",
    }
    claims.update(changes)
    return provider.sign_jwt({k: v for k, v in claims.items() if v is not None})


def start(site: Site, token: str) -> Any:
    return site.navigate("/_sso/login?" + urlencode({"idp_initiated_login": token}))


def authorize_params(response: Any) -> dict[str, str]:
    return {
        k: v[0]
        for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()
    }


def test_idp_initiated_login_routes_connection(
    site: Site,
    hostile_provider: HostileProvider,
) -> None:
    response = start(site, login_token(hostile_provider))
    assert response.status_code == 302
    params = authorize_params(response)
    assert params["organization_id"] == "org_123"
    assert params["connection_id"] == "conn_456"
    assert params["login_hint"] == "alice@example.com"
    assert params["code_challenge_method"] == "S256"
    assert "nonce" in params


def test_idp_initiated_login_returns_to_relay_state(
    site: Site,
    hostile_provider: HostileProvider,
) -> None:
    first = start(site, login_token(hostile_provider))
    final = site.client.get(
        first.headers["location"], headers=NAVIGATION_HEADERS, follow_redirects=True
    )
    assert final.status_code == 200
    body = final.json()
    assert body["path"] == "/reports"
    assert body["query"] == "year=2026"
    assert body["user"]["sub"] == "alice"


def test_relay_state_stays_on_site(
    site: Site,
    hostile_provider: HostileProvider,
) -> None:
    first = start(site, login_token(hostile_provider, relay_state="//evil.example/x"))
    callback = site.client.get(first.headers["location"])
    response = site.client.get(callback.headers["location"], headers=NAVIGATION_HEADERS)
    assert response.headers["location"] == "/"


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"exp": 1}, id="expired"),
        pytest.param({"iss": "https://evil.example"}, id="other-issuer"),
        pytest.param({"organization_id": None, "connection_id": None}, id="no-route"),
        pytest.param({"iat": None}, id="no-iat"),
    ],
)
def test_invalid_login_token_rejected(
    site: Site,
    hostile_provider: HostileProvider,
    changes: dict[str, Any],
) -> None:
    response = start(site, login_token(hostile_provider, **changes))
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "text/html" in response.headers["content-type"]


def test_login_token_from_other_key_rejected(
    site: Site,
    hostile_provider: HostileProvider,
) -> None:
    with HostileProvider() as stranger:
        forged = stranger.sign_jwt(
            {
                "iss": hostile_provider.issuer,
                "iat": int(time.time()),
                "exp": int(time.time()) + 300,
                "connection_id": "conn_evil",
            }
        )
    response = start(site, forged)
    assert response.status_code == 400


def test_garbage_login_token_rejected(site: Site) -> None:
    response = start(site, "not-a-jwt")
    assert response.status_code == 400
    assert "Traceback" not in response.text
