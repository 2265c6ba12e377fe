"""Settings, read from keyword arguments or ``SSO_*`` environment variables."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import SplitResult, urlsplit

from ._errors import ConfigurationError

ENV_PREFIX = "SSO_"
MIN_SECRET_KEY_LENGTH = 32
# Browsers cap cookie lifetimes at about 400 days (RFC 6265bis 5.5), so a longer
# session could not last anyway.
MAX_LIFETIME = 365 * 24 * 3600

# Asymmetric algorithms that an ID token may use. HMAC algorithms are left out
# because they turn the client secret into a signing key: they must be named in
# ``id_token_algorithms`` to be accepted.
ASYMMETRIC_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
    }
)
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})

_COOKIE_NAME = re.compile(r"[A-Za-z0-9!#$&'*+\-.^_`|~]+")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.\-]+")

_LIST_FIELDS = {
    "public_paths": ",",
    "allowed_email_domains": ",",
    "allowed_groups": ",",
    "allowed_roles": ",",
    "trusted_proxies": ",",
    "id_token_algorithms": ",",
    "scopes": " ",
}
_SECRET_FIELDS = frozenset({"client_secret", "secret_key"})


@dataclass(frozen=True)
class Settings:
    """The configuration of one sso-middleware instance.

    Every field has an environment variable: the field name in upper case with the
    ``SSO_`` prefix, read by :meth:`from_env`. List fields accept a sequence or a
    comma-separated string (``scopes`` is space-separated, as in OAuth). Invalid
    values raise one :class:`ConfigurationError` that names every bad variable.

    :param issuer: the OpenID issuer URL. Discovery is read from
        ``{issuer}/.well-known/openid-configuration``, and its ``issuer`` must equal
        this value exactly.
    :param client_id: the client registered at the provider.
    :param client_secret: that client's secret.
    :param secret_key: the key that signs cookies, at least 32 characters. A
        comma-separated list rotates keys: the first signs, all verify.
    :param redirect_uri: the absolute callback URL registered at the provider. When
        empty it is derived from each request's host and ``redirect_path``.

        .. warning:: A derived redirect URI follows the request's ``Host`` header.
           Set it explicitly in production.
    :param redirect_path: the callback path, used when ``redirect_uri`` is empty.
    :param scopes: the scopes requested. ``openid`` must be one of them.
    :param public_paths: glob patterns (``*`` matches anything, ``/`` included) of
        normalized paths served without login.
    :param cookie_name: the session cookie's name. The login state cookies use it
        as a prefix.
    :param cookie_secure: ``auto`` (``Secure`` when the request is https), ``true``
        or ``false``.

        .. warning:: ``false`` sends the session over plain http.
    :param session_lifetime: seconds a session lasts.
    :param allowed_email_domains: when set, only users whose ``email`` is in one of
        these domains (exact match) are admitted, others get 403.
    :param allowed_groups: when set, only members of one of these groups.
    :param allowed_roles: when set, only holders of one of these roles.
    :param session_store: ``cookie``, or a ``redis://`` or ``rediss://`` URL that
        keeps sessions server-side so they can be revoked on every instance.
    :param auth_params: extra authorization request parameters, such as Scalekit's
        ``organization_id`` or ``connection_id``.
    :param trusted_proxies: addresses or networks whose ``X-Forwarded-*`` headers
        are believed.

        .. warning:: A trusted address can claim any host and scheme.
    :param endpoint_prefix: the path under which the middleware's own endpoints
        are served.
    :param post_logout_redirect_uri: where the provider sends the browser after
        logout. Defaults to the site's root.
    :param id_token_algorithms: the signature algorithms accepted for ID tokens.
        Empty means the asymmetric algorithms that discovery lists.
    :param http_timeout: seconds to wait for the provider.
    """

    issuer: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    redirect_uri: str = ""
    redirect_path: str = "/_sso/callback"
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    public_paths: tuple[str, ...] = ()
    cookie_name: str = "sso_session"
    cookie_secure: str = "auto"
    session_lifetime: int = 28800
    allowed_email_domains: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()
    allowed_roles: tuple[str, ...] = ()
    session_store: str = "cookie"
    auth_params: Mapping[str, str] = field(default_factory=dict)
    trusted_proxies: tuple[str, ...] = ()
    endpoint_prefix: str = "/_sso"
    post_logout_redirect_uri: str = ""
    id_token_algorithms: tuple[str, ...] = ()
    http_timeout: float = 10.0

    def __post_init__(self) -> None:
        problems: dict[str, str] = {}
        for item in dataclasses.fields(self):
            # cookie_secure also takes a bool, turned into a string below.
            value = getattr(self, item.name)
            if (
                item.type == "str"
                and item.name != "cookie_secure"
                and not isinstance(value, str)
            ):
                problems[env_name(item.name)] = (
                    f"must be a string, not {type(value).__name__}"
                )
        if problems:
            raise ConfigurationError(problems)
        for name, value in _coerce(self, problems).items():
            object.__setattr__(self, name, value)
        _validate(self, problems)
        if problems:
            raise ConfigurationError(problems)

    def __repr__(self) -> str:
        parts = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name in _SECRET_FIELDS:
                text = "'***'" if value else "''"
            elif item.name == "session_store":
                text = repr(_mask_url_password(value))
            elif item.name == "auth_params":
                text = repr(dict(value))
            else:
                text = repr(value)
            parts.append(f"{item.name}={text}")
        return f"Settings({', '.join(parts)})"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Build settings from ``SSO_*`` variables, then apply ``overrides``.

        ``environ`` defaults to ``os.environ``. An empty variable counts as unset.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            raw = environ.get(env_name(item.name), "")
            if raw.strip():
                values[item.name] = raw.strip()
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)

    @property
    def secret_keys(self) -> tuple[str, ...]:
        """The signing keys, newest first."""
        return tuple(key.strip() for key in self.secret_key.split(",") if key.strip())

    @property
    def uses_redis(self) -> bool:
        return self.session_store != "cookie"


def env_name(field_name: str) -> str:
    """Return the environment variable of a setting: ``client_id`` is ``SSO_CLIENT_ID``."""
    return ENV_PREFIX + field_name.upper()


def _coerce(settings: Settings, problems: dict[str, str]) -> dict[str, Any]:
    """Turn strings from the environment or the command line into field types."""
    values: dict[str, Any] = {}
    for name, separator in _LIST_FIELDS.items():
        value = getattr(settings, name)
        if isinstance(value, str):
            parts = value.split(separator) if separator != " " else value.split()
            values[name] = tuple(part.strip() for part in parts if part.strip())
        elif isinstance(value, list | tuple | set | frozenset):
            values[name] = tuple(
                str(part).strip() for part in value if str(part).strip()
            )
        else:
            problems[env_name(name)] = "must be a list of strings"

    params = settings.auth_params
    if isinstance(params, str):
        values["auth_params"] = MappingProxyType(_parse_params(params, problems))
    elif isinstance(params, Mapping):
        values["auth_params"] = MappingProxyType(
            {str(k): str(v) for k, v in params.items()}
        )
    else:
        problems[env_name("auth_params")] = "must be key=value pairs, comma-separated"

    secure = settings.cookie_secure
    if isinstance(secure, bool):
        values["cookie_secure"] = "true" if secure else "false"
    elif isinstance(secure, str):
        values["cookie_secure"] = secure.strip().lower()

    for name, kind in (("session_lifetime", int), ("http_timeout", float)):
        value = getattr(settings, name)
        noun = "a whole number" if kind is int else "a number"
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            problems[env_name(name)] = f"must be {noun} of seconds, not {value!r}"
            continue
        try:
            values[name] = kind(value)
        except (TypeError, ValueError, OverflowError):
            problems[env_name(name)] = f"must be {noun} of seconds, not {value!r}"
    return values


def _parse_params(text: str, problems: dict[str, str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in text.split(","):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            problems[env_name("auth_params")] = (
                f"must be key=value pairs, comma-separated, such as "
                f"'organization_id=org_123,login_hint=a@example.com'; got {pair.strip()!r}"
            )
            continue
        params[key.strip()] = value.strip()
    return params


# Parameters that the middleware sets itself: an extra value for one of them would
# replace state, nonce or PKCE and undo their protection.
RESERVED_AUTH_PARAMS = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "response_mode",
        "request",
        "request_uri",
    }
)


def _validate(s: Settings, problems: dict[str, str]) -> None:
    def bad(name: str, message: str) -> None:
        problems.setdefault(env_name(name), message)

    issuer = _split(s.issuer) if isinstance(s.issuer, str) else None
    if not s.issuer:
        bad(
            "issuer",
            "is missing: set the provider's issuer URL, such as "
            "https://login.example.com",
        )
    elif issuer is None or issuer.scheme not in ("http", "https") or not issuer.netloc:
        bad(
            "issuer",
            f"must be an http(s) URL such as https://login.example.com, "
            f"not {s.issuer!r}",
        )
    elif issuer.query or issuer.fragment:
        bad("issuer", f"must have no query or fragment, not {s.issuer!r}")

    if not s.client_id:
        bad("client_id", "is missing: set the client ID registered at the provider")
    if not s.client_secret:
        bad(
            "client_secret",
            "is missing: set the client secret registered at the provider",
        )

    keys = s.secret_keys
    if not keys:
        bad(
            "secret_key",
            f"is missing: set a random string of at least "
            f"{MIN_SECRET_KEY_LENGTH} characters, for example from "
            "'python -c \"import secrets; print(secrets.token_urlsafe(32))\"'",
        )
    elif any(len(key) < MIN_SECRET_KEY_LENGTH for key in keys):
        bad(
            "secret_key",
            f"must be at least {MIN_SECRET_KEY_LENGTH} characters "
            "(each key of a comma-separated list)",
        )

    if s.redirect_uri:
        parts = _split(s.redirect_uri)
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.fragment
        ):
            bad(
                "redirect_uri",
                f"must be an absolute http(s) URL without a fragment, "
                f"such as https://app.example.com/_sso/callback, not {s.redirect_uri!r}",
            )
    for name, example in (
        ("redirect_path", "/_sso/callback"),
        ("endpoint_prefix", "/_sso"),
    ):
        value = getattr(s, name)
        if (
            not isinstance(value, str)
            or not value.startswith("/")
            or value.startswith("//")
            or any(c in value for c in "?#\\ \t\r\n")
        ):
            bad(name, f"must be an absolute path such as {example}, not {value!r}")
    if isinstance(s.endpoint_prefix, str) and s.endpoint_prefix.endswith("/"):
        bad("endpoint_prefix", "must not end with '/', such as /_sso")
    callback_parts = _split(s.redirect_uri) if s.redirect_uri else None
    callback = callback_parts.path if callback_parts else s.redirect_path
    endpoints = ("login", "logout", "userinfo", "check", "health", "backchannel-logout")
    if callback in {f"{s.endpoint_prefix}/{name}" for name in endpoints}:
        bad(
            "redirect_path" if not s.redirect_uri else "redirect_uri",
            f"names the callback {callback!r}, which is another endpoint; use "
            f"{s.endpoint_prefix}/callback",
        )
    if s.post_logout_redirect_uri:
        parts = _split(s.post_logout_redirect_uri)
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            bad(
                "post_logout_redirect_uri",
                f"must be an absolute http(s) URL, not {s.post_logout_redirect_uri!r}",
            )

    if "openid" not in s.scopes:
        bad(
            "scopes",
            f"must include 'openid', such as 'openid email profile'; got "
            f"{' '.join(s.scopes)!r}",
        )
    if isinstance(s.cookie_name, str) and not _COOKIE_NAME.fullmatch(s.cookie_name):
        bad(
            "cookie_name",
            f"must be a cookie name of letters, digits and -_., not {s.cookie_name!r}",
        )
    if (
        isinstance(s.cookie_name, str)
        and s.cookie_name.startswith(("__Host-", "__Secure-"))
        and s.cookie_secure == "false"
    ):
        # RFC 6265bis 4.1.3: browsers drop such cookies unless they are Secure.
        bad(
            "cookie_secure",
            f"must be auto or true with the cookie name "
            f"{s.cookie_name!r}, whose prefix requires the Secure attribute",
        )
    if s.cookie_secure not in ("auto", "true", "false"):
        bad("cookie_secure", f"must be auto, true or false, not {s.cookie_secure!r}")
    if (
        isinstance(s.session_lifetime, int)
        and not 0 < s.session_lifetime <= MAX_LIFETIME
    ):
        bad(
            "session_lifetime",
            f"must be a whole number of seconds from 1 to {MAX_LIFETIME} (one year), "
            "such as 28800",
        )
    if isinstance(s.http_timeout, float) and not 0 < s.http_timeout <= 300:
        bad("http_timeout", "must be between 0 and 300 seconds, such as 10")

    if s.session_store != "cookie":
        store = _split(s.session_store)
        try:
            # urlsplit parses the port lazily, and redis would raise on it later.
            valid_port = store is not None and (store.port or 0) >= 0
        except ValueError:
            valid_port = False
        if (
            store is None
            or store.scheme not in ("redis", "rediss", "unix")
            or not (valid_port)
        ):
            bad(
                "session_store",
                "must be 'cookie' or a redis:// URL such as "
                f"redis://localhost:6379/0, not {_mask_url_password(s.session_store)!r}",
            )

    for key in s.auth_params:
        if key in RESERVED_AUTH_PARAMS or not _PARAM_NAME.fullmatch(key):
            bad(
                "auth_params",
                f"cannot set {key!r}: the middleware sets it itself, or it "
                "is not a parameter name",
            )
    for domain in s.allowed_email_domains:
        if "@" in domain or not domain.strip("."):
            bad(
                "allowed_email_domains",
                f"must be domains such as example.com, not {domain!r}",
            )

    for proxy in s.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            bad(
                "trusted_proxies",
                f"must be IP addresses or networks such as "
                f"127.0.0.1,10.0.0.0/8, not {proxy!r}",
            )

    allowed = ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS
    for algorithm in s.id_token_algorithms:
        if algorithm not in allowed:
            bad(
                "id_token_algorithms",
                f"must name signature algorithms from "
                f"{', '.join(sorted(allowed))}; {algorithm!r} is not one",
            )


def _split(url: str) -> SplitResult | None:
    """Split a URL, or return None when urllib cannot parse it."""
    try:
        return urlsplit(url)
    except ValueError:
        return None


def _mask_url_password(url: str) -> str:
    parts = _split(url)
    if parts is None:
        return "(unparsable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
