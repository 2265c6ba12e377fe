"""The shared behaviour of the WSGI and ASGI adapters, against a real provider.

Each test runs twice: with a Flask application behind the WSGI middleware, served
by werkzeug, and with a Starlette application behind the ASGI middleware, served by
uvicorn. The provider is a real oidc-provider-mock process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support import servers
from tests.support.browser import NAVIGATION_HEADERS
from tests.support.servers import Provider
from tests.support.sites import INTERFACES, JSON, Site, build_site

MakeSite = Callable[..., Site]


@pytest.fixture(params=INTERFACES)
def make_site(request: pytest.FixtureRequest, provider: Provider) -> Iterator[MakeSite]:
    """Build and serve a protected application; ``overrides`` are settings."""
    with ExitStack() as stack:

        def make(transport: Any = None, **overrides: Any) -> Site:
            issuer = overrides.pop("issuer", provider.issuer)
            return build_site(
                stack, request.param, issuer, transport=transport, **overrides
            )

        yield make


@pytest.fixture
def site(make_site: MakeSite) -> Site:
    return make_site(public_paths="/public/*,/healthz")


def set_cookie_headers(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


# Unauthenticated requests


def test_navigation_redirects_with_pkce(site: Site, provider: Provider) -> None:
    response = site.navigate("/whoami?tab=1")
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(provider.authorize_url + "?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert params["response_type"] == "code"
    assert params["client_id"] == servers.CLIENT_ID
    assert params["scope"] == "openid email profile"
    assert params["redirect_uri"] == site.url + "/_sso/callback"
    assert params["code_challenge_method"] == "S256"
    assert len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 32
    assert len(params["nonce"]) >= 32
    assert params["state"] != params["nonce"]


def test_state_cookie_is_http_only_lax(site: Site) -> None:
    response = site.navigate("/whoami")
    [cookie] = set_cookie_headers(response)
    assert cookie.startswith("sso_session.state.")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Max-Age=600" in cookie
    assert "Secure" not in cookie  # plain http with cookie_secure=auto


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(JSON, id="json"),
        pytest.param({"Accept": "*/*"}, id="any"),
        pytest.param({"Accept": "text/html", "Sec-Fetch-Mode": "cors"}, id="fetch"),
    ],
)
def test_api_request_gets_401(site: Site, headers: dict[str, str]) -> None:
    response = site.get("/whoami", headers=headers)
    assert response.status_code == 401
    assert "location" not in response.headers
    if "text/html" not in headers["Accept"]:
        assert response.json()["error"] == "login_required"


def test_post_without_session_gets_401(site: Site) -> None:
    response = site.client.post(site.url + "/whoami", headers=NAVIGATION_HEADERS)
    assert response.status_code == 401
    assert "location" not in response.headers


def test_preflight_reaches_app(site: Site) -> None:
    response = site.client.options(
        site.url + "/api",
        headers={
            "Origin": "https://other.example",
            "Access-Control-Request-Method": "PUT",
        },
    )
    assert response.status_code == 200
    assert response.json()["user"]["is_authenticated"] is False


def test_public_path_served_anonymously(site: Site) -> None:
    response = site.navigate("/public/page")
    assert response.status_code == 200
    body = response.json()
    assert body["user"]["is_authenticated"] is False
    assert body.get("remote_user") is None


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/admin?x=/public/y", id="query"),
        pytest.param("/public/../admin", id="dot-segments"),
        pytest.param("/public/%2e%2e/admin", id="encoded-dots"),
        pytest.param("/public/..;/admin", id="matrix-params"),
        pytest.param("/healthz/extra", id="prefix-only"),
    ],
)
def test_public_pattern_not_bypassed(site: Site, path: str) -> None:
    response = site.client.get(site.url + path, headers=JSON)
    assert response.status_code == 401


def test_health_endpoint(site: Site) -> None:
    response = site.get("/_sso/health")
    assert response.status_code == 200


# Login


def test_login_reaches_app_as_user(site: Site) -> None:
    result = site.login("/whoami?tab=1")
    assert result.response.status_code == 200
    body = result.response.json()
    assert body["path"] == "/whoami"
    assert body["query"] == "tab=1"
    assert body["user"]["sub"] == "alice"
    assert body["user"]["email"] == "alice@example.com"
    assert body["user"]["is_authenticated"] is True
    assert "staff" in body["user"]["groups"]
    if site.interface == "wsgi":
        assert body["remote_user"] == "alice"


def test_callback_sets_session_cookie(site: Site) -> None:
    result = site.login()
    callback = result.callback_response
    assert callback.status_code == 302
    assert callback.headers["location"] == "/whoami"
    assert callback.headers["cache-control"] == "no-store"
    assert callback.headers["vary"] == "Cookie"
    assert callback.headers["referrer-policy"] == "no-referrer"
    cookies = set_cookie_headers(callback)
    session = [c for c in cookies if c.startswith("sso_session=")]
    assert len(session) == 1
    assert "HttpOnly" in session[0]
    assert "SameSite=Lax" in session[0]
    assert "Max-Age=28800" in session[0]
    cleared = [c for c in cookies if c.startswith("sso_session.state.")]
    assert len(cleared) == 1
    assert "Max-Age=0" in cleared[0]


def test_session_cookie_stays_small(site: Site) -> None:
    site.login()
    cookie = site.session_cookie()
    assert cookie is not None
    assert len(cookie) < 1200


def test_login_endpoint_returns_to_next(site: Site) -> None:
    result = site.login("/_sso/login?next=/reports%3Fyear%3D2026")
    assert result.callback_response.headers["location"] == "/reports?year=2026"


@pytest.mark.parametrize(
    "next_value",
    [
        pytest.param("//evil.example", id="network-path"),
        pytest.param("https://evil.example/", id="absolute"),
        pytest.param("/%5Cevil.example", id="backslash"),
    ],
)
def test_login_next_stays_on_site(site: Site, next_value: str) -> None:
    result = site.login("/_sso/login?next=" + next_value)
    assert result.callback_response.headers["location"] == "/"


def test_login_passes_routing_params_only(site: Site) -> None:
    response = site.navigate(
        "/_sso/login?organization_id=org_1&connection_id=conn_2&domain=a.example"
        "&login_hint=a@a.example&provider=google&prompt=login&scope=admin&state=x"
    )
    params = parse_qs(urlsplit(response.headers["location"]).query)
    assert params["organization_id"] == ["org_1"]
    assert params["connection_id"] == ["conn_2"]
    assert params["domain"] == ["a.example"]
    assert params["login_hint"] == ["a@a.example"]
    assert params["provider"] == ["google"]
    assert params["prompt"] == ["login"]
    assert params["scope"] == ["openid email profile"]
    assert params["state"] != ["x"]


def test_auth_params_setting_sent(make_site: MakeSite) -> None:
    site = make_site(auth_params="organization_id=org_9")
    response = site.navigate("/")
    params = parse_qs(urlsplit(response.headers["location"]).query)
    assert params["organization_id"] == ["org_9"]


def test_two_tabs_log_in_at_once(site: Site) -> None:
    first = site.navigate("/first")
    second = site.navigate("/second")
    answers = []
    for start in (second, first):
        authorize = start.headers["location"]
        answer = site.client.post(authorize, data={"sub": "alice"})
        answers.append(answer.headers["location"])
    for callback_url in answers:
        response = site.client.get(callback_url, headers=NAVIGATION_HEADERS)
        assert response.status_code == 302
    assert site.client.get(site.url + "/first", headers=JSON).status_code == 200


def test_state_entries_are_bounded(site: Site) -> None:
    for _ in range(9):
        site.navigate("/whoami")
    states = [
        name for name in site.client.cookies if name.startswith("sso_session.state.")
    ]
    assert 1 <= len(states) <= 5


# Identity headers and own cookies


SPOOFED = {
    "X-Forwarded-User": "mallory",
    "X-Forwarded-Email": "mallory@evil.example",
    "X-Forwarded-Groups": "admins",
    "X-Forwarded-Preferred-Username": "mallory",
    "Remote-User": "mallory",
}


def assert_no_spoofed_headers(body: dict[str, Any]) -> None:
    for name in SPOOFED:
        assert name.lower() not in body["headers"]
    assert body.get("remote_user") in (None, "alice")


def test_spoofed_headers_removed_when_logged_in(site: Site) -> None:
    site.login()
    response = site.get("/whoami", headers={**SPOOFED, **JSON})
    assert response.status_code == 200
    body = response.json()
    assert_no_spoofed_headers(body)
    assert body["user"]["sub"] == "alice"


def test_spoofed_headers_removed_on_public_path(site: Site) -> None:
    response = site.get("/public/x", headers=SPOOFED)
    assert response.status_code == 200
    assert_no_spoofed_headers(response.json())


def test_own_cookies_hidden_from_app(site: Site) -> None:
    site.login()
    site.client.cookies.set("theme", "dark")
    response = site.get("/whoami", headers=JSON)
    cookie = response.json()["headers"].get("cookie", "")
    assert "theme=dark" in cookie
    assert "sso_session" not in cookie


def test_cached_session_keeps_rules(site: Site) -> None:
    """The hot path for a known Cookie header still strips spoofed headers."""
    site.login()
    site.get("/whoami", headers=JSON)
    response = site.get("/whoami", headers={**SPOOFED, **JSON})
    assert_no_spoofed_headers(response.json())
    assert "sso_session" not in response.json()["headers"].get("cookie", "")


# Rejected callbacks


def test_provider_error_is_escaped(site: Site) -> None:
    start = site.navigate("/whoami")
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    response = site.navigate(
        "/_sso/callback?error=access_denied&error_description=%3Cscript%3Ealert(1)"
        f"%3C/script%3E&state={state}"
    )
    assert response.status_code == 403
    assert "<script>alert(1)" not in response.text
    assert "&lt;script&gt;" in response.text
    assert site.session_cookie() is None


def test_forged_error_text_not_shown(site: Site) -> None:
    response = site.navigate(
        "/_sso/callback?error=access_denied&error_description=Call+555-0100+now"
        "&state=forged"
    )
    assert response.status_code == 403
    assert "555-0100" not in response.text
    assert "The identity provider reported an error." in response.text


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("code=abc&state=forged", id="forged-state"),
        pytest.param("code=abc", id="no-state"),
        pytest.param("state=abc", id="no-code"),
        pytest.param("", id="empty"),
        pytest.param("code=abc&state=" + "x" * 5000, id="huge-state"),
    ],
)
def test_bad_callback_gets_400(site: Site, query: str) -> None:
    site.navigate("/whoami")
    response = site.navigate("/_sso/callback?" + query)
    assert response.status_code == 400
    assert "text/html" in response.headers["content-type"]
    assert not any(c.startswith("sso_session=") for c in set_cookie_headers(response))


def test_replayed_callback_gets_400(site: Site) -> None:
    result = site.login()
    state_name = "sso_session.state." + result.callback_params["state"][:16]
    assert site.client.cookies.get(state_name) is None
    response = site.client.get(result.callback_url, headers=NAVIGATION_HEADERS)
    assert response.status_code == 400
    assert not any(c.startswith("sso_session=") for c in set_cookie_headers(response))


def test_state_from_other_browser_rejected(site: Site) -> None:
    start = site.navigate("/whoami")
    answer = site.client.post(start.headers["location"], data={"sub": "alice"})
    other = httpx.Client(trust_env=False)
    response = other.get(answer.headers["location"], headers=NAVIGATION_HEADERS)
    assert response.status_code == 400
    assert other.cookies.get("sso_session") is None


def test_code_replayed_with_new_state(site: Site) -> None:
    first = site.login()
    code = first.callback_params["code"]
    start = site.navigate("/_sso/login")
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    response = site.navigate(f"/_sso/callback?code={code}&state={state}")
    assert response.status_code == 400


def test_tampered_cookie_is_no_session(site: Site) -> None:
    site.login()
    value = site.session_cookie()
    assert value is not None
    tampered = value[:-3] + ("AAA" if value[-3:] != "AAA" else "BBB")
    client = httpx.Client(trust_env=False, cookies={"sso_session": tampered})
    response = client.get(site.url + "/whoami", headers=JSON)
    assert response.status_code == 401


def test_unreachable_provider_gets_502(make_site: MakeSite) -> None:
    site = make_site(issuer=f"http://127.0.0.1:{servers.free_port()}")
    response = site.navigate("/whoami")
    assert response.status_code == 502
    assert "text/html" in response.headers["content-type"]
    assert "Traceback" not in response.text


# Endpoints


def test_userinfo_returns_user(site: Site) -> None:
    assert site.get("/_sso/userinfo").status_code == 401
    site.login()
    body = site.get("/_sso/userinfo").json()
    assert body["sub"] == "alice"
    assert body["email"] == "alice@example.com"
    assert body["name"] == "Alice Example"
    assert "staff" in body["groups"]
    assert body["claims"]["iss"] == site.middleware.settings.issuer


def test_check_endpoint_sends_identity(site: Site) -> None:
    assert site.get("/_sso/check").status_code == 401
    site.login()
    response = site.get("/_sso/check", headers=SPOOFED)
    assert response.status_code == 200
    assert response.headers["x-forwarded-user"] == "alice"
    assert response.headers["x-forwarded-email"] == "alice@example.com"
    assert response.headers["x-forwarded-preferred-username"] == "alice"
    assert response.headers["x-forwarded-groups"] == "staff,admins"


def test_logout_ends_session_at_provider(site: Site, provider: Provider) -> None:
    site.login()
    response = site.client.post(
        site.url + "/_sso/logout", headers={"Origin": site.url, "Accept": "text/html"}
    )
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(provider.url("/oauth2/end_session"))
    params = parse_qs(urlsplit(location).query)
    assert params["post_logout_redirect_uri"] == [site.url + "/"]
    assert "id_token_hint" in params
    assert site.session_cookie() is None
    assert site.get("/whoami", headers=JSON).status_code == 401


def test_logout_rejects_cross_site_post(site: Site) -> None:
    site.login()
    response = site.client.post(
        site.url + "/_sso/logout", headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert site.get("/whoami", headers=JSON).status_code == 200


def test_cross_site_get_logout_asks_first(site: Site) -> None:
    site.login()
    response = site.navigate("/_sso/logout", headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 200
    assert '<form method="post"' in response.text
    assert site.get("/whoami", headers=JSON).status_code == 200


def test_copied_cookie_refused_after_logout(site: Site) -> None:
    site.login()
    value = site.session_cookie()
    site.client.post(site.url + "/_sso/logout", headers={"Origin": site.url})
    thief = httpx.Client(trust_env=False, cookies={"sso_session": value or ""})
    assert thief.get(site.url + "/whoami", headers=JSON).status_code == 401


# Policies


def test_disallowed_domain_gets_403(make_site: MakeSite) -> None:
    site = make_site(allowed_email_domains="example.com")
    result = site.login(user="bob")
    assert result.callback_response.status_code == 403
    assert site.session_cookie() is None
    allowed = make_site(allowed_email_domains="example.com")
    assert allowed.login(user="alice").response.status_code == 200


def test_allowed_groups_enforced(make_site: MakeSite) -> None:
    site = make_site(allowed_groups="admins")
    assert site.login(user="alice").response.status_code == 200
    other = make_site(allowed_groups="admins")
    assert other.login(user="bob").callback_response.status_code == 403


def test_session_expires(make_site: MakeSite) -> None:
    site = make_site(session_lifetime="1")
    site.login()
    assert site.get("/whoami", headers=JSON).status_code == 200
    time.sleep(2.1)
    assert site.get("/whoami", headers=JSON).status_code == 401


def test_rotated_key_keeps_sessions(make_site: MakeSite) -> None:
    old = make_site()
    old.login()
    value = old.session_cookie()
    rotated = make_site(secret_key="n" * 40 + "," + servers.SECRET_KEY)
    client = httpx.Client(trust_env=False, cookies={"sso_session": value or ""})
    assert client.get(rotated.url + "/whoami", headers=JSON).status_code == 200


def test_logs_login_without_secrets(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sso_middleware")
    result = site.login()
    messages = " ".join(
        record.getMessage()
        for record in caplog.records
        if record.name == "sso_middleware"
    )
    assert "login of alice" in messages
    assert result.callback_params["code"] not in messages
    assert result.callback_params["state"] not in messages
    assert (site.session_cookie() or "x") not in messages


def test_rejection_logs_a_warning(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sso_middleware")
    site.navigate("/_sso/callback?code=abc&state=forged")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("rejected with 400" in r.getMessage() for r in warnings)


def test_padded_cookie_refused_after_logout(site: Site) -> None:
    """A signed value can be re-spelled with Base64 padding and still verify."""
    site.login()
    value = site.session_cookie() or ""
    site.client.post(site.url + "/_sso/logout", headers={"Origin": site.url})
    for spelling in (value, value + "=", value + "=="):
        thief = httpx.Client(trust_env=False, cookies={"sso_session": spelling})
        assert thief.get(site.url + "/whoami", headers=JSON).status_code == 401


@pytest.mark.parametrize("path", ["/_sso/userinfo", "/_sso/health"])
@pytest.mark.parametrize("method", ["DELETE", "PUT", "POST"])
def test_read_endpoints_reject_methods(site: Site, path: str, method: str) -> None:
    response = site.client.request(method, site.url + path, headers=JSON)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"


def test_userinfo_applies_allow_lists(make_site: MakeSite) -> None:
    site = make_site()
    site.login(user="bob")
    restricted = make_site(allowed_email_domains="example.com")
    client = httpx.Client(
        trust_env=False, cookies={"sso_session": site.session_cookie() or ""}
    )
    assert client.get(restricted.url + "/_sso/userinfo").status_code == 403


def test_login_hint_may_be_unicode(site: Site) -> None:
    response = site.navigate("/_sso/login?login_hint=%C3%A9l%C3%A8ve%40exemple.fr")
    assert response.status_code == 302
    params = parse_qs(urlsplit(response.headers["location"]).query)
    assert params["login_hint"] == ["élève@exemple.fr"]


def test_control_character_param_rejected(site: Site) -> None:
    response = site.navigate("/_sso/login?login_hint=a%0d%0ab")
    assert response.status_code == 400
    assert "login_hint" in response.text


def test_rejection_log_escapes_path(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sso_middleware")
    site.client.get(site.url + "/_sso/callback%0d%0aforged-line", headers=JSON)
    site.navigate("/_sso/callback?code=x&state=forged%0d%0aINFO")
    for record in caplog.records:
        if record.name == "sso_middleware":
            assert "\n" not in record.getMessage()
            assert "\r" not in record.getMessage()
