"""The OpenID Connect relying party: discovery, keys, code exchange, token checks.

The methods that need the network are generators (see ``_effects``): they yield an
``httpx.Request`` and receive the ``httpx.Response``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

import httpx
import jwt

from ._effects import Flow
from ._errors import LoginError, ProviderError, TokenValidationError
from ._settings import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, Settings

logger = logging.getLogger("sso_middleware")

# OpenID Connect Core 3.1.3.7 lets the client allow for clock skew. One minute is the
# value most relying parties use.
LEEWAY = 60
METADATA_TTL = 3600.0
DISCOVERY_RETRY_INTERVAL = 5.0
JWKS_TTL = 3600.0
# An ID token with an unknown key id triggers at most one JWKS fetch per interval, so
# tokens with random key ids cannot make the middleware flood the provider.
JWKS_REFETCH_INTERVAL = 10.0
MAX_PROVIDER_RESPONSE = 1 << 20
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """The parts of a discovery document that the middleware uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None
    token_auth_method: str
    signing_algorithms: frozenset[str]
    iss_parameter_supported: bool

    @classmethod
    def parse(cls, document: Any, settings: Settings) -> ProviderMetadata:
        """Validate a discovery document against ``settings``.

        Raises :class:`ProviderError` naming the first problem found.
        """
        if not isinstance(document, dict):
            raise _provider_problem("discovery is not a JSON object")
        # OpenID Connect Discovery 4.3: the issuer in the document must be identical
        # to the one configured, or tokens from another tenant could be accepted.
        if document.get("issuer") != settings.issuer:
            raise _provider_problem(
                f"discovery names issuer {document.get('issuer')!r}, but "
                f"SSO_ISSUER is {settings.issuer!r}; they must be identical"
            )
        endpoints = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            endpoints[name] = _endpoint(document, name, settings, required=True)
        for name in ("userinfo_endpoint", "end_session_endpoint"):
            endpoints[name] = _endpoint(document, name, settings, required=False)

        methods = document.get("token_endpoint_auth_methods_supported")
        # RFC 8414 2: when the list is absent the default is client_secret_basic.
        if not isinstance(methods, list):
            methods = ["client_secret_basic"]
        if "client_secret_basic" in methods:
            auth_method = "client_secret_basic"
        elif "client_secret_post" in methods:
            auth_method = "client_secret_post"
        else:
            raise _provider_problem(
                "the token endpoint supports neither client_secret_basic nor "
                f"client_secret_post (it lists {methods!r})"
            )

        challenge_methods = document.get("code_challenge_methods_supported")
        if isinstance(challenge_methods, list) and "S256" not in challenge_methods:
            # RFC 9700 2.1.1: PKCE with S256 is required, and "plain" gives no
            # protection against a leaked authorization request.
            raise _provider_problem("the provider does not support PKCE with S256")

        advertised = document.get("id_token_signing_alg_values_supported")
        if not isinstance(advertised, list):
            advertised = [
                "RS256"
            ]  # OpenID Connect Discovery 3: RS256 must be supported.
        if settings.id_token_algorithms:
            algorithms = frozenset(settings.id_token_algorithms)
        else:
            algorithms = frozenset(a for a in advertised if a in ASYMMETRIC_ALGORITHMS)
        if not algorithms:
            raise _provider_problem(
                f"the provider signs ID tokens only with {advertised!r}; set "
                "SSO_ID_TOKEN_ALGORITHMS to accept a symmetric algorithm"
            )

        return cls(
            issuer=settings.issuer,
            authorization_endpoint=endpoints["authorization_endpoint"],
            token_endpoint=endpoints["token_endpoint"],
            jwks_uri=endpoints["jwks_uri"],
            userinfo_endpoint=endpoints["userinfo_endpoint"],
            end_session_endpoint=endpoints["end_session_endpoint"],
            token_auth_method=auth_method,
            signing_algorithms=algorithms,
            iss_parameter_supported=document.get(
                "authorization_response_iss_parameter_supported"
            )
            is True,
        )


def _provider_problem(detail: str) -> ProviderError:
    """Return the error for an unusable discovery document.

    The error page only points to the log, so ``detail`` carries the reason into the
    line that logs the rejected request.
    """
    return ProviderError(
        "The identity provider's configuration is not usable. "
        "The administrator can find the reason in the log.",
        detail=f"identity provider misconfigured: {detail}",
    )


def _endpoint(
    document: dict[str, Any], name: str, settings: Settings, *, required: bool
) -> Any:
    value = document.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise _provider_problem(f"discovery has no {name}")
    # A control character or space would end the Location header that carries
    # the URL, so the document could inject a header.
    if _UNSAFE_URL.search(value):
        raise _provider_problem(f"discovery's {name} {value!r} has invalid characters")
    parts = urlsplit(value)
    # An https issuer must not send tokens or secrets over plain http.
    allowed = ("https",) if settings.issuer.startswith("https:") else ("http", "https")
    if parts.scheme not in allowed or not parts.netloc:
        raise _provider_problem(f"discovery's {name} {value!r} is invalid")
    return value


