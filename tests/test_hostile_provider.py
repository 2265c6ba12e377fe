"""Tests of the hostile OpenID provider itself, over HTTP and without the middleware."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from tests.support.hostile_provider import (
    MODES,
    OTHER_CLIENT_ID,
    OTHER_SUBJECT,
    HostileProvider,
    b64url_decode,
    pkce_challenge,
)

# Never fetched: the client does not follow redirects.
REDIRECT_URI = "http://127.0.0.1:9/_sso/callback"
MISSING = object()


@dataclass(frozen=True)
class LoginRequest:
    """The secrets a client keeps between the authorization and token requests."""

    state: str
    nonce: str
    verifier: str


def client_for(provider: HostileProvider) -> httpx.Client:
    # trust_env=False keeps proxy variables from routing loopback traffic elsewhere.
    return httpx.Client(base_url=provider.issuer, trust_env=False, timeout=5)


@pytest.fixture
def client(hostile_provider: HostileProvider) -> Iterator[httpx.Client]:
    with client_for(hostile_provider) as http_client:
        yield http_client


def authorize(
    client: httpx.Client, provider: HostileProvider, **overrides: str | None
) -> tuple[httpx.Response, LoginRequest]:
    login = LoginRequest(
        state=secrets.token_urlsafe(16),
        nonce=secrets.token_urlsafe(16),
        verifier=secrets.token_urlsafe(48),
    )
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid email profile",
        "state": login.state,
        "nonce": login.nonce,
        "code_challenge": pkce_challenge(login.verifier),
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    sent = {key: value for key, value in params.items() if value is not None}
    return client.get("/authorize", params=sent), login


def redirect_params(response: httpx.Response) -> dict[str, str]:
    query = urlsplit(response.headers["Location"]).query
    return {key: values[0] for key, values in parse_qs(query).items()}


def exchange(
    client: httpx.Client,
    provider: HostileProvider,
    code: str,
    login: LoginRequest,
    /,
    *,
    auth: str = "client_secret_basic",
    secret: str | None = None,
    overrides: Mapping[str, str | None] | None = None,
) -> httpx.Response:
    """Send a token request. An override of None leaves that form field out."""
    form: dict[str, str | None] = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": login.verifier,
    }
    headers: dict[str, str] = {}
    client_secret = provider.client_secret if secret is None else secret
    if auth == "client_secret_basic":
        credentials = f"{provider.client_id}:{client_secret}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    elif auth == "client_secret_post":
        form["client_id"] = provider.client_id
        form["client_secret"] = client_secret
    form.update(overrides or {})
    sent = {key: value for key, value in form.items() if value is not None}
    return client.post("/token", data=sent, headers=headers)


def log_in(
    client: httpx.Client, provider: HostileProvider
) -> tuple[dict[str, Any], LoginRequest]:
    """Run a whole authorization code flow and return the token response."""
    response, login = authorize(client, provider)
    code = redirect_params(response)["code"]
    token_response = exchange(client, provider, code, login)
    assert token_response.status_code == 200, token_response.text
    return token_response.json(), login


def get_id_token(
    client: httpx.Client, provider: HostileProvider
) -> tuple[str, LoginRequest]:
    body, login = log_in(client, provider)
    return body["id_token"], login


def jwks_key(client: httpx.Client, kid: str | None = None) -> jwt.PyJWK:
    key_set = jwt.PyJWKSet.from_dict(client.get("/jwks").json())
    if kid is None:
        assert len(key_set.keys) == 1
        return key_set.keys[0]
    return key_set[kid]


def verify(
    token: str, client: httpx.Client, provider: HostileProvider
) -> dict[str, Any]:
    """Verify signature, issuer, audience and times as a correct client does."""
    kid = jwt.get_unverified_header(token).get("kid")
    return jwt.decode(
        token,
        jwks_key(client, kid),
        algorithms=["RS256"],
        audience=provider.client_id,
        issuer=provider.issuer,
        leeway=60,
        options={"require": ["iss", "sub", "aud", "exp", "iat"]},
    )


def verify_signature_only(
    token: str, client: httpx.Client, kid: str | None = None
) -> dict[str, Any]:
    return jwt.decode(
        token,
        jwks_key(client, kid),
        algorithms=["RS256"],
        options={
            "verify_aud": False,
            "verify_iss": False,
            "verify_exp": False,
            "verify_iat": False,
            "verify_nbf": False,
        },
    )


def token_parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header, payload, signature = token.split(".")
    return (
        json.loads(b64url_decode(header)),
        json.loads(b64url_decode(payload)),
        b64url_decode(signature),
    )


# Discovery


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("response_types_supported", ["code"], id="response_types"),
        pytest.param(
            "id_token_signing_alg_values_supported", ["RS256"], id="signing_algs"
        ),
        pytest.param("code_challenge_methods_supported", ["S256"], id="pkce_methods"),
        pytest.param(
            "token_endpoint_auth_methods_supported",
            ["client_secret_basic", "client_secret_post"],
            id="auth_methods",
        ),
        pytest.param(
            "authorization_response_iss_parameter_supported", False, id="iss_param"
        ),
    ],
)
def test_discovery_static_values(
    client: httpx.Client, name: str, expected: Any
) -> None:
    document = client.get("/.well-known/openid-configuration").json()
    assert document[name] == expected


@pytest.mark.parametrize(
    ("name", "path"),
    [
        pytest.param("authorization_endpoint", "/authorize", id="authorize"),
        pytest.param("token_endpoint", "/token", id="token"),
        pytest.param("userinfo_endpoint", "/userinfo", id="userinfo"),
        pytest.param("jwks_uri", "/jwks", id="jwks"),
        pytest.param("end_session_endpoint", "/end_session", id="end_session"),
        pytest.param("issuer", "", id="issuer"),
    ],
)
def test_discovery_endpoint_urls(
    client: httpx.Client, hostile_provider: HostileProvider, name: str, path: str
) -> None:
    document = client.get("/.well-known/openid-configuration").json()
    assert document[name] == hostile_provider.issuer + path


def test_discovery_auth_methods_configurable(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.token_endpoint_auth_methods = ["client_secret_post"]
    document = client.get("/.well-known/openid-configuration").json()
    assert document["token_endpoint_auth_methods_supported"] == ["client_secret_post"]


def test_discovery_fetches_counted(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    client.get("/.well-known/openid-configuration")
    client.get("/.well-known/openid-configuration")
    assert hostile_provider.discovery_fetches == 2


def test_path_prefix_in_issuer() -> None:
    with HostileProvider(path_prefix="/realms/test") as provider:
        issuer = provider.issuer
        with client_for(provider) as http_client:
            document = http_client.get(provider.discovery_url).json()
            outside_prefix = http_client.get(
                f"http://127.0.0.1:{provider.port}/.well-known/openid-configuration"
            )
    assert issuer.endswith("/realms/test")
    assert document["issuer"] == issuer
    assert document["jwks_uri"] == issuer + "/jwks"
    assert outside_prefix.status_code == 404


def test_invalid_path_prefix_rejected() -> None:
    with pytest.raises(ValueError, match="path_prefix"):
        HostileProvider(path_prefix="realms/")


# Correct behaviour


def test_default_id_token_verifies(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    token, login = get_id_token(client, hostile_provider)
    claims = verify(token, client, hostile_provider)
    assert claims["iss"] == hostile_provider.issuer
    assert claims["aud"] == hostile_provider.client_id
    assert claims["nonce"] == login.nonce
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.com"
    assert claims["name"] == "Alice Liddell"
    assert claims["groups"] == ["engineering", "staff"]
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["iat"] - time.time()) < 5
    assert "azp" not in claims


def test_default_id_token_header(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    token, _ = get_id_token(client, hostile_provider)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    assert header["kid"] == hostile_provider.signing_key.kid


def test_token_response_fields(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    response, login = authorize(client, hostile_provider)
    code = redirect_params(response)["code"]
    token_response = exchange(client, hostile_provider, code, login)
    body = token_response.json()
    assert token_response.status_code == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] > 0
    assert body["access_token"]
    assert token_response.headers["Cache-Control"] == "no-store"


def test_jwks_serves_one_rsa_key(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    keys = client.get("/jwks").json()["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "RSA"
    assert keys[0]["kid"] == hostile_provider.signing_key.kid
    assert "d" not in keys[0]


def test_jwks_fetches_counted(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    for _ in range(3):
        client.get("/jwks")
    assert hostile_provider.jwks_fetches == 3


def test_userinfo_returns_claims(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    body, _ = log_in(client, hostile_provider)
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    userinfo = client.get("/userinfo", headers=headers).json()
    assert userinfo["sub"] == "alice"
    assert userinfo["email"] == "alice@example.com"


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no_header"),
        pytest.param("Bearer not-a-token", id="unknown_token"),
        pytest.param("Basic YTpi", id="wrong_scheme"),
    ],
)
def test_userinfo_rejects_bad_token(
    client: httpx.Client, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.get("/userinfo", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_user_claims_configurable(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.user_claims["groups"] = ["admins"]
    token, _ = get_id_token(client, hostile_provider)
    assert verify(token, client, hostile_provider)["groups"] == ["admins"]


def test_logout_token_verifies(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    token = hostile_provider.make_logout_token(sid="session-1")
    claims = verify_signature_only(token, client)
    assert claims["sid"] == "session-1"
    assert "http://schemas.openid.net/event/backchannel-logout" in claims["events"]
    assert "nonce" not in claims
    assert jwt.get_unverified_header(token)["typ"] == "logout+jwt"


def test_id_token_has_sid(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    token, _ = get_id_token(client, hostile_provider)
    assert verify(token, client, hostile_provider)["sid"]


# Authorization endpoint


def test_authorize_redirects_with_code(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    response, login = authorize(client, hostile_provider)
    params = redirect_params(response)
    assert response.status_code == 302
    assert response.headers["Location"].startswith(REDIRECT_URI + "?")
    assert params["state"] == login.state
    assert params["code"]
    assert "iss" not in params


def test_authorize_keeps_redirect_query(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    response, _ = authorize(
        client, hostile_provider, redirect_uri=REDIRECT_URI + "?tenant=a"
    )
    params = redirect_params(response)
    assert params["tenant"] == "a"
    assert params["code"]


def test_authorize_iss_when_supported(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.iss_parameter_supported = True
    response, _ = authorize(client, hostile_provider)
    document = client.get("/.well-known/openid-configuration").json()
    assert redirect_params(response)["iss"] == hostile_provider.issuer
    assert document["authorization_response_iss_parameter_supported"] is True


def test_authorize_records_parameters(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    _, login = authorize(client, hostile_provider, organization_id="org_1")
    [recorded] = hostile_provider.authorization_requests
    assert recorded.params["nonce"] == login.nonce
    assert recorded.params["code_challenge"] == pkce_challenge(login.verifier)
    assert recorded.params["code_challenge_method"] == "S256"
    assert recorded.params["scope"] == "openid email profile"
    assert recorded.params["client_id"] == hostile_provider.client_id
    assert recorded.params["organization_id"] == "org_1"
    assert "organization_id=org_1" in recorded.query


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        pytest.param({"code_challenge": None}, "invalid_request", id="no_pkce"),
        pytest.param(
            {"code_challenge_method": "plain"}, "invalid_request", id="plain_pkce"
        ),
        pytest.param(
            {"code_challenge_method": None}, "invalid_request", id="no_pkce_method"
        ),
        pytest.param(
            {"response_type": "token"}, "unsupported_response_type", id="implicit"
        ),
        pytest.param({"scope": "email"}, "invalid_scope", id="no_openid_scope"),
    ],
)
def test_authorize_error_redirects(
    client: httpx.Client,
    hostile_provider: HostileProvider,
    overrides: dict[str, str | None],
    error: str,
) -> None:
    response, login = authorize(client, hostile_provider, **overrides)
    params = redirect_params(response)
    assert response.status_code == 302
    assert params["error"] == error
    assert params["state"] == login.state
    assert "code" not in params


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"client_id": "unknown"}, id="unknown_client"),
        pytest.param({"redirect_uri": None}, id="no_redirect_uri"),
    ],
)
def test_authorize_rejects_without_redirect(
    client: httpx.Client,
    hostile_provider: HostileProvider,
    overrides: dict[str, str | None],
) -> None:
    response, _ = authorize(client, hostile_provider, **overrides)
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_authorize_unregistered_redirect_rejected(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.redirect_uris = ["http://127.0.0.1:9/other"]
    response, _ = authorize(client, hostile_provider)
    assert response.status_code == 400
    assert "Location" not in response.headers


# Token endpoint


@pytest.mark.parametrize(
    "auth",
    [
        pytest.param("client_secret_basic", id="basic"),
        pytest.param("client_secret_post", id="post"),
    ],
)
def test_token_records_client_auth(
    client: httpx.Client, hostile_provider: HostileProvider, auth: str
) -> None:
    response, login = authorize(client, hostile_provider)
    code = redirect_params(response)["code"]
    token_response = exchange(client, hostile_provider, code, login, auth=auth)
    [recorded] = hostile_provider.token_requests
    assert token_response.status_code == 200
    assert recorded.client_auth == auth
    assert recorded.params["code_verifier"] == login.verifier


def test_token_basic_auth_form_encoded() -> None:
    # RFC 6749 section 2.3.1: the client id and secret are form-encoded first.
    secret = "s3cret:with/special+chars"
    encoded = "client%3A1:s3cret%3Awith%2Fspecial%2Bchars"
    headers = {"Authorization": "Basic " + base64.b64encode(encoded.encode()).decode()}
    with (
        HostileProvider(client_id="client:1", client_secret=secret) as provider,
        client_for(provider) as http_client,
    ):
        response, login = authorize(http_client, provider)
        code = redirect_params(response)["code"]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": login.verifier,
        }
        token_response = http_client.post("/token", data=form, headers=headers)
    assert token_response.status_code == 200, token_response.text


@pytest.mark.parametrize(
    ("allowed", "auth"),
    [
        pytest.param(["client_secret_post"], "client_secret_basic", id="basic"),
        pytest.param(["client_secret_basic"], "client_secret_post", id="post"),
        pytest.param(["client_secret_basic"], "none", id="no_credentials"),
    ],
)
def test_token_auth_method_not_allowed(
    client: httpx.Client,
    hostile_provider: HostileProvider,
    allowed: list[str],
    auth: str,
) -> None:
    hostile_provider.token_endpoint_auth_methods = allowed
    response, login = authorize(client, hostile_provider)
    code = redirect_params(response)["code"]
    token_response = exchange(client, hostile_provider, code, login, auth=auth)
    assert token_response.status_code == 401
    assert token_response.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    "auth",
    [
        pytest.param("client_secret_basic", id="basic"),
        pytest.param("client_secret_post", id="post"),
    ],
)
def test_token_wrong_secret_rejected(
    client: httpx.Client, hostile_provider: HostileProvider, auth: str
) -> None:
    response, login = authorize(client, hostile_provider)
    code = redirect_params(response)["code"]
    token_response = exchange(
        client, hostile_provider, code, login, auth=auth, secret="another-secret"
    )
    assert token_response.status_code == 401
    assert token_response.json()["error"] == "invalid_client"


def test_token_two_auth_methods_rejected(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    response, login = authorize(client, hostile_provider)
    code = redirect_params(response)["code"]
    # Basic credentials in the header and the same credentials in the form.
    credentials_in_form = {
        "client_id": hostile_provider.client_id,
        "client_secret": hostile_provider.client_secret,
    }
    token_response = exchange(
        client, hostile_provider, code, login, overrides=credentials_in_form
    )
    [recorded] = hostile_provider.token_requests
    assert token_response.status_code == 400
    assert token_response.json()["error"] == "invalid_request"
    assert recorded.client_auth == "multiple"


def test_code_works_once(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    response, login = authorize(client, hostile_provider)
    code = redirect_params(response)["code"]
    first = exchange(client, hostile_provider, code, login)
    second = exchange(client, hostile_provider, code, login)
    assert first.status_code == 200
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"


def test_code_reuse_revokes_tokens(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    response, login = authorize(client, hostile_provider)
    code = redirect_params(response)["code"]
    access_token = exchange(client, hostile_provider, code, login).json()[
        "access_token"
    ]
    exchange(client, hostile_provider, code, login)
    headers = {"Authorization": f"Bearer {access_token}"}
    assert client.get("/userinfo", headers=headers).status_code == 401


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        pytest.param(
            {"code_verifier": secrets.token_urlsafe(48)},
            "invalid_grant",
            id="pkce_mismatch",
        ),
        pytest.param({"code_verifier": None}, "invalid_request", id="no_verifier"),
        pytest.param({"code_verifier": "short"}, "invalid_request", id="bad_verifier"),
        pytest.param(
            {"redirect_uri": "http://127.0.0.1:9/elsewhere"},
            "invalid_grant",
            id="redirect_mismatch",
        ),
        pytest.param({"redirect_uri": None}, "invalid_grant", id="no_redirect_uri"),
        pytest.param(
            {"grant_type": "password"}, "unsupported_grant_type", id="grant_type"
        ),
        pytest.param({"code": "made-up"}, "invalid_grant", id="unknown_code"),
        pytest.param({"code": None}, "invalid_request", id="no_code"),
    ],
)
def test_token_request_rejected(
    client: httpx.Client,
    hostile_provider: HostileProvider,
    overrides: dict[str, str | None],
    error: str,
) -> None:
    response, login = authorize(client, hostile_provider)
    code = redirect_params(response)["code"]
    token_response = exchange(
        client, hostile_provider, code, login, overrides=overrides
    )
    assert token_response.status_code == 400
    assert token_response.json()["error"] == error


def test_verifier_without_challenge_rejected(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.require_pkce = False
    response, login = authorize(
        client, hostile_provider, code_challenge=None, code_challenge_method=None
    )
    code = redirect_params(response)["code"]
    token_response = exchange(client, hostile_provider, code, login)
    assert token_response.status_code == 400
    assert token_response.json()["error"] == "invalid_grant"


def test_token_get_rejected(client: httpx.Client) -> None:
    assert client.get("/token").status_code == 405


# Claim defects: everything but the named claims matches a correct token.


@pytest.mark.parametrize(
    ("mode", "changed"),
    [
        pytest.param("wrong_iss", {"iss"}, id="wrong_iss"),
        pytest.param("no_sub", {"sub"}, id="no_sub"),
        pytest.param("no_aud", {"aud"}, id="no_aud"),
        pytest.param("aud_without_client", {"aud"}, id="aud_without_client"),
        pytest.param("no_iat", set(), id="no_iat"),
        pytest.param("wrong_nonce", {"nonce"}, id="wrong_nonce"),
        pytest.param("expired", set(), id="expired"),
        pytest.param("future_iat", set(), id="future_iat"),
        pytest.param("iat_one_second_future", set(), id="iat_one_second_future"),
        pytest.param(
            "multiple_aud_without_azp", {"aud"}, id="multiple_aud_without_azp"
        ),
        pytest.param(
            "multiple_aud_with_wrong_azp",
            {"aud", "azp"},
            id="multiple_aud_with_wrong_azp",
        ),
        pytest.param("multiple_aud_with_azp", {"aud", "azp"}, id="multiple_aud_azp"),
    ],
)
def test_claim_mode_changes_only(
    client: httpx.Client,
    hostile_provider: HostileProvider,
    mode: str,
    changed: set[str],
) -> None:
    hostile_provider.mode = mode
    token, login = get_id_token(client, hostile_provider)
    claims = verify_signature_only(token, client)
    expected = {
        "iss": hostile_provider.issuer,
        "aud": hostile_provider.client_id,
        "nonce": login.nonce,
        **hostile_provider.user_claims,
    }
    names = (set(expected) | set(claims)) - {"exp", "iat", "sid"}
    differing = {
        name
        for name in names
        if expected.get(name, MISSING) != claims.get(name, MISSING)
    }
    assert differing == changed


@pytest.mark.parametrize(
    ("mode", "claim", "expected"),
    [
        pytest.param("wrong_iss", "iss", "wrong_issuer", id="wrong_iss"),
        pytest.param("aud_without_client", "aud", "other", id="aud_without_client"),
        pytest.param(
            "multiple_aud_without_azp", "aud", "both", id="multiple_aud_without_azp"
        ),
        pytest.param("multiple_aud_with_wrong_azp", "azp", "other", id="wrong_azp"),
        pytest.param("multiple_aud_with_azp", "azp", "client", id="right_azp"),
    ],
)
def test_claim_mode_values(
    client: httpx.Client,
    hostile_provider: HostileProvider,
    mode: str,
    claim: str,
    expected: str,
) -> None:
    values = {
        "wrong_issuer": hostile_provider.wrong_issuer,
        "other": OTHER_CLIENT_ID,
        "client": hostile_provider.client_id,
        "both": [hostile_provider.client_id, OTHER_CLIENT_ID],
    }
    hostile_provider.mode = mode
    token, _ = get_id_token(client, hostile_provider)
    assert verify_signature_only(token, client)[claim] == values[expected]


@pytest.mark.parametrize(
    ("mode", "claim"),
    [
        pytest.param("no_sub", "sub", id="no_sub"),
        pytest.param("no_aud", "aud", id="no_aud"),
        pytest.param("no_iat", "iat", id="no_iat"),
        pytest.param("multiple_aud_without_azp", "azp", id="no_azp"),
    ],
)
def test_claim_mode_missing_claim(
    client: httpx.Client, hostile_provider: HostileProvider, mode: str, claim: str
) -> None:
    hostile_provider.mode = mode
    token, _ = get_id_token(client, hostile_provider)
    assert claim not in verify_signature_only(token, client)


@pytest.mark.parametrize(
    ("mode", "claim", "offset"),
    [
        pytest.param("expired", "exp", -120, id="expired_exp"),
        pytest.param("expired", "iat", -420, id="expired_iat"),
        pytest.param("future_iat", "iat", 120, id="future_iat"),
        pytest.param("future_iat", "exp", 300, id="future_iat_exp"),
        pytest.param("iat_one_second_future", "iat", 1, id="iat_one_second"),
        pytest.param("no_iat", "exp", 300, id="no_iat_exp"),
    ],
)
def test_claim_mode_times(
    client: httpx.Client,
    hostile_provider: HostileProvider,
    mode: str,
    claim: str,
    offset: int,
) -> None:
    hostile_provider.mode = mode
    before = int(time.time())
    token, _ = get_id_token(client, hostile_provider)
    after = int(time.time())
    value = verify_signature_only(token, client)[claim]
    assert before + offset <= value <= after + offset


def test_wrong_nonce_differs(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "wrong_nonce"
    token, login = get_id_token(client, hostile_provider)
    nonce = verify_signature_only(token, client)["nonce"]
    assert nonce
    assert nonce != login.nonce


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        pytest.param("wrong_iss", jwt.InvalidIssuerError, id="wrong_iss"),
        pytest.param("no_sub", jwt.MissingRequiredClaimError, id="no_sub"),
        pytest.param("no_aud", jwt.MissingRequiredClaimError, id="no_aud"),
        pytest.param(
            "aud_without_client", jwt.InvalidAudienceError, id="aud_without_client"
        ),
        pytest.param("no_iat", jwt.MissingRequiredClaimError, id="no_iat"),
        pytest.param("expired", jwt.ExpiredSignatureError, id="expired"),
        pytest.param("future_iat", jwt.ImmatureSignatureError, id="future_iat"),
        pytest.param("bad_signature", jwt.InvalidSignatureError, id="bad_signature"),
    ],
)
def test_mode_fails_pyjwt_verification(
    client: httpx.Client,
    hostile_provider: HostileProvider,
    mode: str,
    error: type[Exception],
) -> None:
    hostile_provider.mode = mode
    token, _ = get_id_token(client, hostile_provider)
    with pytest.raises(error):
        verify(token, client, hostile_provider)


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("iat_one_second_future", id="iat_one_second_future"),
        pytest.param("no_kid_single_key", id="no_kid_single_key"),
        pytest.param("unknown_key_type_in_jwks", id="unknown_key_type_in_jwks"),
        pytest.param("rotate_key", id="rotate_key"),
        pytest.param("multiple_aud_with_azp", id="multiple_aud_with_azp"),
    ],
)
def test_accept_mode_verifies(
    client: httpx.Client, hostile_provider: HostileProvider, mode: str
) -> None:
    hostile_provider.mode = mode
    token, login = get_id_token(client, hostile_provider)
    claims = verify(token, client, hostile_provider)
    assert claims["nonce"] == login.nonce


# Signature and header defects


def test_bad_signature_flips_one_byte(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "bad_signature"
    token, _ = get_id_token(client, hostile_provider)
    header, _, signature = token_parts(token)
    signing_input = token.rpartition(".")[0].encode("ascii")
    # RSASSA-PKCS1-v1_5 is deterministic, so the correct signature can be recomputed.
    correct = hostile_provider.signing_key.private_key.sign(
        signing_input, padding.PKCS1v15(), hashes.SHA256()
    )
    assert len(signature) == len(correct)
    differing = [
        i for i, (a, b) in enumerate(zip(signature, correct, strict=True)) if a != b
    ]
    assert len(differing) == 1
    assert header["kid"] == hostile_provider.signing_key.kid


def test_hs256_uses_public_pem(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "hs256_with_public_key"
    token, _ = get_id_token(client, hostile_provider)
    header, claims, signature = token_parts(token)
    signing_input = token.rpartition(".")[0].encode("ascii")
    expected = hmac.new(
        hostile_provider.signing_key.public_pem(), signing_input, hashlib.sha256
    ).digest()
    assert header["alg"] == "HS256"
    assert header["kid"] == hostile_provider.signing_key.kid
    assert hmac.compare_digest(signature, expected)
    assert claims["iss"] == hostile_provider.issuer


def test_hs256_rejected_by_rs256_allowlist(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "hs256_with_public_key"
    token, _ = get_id_token(client, hostile_provider)
    with pytest.raises(jwt.InvalidAlgorithmError):
        verify(token, client, hostile_provider)


def test_alg_none_unsigned(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "alg_none"
    token, login = get_id_token(client, hostile_provider)
    header, claims, signature = token_parts(token)
    assert header == {"alg": "none"}
    assert signature == b""
    assert token.endswith(".")
    assert claims["nonce"] == login.nonce


def test_no_kid_single_key(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "no_kid_single_key"
    token, _ = get_id_token(client, hostile_provider)
    keys = client.get("/jwks").json()["keys"]
    assert "kid" not in jwt.get_unverified_header(token)
    assert len(keys) == 1
    assert verify_signature_only(token, client)["sub"] == "alice"


def test_random_kid_not_in_jwks(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "random_kid"
    first, _ = get_id_token(client, hostile_provider)
    second, _ = get_id_token(client, hostile_provider)
    served = {key["kid"] for key in client.get("/jwks").json()["keys"]}
    first_kid = jwt.get_unverified_header(first)["kid"]
    second_kid = jwt.get_unverified_header(second)["kid"]
    assert first_kid not in served
    assert second_kid not in served
    assert first_kid != second_kid
    # Only the kid is wrong: the signature is the real key's.
    assert verify_signature_only(first, client, hostile_provider.signing_key.kid)


def test_rotate_key_serves_new_jwks(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    old_token, _ = get_id_token(client, hostile_provider)
    hostile_provider.mode = "rotate_key"
    new_token, _ = get_id_token(client, hostile_provider)
    served = [key["kid"] for key in client.get("/jwks").json()["keys"]]
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert new_kid != hostile_provider.initial_key.kid
    assert served == [new_kid]
    assert verify(new_token, client, hostile_provider)["sub"] == "alice"
    with pytest.raises(KeyError):
        verify(old_token, client, hostile_provider)


def test_unknown_key_type_beside_real(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "unknown_key_type_in_jwks"
    keys = client.get("/jwks").json()["keys"]
    key_types = sorted(key["kty"] for key in keys)
    assert key_types == ["RSA", "XYZ"]
    assert len(jwt.PyJWKSet.from_dict({"keys": keys}).keys) == 1


def test_jwks_unreachable(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "jwks_unreachable"
    response = client.get("/jwks")
    assert response.status_code == 500
    assert hostile_provider.jwks_fetches == 1


# Defects outside the ID token


def test_userinfo_sub_mismatch(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "userinfo_sub_mismatch"
    body, _ = log_in(client, hostile_provider)
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    userinfo = client.get("/userinfo", headers=headers).json()
    assert userinfo["sub"] == OTHER_SUBJECT
    assert verify(body["id_token"], client, hostile_provider)["sub"] == "alice"


def test_discovery_issuer_mismatch(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "discovery_issuer_mismatch"
    document = client.get("/.well-known/openid-configuration").json()
    token, _ = get_id_token(client, hostile_provider)
    assert document["issuer"] == hostile_provider.wrong_issuer
    assert document["issuer"] != hostile_provider.issuer
    assert verify(token, client, hostile_provider)["iss"] == hostile_provider.issuer


@pytest.mark.parametrize(
    ("mode", "expected_iss"),
    [
        pytest.param("iss_param_missing", None, id="iss_param_missing"),
        pytest.param("iss_param_wrong", "wrong", id="iss_param_wrong"),
    ],
)
def test_iss_param_modes(
    client: httpx.Client,
    hostile_provider: HostileProvider,
    mode: str,
    expected_iss: str | None,
) -> None:
    hostile_provider.mode = mode
    document = client.get("/.well-known/openid-configuration").json()
    response, _ = authorize(client, hostile_provider)
    iss = redirect_params(response).get("iss")
    expected = hostile_provider.wrong_issuer if expected_iss else None
    assert document["authorization_response_iss_parameter_supported"] is True
    assert iss == expected


def test_token_error_500(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "token_error_500"
    response, login = authorize(client, hostile_provider)
    code = redirect_params(response)["code"]
    assert exchange(client, hostile_provider, code, login).status_code == 500


def test_token_garbage_not_json(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "token_garbage"
    response, login = authorize(client, hostile_provider)
    code = redirect_params(response)["code"]
    token_response = exchange(client, hostile_provider, code, login)
    assert token_response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        token_response.json()


def test_token_slow_waits_delay(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "token_slow"
    hostile_provider.token_delay = 0.3
    response, login = authorize(client, hostile_provider)
    code = redirect_params(response)["code"]
    started = time.monotonic()
    token_response = exchange(client, hostile_provider, code, login)
    elapsed = time.monotonic() - started
    assert token_response.status_code == 200
    assert elapsed >= 0.3


def test_token_slow_times_out_client(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    hostile_provider.mode = "token_slow"
    hostile_provider.token_delay = 1.0
    response, login = authorize(client, hostile_provider)
    code = redirect_params(response)["code"]
    client.timeout = httpx.Timeout(0.2)
    with pytest.raises(httpx.ReadTimeout):
        exchange(client, hostile_provider, code, login)


# Control surface


def test_every_mode_accepted(hostile_provider: HostileProvider) -> None:
    for mode in MODES:
        hostile_provider.mode = mode
        assert hostile_provider.mode == mode


def test_unknown_mode_rejected(hostile_provider: HostileProvider) -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        hostile_provider.mode = "bogus"


def test_misbehave_returns_provider(hostile_provider: HostileProvider) -> None:
    assert hostile_provider.misbehave("wrong_iss") is hostile_provider
    assert hostile_provider.mode == "wrong_iss"


def test_reset_restores_defaults(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    log_in(client, hostile_provider)
    client.get("/jwks")
    hostile_provider.mode = "rotate_key"
    hostile_provider.token_endpoint_auth_methods = ["client_secret_post"]
    hostile_provider.user_claims["sub"] = "bob"
    hostile_provider.reset()
    assert hostile_provider.mode is None
    assert hostile_provider.requests == []
    assert hostile_provider.jwks_fetches == 0
    assert hostile_provider.signing_key == hostile_provider.initial_key
    assert hostile_provider.user_claims["sub"] == "alice"
    assert hostile_provider.token_endpoint_auth_methods == [
        "client_secret_basic",
        "client_secret_post",
    ]


def test_end_session_redirects_back(
    client: httpx.Client, hostile_provider: HostileProvider
) -> None:
    target = "http://127.0.0.1:9/signed-out"
    response = client.get(
        "/end_session",
        params={"post_logout_redirect_uri": target, "state": "xyz"},
    )
    [recorded] = hostile_provider.end_session_requests
    assert response.status_code == 302
    assert response.headers["Location"] == target + "?state=xyz"
    assert recorded.params["post_logout_redirect_uri"] == target


def test_end_session_without_redirect(client: httpx.Client) -> None:
    assert client.get("/end_session").status_code == 200


def test_start_is_fast_and_stop_closes() -> None:
    started = time.monotonic()
    provider = HostileProvider().start()
    startup = time.monotonic() - started
    try:
        port = provider.port
        with client_for(provider) as http_client:
            status = http_client.get("/.well-known/openid-configuration").status_code
    finally:
        stopping = time.monotonic()
        provider.stop()
        shutdown = time.monotonic() - stopping
    assert status == 200
    assert startup < 1.0
    assert shutdown < 1.0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_stop_during_slow_token() -> None:
    with HostileProvider(token_delay=30) as provider, client_for(provider) as http:
        provider.mode = "token_slow"
        response, _ = authorize(http, provider)
        code = redirect_params(response)["code"]
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            http.post("/token", data={"code": code}, timeout=0.2)
        provider.stop()
        elapsed = time.monotonic() - started
    assert elapsed < 2.0
