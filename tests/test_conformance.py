"""OpenID Connect relying-party conformance of both adapters against a hostile provider.

Each case drives a login over real HTTP on loopback: a navigation to a protected page,
the redirect to the provider's authorization endpoint, the provider's redirect back
with a code, and the callback. The provider (``tests.support.hostile_provider``)
produces one defect at a time. A defect must end the login with an error page, no
session cookie and one log line, and a quirk that OpenID Connect allows must still
log the user in.

Every test runs twice: with a Flask application behind the WSGI middleware, served by
werkzeug, and with a Starlette application behind the ASGI middleware, served by
uvicorn. Both servers run in threads of the test process, so ``caplog`` captures the
middleware's log records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from sso_middleware import Settings, SSOMiddleware
from sso_middleware._oidc import JWKS_REFETCH_INTERVAL
from tests.support.apps import create_flask_app, create_starlette_app
from tests.support.hostile_provider import (
    BACKCHANNEL_LOGOUT_EVENT,
    DEFAULT_USER_CLAIMS,
    HostileProvider,
    pkce_challenge,
)
from tests.support.threads import serve_asgi, serve_wsgi

SECRET_KEY = "conformance-tests-cookie-signing-key-0123456789"
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
JSON = {"Accept": "application/json"}
RETURN_PATH = "/whoami?tab=1"
CALLBACK_PATH = "/_sso/callback"
SESSION_COOKIE = "sso_session"
# Logins sent while the provider signs every ID token with a new kid. The test checks
# that they all fall within one JWKS refetch interval.
RANDOM_KID_LOGINS = 5


# Servers


@pytest.fixture(scope="module")
def idp_server() -> Iterator[HostileProvider]:
    """One hostile provider for the module, served on 127.0.0.1."""
    with HostileProvider() as provider:
        yield provider


@pytest.fixture
def idp(idp_server: HostileProvider) -> Iterator[HostileProvider]:
    """The module's provider, reset to correct behaviour before and after each test."""
    idp_server.reset()
    yield idp_server
    idp_server.reset()


@dataclass
class Site:
    """An application behind the middleware, served over HTTP on loopback."""

    url: str
    interface: str
    middleware: Any
    stack: ExitStack

    def new_client(self) -> httpx.Client:
        """Return a client with an empty cookie jar, like a new browser."""
        client = httpx.Client(trust_env=False, timeout=10)
        return self.stack.enter_context(client)


MakeSite = Callable[..., Site]


@pytest.fixture(params=["wsgi", "asgi"])
def make_site(
    request: pytest.FixtureRequest, idp: HostileProvider
) -> Iterator[MakeSite]:
    """Build and serve a protected application. Keyword arguments are settings."""
    interface = request.param
    with ExitStack() as stack:

        def make(**overrides: Any) -> Site:
            settings = Settings(
                issuer=idp.issuer,
                client_id=idp.client_id,
                client_secret=idp.client_secret,
                secret_key=SECRET_KEY,
                **overrides,
            )
            if interface == "wsgi":
                middleware = SSOMiddleware(create_flask_app(), settings)
                url = stack.enter_context(serve_wsgi(middleware))
                # Registered after the server, so the client closes after the server stops.
                stack.callback(middleware.close)
            else:
                middleware = SSOMiddleware(create_starlette_app(), settings)
                url = stack.enter_context(serve_asgi(middleware))
            return Site(url, interface, middleware, stack)

        yield make


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The captured log records, with the middleware's INFO records included."""
    caplog.set_level(logging.INFO, logger="sso_middleware")
    return caplog


# Driving a login


@dataclass
class Attempt:
    """The responses of one login, from the protected page to the last response.

    ``responses`` contains the protected page's redirect (or its error), the
    provider's redirect, the callback's response and, after a successful callback,
    the application's response to a JSON request for the return path.
    """

    responses: list[httpx.Response] = field(default_factory=list)
    authorize_params: dict[str, str] = field(default_factory=dict)
    callback_params: dict[str, str] = field(default_factory=dict)

    @property
    def final(self) -> httpx.Response:
        return self.responses[-1]

    @property
    def callback(self) -> httpx.Response:
        return self.responses[2]

    def session_cookies_set(self) -> list[str]:
        """Return every ``Set-Cookie`` value that sets the session cookie."""
        return [
            value
            for response in self.responses
            for value in response.headers.get_list("set-cookie")
            if value.startswith(SESSION_COOKIE + "=")
        ]


