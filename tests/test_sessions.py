"""Server-side sessions in a real redis-server, and back-channel logout.

The provider is the hostile test provider in its correct mode: it redirects back at
once and can sign logout tokens with its own key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.support import servers
from tests.support.hostile_provider import HostileProvider
from tests.support.sites import INTERFACES, JSON, Site, build_site

MakeSite = Callable[..., Site]


@pytest.fixture(params=INTERFACES)
def make_site(
    request: pytest.FixtureRequest,
    hostile_provider: HostileProvider,
) -> Iterator[MakeSite]:
    with ExitStack() as stack:

        def make(**overrides: Any) -> Site:
            return build_site(
                stack,
                request.param,
                hostile_provider.issuer,
                client_id=hostile_provider.client_id,
                client_secret=hostile_provider.client_secret,
                **overrides,
            )

        yield make


def logged_in(site: Site) -> dict[str, Any]:
    response = site.follow_login()
    assert response.status_code == 200
    userinfo = site.get("/_sso/userinfo").json()
    assert userinfo["sub"] == "alice"
    return dict(userinfo["claims"])


def backchannel_logout(site: Site, token: str) -> httpx.Response:
    return site.new_client().post(
        site.url + "/_sso/backchannel-logout", data={"logout_token": token}
    )


# Back-channel logout


@pytest.mark.parametrize("by", ["sid", "sub"])
def test_backchannel_logout_ends_cookie_session(
    make_site: MakeSite,
    hostile_provider: HostileProvider,
    by: str,
) -> None:
    site = make_site()
    claims = logged_in(site)
    assert site.get("/whoami", headers=JSON).status_code == 200
    token = hostile_provider.make_logout_token(**{by: claims[by]})
    response = backchannel_logout(site, token)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert site.get("/whoami", headers=JSON).status_code == 401


def test_backchannel_logout_spares_new_login(
    make_site: MakeSite,
    hostile_provider: HostileProvider,
) -> None:
    site = make_site()
    claims = logged_in(site)
    backchannel_logout(site, hostile_provider.make_logout_token(sid=claims["sid"]))
    site.client.cookies.clear()
    logged_in(site)
    assert site.get("/whoami", headers=JSON).status_code == 200


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c.pop("events"), id="no-events"),
        pytest.param(lambda c: c.update(nonce="n"), id="with-nonce"),
        pytest.param(lambda c: c.pop("jti"), id="no-jti"),
        pytest.param(lambda c: c.update(aud="other-client"), id="other-audience"),
        pytest.param(lambda c: c.update(iss="https://evil.example"), id="other-issuer"),
        pytest.param(lambda c: c.update(exp=1), id="expired"),
        pytest.param(lambda c: (c.pop("sub"), c.pop("sid")), id="no-subject"),
    ],
)
def test_invalid_logout_token_gets_400(
    make_site: MakeSite,
    hostile_provider: HostileProvider,
    mutate: Callable[[dict[str, Any]], Any],
) -> None:
    site = make_site()
    claims = logged_in(site)
    import jwt

    token = hostile_provider.make_logout_token(sub="alice", sid=claims["sid"])
    payload = jwt.decode(token, options={"verify_signature": False})
    mutate(payload)
    response = backchannel_logout(site, hostile_provider.sign_jwt(payload))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert site.get("/whoami", headers=JSON).status_code == 200


def test_logout_token_from_other_key_rejected(
    make_site: MakeSite,
    hostile_provider: HostileProvider,
) -> None:
    site = make_site()
    claims = logged_in(site)
    with HostileProvider() as stranger:
        forged = stranger.make_logout_token(sid=claims["sid"])
    assert backchannel_logout(site, forged).status_code == 400
    assert site.get("/whoami", headers=JSON).status_code == 200


@pytest.mark.parametrize(
    ("method", "data"),
    [
        pytest.param("GET", None, id="get"),
        pytest.param("POST", {}, id="no-token"),
        pytest.param("POST", {"logout_token": "not.a.jwt"}, id="garbage"),
        pytest.param("POST", {"logout_token": "x" * 70_000}, id="too-large"),
    ],
)
def test_backchannel_bad_request(
    make_site: MakeSite, method: str, data: dict[str, str] | None
) -> None:
    site = make_site()
    response = site.new_client().request(
        method, site.url + "/_sso/backchannel-logout", data=data
    )
    assert 400 <= response.status_code < 500
    assert "Traceback" not in response.text


# Redis sessions


def test_redis_session_works(make_site: MakeSite, redis_url: str) -> None:
    site = make_site(session_store=redis_url)
    logged_in(site)
    cookie = site.session_cookie() or ""
    # The cookie carries only a signed session id; the claims stay in redis.
    assert len(cookie) < 200
    assert site.get("/whoami", headers=JSON).json()["user"]["sub"] == "alice"


def test_redis_revocation_reaches_every_instance(
    make_site: MakeSite,
    redis_url: str,
    hostile_provider: HostileProvider,
) -> None:
    first = make_site(session_store=redis_url)
    second = make_site(session_store=redis_url)
    claims = logged_in(first)
    cookie = first.session_cookie() or ""
    other = second.new_client(cookies={"sso_session": cookie})
    assert other.get(second.url + "/whoami", headers=JSON).status_code == 200
    token = hostile_provider.make_logout_token(sid=claims["sid"])
    assert backchannel_logout(first, token).status_code == 200
    assert other.get(second.url + "/whoami", headers=JSON).status_code == 401
    assert first.get("/whoami", headers=JSON).status_code == 401


def test_redis_logout_deletes_session(make_site: MakeSite, redis_url: str) -> None:
    site = make_site(session_store=redis_url)
    logged_in(site)
    cookie = site.session_cookie() or ""
    site.client.post(site.url + "/_sso/logout", headers={"Origin": site.url})
    copy = site.new_client(cookies={"sso_session": cookie})
    assert copy.get(site.url + "/whoami", headers=JSON).status_code == 401


def test_redis_down_gets_503(make_site: MakeSite) -> None:
    port = servers.free_port()
    site = make_site(session_store=f"redis://127.0.0.1:{port}/0", public_paths="/pub/*")
    signed = site.middleware.core.cookies.dump_session_id("some-session-id")
    site.client.cookies.set("sso_session", signed)
    response = site.get("/whoami", headers=JSON)
    assert response.status_code == 503
    assert response.json()["error"] == "session_store_unavailable"
    assert "Traceback" not in response.text
    assert site.get("/pub/x").status_code == 200


def test_redis_stopped_mid_session_gets_503(make_site: MakeSite) -> None:
    with servers.start_redis() as url:
        site = make_site(session_store=url)
        logged_in(site)
        assert site.get("/whoami", headers=JSON).status_code == 200
    response = site.get("/whoami", headers=JSON)
    assert response.status_code == 503
    assert "Traceback" not in response.text
