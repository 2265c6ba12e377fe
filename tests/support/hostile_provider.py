"""An OpenID provider for tests that can be set to misbehave in one way at a time.

``HostileProvider`` serves discovery, JWKS, authorization, token, userinfo and
end-session endpoints over real HTTP on 127.0.0.1, from werkzeug's threaded server in a
background thread. By default every response is correct. Setting ``provider.mode`` (or
calling ``provider.misbehave(mode)``) makes it produce exactly one defect, named in
``MODES``, and leaves everything else correct:

ID token claims
    ``wrong_iss``, ``no_sub``, ``no_aud``, ``aud_without_client`` (aud is another
    client only), ``no_iat``, ``wrong_nonce``, ``expired`` (exp 120 s in the past,
    iat 420 s in the past), ``future_iat`` (iat 120 s ahead), ``iat_one_second_future``
    (a clock skew a client must accept), ``multiple_aud_without_azp``,
    ``multiple_aud_with_wrong_azp``, ``multiple_aud_with_azp`` (a correct token).
ID token signature and header
    ``bad_signature`` (one flipped signature byte), ``hs256_with_public_key`` (HS256
    with the provider's public key PEM as the HMAC secret), ``alg_none`` (header
    ``{"alg":"none"}`` and an empty signature), ``no_kid_single_key`` (no ``kid``
    header and a one-key JWKS, a case a client must accept), ``random_kid`` (a fresh
    ``kid`` that the JWKS never contains).
Signing keys
    ``rotate_key`` (switching to the mode generates a new key with a new ``kid``, which
    signs and is served from then on), ``unknown_key_type_in_jwks`` (an extra JWKS entry
    with ``kty`` ``XYZ`` beside the real key, a case a client must accept),
    ``jwks_unreachable`` (``/jwks`` answers 500).
Other endpoints
    ``userinfo_sub_mismatch``, ``discovery_issuer_mismatch``, ``iss_param_missing``
    and ``iss_param_wrong`` (both advertise
    ``authorization_response_iss_parameter_supported``), ``token_error_500``,
    ``token_garbage`` (200 with a body that is not JSON), ``token_slow`` (``/token``
    waits ``token_delay`` seconds, then answers correctly).

Tests use the ``hostile_provider`` fixture, which shares one server per test session
and resets it around each test. The top-level conftest or a test module registers the
fixtures with::

    pytest_plugins = ["tests.support.hostile_provider"]

A test that needs its own configuration builds one with
``with HostileProvider(token_endpoint_auth_methods=["client_secret_post"]) as p:``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import unquote_plus, urlencode, urlsplit, urlunsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

logger = logging.getLogger("sso_middleware.tests.hostile_provider")

MODES: Final[tuple[str, ...]] = (
    "wrong_iss",
    "no_sub",
    "no_aud",
    "aud_without_client",
    "no_iat",
    "bad_signature",
    "hs256_with_public_key",
    "alg_none",
    "wrong_nonce",
    "expired",
    "future_iat",
    "iat_one_second_future",
    "no_kid_single_key",
    "rotate_key",
    "unknown_key_type_in_jwks",
    "random_kid",
    "userinfo_sub_mismatch",
    "discovery_issuer_mismatch",
    "iss_param_missing",
    "iss_param_wrong",
    "multiple_aud_without_azp",
    "multiple_aud_with_wrong_azp",
    "multiple_aud_with_azp",
    "token_error_500",
    "token_garbage",
    "token_slow",
    "jwks_unreachable",
)

DEFAULT_CLIENT_ID: Final = "sso-middleware-tests"
DEFAULT_CLIENT_SECRET: Final = "hostile-provider-client-secret"
DEFAULT_AUTH_METHODS: Final[tuple[str, ...]] = (
    "client_secret_basic",
    "client_secret_post",
)
# The second audience in the aud modes and the azp of multiple_aud_with_wrong_azp.
OTHER_CLIENT_ID: Final = "another-client"
# The sub that userinfo returns in userinfo_sub_mismatch.
OTHER_SUBJECT: Final = "mallory"
UNKNOWN_KEY_TYPE_JWK: Final[Mapping[str, str]] = {
    "kty": "XYZ",
    "kid": "unknown-key-type",
    "use": "sig",
}
DEFAULT_USER_CLAIMS: Final[Mapping[str, Any]] = {
    "sub": "alice",
    "email": "alice@example.com",
    "email_verified": True,
    "name": "Alice Liddell",
    "preferred_username": "alice",
    "groups": ["engineering", "staff"],
}

ID_TOKEN_LIFETIME: Final = 300
ACCESS_TOKEN_LIFETIME: Final = 3600
# RFC 6749 section 4.1.2 recommends at most 10 minutes for an authorization code.
CODE_LIFETIME: Final = 600
# How far the expired, future_iat and iat_one_second_future claims sit from now, in
# seconds. 120 s is beyond the 60 s leeway a client is expected to allow.
CLOCK_OFFSET: Final = 120
BACKCHANNEL_LOGOUT_EVENT: Final = "http://schemas.openid.net/event/backchannel-logout"

# RFC 7636 section 4.1: 43 to 128 characters from the unreserved set.
_CODE_VERIFIER_PATTERN: Final = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
# How often the server thread checks for shutdown, in seconds. A short interval keeps
# stop() fast.
_POLL_INTERVAL: Final = 0.05


def b64url(data: bytes) -> str:
    """Encode bytes as unpadded base64url (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pkce_challenge(verifier: str) -> str:
    """Return the S256 code challenge of a PKCE verifier (RFC 7636 section 4.2)."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass(frozen=True)
class SigningKey:
    """An RSA key pair with its JWKS key id."""

    kid: str
    private_key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(kid=f"key-{secrets.token_hex(8)}", private_key=private_key)

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def public_jwk(self) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self.public_key, as_dict=True)
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return jwk

    def public_pem(self) -> bytes:
        """Return the public key as a SubjectPublicKeyInfo PEM."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )


@dataclass(frozen=True)
class RecordedRequest:
    """One request the provider received.

    ``params`` maps each parameter to its first value (the query for GET, the form for
    POST), and ``query`` keeps the raw query string, so repeated parameters stay
    visible. ``client_auth`` is set on token requests only: ``"client_secret_basic"``,
    ``"client_secret_post"``, ``"multiple"`` when both were sent, or None when the
    request carried no client credentials.
    """

    endpoint: str
    method: str
    params: dict[str, str]
    query: str
    headers: dict[str, str]
    client_auth: str | None = None


@dataclass
class _Grant:
    """An issued authorization code and what the token request must match."""

    client_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    sid: str
    issued_at: float
    used: bool = False
    access_tokens: list[str] = field(default_factory=list)


class _QuietRequestHandler(WSGIRequestHandler):
    """A request handler that skips werkzeug's access log line per request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


class _TokenError(Exception):
    """An OAuth 2.0 error response from the token endpoint (RFC 6749 section 5.2)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


class _AuthorizationError(Exception):
    """An error that the authorization endpoint sends back to the redirect URI."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class HostileProvider:
    """An OpenID provider on 127.0.0.1 whose responses a test can make wrong.

    Attributes that ``reset()`` restores to the constructor's values:
    ``token_endpoint_auth_methods``, ``iss_parameter_supported``, ``token_delay``,
    ``require_pkce``, ``redirect_uris`` (None accepts any redirect URI) and
    ``user_claims`` (the claims of the signed-in user, ``sub`` included).
    """

    def __init__(
        self,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        token_endpoint_auth_methods: Iterable[str] = DEFAULT_AUTH_METHODS,
        iss_parameter_supported: bool = False,
        token_delay: float = 2.0,
        require_pkce: bool = True,
        redirect_uris: Iterable[str] | None = None,
        user_claims: Mapping[str, Any] | None = None,
        path_prefix: str = "",
    ) -> None:
        if path_prefix and (
            not path_prefix.startswith("/") or path_prefix.endswith("/")
        ):
            raise ValueError(
                f"invalid path_prefix {path_prefix!r}: it must start with '/' and not "
                "end with '/', such as '/realms/test'"
            )
        self.client_id = client_id
        self.client_secret = client_secret
        self.path_prefix = path_prefix
        self._defaults: dict[str, Any] = {
            "token_endpoint_auth_methods": list(token_endpoint_auth_methods),
            "iss_parameter_supported": iss_parameter_supported,
            "token_delay": token_delay,
            "require_pkce": require_pkce,
            "redirect_uris": None if redirect_uris is None else list(redirect_uris),
            "user_claims": dict(
                DEFAULT_USER_CLAIMS if user_claims is None else user_claims
            ),
        }
        self.token_endpoint_auth_methods: list[str] = []
        self.iss_parameter_supported = False
        self.token_delay = 0.0
        self.require_pkce = True
        self.redirect_uris: list[str] | None = None
        self.user_claims: dict[str, Any] = {}

        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._initial_key = SigningKey.generate()
        self._key = self._initial_key
        self._mode: str | None = None
        self._requests: list[RecordedRequest] = []
        self._userinfo_requests: list[RecordedRequest] = []
        self._end_session_requests: list[RecordedRequest] = []
        self._grants: dict[str, _Grant] = {}
        self._access_tokens: dict[str, dict[str, Any]] = {}
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self._routes: dict[str, Callable[[Request], Response]] = {
            "/.well-known/openid-configuration": self._discovery,
            "/jwks": self._jwks,
            "/authorize": self._authorize,
            "/token": self._token,
            "/userinfo": self._userinfo,
            "/end_session": self._end_session,
        }
        self.reset()

    # Life cycle

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve from a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the provider is already running")
        self._stopping.clear()
        server = make_server(
            "127.0.0.1", 0, self, threaded=True, request_handler=_QuietRequestHandler
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"hostile-provider-{server.server_port}",
            daemon=True,
        )
        self._thread.start()
        logger.debug("hostile provider started at %s", self.issuer)
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        # Wakes any token_slow request, so no worker keeps sleeping after the test.
        self._stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        self._server = None
        self._thread = None
        logger.debug("hostile provider stopped")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Restore correct behaviour and the constructor's settings.

        The first signing key signs again, and recorded requests, codes, tokens and
        fetch counters are cleared.
        """
        with self._lock:
            for name, value in self._defaults.items():
                setattr(self, name, _copy(value))
            self._mode = None
            self._key = self._initial_key
            self._requests.clear()
            self._userinfo_requests.clear()
            self._end_session_requests.clear()
            self._grants.clear()
            self._access_tokens.clear()
            self.jwks_fetches = 0
            self.discovery_fetches = 0

    # Addresses

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the provider is not running: call start() first")
        return self._server.server_port

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path_prefix}"

    @property
    def wrong_issuer(self) -> str:
        """The issuer used by wrong_iss, iss_param_wrong and discovery_issuer_mismatch.

        It extends the real issuer, so a prefix comparison does not catch it.
        """
        return f"{self.issuer}/other"

    def url(self, path: str) -> str:
        return f"{self.issuer}{path}"

    @property
    def discovery_url(self) -> str:
        return self.url("/.well-known/openid-configuration")

    # Misbehaviour

    @property
    def mode(self) -> str | None:
        """The one defect the provider produces, or None for correct behaviour."""
        return self._mode

    @mode.setter
    def mode(self, mode: str | None) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(
                f"unknown mode {mode!r}: use None or one of {', '.join(MODES)}"
            )
        if mode == "rotate_key":
            self.rotate_key()
        self._mode = mode
        logger.debug("hostile provider mode set to %s", mode)

    def misbehave(self, mode: str | None) -> Self:
        """Set ``mode`` and return the provider, for chaining."""
        self.mode = mode
        return self

    def rotate_key(self) -> SigningKey:
        """Replace the signing key with a new one under a new ``kid``.

        The JWKS serves only the new key from then on, so tokens signed earlier no
        longer verify against it.
        """
        key = SigningKey.generate()
        with self._lock:
            self._key = key
        return key

    @property
    def signing_key(self) -> SigningKey:
        return self._key

    @property
    def initial_key(self) -> SigningKey:
        """The key that signed before any rotation, which ``reset()`` restores."""
        return self._initial_key

    # Recorded traffic

    @property
    def requests(self) -> list[RecordedRequest]:
        """Authorization and token requests, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def authorization_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == "authorize"]

    @property
    def token_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == "token"]

    @property
    def userinfo_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._userinfo_requests)

    @property
    def end_session_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._end_session_requests)

    # Tokens

    def jwks(self) -> dict[str, Any]:
        """Return the JWKS document as the provider serves it in the current mode."""
        keys = [self._key.public_jwk()]
        if self._mode == "unknown_key_type_in_jwks":
            # The unusable entry comes first, so a client that stops at the first key
            # it cannot parse fails.
            keys.insert(0, dict(UNKNOWN_KEY_TYPE_JWK))
        return {"keys": keys}

    def sign_jwt(
        self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None
    ) -> str:
        """Sign ``claims`` with RS256 and the current key, with its ``kid`` header."""
        all_headers = {"kid": self._key.kid, **(headers or {})}
        return jwt.encode(
            dict(claims), self._key.private_key, algorithm="RS256", headers=all_headers
        )

    def make_id_token(
        self,
        nonce: str | None = None,
        *,
        sid: str | None = None,
        now: int | None = None,
    ) -> str:
        """Build an ID token for ``user_claims`` as the current mode makes it."""
        issued_at = int(time.time()) if now is None else now
        claims = self._id_token_claims(nonce, sid, issued_at)
        return self._encode_id_token(claims)

    def make_logout_token(
        self, *, sub: str | None = None, sid: str | None = None
    ) -> str:
        """Build a correct back-channel logout token (OpenID Connect Back-Channel
        Logout 1.0, section 2.4) naming ``sub``, ``sid`` or both."""
        if sub is None and sid is None:
            raise ValueError("a logout token needs a sub, a sid or both")
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 120,
            "jti": secrets.token_urlsafe(16),
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        }
        if sub is not None:
            claims["sub"] = sub
        if sid is not None:
            claims["sid"] = sid
        return self.sign_jwt(claims, headers={"typ": "logout+jwt"})

    def _id_token_claims(
        self, nonce: str | None, sid: str | None, now: int
    ) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "exp": now + ID_TOKEN_LIFETIME,
            "iat": now,
        }
        claims.update(self.user_claims)
        if nonce is not None:
            claims["nonce"] = nonce
        if sid is not None:
            claims["sid"] = sid

        mode = self._mode
        if mode == "wrong_iss":
            claims["iss"] = self.wrong_issuer
        elif mode == "no_sub":
            claims.pop("sub", None)
        elif mode == "no_aud":
            del claims["aud"]
        elif mode == "aud_without_client":
            claims["aud"] = OTHER_CLIENT_ID
        elif mode == "no_iat":
            del claims["iat"]
        elif mode == "wrong_nonce":
            claims["nonce"] = f"wrong-{secrets.token_urlsafe(16)}"
        elif mode == "expired":
            claims["exp"] = now - CLOCK_OFFSET
            claims["iat"] = now - CLOCK_OFFSET - ID_TOKEN_LIFETIME
        elif mode == "future_iat":
            claims["iat"] = now + CLOCK_OFFSET
        elif mode == "iat_one_second_future":
            claims["iat"] = now + 1
        elif mode == "multiple_aud_without_azp":
            claims["aud"] = [self.client_id, OTHER_CLIENT_ID]
        elif mode == "multiple_aud_with_wrong_azp":
            claims["aud"] = [self.client_id, OTHER_CLIENT_ID]
            claims["azp"] = OTHER_CLIENT_ID
        elif mode == "multiple_aud_with_azp":
            claims["aud"] = [self.client_id, OTHER_CLIENT_ID]
            claims["azp"] = self.client_id
        return claims

    def _encode_id_token(self, claims: dict[str, Any]) -> str:
        mode = self._mode
        if mode == "alg_none":
            # RFC 7519 section 6.1: an unsecured JWT has an empty signature part.
            return f"{_json_b64({'alg': 'none'})}.{_json_b64(claims)}."
        if mode == "hs256_with_public_key":
            # PyJWT refuses a PEM as an HMAC secret, so the token is built by hand.
            header = {"alg": "HS256", "typ": "JWT", "kid": self._key.kid}
            signing_input = f"{_json_b64(header)}.{_json_b64(claims)}"
            mac = hmac.new(
                self._key.public_pem(), signing_input.encode("ascii"), hashlib.sha256
            )
            return f"{signing_input}.{b64url(mac.digest())}"
        if mode == "no_kid_single_key":
            return jwt.encode(claims, self._key.private_key, algorithm="RS256")
        if mode == "random_kid":
            kid = f"key-{secrets.token_hex(8)}"
            return self.sign_jwt(claims, headers={"kid": kid})

        token = self.sign_jwt(claims)
        if mode == "bad_signature":
            token = _flip_signature_byte(token)
        return token

    # WSGI application

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        response = self._dispatch(request)
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        path = request.path
        if self.path_prefix:
            if not path.startswith(self.path_prefix + "/"):
                return _text(404, "not found")
            path = path[len(self.path_prefix) :]
        handler = self._routes.get(path)
        if handler is None:
            return _text(404, "not found")
        return handler(request)

    def _discovery(self, request: Request) -> Response:
        with self._lock:
            self.discovery_fetches += 1
        mode = self._mode
        issuer = self.wrong_issuer if mode == "discovery_issuer_mismatch" else None
        iss_supported = self.iss_parameter_supported or mode in (
            "iss_param_missing",
            "iss_param_wrong",
        )
        document = {
            "issuer": issuer or self.issuer,
            "authorization_endpoint": self.url("/authorize"),
            "token_endpoint": self.url("/token"),
            "userinfo_endpoint": self.url("/userinfo"),
            "jwks_uri": self.url("/jwks"),
            "end_session_endpoint": self.url("/end_session"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "grant_types_supported": ["authorization_code"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": list(
                self.token_endpoint_auth_methods
            ),
            "scopes_supported": ["openid", "email", "profile"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "sid"]
            + [name for name in self.user_claims if name != "sub"],
            "authorization_response_iss_parameter_supported": iss_supported,
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
        }
        return _json(200, document)

    def _jwks(self, request: Request) -> Response:
        with self._lock:
            self.jwks_fetches += 1
        if self._mode == "jwks_unreachable":
            return _text(500, "internal server error")
        return _json(200, self.jwks())

    def _authorize(self, request: Request) -> Response:
        params = _params(request)
        self._record(self._requests, "authorize", request, params)

        client_id = params.get("client_id")
        redirect_uri = params.get("redirect_uri")
        # RFC 6749 section 4.1.2.1: with an unknown client or a missing or unregistered
        # redirect URI the server must not redirect.
        if client_id != self.client_id:
            return _reject_without_redirect(f"unknown client_id {client_id!r}")
        if not redirect_uri:
            return _reject_without_redirect("missing redirect_uri")
        if self.redirect_uris is not None and redirect_uri not in self.redirect_uris:
            return _reject_without_redirect(
                f"unregistered redirect_uri {redirect_uri!r}"
            )

        answer: dict[str, str] = {}
        try:
            answer["code"] = self._issue_code(params, client_id, redirect_uri)
        except _AuthorizationError as error:
            logger.info(
                "authorization request rejected: %s: %s",
                error.error,
                error.description,
            )
            answer = {"error": error.error, "error_description": error.description}
        if "state" in params:
            answer["state"] = params["state"]
        # RFC 9207: the iss parameter in success and error responses.
        if self._mode == "iss_param_wrong":
            answer["iss"] = self.wrong_issuer
        elif self.iss_parameter_supported and self._mode != "iss_param_missing":
            answer["iss"] = self.issuer
        return _redirect(_add_query(redirect_uri, answer))

    def _issue_code(
        self, params: Mapping[str, str], client_id: str, redirect_uri: str
    ) -> str:
        if params.get("response_type") != "code":
            raise _AuthorizationError(
                "unsupported_response_type", "only response_type=code is supported"
            )
        scope = params.get("scope", "")
        if "openid" not in scope.split():
            raise _AuthorizationError("invalid_scope", "the scope must include openid")
        challenge = params.get("code_challenge")
        # RFC 7636 section 4.3: without code_challenge_method the method is "plain",
        # which this provider does not support.
        method = params.get("code_challenge_method")
        if challenge is None and self.require_pkce:
            raise _AuthorizationError("invalid_request", "code_challenge is required")
        if challenge is not None and method != "S256":
            raise _AuthorizationError(
                "invalid_request", "code_challenge_method must be S256"
            )

        code = secrets.token_urlsafe(32)
        grant = _Grant(
            client_id=client_id,
            redirect_uri=redirect_uri,
            scope=scope,
            nonce=params.get("nonce"),
            code_challenge=challenge,
            code_challenge_method=method,
            sid=secrets.token_urlsafe(16),
            issued_at=time.monotonic(),
        )
        with self._lock:
            self._grants[code] = grant
        return code

    def _token(self, request: Request) -> Response:
        params = _params(request)
        client_auth, credentials = _client_credentials(request, params)
        self._record(self._requests, "token", request, params, client_auth)

        if request.method != "POST":
            return _text(405, "the token endpoint accepts POST only")
        mode = self._mode
        if mode == "token_error_500":
            return _json(500, {"error": "server_error"})
        if mode == "token_garbage":
            # A JSON content type over a body that is not JSON, so neither the header
            # nor a parser that trusts it can save the client.
            return Response(
                b"<html><body>502 Bad Gateway</body></html>",
                status=200,
                content_type="application/json",
            )
        if mode == "token_slow":
            self._stopping.wait(self.token_delay)

        try:
            body = self._exchange_code(params, client_auth, credentials)
        except _TokenError as error:
            logger.info(
                "token request rejected: %s: %s", error.error, error.description
            )
            response = _json(
                error.status,
                {"error": error.error, "error_description": error.description},
            )
            if error.status == 401 and client_auth == "client_secret_basic":
                response.headers["WWW-Authenticate"] = 'Basic realm="token"'
            return response
        response = _json(200, body)
        # RFC 6749 section 5.1: token responses must not be cached.
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        return response

    def _exchange_code(
        self,
        params: Mapping[str, str],
        client_auth: str | None,
        credentials: tuple[str, str] | None,
    ) -> dict[str, Any]:
        if client_auth == "multiple":
            # RFC 6749 section 2.3: a client must not use more than one method.
            raise _TokenError(
                "invalid_request", "more than one client authentication method"
            )
        if client_auth is None or credentials is None:
            raise _TokenError(
                "invalid_client",
                "missing client authentication: use client_secret_basic or "
                "client_secret_post",
                401,
            )
        if client_auth not in self.token_endpoint_auth_methods:
            raise _TokenError(
                "invalid_client",
                f"{client_auth} is not in token_endpoint_auth_methods_supported",
                401,
            )
        client_id, client_secret = credentials
        if client_id != self.client_id or not hmac.compare_digest(
            client_secret.encode(), self.client_secret.encode()
        ):
            raise _TokenError("invalid_client", "client authentication failed", 401)

        if params.get("grant_type") != "authorization_code":
            raise _TokenError(
                "unsupported_grant_type", "only authorization_code is supported"
            )
        grant = self._consume_code(params.get("code"))
        if grant.client_id != client_id:
            raise _TokenError("invalid_grant", "the code was issued to another client")
        if params.get("redirect_uri") != grant.redirect_uri:
            # RFC 6749 section 4.1.3: identical to the authorization request's value.
            raise _TokenError("invalid_grant", "redirect_uri does not match")
        _check_code_verifier(grant, params.get("code_verifier"))

        access_token = secrets.token_urlsafe(32)
        id_token = self.make_id_token(grant.nonce, sid=grant.sid)
        with self._lock:
            self._access_tokens[access_token] = dict(self.user_claims)
            grant.access_tokens.append(access_token)
        return {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_LIFETIME,
            "id_token": id_token,
            "scope": grant.scope,
        }

    def _consume_code(self, code: str | None) -> _Grant:
        """Mark the code used and return its grant.

        RFC 6749 section 4.1.2: a code used twice is rejected, and the tokens issued
        for it are revoked.
        """
        if not code:
            raise _TokenError("invalid_request", "missing code")
        with self._lock:
            grant = self._grants.get(code)
            if grant is None:
                raise _TokenError("invalid_grant", "unknown code")
            if grant.used:
                for token in grant.access_tokens:
                    self._access_tokens.pop(token, None)
                raise _TokenError("invalid_grant", "the code was already used")
            grant.used = True
        if time.monotonic() - grant.issued_at > CODE_LIFETIME:
            raise _TokenError("invalid_grant", "the code expired")
        return grant

    def _userinfo(self, request: Request) -> Response:
        params = _params(request)
        self._record(self._userinfo_requests, "userinfo", request, params)
        authorization = request.headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        with self._lock:
            claims = self._access_tokens.get(token.strip())
        if scheme.lower() != "bearer" or claims is None:
            response = _json(401, {"error": "invalid_token"})
            # RFC 6750 section 3: a missing or unknown bearer token gets this header.
            response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return response
        body = dict(claims)
        if self._mode == "userinfo_sub_mismatch":
            body["sub"] = OTHER_SUBJECT
        return _json(200, body)

    def _end_session(self, request: Request) -> Response:
        params = _params(request)
        self._record(self._end_session_requests, "end_session", request, params)
        target = params.get("post_logout_redirect_uri")
        if not target:
            return _text(200, "signed out")
        answer = {"state": params["state"]} if "state" in params else {}
        return _redirect(_add_query(target, answer))

    def _record(
        self,
        log: list[RecordedRequest],
        endpoint: str,
        request: Request,
        params: dict[str, str],
        client_auth: str | None = None,
    ) -> None:
        recorded = RecordedRequest(
            endpoint=endpoint,
            method=request.method,
            params=params,
            query=request.query_string.decode("latin-1"),
            headers=dict(request.headers.items()),
            client_auth=client_auth,
        )
        with self._lock:
            log.append(recorded)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


def _params(request: Request) -> dict[str, str]:
    source = request.form if request.method == "POST" else request.args
    return {key: source[key] for key in source}


def _client_credentials(
    request: Request, params: Mapping[str, str]
) -> tuple[str | None, tuple[str, str] | None]:
    """Return the client authentication method a token request used, and its
    client id and secret."""
    basic: tuple[str, str] | None = None
    authorization = request.headers.get("Authorization", "")
    scheme, _, encoded = authorization.partition(" ")
    has_basic = scheme.lower() == "basic"
    if has_basic:
        basic = _decode_basic(encoded.strip())
    has_post = "client_secret" in params
    if has_basic and has_post:
        return "multiple", None
    if has_basic:
        return "client_secret_basic", basic
    if has_post:
        return "client_secret_post", (
            params.get("client_id", ""),
            params["client_secret"],
        )
    return None, None


def _decode_basic(encoded: str) -> tuple[str, str] | None:
    """Decode HTTP Basic credentials. RFC 6749 section 2.3.1 form-encodes the client
    id and secret before they are joined with a colon."""
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    client_id, separator, secret = decoded.partition(":")
    if not separator:
        return None
    return unquote_plus(client_id), unquote_plus(secret)


def _check_code_verifier(grant: _Grant, verifier: str | None) -> None:
    if grant.code_challenge is None:
        # A verifier without a recorded challenge is rejected, because accepting it
        # would let an attacker downgrade a login to one without PKCE.
        if verifier is not None:
            raise _TokenError("invalid_grant", "no code_challenge was sent")
        return
    if verifier is None:
        raise _TokenError("invalid_request", "missing code_verifier")
    if not _CODE_VERIFIER_PATTERN.fullmatch(verifier):
        raise _TokenError("invalid_request", "malformed code_verifier")
    if not hmac.compare_digest(pkce_challenge(verifier), grant.code_challenge):
        # RFC 7636 section 4.6: a verifier that does not match is invalid_grant.
        raise _TokenError("invalid_grant", "code_verifier does not match")


def _flip_signature_byte(token: str) -> str:
    signing_input, _, signature = token.rpartition(".")
    raw = bytearray(b64url_decode(signature))
    raw[len(raw) // 2] ^= 0x01
    return f"{signing_input}.{b64url(bytes(raw))}"


def _reject_without_redirect(message: str) -> Response:
    logger.info("authorization request rejected without redirect: %s", message)
    return _text(400, message)


def _json_b64(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def _text(status: int, body: str) -> Response:
    return Response(body, status=status, content_type="text/plain; charset=utf-8")


def _redirect(location: str) -> Response:
    return Response(b"", status=302, headers={"Location": location})


def _add_query(url: str, params: Mapping[str, str]) -> str:
    """Append ``params`` to the query of ``url``, keeping the parameters it has."""
    parts = urlsplit(url)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query and extra else parts.query or extra
    return urlunsplit(parts._replace(query=query))


@pytest.fixture(scope="session")
def hostile_provider_server() -> Iterator[HostileProvider]:
    """One provider server for the whole test session."""
    with HostileProvider() as provider:
        yield provider


@pytest.fixture
def hostile_provider(
    hostile_provider_server: HostileProvider,
) -> Iterator[HostileProvider]:
    """The shared provider, reset to correct behaviour before and after each test."""
    hostile_provider_server.reset()
    yield hostile_provider_server
    hostile_provider_server.reset()
