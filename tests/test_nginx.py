"""nginx ``auth_request`` in front of an application, with the proxy as forward-auth.

For each request, a real nginx sends a subrequest to the proxy's ``/_sso/check``,
copies the identity headers of its ``200`` response into the request to the echoing
upstream, and redirects the browser to ``/_sso/login`` on ``401``. The ``/_sso/``
endpoints (login, callback, logout) are proxied to the sso-middleware proxy with
``Host $http_host``, so the origin that the proxy derives keeps nginx's port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support import servers
from tests.support.browser import NAVIGATION_HEADERS, find_authorize_url, login
from tests.support.servers import AppServer, NginxServer, Provider

StartCli = Callable[..., AppServer]
StartNginx = Callable[..., NginxServer]

# Every identity header is set from the check's response, so a client-sent copy
# never reaches the application: proxy_set_header replaces a client header of
# the same name, and sends nothing when the value is empty. nginx drops header
# names with an underscore by default (underscores_in_headers off). Without a
# session, @login hands the original request to the proxy, which redirects a
# navigation to the provider with the whole URI as its return path and rejects
# any other request with 401.
NGINX_SITE = """\
server {
    listen 127.0.0.1:{{port}};

    location = /_sso/check {
        internal;
        proxy_pass {{sso}};
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
    }
    location /_sso/ {
        proxy_pass {{sso}};
        proxy_set_header Host $http_host;
    }
    location / {
        auth_request /_sso/check;
        auth_request_set $user   $upstream_http_x_forwarded_user;
        auth_request_set $email  $upstream_http_x_forwarded_email;
        auth_request_set $login  $upstream_http_x_forwarded_preferred_username;
        auth_request_set $groups $upstream_http_x_forwarded_groups;
        proxy_set_header X-Forwarded-User  $user;
        proxy_set_header X-Forwarded-Email $email;
        proxy_set_header X-Forwarded-Preferred-Username $login;
        proxy_set_header X-Forwarded-Groups $groups;
        error_page 401 = @login;
        proxy_pass {{upstream}};
    }
    location @login {
        proxy_pass {{sso}};
        proxy_set_header Host $http_host;
    }
}
"""

REQUEST_TIMEOUT = 20.0


@dataclass(frozen=True)
class Deployment:
    """nginx in front of the echo upstream, with the proxy as its forward-auth."""

    nginx: NginxServer
    sso: AppServer
    upstream: AppServer

    @property
    def url(self) -> str:
        return self.nginx.url


@pytest.fixture
def deployment(
    start_cli: StartCli,
    start_nginx: StartNginx,
    echo_upstream: AppServer,
    sso_env: dict[str, str],
) -> Deployment:
    nginx_port = servers.free_port()
    env = {
        **sso_env,
        "SSO_REDIRECT_URI": f"http://127.0.0.1:{nginx_port}/_sso/callback",
    }
    # The proxy's own upstream is never used, because nginx sends application
    # requests to the echo upstream directly and only /_sso/ paths to the proxy.
    sso = start_cli(
        ["proxy", "--upstream", echo_upstream.url, "--listen", "127.0.0.1:{port}"],
        env,
    )
    nginx = start_nginx(
        NGINX_SITE, port=nginx_port, sso=sso.url, upstream=echo_upstream.url
    )
    return Deployment(nginx, sso, echo_upstream)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT) as session:
        yield session


@pytest.fixture
def alice(deployment: Deployment, client: httpx.Client) -> httpx.Client:
    result = login(client, deployment.url + "/whoami")
    assert result.response.status_code == 200, result.response.text[:300]
    return client


def echoed(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text[:300]
    document: dict[str, Any] = response.json()
    assert document["app"] == "echo"
    return document


def header_values(document: dict[str, Any], name: str) -> list[str]:
    lower_name = name.lower()
    return [value for key, value in document["headers"] if key.lower() == lower_name]


ALICE_HEADERS = [
    pytest.param("x-forwarded-user", "alice", id="user"),
    pytest.param("x-forwarded-email", "alice@example.com", id="email"),
    pytest.param("x-forwarded-preferred-username", "alice", id="preferred-username"),
    pytest.param("x-forwarded-groups", "staff,admins", id="groups"),
]


@pytest.mark.parametrize(("name", "value"), ALICE_HEADERS)
def test_login_through_nginx(
    deployment: Deployment, client: httpx.Client, name: str, value: str
) -> None:
    result = login(client, deployment.url + "/whoami?tab=2")
    document = echoed(result.response)
    assert str(result.response.url) == deployment.url + "/whoami?tab=2"
    assert header_values(document, name) == [value]


def test_callback_goes_through_nginx(
    deployment: Deployment, client: httpx.Client
) -> None:
    result = login(client, deployment.url + "/whoami")
    assert result.authorize_params["redirect_uri"] == (
        deployment.url + "/_sso/callback"
    )
    assert result.callback_url.startswith(deployment.url + "/_sso/callback?")


SPOOFED = [
    pytest.param("X-Forwarded-Email", id="email"),
    pytest.param("X-Forwarded-User", id="user"),
    pytest.param("X-Forwarded-Groups", id="groups"),
    pytest.param("X-Forwarded-Preferred-Username", id="preferred-username"),
    pytest.param("X_Forwarded_Email", id="underscore-email"),
]


@pytest.mark.parametrize("name", SPOOFED)
def test_spoofed_header_overwritten(
    deployment: Deployment, alice: httpx.Client, name: str
) -> None:
    response = alice.get(
        deployment.url + "/whoami", headers={name: "mallory@evil.example"}
    )
    document = echoed(response)
    values = [value for _, value in document["headers"]]
    assert "mallory@evil.example" not in values
    assert header_values(document, "x-forwarded-email") == ["alice@example.com"]


def test_spoofed_header_never_signs_in(
    deployment: Deployment, client: httpx.Client, provider: Provider
) -> None:
    response = client.get(
        deployment.url + "/whoami",
        headers={
            **NAVIGATION_HEADERS,
            "X-Forwarded-Email": "alice@example.com",
            "X-Forwarded-User": "alice",
        },
    )
    assert response.status_code == 302
    assert response.headers["location"].startswith(provider.authorize_url + "?")


def test_navigation_ends_at_provider(
    deployment: Deployment, client: httpx.Client, provider: Provider
) -> None:
    authorize_url = find_authorize_url(client, deployment.url + "/reports?year=2026")
    assert authorize_url.startswith(provider.authorize_url + "?")
    params = parse_qs(urlsplit(authorize_url).query)
    assert params["redirect_uri"] == [deployment.url + "/_sso/callback"]


def test_unauthenticated_redirect_sets_state(
    deployment: Deployment, client: httpx.Client, provider: Provider
) -> None:
    response = client.get(deployment.url + "/reports", headers=NAVIGATION_HEADERS)
    assert response.status_code == 302
    assert response.headers["location"].startswith(provider.authorize_url + "?")
    cookies = response.headers.get_list("set-cookie")
    assert any(cookie.startswith("sso_session.state.") for cookie in cookies)


def test_return_keeps_every_query_parameter(
    deployment: Deployment, client: httpx.Client
) -> None:
    result = login(client, deployment.url + "/reports?year=2026&month=5")
    assert echoed(result.response)["query"] == "year=2026&month=5"


def test_api_request_gets_401(deployment: Deployment, client: httpx.Client) -> None:
    response = client.get(deployment.url + "/reports", headers={"Accept": "*/*"})
    assert response.status_code == 401
    assert "location" not in response.headers


def test_check_is_internal(deployment: Deployment, alice: httpx.Client) -> None:
    # The check location is reachable from auth_request subrequests only.
    response = alice.get(deployment.url + "/_sso/check")
    assert response.status_code == 404


def test_logout_through_nginx(deployment: Deployment, alice: httpx.Client) -> None:
    # "proxy_set_header Host $host" would drop the port, so the proxy would see
    # another origin than the Origin header and reject the sign-out with 403.
    response = alice.post(
        deployment.url + "/_sso/logout",
        headers={**NAVIGATION_HEADERS, "Origin": deployment.url},
    )
    assert response.status_code == 302
    params = parse_qs(urlsplit(response.headers["location"]).query)
    assert params["post_logout_redirect_uri"] == [deployment.url + "/"]


def test_logout_ends_session(
    deployment: Deployment, alice: httpx.Client, provider: Provider
) -> None:
    alice.post(deployment.url + "/_sso/logout", headers={"Origin": deployment.url})
    response = alice.get(deployment.url + "/whoami", headers=NAVIGATION_HEADERS)
    assert response.status_code == 302
    assert response.headers["location"].startswith(provider.authorize_url + "?")
