"""The ``sso-middleware`` command line, run as ``python -m sso_middleware``.

``check`` runs against the real oidc-provider-mock process, a closed port and a
discovery document that names another issuer. ``serve`` and ``proxy`` run as real
servers, and a user signs in through them over HTTP.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support import servers
from tests.support.browser import NAVIGATION_HEADERS, login
from tests.support.servers import AppServer, Provider

StartCli = Callable[..., AppServer]
CompletedProcess = subprocess.CompletedProcess[str]

CLI_TIMEOUT = 60.0
JSON = {"Accept": "application/json"}
LISTEN = ["--listen", "127.0.0.1:{port}"]


def run_cli(
    args: Sequence[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sso_middleware ARGS`` to its end and capture its output.

    Each ``{port}`` in ``args`` becomes a free port, as with ``start_cli``.
    """
    port = str(servers.free_port())
    command = [arg.replace("{port}", port) for arg in args]
    return subprocess.run(
        [sys.executable, "-m", "sso_middleware", *command],
        env=servers.subprocess_env(env),
        cwd=servers.REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=20.0) as session:
        yield session


# check


def test_check_passes_on_provider(sso_env: dict[str, str]) -> None:
    result = run_cli(["check"], sso_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All checks passed." in result.stdout
    assert "error:" not in result.stdout


def test_check_hides_client_secret(sso_env: dict[str, str]) -> None:
    result = run_cli(["check"], sso_env)
    assert servers.CLIENT_SECRET not in result.stdout + result.stderr
    assert servers.SECRET_KEY not in result.stdout + result.stderr


def test_check_fails_on_closed_port(sso_env: dict[str, str]) -> None:
    issuer = f"http://127.0.0.1:{servers.free_port()}"
    result = run_cli(["check"], {**sso_env, "SSO_ISSUER": issuer})
    assert result.returncode == 1
    assert "is unreachable" in result.stdout
    assert "Traceback" not in result.stderr


def test_check_fails_on_issuer_slash(
    sso_env: dict[str, str], provider: Provider
) -> None:
    # The same discovery document is fetched, but its issuer has no trailing slash,
    # and OpenID Connect Discovery 1.0 (section 4.3) requires identical strings.
    result = run_cli(["check"], {**sso_env, "SSO_ISSUER": provider.issuer + "/"})
    assert result.returncode == 1
    assert f"set SSO_ISSUER={provider.issuer}" in result.stdout


def test_check_fails_on_other_issuer(
    sso_env: dict[str, str], provider: Provider
) -> None:
    document = provider.discovery()
    document["issuer"] = "https://other-provider.example"

    def discovery(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = json.dumps(document).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    with servers.serve_wsgi_in_thread(discovery) as url:
        result = run_cli(["check"], {**sso_env, "SSO_ISSUER": url})
    assert result.returncode == 1
    assert "'https://other-provider.example'" in result.stdout
    assert "The provider cannot be used as configured" in result.stdout


# check against a provider that serves hostile documents


DISCOVERY_PATH = "/.well-known/openid-configuration"


@dataclass
class FakeProvider:
    """A discovery document and a JWKS served from a thread, changeable per test.

    ``pages`` maps each path to the JSON body served for it. It starts with a copy
    of the mock provider's discovery document, with this server as the issuer and
    ``/jwks`` as the jwks_uri, and a copy of the mock provider's JWKS.
    """

    url: str
    pages: dict[str, bytes]
    discovery: dict[str, Any]
    jwks: dict[str, Any]

    def serve_discovery(self, **members: Any) -> None:
        self.pages[DISCOVERY_PATH] = json.dumps({**self.discovery, **members}).encode()

    def serve_keys(self, *keys: dict[str, Any]) -> None:
        self.pages["/jwks"] = json.dumps({"keys": list(keys)}).encode()


@pytest.fixture
def fake_provider(provider: Provider) -> Iterator[FakeProvider]:
    pages: dict[str, bytes] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = pages.get(environ["PATH_INFO"])
        if body is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    with servers.serve_wsgi_in_thread(app) as url:
        discovery = provider.discovery()
        jwks = httpx.get(discovery["jwks_uri"], trust_env=False).json()
        fake = FakeProvider(
            url, pages, {**discovery, "issuer": url, "jwks_uri": url + "/jwks"}, jwks
        )
        fake.serve_discovery()
        fake.serve_keys(*jwks["keys"])
        yield fake


def run_check(fake: FakeProvider, sso_env: dict[str, str]) -> CompletedProcess:
    return run_cli(["check"], {**sso_env, "SSO_ISSUER": fake.url})


def test_check_passes_on_fake_provider(
    fake_provider: FakeProvider, sso_env: dict[str, str]
) -> None:
    result = run_check(fake_provider, sso_env)
    assert result.returncode == 0, result.stdout + result.stderr


NESTED_JSON = b"[" * 200_000

HOSTILE_MEMBERS = [
    pytest.param(
        "token_endpoint_auth_methods_supported", [["x"]], id="auth-methods-nested"
    ),
    pytest.param(
        "id_token_signing_alg_values_supported", [["RS256"]], id="algorithms-nested"
    ),
    pytest.param(
        "code_challenge_methods_supported", [{"S256": 1}], id="pkce-methods-object"
    ),
    pytest.param("response_types_supported", [["code"]], id="response-types-nested"),
    pytest.param("jwks_uri", "http://127.0.0.1:notaport/jwks", id="jwks-uri-bad-port"),
]


@pytest.mark.parametrize(("member", "value"), HOSTILE_MEMBERS)
def test_check_reports_hostile_member(
    fake_provider: FakeProvider, sso_env: dict[str, str], member: str, value: Any
) -> None:
    fake_provider.serve_discovery(**{member: value})
    result = run_check(fake_provider, sso_env)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert member in result.stdout


@pytest.mark.parametrize(
    ("path", "what"),
    [
        pytest.param(DISCOVERY_PATH, "discovery document", id="discovery"),
        pytest.param("/jwks", "signing keys", id="jwks"),
    ],
)
def test_check_reports_nested_json(
    fake_provider: FakeProvider, sso_env: dict[str, str], path: str, what: str
) -> None:
    fake_provider.pages[path] = NESTED_JSON
    result = run_check(fake_provider, sso_env)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert f"error:   {what}" in result.stdout


def rsa_key(fake: FakeProvider) -> dict[str, Any]:
    key: dict[str, Any] = fake.jwks["keys"][0]
    assert key["kty"] == "RSA"
    return key


HMAC_KEY = {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "kid": "h"}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        pytest.param(
            lambda rsa: [{**rsa, "alg": ["HS256"]}],
            "no usable signing key",
            id="alg-list",
        ),
        pytest.param(lambda rsa: [{**rsa, "kty": 7}], "no usable", id="kty-number"),
        pytest.param(lambda rsa: ["key"], "no usable signing key", id="key-string"),
        pytest.param(lambda rsa: [HMAC_KEY], "can verify", id="hmac-only"),
        pytest.param(
            lambda rsa: [{**rsa, "use": "enc"}], "no usable", id="encryption-only"
        ),
    ],
)
def test_check_rejects_unusable_keys(
    fake_provider: FakeProvider,
    sso_env: dict[str, str],
    keys: Callable[[dict[str, Any]], list[Any]],
    message: str,
) -> None:
    fake_provider.serve_keys(*keys(rsa_key(fake_provider)))
    result = run_check(fake_provider, sso_env)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert message in result.stdout
    assert "All checks passed." not in result.stdout


