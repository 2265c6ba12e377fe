"""The test fixtures and drivers work on their own, without the middleware.

A small relying party written here with werkzeug takes the product's place, so
the login drivers are checked against a real authorization code flow.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Iterator
from html import escape
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
import redis
from werkzeug.wrappers import Request, Response

from tests.support import apps, servers
from tests.support.browser import (
    Browser,
    LoginError,
    browser_login,
    chromium_screenshot,
    login,
    login_async,
    query_params,
)
from tests.support.servers import CLIENT_ID, CLIENT_SECRET, Provider

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from tests.conftest import StartNginx, StartUvicorn

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The provider redirects here, and the tests read the Location header without
# requesting it.
UNUSED_REDIRECT_URI = "http://127.0.0.1:9/callback"
STATIC_PAGE = "<!doctype html><title>fixture page</title><p>static fixture page</p>"


def authorization_params(**overrides: str) -> dict[str, str]:
    params = {
        "client_id": CLIENT_ID,
        "redirect_uri": UNUSED_REDIRECT_URI,
        "response_type": "code",
        "scope": "openid email profile",
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
    }
    params.update(overrides)
    return params


def sign_in(
    client: httpx.Client, provider: Provider, params: dict[str, str], user: str
) -> dict[str, str]:
    """Submit the provider's form for ``user``; return the callback's query."""
    form = client.get(provider.authorize_url, params=params)
    assert form.status_code == 200
    assert 'name="sub"' in form.text
    answer = client.post(str(form.url), data={"sub": user})
    assert answer.status_code == 302
    location = answer.headers["location"]
    assert location.startswith(UNUSED_REDIRECT_URI + "?")
    return query_params(location)


def exchange_code(
    client: httpx.Client, provider: Provider, code: str
) -> dict[str, Any]:
    # httpx's auth tuple sends HTTP Basic credentials: client_secret_basic in
    # OpenID Connect Core 1.0, section 9.
    response = client.post(
        provider.token_url,
        auth=(CLIENT_ID, CLIENT_SECRET),
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": UNUSED_REDIRECT_URI,
        },
    )
    assert response.status_code == 200
    tokens: dict[str, Any] = response.json()
    return tokens


def verify_id_token(provider: Provider, id_token: str) -> dict[str, Any]:
    jwks = httpx.get(provider.url("/jwks"), trust_env=False).json()
    # oidc-provider-mock 0.3 signs with one RSA key and puts no "kid" in the
    # token header, so the only key of the set is taken.
    keys = jwt.PyJWKSet.from_dict(jwks).keys
    assert len(keys) == 1
    key = keys[0]
    claims: dict[str, Any] = jwt.decode(
        id_token,
        key=key,
        algorithms=["RS256"],
        audience=CLIENT_ID,
        issuer=provider.issuer,
    )
    return claims


# --- the mock provider --------------------------------------------------------------


def test_discovery_names_loopback_issuer(provider: Provider) -> None:
    document = provider.discovery()
    assert document["issuer"] == f"http://127.0.0.1:{provider.port}"
    assert document["authorization_endpoint"] == provider.authorize_url
    assert document["token_endpoint"] == provider.token_url
    assert document["jwks_uri"] == provider.url("/jwks")
    assert document["end_session_endpoint"] == provider.url("/oauth2/end_session")


@pytest.mark.parametrize(
    ("user", "email", "groups"),
    [
        pytest.param("alice", "alice@example.com", ["staff", "admins"], id="alice"),
        pytest.param("bob", "bob@other.example", ["guests"], id="bob"),
    ],
)
def test_code_exchange_returns_id_token(
    provider: Provider, user: str, email: str, groups: list[str]
) -> None:
    params = authorization_params()
    with httpx.Client(trust_env=False) as client:
        callback = sign_in(client, provider, params, user)
        assert callback["state"] == params["state"]
        tokens = exchange_code(client, provider, callback["code"])

    claims = verify_id_token(provider, tokens["id_token"])
    assert claims["sub"] == user
    assert claims["nonce"] == params["nonce"]
    assert claims["email"] == email
    assert claims["groups"] == groups


def test_userinfo_returns_user_claims(provider: Provider) -> None:
    with httpx.Client(trust_env=False) as client:
        callback = sign_in(client, provider, authorization_params(), "alice")
        tokens = exchange_code(client, provider, callback["code"])
        response = client.get(
            provider.url("/userinfo"),
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
    assert response.status_code == 200
    assert response.json()["email"] == "alice@example.com"
    assert response.json()["roles"] == ["admin"]


def test_authorize_without_nonce_rejected(provider: Provider) -> None:
    params = authorization_params()
    del params["nonce"]
    response = httpx.get(provider.authorize_url, params=params, trust_env=False)
    assert response.status_code == 302
    assert query_params(response.headers["location"])["error"] == "invalid_request"


# --- process management -------------------------------------------------------------


def test_process_reports_early_exit() -> None:
    args = [sys.executable, "-c", "print('bad configuration'); raise SystemExit(3)"]
    process = servers.Process(args, name="failing", ready=lambda: False)
    with (
        pytest.raises(servers.ServerStartError, match="bad configuration"),
        process,
    ):
        pass


def test_process_stop_kills_server() -> None:
    args = [sys.executable, "-c", "import time; time.sleep(60)"]
    with servers.Process(args, name="sleeper") as process:
        assert process.popen.poll() is None
    assert process.popen.poll() is not None


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        pytest.param("listen {{port}};", {"port": 80}, "listen 80;", id="placeholder"),
        pytest.param("map $a $b { }", {}, "map $a $b { }", id="nginx-syntax-kept"),
    ],
)
def test_render_template_fills_values(
    template: str, values: dict[str, object], expected: str
) -> None:
    assert servers.render_template(template, values) == expected


def test_render_template_rejects_unknown() -> None:
    with pytest.raises(KeyError, match="upstream"):
        servers.render_template("proxy_pass {{upstream}};", {})


# --- redis-server and nginx ---------------------------------------------------------


def test_redis_replies_to_ping(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        client.set("fixture-key", "value")
        assert client.get("fixture-key") == b"value"
    finally:
        client.close()


NGINX_STATIC = """
server {
    listen 127.0.0.1:{{port}};
    location / {
        root {{site}};
    }
}
"""

NGINX_PROXY = """
server {
    listen 127.0.0.1:{{port}};
    location / {
        proxy_pass {{upstream}};
        proxy_set_header X-From-Nginx yes;
    }
}
"""


def test_nginx_serves_static_file(start_nginx: StartNginx, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(STATIC_PAGE, encoding="utf-8")
    nginx = start_nginx(NGINX_STATIC, site=site)

    response = httpx.get(nginx.url + "/", trust_env=False)
    assert response.status_code == 200
    assert "static fixture page" in response.text


def test_nginx_proxies_to_upstream(
    start_nginx: StartNginx, echo_upstream: servers.AppServer
) -> None:
    nginx = start_nginx(NGINX_PROXY, upstream=echo_upstream.url)

    response = httpx.get(nginx.url + "/through/nginx?a=1", trust_env=False)
    assert response.status_code == 200
    echoed = response.json()
    assert echoed["path"] == "/through/nginx"
    assert echoed["query"] == "a=1"
    assert ["x-from-nginx", "yes"] in echoed["headers"]


# --- sample applications ------------------------------------------------------------


def test_upstream_echoes_request(echo_upstream: servers.AppServer) -> None:
    response = httpx.post(
        echo_upstream.url_for("/some/path?x=1&x=2"),
        content=b"payload",
        headers={"X-Test": "yes"},
        trust_env=False,
    )
    assert response.status_code == 200
    echoed = response.json()
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/some/path"
    assert echoed["query"] == "x=1&x=2"
    assert ["x-test", "yes"] in echoed["headers"]
    assert echoed["body"] == "payload"


def test_upstream_streams_chunks(echo_upstream: servers.AppServer) -> None:
    url = echo_upstream.url_for("/stream?count=3&interval=0")
    with httpx.stream("GET", url, trust_env=False) as response:
        body = response.read()
    assert response.headers["transfer-encoding"] == "chunked"
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/status/418", 418, id="teapot"),
        pytest.param("/status/204", 204, id="no-content"),
        pytest.param("/status/abc", 400, id="invalid"),
        pytest.param("/slow?seconds=0", 200, id="slow"),
    ],
)
def test_upstream_special_paths(
    echo_upstream: servers.AppServer, path: str, status: int
) -> None:
    response = httpx.get(echo_upstream.url_for(path), trust_env=False)
    assert response.status_code == status


def test_flask_app_reports_identity() -> None:
    user = SimpleNamespace(sub="alice", email="alice@example.com", groups=("staff",))
    client = apps.flask_app.test_client()
    response = client.get(
        "/whoami",
        headers={"X-Probe": "1"},
        environ_overrides={"sso.user": user, "REMOTE_USER": "alice"},
    )
    document = response.get_json()
    assert document["user"]["sub"] == "alice"
    assert document["user"]["groups"] == ["staff"]
    assert document["remote_user"] == "alice"
    assert document["headers"]["x-probe"] == "1"


def test_starlette_app_reports_identity() -> None:
    user = SimpleNamespace(sub="bob", email="bob@other.example", is_authenticated=True)

    async def with_user(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "user": user}
        await apps.starlette_app(scope, receive, send)

    async def fetch() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=with_user)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://app"
        ) as client:
            response = await client.get("/anything", headers={"X-Probe": "1"})
        document: dict[str, Any] = response.json()
        return document

    document = asyncio.run(fetch())
    assert document["user"]["sub"] == "bob"
    assert document["user"]["is_authenticated"] is True
    assert document["path"] == "/anything"
    assert document["headers"]["x-probe"] == "1"


@pytest.mark.parametrize(
    ("app_spec", "interface", "app_name"),
    [
        pytest.param("tests.support.apps:flask_app", "wsgi", "flask", id="flask"),
        pytest.param(
            "tests.support.apps:starlette_app", "auto", "starlette", id="starlette"
        ),
    ],
)
def test_uvicorn_serves_sample_app(
    start_uvicorn: StartUvicorn, app_spec: str, interface: str, app_name: str
) -> None:
    server = start_uvicorn(app_spec, interface=interface)
    response = httpx.get(server.url_for("/whoami"), trust_env=False)
    assert response.status_code == 200
    assert response.json()["app"] == app_name
    assert response.json()["user"] is None


# --- login drivers against a stand-in relying party -----------------------------------


def make_relying_party(provider: Provider) -> WSGIApplication:
    """Build a minimal OpenID Connect client: the product's role, in a few lines.

    It keeps state and nonce in a cookie, exchanges the code, and remembers the
    user in an unsigned cookie, which is acceptable only in a test.
    """

    @Request.application
    def application(request: Request) -> Response:
        redirect_uri = request.host_url + "callback"
        if request.path == "/callback":
            state, _, nonce = request.cookies.get("rp_state", "").partition(":")
            if not state or request.args.get("state") != state:
                return Response("state mismatch", status=400)
            tokens = httpx.post(
                provider.token_url,
                auth=(CLIENT_ID, CLIENT_SECRET),
                data={
                    "grant_type": "authorization_code",
                    "code": request.args.get("code", ""),
                    "redirect_uri": redirect_uri,
                },
                trust_env=False,
            ).json()
            claims = verify_id_token(provider, tokens["id_token"])
            if claims.get("nonce") != nonce:
                return Response("nonce mismatch", status=400)
            response = Response(status=302, headers={"Location": "/"})
            response.set_cookie("rp_user", claims["sub"], httponly=True)
            response.delete_cookie("rp_state")
            return response

        user = request.cookies.get("rp_user")
        if user:
            body = f"<!doctype html><p>signed in as {escape(user)}</p>"
            return Response(body, mimetype="text/html")

        state = secrets.token_urlsafe(16)
        nonce = secrets.token_urlsafe(16)
        params = authorization_params(
            redirect_uri=redirect_uri, state=state, nonce=nonce
        )
        location = f"{provider.authorize_url}?{urlencode(params)}"
        response = Response(status=302, headers={"Location": location})
        response.set_cookie("rp_state", f"{state}:{nonce}", httponly=True)
        return response

    app: WSGIApplication = application
    return app


@pytest.fixture(scope="module")
def relying_party(provider: Provider) -> Iterator[str]:
    with servers.serve_wsgi_in_thread(make_relying_party(provider)) as url:
        yield url


@pytest.fixture(scope="module")
def static_site() -> Iterator[str]:
    @Request.application
    def application(request: Request) -> Response:
        return Response(STATIC_PAGE, mimetype="text/html")

    with servers.serve_wsgi_in_thread(application) as url:
        yield url


@pytest.mark.parametrize(
    "user", [pytest.param("alice", id="alice"), pytest.param("bob", id="bob")]
)
def test_http_login_reaches_app(relying_party: str, user: str) -> None:
    with httpx.Client(trust_env=False) as client:
        result = login(client, relying_party + "/", user)
    assert result.response.status_code == 200
    assert f"signed in as {user}" in result.response.text
    assert result.callback_response.status_code == 302
    assert result.callback_params["state"] == result.authorize_params["state"]
    assert result.authorize_params["nonce"] != ""


def test_async_login_reaches_app(relying_party: str) -> None:
    async def run() -> str:
        async with httpx.AsyncClient(trust_env=False) as client:
            result = await login_async(client, relying_party + "/", "alice")
        return result.response.text

    assert "signed in as alice" in asyncio.run(run())


def test_login_error_names_step(relying_party: str) -> None:
    with httpx.Client(trust_env=False) as client:
        client.cookies.set("rp_user", "alice")
        with pytest.raises(LoginError, match="returned 200 instead of a redirect"):
            login(client, relying_party + "/")


# --- Chromium -------------------------------------------------------------------------


def test_chromium_screenshot_writes_png(static_site: str, tmp_path: Path) -> None:
    path = chromium_screenshot(static_site + "/", tmp_path / "page.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_browser_reads_page_text(
    browser: Browser, static_site: str, tmp_path: Path
) -> None:
    browser.open(static_site + "/")
    assert "static fixture page" in browser.page_text()
    assert browser.title == "fixture page"
    screenshot = browser.screenshot(tmp_path / "viewport.png")
    assert screenshot.read_bytes().startswith(PNG_SIGNATURE)


def test_browser_login_reaches_app(browser: Browser, relying_party: str) -> None:
    text = browser_login(browser, relying_party + "/", "alice")
    assert "signed in as alice" in text
    cookie_names = {cookie["name"] for cookie in browser.cookies()}
    assert "rp_user" in cookie_names


def test_settings_env_names_provider(provider: Provider) -> None:
    env = servers.settings_env(provider, session_store="redis://127.0.0.1:1/0")
    assert env["SSO_ISSUER"] == provider.issuer
    assert env["SSO_CLIENT_ID"] == CLIENT_ID
    assert len(env["SSO_SECRET_KEY"]) == 40
    assert env["SSO_SESSION_STORE"] == "redis://127.0.0.1:1/0"
