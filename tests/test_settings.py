from __future__ import annotations

import pytest

from sso_middleware import Settings
from sso_middleware._errors import ConfigurationError

VALID = {
    "issuer": "https://login.example.com",
    "client_id": "client",
    "client_secret": "client-secret-value",
    "secret_key": "k" * 40,
}


def env(**changes: str) -> dict[str, str]:
    values = {f"SSO_{name.upper()}": value for name, value in VALID.items()}
    values.update(changes)
    return values


def test_from_env_reads_every_variable() -> None:
    settings = Settings.from_env(
        env(
            SSO_REDIRECT_URI="https://app.example.com/cb",
            SSO_SCOPES="openid email",
            SSO_PUBLIC_PATHS="/static/*, /healthz",
            SSO_COOKIE_NAME="__Host-sso",
            SSO_COOKIE_SECURE="true",
            SSO_SESSION_LIFETIME="3600",
            SSO_ALLOWED_EMAIL_DOMAINS="example.com,example.org",
            SSO_ALLOWED_GROUPS="staff",
            SSO_ALLOWED_ROLES="admin",
            SSO_SESSION_STORE="redis://127.0.0.1:6379/0",
            SSO_AUTH_PARAMS="organization_id=org_1,login_hint=a@example.com",
            SSO_TRUSTED_PROXIES="127.0.0.1,10.0.0.0/8",
        )
    )
    assert settings.redirect_uri == "https://app.example.com/cb"
    assert settings.scopes == ("openid", "email")
    assert settings.public_paths == ("/static/*", "/healthz")
    assert settings.cookie_name == "__Host-sso"
    assert settings.cookie_secure == "true"
    assert settings.session_lifetime == 3600
    assert settings.allowed_email_domains == ("example.com", "example.org")
    assert settings.allowed_groups == ("staff",)
    assert settings.allowed_roles == ("admin",)
    assert settings.uses_redis
    assert dict(settings.auth_params) == {
        "organization_id": "org_1",
        "login_hint": "a@example.com",
    }
    assert settings.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")


def test_defaults_match_the_documentation() -> None:
    settings = Settings(**VALID)
    assert settings.redirect_path == "/_sso/callback"
    assert settings.scopes == ("openid", "email", "profile")
    assert settings.cookie_name == "sso_session"
    assert settings.cookie_secure == "auto"
    assert settings.session_lifetime == 28800
    assert settings.session_store == "cookie"
    assert settings.endpoint_prefix == "/_sso"


def test_overrides_win_over_environment() -> None:
    settings = Settings.from_env(env(SSO_CLIENT_ID="from-env"), client_id="override")
    assert settings.client_id == "override"


def test_empty_variable_counts_as_unset() -> None:
    settings = Settings.from_env(env(SSO_REDIRECT_PATH="  "))
    assert settings.redirect_path == "/_sso/callback"