def test_check_skips_bad_key_beside_good(
    fake_provider: FakeProvider, sso_env: dict[str, str]
) -> None:
    rsa = rsa_key(fake_provider)
    fake_provider.serve_keys({**rsa, "alg": ["HS256"], "kid": "odd"}, HMAC_KEY, rsa)
    result = run_check(fake_provider, sso_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 usable signing key(s) of 3" in result.stdout


def test_check_hmac_key_with_hmac_algorithm(
    fake_provider: FakeProvider, sso_env: dict[str, str]
) -> None:
    # HMAC-signed ID tokens are verified with the client secret, not a JWKS key.
    fake_provider.serve_discovery(id_token_signing_alg_values_supported=["HS256"])
    fake_provider.serve_keys(HMAC_KEY)
    env = {**sso_env, "SSO_ID_TOKEN_ALGORITHMS": "HS256"}
    result = run_check(fake_provider, env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("member", "raw", "escaped"),
    [
        pytest.param(
            "end_session_endpoint",
            "/logout\x1b[2J\x07",
            r"/logout\x1b[2J\x07",
            id="terminal-escape",
        ),
        pytest.param(
            "authorization_endpoint",
            "/auth\u202egnp.exe",
            r"/auth\u202egnp.exe",
            id="bidi-override",
        ),
        pytest.param(
            "issuer",
            "https://other\r\nok:      forged",
            r"https://other\r\nok:      forged",
            id="line-break",
        ),
    ],
)
def test_check_escapes_provider_text(
    fake_provider: FakeProvider,
    sso_env: dict[str, str],
    member: str,
    raw: str,
    escaped: str,
) -> None:
    value = raw if member == "issuer" else fake_provider.url + raw
    fake_provider.serve_discovery(**{member: value})
    result = run_check(fake_provider, sso_env)
    assert "Traceback" not in result.stderr
    assert raw not in result.stdout
    assert escaped in result.stdout


@pytest.mark.parametrize(
    "store",
    [
        pytest.param("redis://127.0.0.1:notaport", id="port-not-number"),
        pytest.param("redis://127.0.0.1:99999", id="port-too-high"),
        pytest.param("redis://[zz", id="bracket-unclosed"),
    ],
)
def test_check_rejects_bad_store_url(sso_env: dict[str, str], store: str) -> None:
    result = run_cli(["check"], {**sso_env, "SSO_SESSION_STORE": store})
    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    assert "  SSO_SESSION_STORE: " in result.stderr


def test_check_store_url_password_hidden(sso_env: dict[str, str]) -> None:
    store = "redis://:hunter2-password@127.0.0.1:notaport"
    result = run_cli(["check"], {**sso_env, "SSO_SESSION_STORE": store})
    assert "hunter2-password" not in result.stdout + result.stderr


INVALID_SETTINGS = {
    "SSO_ISSUER": "ftp://login.example.com",
    "SSO_CLIENT_ID": "",
    "SSO_SECRET_KEY": "too-short",
    "SSO_SESSION_LIFETIME": "eight hours",
    "SSO_COOKIE_SECURE": "sometimes",
}


@pytest.mark.parametrize(
    "variable", [pytest.param(name, id=name) for name in INVALID_SETTINGS]
)
def test_check_names_each_bad_variable(sso_env: dict[str, str], variable: str) -> None:
    result = run_cli(["check"], {**sso_env, **INVALID_SETTINGS})
    assert result.returncode == 2
    assert f"  {variable}: " in result.stderr


def test_invalid_settings_no_traceback(sso_env: dict[str, str]) -> None:
    result = run_cli(["check"], {**sso_env, **INVALID_SETTINGS})
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Invalid sso-middleware settings:")


def test_invalid_settings_hide_secret(sso_env: dict[str, str]) -> None:
    result = run_cli(["check"], {**sso_env, **INVALID_SETTINGS})
    assert INVALID_SETTINGS["SSO_SECRET_KEY"] not in result.stdout + result.stderr


def test_missing_settings_named(provider: Provider) -> None:
    result = run_cli(["check"], {})
    assert result.returncode == 2
    for variable in ("SSO_ISSUER", "SSO_CLIENT_ID", "SSO_CLIENT_SECRET"):
        assert f"  {variable}: " in result.stderr


def test_flag_value_validated(sso_env: dict[str, str]) -> None:
    result = run_cli(["check", "--secret-key", "too-short"], sso_env)
    assert result.returncode == 2
    assert "  SSO_SECRET_KEY: " in result.stderr


def test_flag_overrides_invalid_variable(sso_env: dict[str, str]) -> None:
    env = {**sso_env, "SSO_SECRET_KEY": "too-short"}
    result = run_cli(["check", "--secret-key", servers.SECRET_KEY], env)
    assert result.returncode == 0, result.stdout + result.stderr


# Configuration errors in every command that reads settings


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["check"], id="check"),
        pytest.param(
            ["proxy", "--upstream", "http://127.0.0.1:9", *LISTEN], id="proxy"
        ),
        pytest.param(["serve", "tests.support.apps:flask_app", *LISTEN], id="serve"),
    ],
)
def test_configuration_error_exits_2(sso_env: dict[str, str], args: list[str]) -> None:
    env = {**sso_env, "SSO_SESSION_LIFETIME": "-5"}
    result = run_cli(args, env)
    assert result.returncode == 2
    assert "SSO_SESSION_LIFETIME" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(
            ["proxy", "--upstream", "http://127.0.0.1:9", *LISTEN], id="proxy"
        ),
        pytest.param(["serve", "tests.support.apps:flask_app", *LISTEN], id="serve"),
    ],
)
def test_bad_store_url_exits_2(sso_env: dict[str, str], args: list[str]) -> None:
    env = {**sso_env, "SSO_SESSION_STORE": "redis://127.0.0.1:notaport"}
    result = run_cli(args, env)
    assert result.returncode == 2
    assert "  SSO_SESSION_STORE: " in result.stderr
    assert "Traceback" not in result.stderr