_UNSAFE_URL = re.compile(r"[\x00-\x20\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """One login in flight: the URL to send the browser to and its secrets."""

    url: str
    state: str
    nonce: str
    code_verifier: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class OpenIDClient:
    """The relying party for one provider, with its caches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._metadata: ProviderMetadata | None = None
        self._metadata_expires = 0.0
        self._metadata_failure: tuple[float, ProviderError] | None = None
        self._url_prefixes: dict[tuple[Any, ...], str] = {}
        self._keys: dict[str | None, list[jwt.PyJWK]] = {}
        self._all_keys: list[jwt.PyJWK] = []
        self._keys_expires = 0.0
        self._keys_refetched = float("-inf")
        self.discovery_url = (
            settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        )

    # Discovery and keys

    def metadata(self) -> Flow[ProviderMetadata]:
        """Return the provider's metadata, fetching discovery when the cache is stale."""
        now = time.monotonic()
        if self._metadata is not None and now < self._metadata_expires:
            return self._metadata
        failure = self._metadata_failure
        if failure is not None and now < failure[0]:
            # A provider that is down or misconfigured is asked again only after a
            # pause, so every page load does not fetch discovery.
            cause = failure[1]
            raise ProviderError(cause.message, detail=cause.detail, status=cause.status)
        try:
            document = yield from self._get_json(self.discovery_url, "discovery")
            self._metadata = ProviderMetadata.parse(document, self.settings)
        except ProviderError as exc:
            self._metadata_failure = (now + DISCOVERY_RETRY_INTERVAL, exc)
            raise
        self._metadata_failure = None
        self._metadata_expires = now + METADATA_TTL
        return self._metadata

    def _get_json(self, url: str, source: str) -> Flow[Any]:
        request = httpx.Request("GET", url, headers={"Accept": "application/json"})
        response = yield from _send(request, source)
        if response.status_code != 200:
            raise _unusable(source, f"status {response.status_code}")
        return _json_body(response, source)

    def _signing_keys(self, metadata: ProviderMetadata, *, refresh: bool) -> Flow[None]:
        now = time.monotonic()
        if refresh:
            # Only refetches for an unknown key id count against the interval, so a
            # key rotated just after a scheduled fetch is still found at once.
            if now - self._keys_refetched < JWKS_REFETCH_INTERVAL:
                return
            self._keys_refetched = now
        elif self._all_keys and now < self._keys_expires:
            return
        document = yield from self._get_json(metadata.jwks_uri, "JWKS")
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            raise _unusable("JWKS", "no keys member")
        parsed: list[jwt.PyJWK] = []
        for entry in keys:
            # Keys of an unknown type or meant for encryption are skipped, as RFC 7517
            # 5 requires, so that one odd entry does not hide the usable ones.
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                parsed.append(jwt.PyJWK(entry))
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue
        if not parsed:
            raise _unusable("JWKS", "no usable signing key")
        by_id: dict[str | None, list[jwt.PyJWK]] = {}
        for key in parsed:
            by_id.setdefault(key.key_id, []).append(key)
        self._keys, self._all_keys = by_id, parsed
        self._keys_expires = now + JWKS_TTL
        logger.debug("fetched %d signing keys", len(parsed))

    def _key_for(
        self, metadata: ProviderMetadata, header: Mapping[str, Any]
    ) -> Flow[Any]:
        algorithm = header.get("alg")
        if algorithm in HMAC_ALGORITHMS:
            return self.settings.client_secret.encode("utf-8")
        kid = header.get("kid")
        yield from self._signing_keys(metadata, refresh=False)
        key = self._match_key(kid)
        if key is None:
            # An unknown key id usually means the provider rotated its keys.
            yield from self._signing_keys(metadata, refresh=True)
            key = self._match_key(kid)
        if key is None:
            raise TokenValidationError(
                "The sign-in token was signed with an unknown key.",
                detail=f"no signing key with kid {kid!r}",
            )
        return key.key

    def _match_key(self, kid: Any) -> jwt.PyJWK | None:
        if isinstance(kid, str):
            candidates = self._keys.get(kid, [])
        elif kid is None and len(self._all_keys) == 1:
            # OpenID Connect Core 10.1: a token may omit kid when the JWKS has one key.
            candidates = self._all_keys
        else:
            candidates = []
        return candidates[0] if len(candidates) == 1 else None

    # Authorization request and code exchange

    def authorization_request(
        self,
        metadata: ProviderMetadata,
        redirect_uri: str,
        extra_params: Mapping[str, str],
    ) -> AuthorizationRequest:
        """Build the authorization URL with state, nonce and PKCE (RFC 7636, S256)."""
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        challenge = _b64(hashlib.sha256(verifier.encode("ascii")).digest())
        params = dict(self.settings.auth_params)
        params.update(extra_params)
        params.update(
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "scope": " ".join(self.settings.scopes),
                "code_challenge_method": "S256",
                "redirect_uri": redirect_uri,
            }
        )
        # Everything but the three random values is the same from one login to
        # the next, so its encoding is cached. The random values are URL-safe
        # Base64 and need no encoding.
        key = (metadata.authorization_endpoint, tuple(params.items()))
        prefix = self._url_prefixes.get(key)
        if prefix is None:
            separator = "&" if "?" in metadata.authorization_endpoint else "?"
            prefix = metadata.authorization_endpoint + separator + urlencode(params)
            if len(self._url_prefixes) >= 256:
                self._url_prefixes.clear()
            self._url_prefixes[key] = prefix
        url = f"{prefix}&state={state}&nonce={nonce}&code_challenge={challenge}"
        return AuthorizationRequest(url, state, nonce, verifier)

    def exchange_code(
        self, metadata: ProviderMetadata, code: str, redirect_uri: str, verifier: str
    ) -> Flow[dict[str, Any]]:
        """Exchange an authorization code at the token endpoint (RFC 6749 4.1.3)."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        headers = {"Accept": "application/json"}
        if metadata.token_auth_method == "client_secret_basic":
            # RFC 6749 2.3.1: both parts are form-encoded before Basic encoding.
            user = quote_plus(self.settings.client_id)
            password = quote_plus(self.settings.client_secret)
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        else:
            form["client_id"] = self.settings.client_id
            form["client_secret"] = self.settings.client_secret
        request = httpx.Request(
            "POST", metadata.token_endpoint, data=form, headers=headers
        )
        response = yield from _send(request, "token endpoint")
        if 400 <= response.status_code < 500:
            body = _json_or_none(response)
            error = body.get("error") if isinstance(body, dict) else None
            raise LoginError(
                "The sign-in could not be completed: the authorization code is invalid, "
                "expired or already used. Please sign in again.",
                detail=f"token endpoint returned {response.status_code} "
                f"error={str(error)[:80]!r}",
            )
        if response.status_code != 200:
            raise _unusable("token endpoint", f"status {response.status_code}")
        body = _json_body(response, "token endpoint")
        if not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
            raise _unusable("token endpoint", "no id_token in the response")
        token_type = body.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise _unusable("token endpoint", f"token_type {str(token_type)[:20]!r}")
        return body

    def fetch_userinfo(
        self, metadata: ProviderMetadata, access_token: str, sub: str
    ) -> Flow[dict[str, Any]]:
        """Fetch the userinfo claims and check their ``sub`` (OpenID Connect Core 5.3.2)."""
        if metadata.userinfo_endpoint is None or not access_token:
            return {}
        request = httpx.Request(
            "GET",
            metadata.userinfo_endpoint,
            headers={
                "Authorization": f"Bearer {access_token}",
                "Accept": "application/json",
            },
        )
        response = yield from _send(request, "userinfo endpoint")
        content_type = response.headers.get("content-type", "")
        if response.status_code != 200 or "json" not in content_type:
            # Userinfo only adds claims: without it the ID token's claims are used.
            logger.info(
                "userinfo skipped: status %s, content type %r",
                response.status_code,
                content_type[:60],
            )
            return {}
        claims = _json_body(response, "userinfo endpoint")
        if not isinstance(claims, dict):
            raise _unusable("userinfo endpoint", "not a JSON object")
        # The sub must match, or the response may be about another user (token
        # substitution), and its claims are not used.
        if not isinstance(claims.get("sub"), str) or not hmac.compare_digest(
            claims["sub"].encode(), sub.encode()
        ):
            raise TokenValidationError(
                "The identity provider returned inconsistent user information.",
                detail="userinfo sub differs from the ID token's sub",
            )
        return claims

    # Token verification

    def verify_id_token(
        self, metadata: ProviderMetadata, token: str, nonce: str
    ) -> Flow[dict[str, Any]]:
        """Verify an ID token as OpenID Connect Core 3.1.3.7 requires.

        Checks the signature against the provider's keys with an allow-list of
        algorithms, ``iss`` exactly, ``aud`` and ``azp``, ``exp`` and ``iat`` with a
        leeway of 60 s, ``sub`` and the ``nonce`` of this login.
        """
        claims = yield from self._verify_jwt(metadata, token, audience=True)
        # OpenID Connect Core 2: sub is required in an ID token.
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise TokenValidationError(
                "The sign-in token has no subject.", detail="missing sub"
            )
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        azp = claims.get("azp")
        # Core 3.1.3.7 steps 4 and 5: with several audiences azp must name this
        # client, and when azp is present it must be this client.
        if (len(audiences) > 1 or azp is not None) and azp != self.settings.client_id:
            raise TokenValidationError(
                "The sign-in token was issued to another application.",
                detail=f"azp {str(azp)[:80]!r} is not the client id",
            )
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(
            token_nonce.encode(), nonce.encode()
        ):
            raise TokenValidationError(
                "The sign-in token does not belong to this sign-in attempt.",
                detail="nonce mismatch",
            )
        return claims

    def verify_logout_token(
        self, metadata: ProviderMetadata, token: str
    ) -> Flow[dict[str, Any]]:
        """Verify a back-channel logout token (OpenID Connect Back-Channel Logout 2.6)."""
        claims = yield from self._verify_jwt(metadata, token, audience=True)
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(
            events.get(BACKCHANNEL_LOGOUT_EVENT), dict
        ):
            raise TokenValidationError(
                "The logout token is invalid.", detail="no logout event"
            )
        if "nonce" in claims:
            raise TokenValidationError(
                "The logout token is invalid.", detail="has a nonce"
            )
        if not isinstance(claims.get("sub"), str) and not isinstance(
            claims.get("sid"), str
        ):
            raise TokenValidationError(
                "The logout token is invalid.", detail="no sub or sid"
            )
        if not isinstance(claims.get("jti"), str):
            raise TokenValidationError("The logout token is invalid.", detail="no jti")
        return claims

    def verify_provider_jwt(
        self, metadata: ProviderMetadata, token: str
    ) -> Flow[dict[str, Any]]:
        """Verify a JWT signed with the provider's keys that has no audience.

        Used for Scalekit's IdP-initiated login token, which carries routing claims.
        """
        return (yield from self._verify_jwt(metadata, token, audience=False))

    def _verify_jwt(
        self, metadata: ProviderMetadata, token: str, *, audience: bool
    ) -> Flow[dict[str, Any]]:
        if len(token) > 16384:
            raise TokenValidationError(
                "The token is too long.", detail="token over 16 KiB"
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenValidationError(
                "The token is malformed.", detail=str(exc)
            ) from exc
        algorithm = header.get("alg")
        # The algorithm comes from the token, so it is checked against the allow-list
        # before any key is chosen: "none" and HMAC with a public key are rejected.
        if (
            not isinstance(algorithm, str)
            or algorithm not in metadata.signing_algorithms
        ):
            raise TokenValidationError(
                "The token is signed with an algorithm that is not accepted.",
                detail=f"alg {str(algorithm)[:20]!r} not in the allow-list",
            )
        key = yield from self._key_for(metadata, header)
        required = ["iss", "exp", "iat"]
        if audience:
            required += ["aud"]
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                issuer=self.settings.issuer,
                audience=self.settings.client_id if audience else None,
                leeway=LEEWAY,
                options={
                    "require": required,
                    "verify_aud": audience,
                    "verify_iat": True,
                },
            )
        except jwt.PyJWTError as exc:
            raise TokenValidationError(
                "The sign-in token is invalid or expired.",
                detail=f"{type(exc).__name__}: {exc}",
            ) from exc
        # PyJWT checks that iat is a number; a token issued in the future beyond the
        # leeway is rejected here, whichever PyJWT version is installed.
        if claims["iat"] > time.time() + LEEWAY:
            raise TokenValidationError(
                "The sign-in token is not valid yet.", detail="iat in the future"
            )
        return claims


def _send(request: httpx.Request, source: str) -> Flow[httpx.Response]:
    try:
        response = yield request
    except httpx.TimeoutException as exc:
        raise ProviderError(
            "The identity provider timed out. Please try again.",
            detail=f"{source} timed out: {type(exc).__name__}",
            status=504,
        ) from exc
    except httpx.HTTPError as exc:
        raise ProviderError(
            "The identity provider cannot be reached. Please try again later.",
            detail=f"{source} request failed: {type(exc).__name__}: {exc}",
        ) from exc
    assert isinstance(response, httpx.Response)
    return response


def _unusable(source: str, detail: str) -> ProviderError:
    return ProviderError(
        "The identity provider returned an unusable response. Please try again later.",
        detail=f"{source}: {detail}",
    )


def _json_body(response: httpx.Response, source: str) -> Any:
    if len(response.content) > MAX_PROVIDER_RESPONSE:
        raise _unusable(source, "response over 1 MiB")
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError) as exc:
        raise _unusable(source, "response is not JSON") from exc


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content[:MAX_PROVIDER_RESPONSE])
    except (ValueError, RecursionError):
        return None