def test_one_error_names_every_bad_variable() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(
            {
                "SSO_ISSUER": "ftp://login.example.com",
                "SSO_SECRET_KEY": "short",
                "SSO_REDIRECT_PATH": "callback",
            }
        )
    problems = caught.value.problems
    assert set(problems) == {
        "SSO_ISSUER",
        "SSO_CLIENT_ID",
        "SSO_CLIENT_SECRET",
        "SSO_SECRET_KEY",
        "SSO_REDIRECT_PATH",
    }
    message = str(caught.value)
    assert "SSO_ISSUER" in message
    assert "https://login.example.com" in message
    assert "at least 32 characters" in message


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        pytest.param({"issuer": ""}, "SSO_ISSUER", id="missing-issuer"),
        pytest.param({"issuer": "login.example.com"}, "SSO_ISSUER", id="no-scheme"),
        pytest.param({"issuer": "https://x.example/?a=1"}, "SSO_ISSUER", id="query"),
        pytest.param({"secret_key": "s" * 31}, "SSO_SECRET_KEY", id="short-key"),
        pytest.param(
            {"secret_key": "s" * 40 + ",short"},
            "SSO_SECRET_KEY",
            id="short-rotated-key",
        ),
        pytest.param({"redirect_path": "cb"}, "SSO_REDIRECT_PATH", id="relative-path"),
        pytest.param(
            {"redirect_path": "//evil/cb"}, "SSO_REDIRECT_PATH", id="network-path"
        ),
        pytest.param({"redirect_uri": "/cb"}, "SSO_REDIRECT_URI", id="relative-uri"),
        pytest.param({"scopes": "email profile"}, "SSO_SCOPES", id="no-openid"),
        pytest.param({"cookie_name": "bad name"}, "SSO_COOKIE_NAME", id="cookie-space"),
        pytest.param({"cookie_secure": "maybe"}, "SSO_COOKIE_SECURE", id="secure-word"),
        pytest.param(
            {"cookie_name": "__Host-s", "cookie_secure": "false"},
            "SSO_COOKIE_SECURE",
            id="host-prefix-insecure",
        ),
        pytest.param(
            {"session_lifetime": "0"}, "SSO_SESSION_LIFETIME", id="zero-lifetime"
        ),
        pytest.param(
            {"session_lifetime": "soon"}, "SSO_SESSION_LIFETIME", id="word-lifetime"
        ),
        pytest.param(
            {"session_store": "memcached://x"}, "SSO_SESSION_STORE", id="store-scheme"
        ),
        pytest.param(
            {"auth_params": "state=x"}, "SSO_AUTH_PARAMS", id="reserved-param"
        ),
        pytest.param(
            {"auth_params": "novalue"}, "SSO_AUTH_PARAMS", id="param-no-equals"
        ),
        pytest.param(
            {"trusted_proxies": "proxy.local"},
            "SSO_TRUSTED_PROXIES",
            id="proxy-hostname",
        ),
        pytest.param(
            {"allowed_email_domains": "@example.com"},
            "SSO_ALLOWED_EMAIL_DOMAINS",
            id="domain-with-at",
        ),
        pytest.param(
            {"id_token_algorithms": "none"}, "SSO_ID_TOKEN_ALGORITHMS", id="alg-none"
        ),
    ],
)
def test_invalid_value_names_variable(changes: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(**{**VALID, **changes})
    assert variable in caught.value.problems


def test_repr_hides_secrets() -> None:
    settings = Settings(**{**VALID, "session_store": "redis://:hunter22@127.0.0.1/0"})
    text = repr(settings)
    assert VALID["client_secret"] not in text
    assert VALID["secret_key"] not in text
    assert "hunter22" not in text
    assert "client_id='client'" in text


def test_secret_keys_rotate_first_signs() -> None:
    settings = Settings(**{**VALID, "secret_key": "a" * 32 + ", " + "b" * 32})
    assert settings.secret_keys == ("a" * 32, "b" * 32)


def test_settings_are_immutable() -> None:
    settings = Settings(**VALID)
    with pytest.raises(AttributeError):
        settings.client_id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.auth_params["x"] = "y"  # type: ignore[index]


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        pytest.param(
            {"session_lifetime": "1.5"}, "SSO_SESSION_LIFETIME", id="fraction"
        ),
        pytest.param({"session_lifetime": 10**13}, "SSO_SESSION_LIFETIME", id="huge"),
        pytest.param(
            {"session_lifetime": "9" * 30}, "SSO_SESSION_LIFETIME", id="overflow"
        ),
        pytest.param(
            {"redirect_path": "/_sso/login"},
            "SSO_REDIRECT_PATH",
            id="callback-is-login",
        ),
        pytest.param(
            {"redirect_uri": "https://a.example/_sso/logout"},
            "SSO_REDIRECT_URI",
            id="callback-is-logout",
        ),
        pytest.param({"secret_key": b"k" * 40}, "SSO_SECRET_KEY", id="bytes-key"),
        pytest.param(
            {"endpoint_prefix": "sso"}, "SSO_ENDPOINT_PREFIX", id="relative-prefix"
        ),
    ],
)
def test_more_invalid_values(changes: dict[str, object], variable: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(**{**VALID, **changes})
    assert variable in caught.value.problems


def test_prefix_error_shows_prefix_example() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(**{**VALID, "endpoint_prefix": "sso"})
    assert "such as /_sso," in caught.value.problems["SSO_ENDPOINT_PREFIX"]


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        pytest.param(
            {"session_store": "redis://[zz"}, "SSO_SESSION_STORE", id="store-bracket"
        ),
        pytest.param(
            {"session_store": "redis://127.0.0.1:notaport"},
            "SSO_SESSION_STORE",
            id="store-port",
        ),
        pytest.param({"issuer": "https://[zz"}, "SSO_ISSUER", id="issuer-bracket"),
        pytest.param(
            {"redirect_uri": "http://[zz/cb"}, "SSO_REDIRECT_URI", id="redirect-bracket"
        ),
    ],
)
def test_unparsable_urls_rejected(changes: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(**{**VALID, **changes})
    assert variable in caught.value.problems