def test_proxy_rejects_bad_upstream(sso_env: dict[str, str]) -> None:
    result = run_cli(["proxy", "--upstream", "ftp://127.0.0.1/", *LISTEN], sso_env)
    assert result.returncode == 2
    assert "invalid upstream URL 'ftp://127.0.0.1/'" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_rejects_unknown_app(sso_env: dict[str, str]) -> None:
    result = run_cli(["serve", "tests.support.apps:no_such_app"], sso_env)
    assert result.returncode == 2
    assert "no_such_app" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_log_level_rejected(sso_env: dict[str, str]) -> None:
    result = run_cli(["check", "--log-level", "loud"], sso_env)
    assert result.returncode == 2
    assert "invalid choice: 'loud'" in result.stderr


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        pytest.param("4180", "expected HOST:PORT", id="no-host"),
        pytest.param("127.0.0.1:http", "invalid port 'http'", id="named-port"),
        pytest.param("127.0.0.1:70000", "invalid port '70000'", id="port-too-high"),
    ],
)
def test_bad_listen_address_rejected(
    sso_env: dict[str, str], listen: str, message: str
) -> None:
    args = ["proxy", "--upstream", "http://127.0.0.1:9", "--listen", listen]
    result = run_cli(args, sso_env)
    assert result.returncode == 2
    assert message in result.stderr