def query_params(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def attempt_login(
    site: Site, client: httpx.Client, provider: HostileProvider
) -> Attempt:
    """Drive a login as a browser would, and stop at the first response that is not
    the redirect the next step expects."""
    attempt = Attempt()
    start = client.get(site.url + RETURN_PATH, headers=HTML)
    attempt.responses.append(start)
    if start.status_code != 302:
        return attempt
    authorize_url = start.headers["location"]
    assert authorize_url.startswith(provider.url("/authorize") + "?")
    attempt.authorize_params = query_params(authorize_url)

    provider_redirect = client.get(authorize_url, headers=HTML)
    attempt.responses.append(provider_redirect)
    assert provider_redirect.status_code == 302, provider_redirect.text
    callback_url = provider_redirect.headers["location"]
    assert callback_url.startswith(site.url + CALLBACK_PATH + "?")
    attempt.callback_params = query_params(callback_url)

    callback = client.get(callback_url, headers=HTML)
    attempt.responses.append(callback)
    if callback.status_code == 302:
        return_to = callback.headers["location"]
        attempt.responses.append(client.get(site.url + return_to, headers=JSON))
    return attempt


def assert_logged_in(attempt: Attempt) -> None:
    callback = attempt.callback
    assert callback.status_code == 302, callback.text
    assert callback.headers["location"] == RETURN_PATH
    assert len(attempt.session_cookies_set()) == 1
    final = attempt.final
    assert final.status_code == 200
    assert final.json()["user"]["sub"] == DEFAULT_USER_CLAIMS["sub"]


def rejection_records(logs: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in logs.records
        if record.name == "sso_middleware" and record.levelno >= logging.WARNING
    ]


def assert_rejected(
    attempt: Attempt,
    status: int,
    reason: str,
    site: Site,
    client: httpx.Client,
    logs: pytest.LogCaptureFixture,
) -> None:
    """Check a rejected login: its error page, the absence of a session, the log."""
    final = attempt.final
    assert final.status_code == status
    assert "location" not in final.headers
    assert final.headers["content-type"].startswith("text/html")
    assert "Traceback" not in final.text
    assert attempt.session_cookies_set() == []
    assert client.cookies.get(SESSION_COOKIE) is None
    assert client.get(site.url + "/whoami", headers=JSON).status_code == 401

    records = rejection_records(logs)
    assert len(records) == 1, [record.getMessage() for record in records]
    [record] = records
    expected_level = logging.ERROR if status >= 500 else logging.WARNING
    assert record.levelno == expected_level
    message = record.getMessage()
    assert reason in message
    code = attempt.callback_params.get("code")
    if code:
        assert code not in message


# Rejected logins


@dataclass(frozen=True)
class Rejection:
    """A provider defect and how the middleware must reject it.

    ``reason`` is a part of the log line that names the check which rejected the
    login, so a case passes only when the intended check fired. ``exchanges_code``
    is False when the code must never reach the token endpoint.
    """

    mode: str | None
    status: int
    reason: str
    exchanges_code: bool = True
    settings: Mapping[str, Any] = field(default_factory=dict)
    user_claims: Mapping[str, Any] | None = None


# User claims without sub but with the events claim of a logout token: a check that
# exempts logout tokens from sub would let this ID token through.
CLAIMS_WITHOUT_SUB = {
    **{name: value for name, value in DEFAULT_USER_CLAIMS.items() if name != "sub"},
    "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
}

REJECTIONS = [
    pytest.param(Rejection("wrong_iss", 400, "InvalidIssuerError"), id="wrong-iss"),
    pytest.param(Rejection("no_sub", 400, "missing sub"), id="no-sub"),
    pytest.param(
        Rejection(None, 400, "missing sub", user_claims=CLAIMS_WITHOUT_SUB),
        id="no-sub-with-events-claim",
    ),
    pytest.param(Rejection("no_aud", 400, '"aud"'), id="no-aud"),
    pytest.param(
        Rejection("aud_without_client", 400, "InvalidAudienceError"),
        id="aud-without-client",
    ),
    pytest.param(Rejection("no_iat", 400, '"iat"'), id="no-iat"),
    pytest.param(
        Rejection("bad_signature", 400, "InvalidSignatureError"), id="bad-signature"
    ),
    pytest.param(
        Rejection("hs256_with_public_key", 400, "'HS256' not in the allow-list"),
        id="hs256-with-public-key",
    ),
    pytest.param(
        Rejection("alg_none", 400, "'none' not in the allow-list"), id="alg-none"
    ),
    pytest.param(Rejection("wrong_nonce", 400, "nonce mismatch"), id="wrong-nonce"),
    pytest.param(
        Rejection("expired", 400, "ExpiredSignatureError"), id="expired-beyond-leeway"
    ),
    pytest.param(Rejection("future_iat", 400, "(iat)"), id="future-iat-beyond-leeway"),
    pytest.param(
        Rejection("userinfo_sub_mismatch", 400, "userinfo sub differs"),
        id="userinfo-sub-mismatch",
    ),
    pytest.param(
        Rejection("multiple_aud_without_azp", 400, "azp 'None'"),
        id="multiple-aud-without-azp",
    ),
    pytest.param(
        Rejection("multiple_aud_with_wrong_azp", 400, "azp 'another-client'"),
        id="multiple-aud-with-wrong-azp",
    ),
    pytest.param(
        Rejection("iss_param_missing", 400, "iss parameter 'None'", False),
        id="iss-param-missing",
    ),
    pytest.param(
        Rejection("iss_param_wrong", 400, "iss parameter 'http://", False),
        id="iss-param-wrong",
    ),
    pytest.param(
        Rejection("token_error_500", 502, "token endpoint: status 500"),
        id="token-error-500",
    ),
    pytest.param(
        Rejection("token_garbage", 502, "token endpoint: response is not JSON"),
        id="token-garbage",
    ),
    pytest.param(
        Rejection(
            "token_slow",
            504,
            "token endpoint timed out",
            settings={"http_timeout": 0.5},
        ),
        id="token-slow",
    ),
    pytest.param(
        Rejection("jwks_unreachable", 502, "JWKS: status 500"), id="jwks-unreachable"
    ),
]


@pytest.mark.parametrize("case", REJECTIONS)
def test_defective_login_rejected(
    case: Rejection,
    make_site: MakeSite,
    idp: HostileProvider,
    logs: pytest.LogCaptureFixture,
) -> None:
    site = make_site(**case.settings)
    client = site.new_client()
    idp.mode = case.mode
    if case.user_claims is not None:
        idp.user_claims = dict(case.user_claims)
    logs.clear()

    attempt = attempt_login(site, client, idp)

    assert len(attempt.responses) == 3
    assert_rejected(attempt, case.status, case.reason, site, client, logs)
    expected_token_requests = 1 if case.exchanges_code else 0
    assert len(idp.token_requests) == expected_token_requests


def test_discovery_issuer_mismatch_rejected(
    make_site: MakeSite, idp: HostileProvider, logs: pytest.LogCaptureFixture
) -> None:
    """The discovery document names another issuer: no login may start."""
    site = make_site()
    client = site.new_client()
    idp.mode = "discovery_issuer_mismatch"
    logs.clear()

    attempt = attempt_login(site, client, idp)

    assert len(attempt.responses) == 1
    assert_rejected(attempt, 502, idp.wrong_issuer, site, client, logs)
    assert idp.authorization_requests == []


def test_failed_discovery_retried_after_pause(
    make_site: MakeSite, idp: HostileProvider
) -> None:
    """A misconfigured provider is not asked for discovery on every page load."""
    site = make_site()
    idp.mode = "discovery_issuer_mismatch"
    fetches_before = idp.discovery_fetches
    for _ in range(3):
        response = site.new_client().get(
            site.url + "/whoami", headers={"Accept": "text/html"}
        )
        assert response.status_code == 502
    assert idp.discovery_fetches - fetches_before == 1


def test_random_kid_refetch_rate_limited(
    make_site: MakeSite, idp: HostileProvider, logs: pytest.LogCaptureFixture
) -> None:
    """Tokens with unknown key ids cannot make the middleware flood the JWKS URI."""
    site = make_site()
    idp.mode = "random_kid"
    started = time.monotonic()
    for _ in range(RANDOM_KID_LOGINS):
        client = site.new_client()
        logs.clear()
        attempt = attempt_login(site, client, idp)
        assert_rejected(attempt, 400, "no signing key with kid", site, client, logs)
    # Beyond one interval a second refetch would be allowed, and the count meaningless.
    assert time.monotonic() - started < JWKS_REFETCH_INTERVAL
    # One fetch fills the cache, and the unknown kids add one refetch at most.
    assert idp.jwks_fetches <= 2


# Accepted logins


ACCEPTED = [
    pytest.param(None, id="correct-provider"),
    pytest.param("no_kid_single_key", id="no-kid-single-key"),
    pytest.param("iat_one_second_future", id="iat-one-second-future"),
    pytest.param("unknown_key_type_in_jwks", id="unknown-key-type-in-jwks"),
    pytest.param("multiple_aud_with_azp", id="multiple-aud-with-azp"),
]


@pytest.mark.parametrize("mode", ACCEPTED)
def test_allowed_quirk_logs_in(
    mode: str | None,
    make_site: MakeSite,
    idp: HostileProvider,
    logs: pytest.LogCaptureFixture,
) -> None:
    site = make_site()
    idp.mode = mode
    logs.clear()

    attempt = attempt_login(site, site.new_client(), idp)

    assert_logged_in(attempt)
    assert rejection_records(logs) == []


def test_rotated_signing_key_refetched(
    make_site: MakeSite, idp: HostileProvider
) -> None:
    """A new kid right after a JWKS fetch makes the middleware fetch it again."""
    site = make_site()
    assert_logged_in(attempt_login(site, site.new_client(), idp))
    fetches_before = idp.jwks_fetches
    idp.rotate_key()

    assert_logged_in(attempt_login(site, site.new_client(), idp))

    assert fetches_before == 1
    assert idp.jwks_fetches == fetches_before + 1


# Client authentication and PKCE


AUTH_METHODS = [
    pytest.param(None, "client_secret_basic", id="default-basic"),
    pytest.param(
        ["client_secret_post"], "client_secret_post", id="post-only-discovery"
    ),
    pytest.param(
        ["client_secret_post", "client_secret_basic"],
        "client_secret_basic",
        id="both-listed",
    ),
    pytest.param(
        ["client_secret_basic"], "client_secret_basic", id="basic-only-discovery"
    ),
]


@pytest.mark.parametrize(("advertised_methods", "expected_method"), AUTH_METHODS)
def test_token_auth_follows_discovery(
    advertised_methods: list[str] | None,
    expected_method: str,
    make_site: MakeSite,
    idp: HostileProvider,
) -> None:
    if advertised_methods is not None:
        idp.token_endpoint_auth_methods = advertised_methods
    site = make_site()

    assert_logged_in(attempt_login(site, site.new_client(), idp))

    [token_request] = idp.token_requests
    assert token_request.client_auth == expected_method


def test_pkce_verifier_matches_challenge(
    make_site: MakeSite, idp: HostileProvider
) -> None:
    site = make_site()

    attempt = attempt_login(site, site.new_client(), idp)

    assert_logged_in(attempt)
    challenge = attempt.authorize_params["code_challenge"]
    assert attempt.authorize_params["code_challenge_method"] == "S256"
    [token_request] = idp.token_requests
    verifier = token_request.params["code_verifier"]
    assert pkce_challenge(verifier) == challenge
    assert verifier not in attempt.responses[0].headers["location"]