def test_port_in_use_exits_1(sso_env: dict[str, str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["proxy", "--upstream", "http://127.0.0.1:9"]
        result = run_cli([*args, "--listen", f"127.0.0.1:{port}"], sso_env)
    assert result.returncode == 1
    assert "address already in use" in result.stderr.lower()


# Help


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        pytest.param([], "usage: sso-middleware [-h]", id="top"),
        pytest.param(["proxy"], "usage: sso-middleware proxy", id="proxy"),
        pytest.param(["serve"], "usage: sso-middleware serve", id="serve"),
        pytest.param(["check"], "usage: sso-middleware check", id="check"),
        pytest.param(["demo"], "usage: sso-middleware demo", id="demo"),
    ],
)
def test_help_exits_0(args: list[str], usage: str) -> None:
    result = run_cli([*args, "--help"], {})
    assert result.returncode == 0
    assert result.stdout.startswith(usage)


@pytest.mark.parametrize(
    "flag",
    [
        pytest.param("--client-id", id="client-id"),
        pytest.param("--public-paths", id="public-paths"),
        pytest.param("--session-store", id="session-store"),
        pytest.param("--listen", id="listen"),
        pytest.param("--upstream-timeout", id="upstream-timeout"),
        pytest.param("--client-body-timeout", id="client-body-timeout"),
        pytest.param("--limit-concurrency", id="limit-concurrency"),
    ],
)
def test_proxy_help_lists_flag(flag: str) -> None:
    result = run_cli(["proxy", "--help"], {})
    assert flag in result.stdout


def test_serve_help_lists_limit() -> None:
    result = run_cli(["serve", "--help"], {})
    assert "--limit-concurrency" in result.stdout


def test_no_command_exits_2() -> None:
    result = run_cli([], {})
    assert result.returncode == 2
    assert "usage: sso-middleware" in result.stderr


# --client-id through the proxy


def test_client_id_flag_overrides_variable(
    start_cli: StartCli,
    echo_upstream: AppServer,
    sso_env: dict[str, str],
    client: httpx.Client,
    provider: Provider,
) -> None:
    env = {**sso_env, "SSO_CLIENT_ID": "client-from-variable"}
    args = ["proxy", "--upstream", echo_upstream.url, *LISTEN]
    proxy = start_cli([*args, "--client-id", "client-from-flag"], env)
    response = client.get(proxy.url + "/whoami", headers=NAVIGATION_HEADERS)
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(provider.authorize_url + "?")
    params = parse_qs(urlsplit(location).query)
    assert params["client_id"] == ["client-from-flag"]


def test_client_id_variable_used_without_flag(
    start_cli: StartCli,
    echo_upstream: AppServer,
    sso_env: dict[str, str],
    client: httpx.Client,
) -> None:
    env = {**sso_env, "SSO_CLIENT_ID": "client-from-variable"}
    proxy = start_cli(["proxy", "--upstream", echo_upstream.url, *LISTEN], env)
    response = client.get(proxy.url + "/whoami", headers=NAVIGATION_HEADERS)
    params = parse_qs(urlsplit(response.headers["location"]).query)
    assert params["client_id"] == ["client-from-variable"]


# serve


@pytest.fixture
def flask_served(start_cli: StartCli, sso_env: dict[str, str]) -> AppServer:
    return start_cli(
        ["serve", "tests.support.apps:flask_app", *LISTEN, "--public-paths", "/pub/*"],
        sso_env,
    )


@pytest.fixture
def starlette_served(start_cli: StartCli, sso_env: dict[str, str]) -> AppServer:
    return start_cli(
        [
            "serve",
            "tests.support.apps:starlette_app",
            *LISTEN,
            "--public-paths",
            "/pub/*",
        ],
        sso_env,
    )


def signed_in_page(client: httpx.Client, server: AppServer) -> dict[str, Any]:
    result = login(client, server.url + "/whoami?from=cli")
    assert result.response.status_code == 200, result.response.text[:300]
    page: dict[str, Any] = result.response.json()
    return page


def test_serve_wsgi_gets_user(flask_served: AppServer, client: httpx.Client) -> None:
    page = signed_in_page(client, flask_served)
    assert page["app"] == "flask"
    assert page["query"] == "from=cli"
    assert page["user"]["type"] == "User"
    assert page["user"]["email"] == "alice@example.com"
    assert page["user"]["groups"] == ["staff", "admins"]


def test_serve_wsgi_sets_remote_user(
    flask_served: AppServer, client: httpx.Client
) -> None:
    page = signed_in_page(client, flask_served)
    assert page["remote_user"] == "alice"


def test_serve_wsgi_public_path_anonymous(
    flask_served: AppServer, client: httpx.Client
) -> None:
    response = client.get(
        flask_served.url + "/pub/page", headers={"X-Forwarded-User": "mallory"}
    )
    assert response.status_code == 200
    page = response.json()
    assert page["user"]["is_authenticated"] is False
    assert page["remote_user"] is None
    assert "x-forwarded-user" not in page["headers"]


def test_serve_wsgi_logs_interface(
    flask_served: AppServer, client: httpx.Client
) -> None:
    client.get(flask_served.url + "/_sso/health")
    log = flask_served.process.log_text()
    assert "Serving WSGI application tests.support.apps:flask_app" in log


def test_serve_wsgi_json_gets_401(
    flask_served: AppServer, client: httpx.Client
) -> None:
    response = client.get(flask_served.url + "/whoami", headers=JSON)
    assert response.status_code == 401


def test_serve_asgi_gets_scope_user(
    starlette_served: AppServer, client: httpx.Client
) -> None:
    page = signed_in_page(client, starlette_served)
    assert page["app"] == "starlette"
    assert page["user"]["type"] == "User"
    assert page["user"]["sub"] == "alice"
    assert page["user"]["email"] == "alice@example.com"
    assert page["user"]["is_authenticated"] is True


def test_serve_asgi_public_path_anonymous(
    starlette_served: AppServer, client: httpx.Client
) -> None:
    response = client.get(starlette_served.url + "/pub/page")
    assert response.status_code == 200
    assert response.json()["user"]["is_authenticated"] is False


def test_serve_asgi_logs_interface(
    starlette_served: AppServer, client: httpx.Client
) -> None:
    client.get(starlette_served.url + "/_sso/health")
    log = starlette_served.process.log_text()
    assert "Serving ASGI application tests.support.apps:starlette_app" in log


def test_serve_stops_cleanly_on_sigterm(
    starlette_served: AppServer, client: httpx.Client
) -> None:
    assert client.get(starlette_served.url + "/_sso/health").status_code == 200
    status = starlette_served.process.stop(timeout=15)
    assert status == 0
    assert "Traceback" not in starlette_served.process.log_text()


# demo


def wait_for_log(server: AppServer, text: str, timeout: float = 30.0) -> str:
    """Poll the server's log until it contains ``text``, and return the log."""
    deadline = time.monotonic() + timeout
    while text not in (log := server.process.log_text()):
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{log}"
        time.sleep(0.1)
    return log


@pytest.fixture
def demo_log(start_cli: StartCli) -> str:
    """The demo's output from its start to its stop."""
    demo = start_cli(["demo", "--port", "{port}"], {})
    wait_for_log(demo, "Press Ctrl-C to stop.")
    assert demo.process.stop(timeout=15) == 0
    return demo.process.log_text()


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("Started server process", id="started"),
        pytest.param("Shutting down", id="shutting-down"),
        pytest.param("Finished server process", id="finished"),
    ],
)
def test_demo_logs_server_lines_once(demo_log: str, line: str) -> None:
    assert demo_log.count(line) == 1, demo_log
