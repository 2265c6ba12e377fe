"""The framework-free core: what each request gets.

``Core.handle`` decides, for one request, whether to pass it to the application with
a user, redirect it to the provider, serve one of the middleware's endpoints, or
reject it. It performs no I/O: it yields effects that an adapter performs.
"""

from __future__ import annotations

import html
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from werkzeug.sansio.http import parse_cookie

from ._effects import Flow, ReadBody, StoreCall
from ._errors import (
    AccessDenied,
    LoginError,
    ProviderError,
    RequestError,
    StoreUnavailable,
    TokenValidationError,
)
from ._http import (
    Forward,
    Outcome,
    Reply,
    Request,
    compile_globs,
    error_reply,
    html_page,
    is_navigation,
    is_preflight,
    json_reply,
    normalize_path,
    redirect,
    safe_return_path,
    security_headers,
)
from ._oidc import OpenIDClient
from ._session import (
    MAX_COOKIE_SIZE,
    MAX_STATES,
    STATE_LIFETIME,
    CookieCodec,
    Revocations,
    Session,
    UsedStates,
    new_session_id,
    session_claims,
    session_from_payload,
)
from ._settings import Settings
from ._user import ANONYMOUS, User, identity_headers

logger = logging.getLogger("sso_middleware")

# The routing parameters that /login passes on to the provider, and no others:
# Scalekit's organization and connection selectors and the standard hints.
LOGIN_PARAMS = (
    "organization_id",
    "connection_id",
    "domain",
    "login_hint",
    "provider",
    "prompt",
)
# A value of up to 256 characters without control characters, which leaves room
# for internationalized email addresses in login_hint.
_PARAM_VALUE = re.compile(r"[^\x00-\x20\x7f-\x9f][^\x00-\x1f\x7f-\x9f]{0,255}")
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_STATE = re.compile(r"[A-Za-z0-9_\-]{1,256}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
MAX_BACKCHANNEL_BODY = 64 * 1024
# Verified Cookie headers remembered for the hot path. Each entry keeps the header
# and a shared User, roughly 1 KiB, so the cache stays within about 10 MiB
# (an estimate).
FORWARD_CACHE_SIZE = 10_000
MAX_REMEMBERED_HEADER = 4096
STORE_PREFIX = "sso:"


class Core:
    """The decisions of the middleware for one configuration."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.oidc = OpenIDClient(settings)
        self.cookies = CookieCodec(settings)
        self.revocations = Revocations(settings.session_lifetime)
        self.used_states = UsedStates()
        prefix = settings.endpoint_prefix
        self.callback_path = (
            urlsplit(settings.redirect_uri).path
            if settings.redirect_uri
            else settings.redirect_path
        )
        self.endpoints: dict[str, Callable[[Request], Flow[Outcome]]] = {
            prefix + "/login": self._login,
            prefix + "/logout": self._logout,
            prefix + "/userinfo": self._userinfo,
            prefix + "/check": self._check,
            prefix + "/health": self._health,
            prefix + "/backchannel-logout": self._backchannel_logout,
        }
        self.endpoints.setdefault(self.callback_path, self._callback)
        self.endpoints[self.callback_path] = self._callback
        self.public = compile_globs(settings.public_paths)
        self.trusted_networks = tuple(
            ipaddress.ip_network(proxy, strict=False)
            for proxy in settings.trusted_proxies
        )
        self.login_url = prefix + "/login"
        self.uses_store = settings.uses_redis
        # The hot path of an authenticated request: the adapters look up the raw
        # Cookie header here and, on a hit that has not expired, pass the request on
        # with the remembered user and cleaned Cookie header. That costs one
        # dictionary look-up and a clock read, with no HMAC or JSON work. A revoked
        # session is purged when it is revoked (see _forget).
        self.forwards: dict[str | bytes, tuple[User, Any, float, Session]] = {}
        # The first cookie of that name wins, as in werkzeug's parser.
        self._session_cookie = re.compile(
            r"(?:^|;)\s*" + re.escape(settings.cookie_name) + r"=([^;]*)"
        )

    # Entry point

    def handle(self, request: Request) -> Flow[Outcome]:
        """Decide what ``request`` gets. A generator of effects (see ``_effects``)."""
        try:
            endpoint = self.endpoints.get(request.path)
            if endpoint is not None and not request.websocket:
                return (yield from endpoint(request))
            return (yield from self._guard(request))
        except RequestError as exc:
            return self._reject(request, exc)

    def _guard(self, request: Request) -> Flow[Outcome]:
        public = self.is_public(request.path)
        try:
            session = yield from self.session(request)
        except StoreUnavailable:
            if not public:
                raise
            session = None
        cookie = self.strip_own_cookies(request.headers.get("cookie"))
        if session is not None:
            try:
                self.check_allowed(session.user)
            except AccessDenied:
                if not public:
                    raise
            else:
                return Forward(session.user, cookie)
        if public or is_preflight(request):
            # Preflights never carry credentials (Fetch standard, CORS), so a 401
            # would break every cross-origin call to the application.
            return Forward(ANONYMOUS, cookie)
        if request.websocket:
            return self._reject(
                request,
                RequestError(
                    "Sign-in required.",
                    status=403,
                    detail="websocket without a session",
                ),
            )
        if is_navigation(request):
            return (yield from self._start_login(request, request.target, {}))
        return error_reply(request, 401, "login_required", "Sign-in required.")

    def verify_cookie_header(self, header: str) -> tuple[Session, str | None] | None:
        """Verify the session in a Cookie header, for a request the cache missed.

        Returns the session and the header without the middleware's cookies, or
        None when the full path must decide: no valid session, a
        revoked session or a user the allow-lists reject. A session in a store is
        never remembered, because it may be revoked on another instance.
        """
        if self.uses_store:
            return None
        # Finding the one cookie with a regular expression costs a fifth of
        # parsing the whole header. A quoted value is left to werkzeug's parser.
        match = self._session_cookie.search(header)
        value = match.group(1).strip() if match else None
        if value and value.startswith('"'):
            value = parse_cookies(header).get(self.cookies.cookie_name)
        if not value:
            return None
        session = self._cookie_session(value)
        if session is None:
            return None
        try:
            self.check_allowed(session.user)
        except AccessDenied:
            return None
        return session, self.strip_own_cookies(header)

    def _cookie_session(self, value: str) -> Session | None:
        """Verify a session cookie's value and check that it is not revoked."""
        session = self.cookies.load_session(value)
        if session is None or (
            self.revocations and self.revocations.is_revoked(session)
        ):
            return None
        return session

    def remember(self, cookie: str | bytes, session: Session, cleaned: Any) -> None:
        """Remember the outcome of a verified Cookie header until the session ends.

        A header longer than MAX_REMEMBERED_HEADER is not remembered, so a client
        that pads its Cookie header cannot fill the cache with large keys.
        """
        if len(cookie) > MAX_REMEMBERED_HEADER:
            return
        if len(self.forwards) >= FORWARD_CACHE_SIZE:
            # Dictionaries keep insertion order, so this evicts the oldest entry.
            # Another thread may evict at the same time, which is harmless.
            try:
                del self.forwards[next(iter(self.forwards))]
            except (KeyError, RuntimeError, StopIteration):
                pass
        self.forwards[cookie] = (session.user, cleaned, session.expires_at, session)

    def _forget(self, matches: Callable[[Session], bool]) -> None:
        """Drop the remembered Cookie headers whose session matches."""
        for key in [k for k, hit in list(self.forwards.items()) if matches(hit[3])]:
            self.forwards.pop(key, None)

    def is_public(self, path: str) -> bool:
        """Tell whether ``path`` is served without login.

        Both the normalized path and the path as received must match a pattern.
        The normalized form defeats ``/public/../admin``. The received form defeats
        ``/admin/../public``, which an application that does not resolve dot
        segments would route to ``/admin``.
        """
        if self.public is None or self.public.match(path) is None:
            return False
        return self.public.match(normalize_path(path)) is not None

    # Sessions

    def session(self, request: Request) -> Flow[Session | None]:
        """Return the request's valid session, or None."""
        value = self._cookie(request, self.cookies.cookie_name)
        if not value:
            return None
        if not self.uses_store:
            return self._cookie_session(value)
        session_id = self.cookies.load_session_id(value)
        if session_id is None:
            return None
        data = yield from self._store(
            StoreCall("get", (STORE_PREFIX + "s:" + session_id,))
        )
        if data is None:
            return None
        try:
            session = session_from_payload(json.loads(data))
        except ValueError:
            return None
        if session is None or session.expires_at <= time.time():
            return None
        return session

    def _store(self, call: StoreCall) -> Flow[Any]:
        try:
            return (yield call)
        except (OSError, ConnectionError) as exc:
            raise StoreUnavailable(
                "The session store is unavailable. Please try again shortly.",
                detail=f"redis {call.method} failed: {type(exc).__name__}: {exc}",
            ) from exc

    def check_allowed(self, user: User) -> None:
        """Raise AccessDenied unless the allow-lists admit ``user``."""
        s = self.settings
        if s.allowed_email_domains:
            email = user.email or ""
            domain = email.rpartition("@")[2].lower() if "@" in email else ""
            verified = user.claims.get("email_verified", True) is not False
            if not verified or domain not in {
                d.lower() for d in s.allowed_email_domains
            }:
                raise AccessDenied(
                    "Your account is not allowed to use this application.",
                    detail=f"email domain {domain!r} not allowed",
                )
        if s.allowed_groups and not set(user.groups) & set(s.allowed_groups):
            raise AccessDenied(
                "Your account is not allowed to use this application.",
                detail="no allowed group",
            )
        if s.allowed_roles and not set(user.roles) & set(s.allowed_roles):
            raise AccessDenied(
                "Your account is not allowed to use this application.",
                detail="no allowed role",
            )

    def _cookie(self, request: Request, name: str) -> str | None:
        header = request.headers.get("cookie")
        if not header or name not in header:
            return None
        return parse_cookies(header).get(name)

    def strip_own_cookies(self, header: str | None) -> str | None:
        """Remove the middleware's cookies from a Cookie header value."""
        if not header or self.settings.cookie_name not in header:
            return header
        kept = []
        for part in header.split(";"):
            name = part.split("=", 1)[0].strip()
            if not self.cookies.is_own_cookie(name):
                kept.append(part.strip())
        return "; ".join(kept) or None

    # Login

    def _login(self, request: Request) -> Flow[Outcome]:
        if request.method not in ("GET", "HEAD"):
            return self._method_not_allowed(request, "GET")
        query = dict(parse_qsl(request.query, keep_blank_values=True))
        if "idp_initiated_login" in query:
            return (
                yield from self._idp_initiated(request, query["idp_initiated_login"])
            )
        params = {}
        for name in LOGIN_PARAMS:
            value = query.get(name)
            if value is None:
                continue
            if not _PARAM_VALUE.fullmatch(value):
                raise LoginError(
                    f"The sign-in request has an invalid {name} parameter.",
                    detail=f"invalid {name} parameter",
                )
            params[name] = value
        return (yield from self._start_login(request, query.get("next"), params))

    def _idp_initiated(self, request: Request, token: str) -> Flow[Outcome]:
        """Start Scalekit's IdP-initiated login as an ordinary login.

        The token only names the organization, connection and user hint. It is
        verified, then a normal authorization request with its own state, nonce and
        PKCE follows, so a forged token can at worst start a login.
        """
        metadata = yield from self.oidc.metadata()
        claims = yield from self.oidc.verify_provider_jwt(metadata, token)
        params = {}
        for name in ("organization_id", "connection_id", "login_hint"):
            value = claims.get(name)
            if isinstance(value, str) and _PARAM_VALUE.fullmatch(value):
                params[name] = value
        if "organization_id" not in params and "connection_id" not in params:
            # Scalekit routes a login by organization or connection: a token with
            # neither cannot start the login it claims to.
            raise TokenValidationError(
                "The sign-in link is invalid.",
                detail="IdP-initiated login token names no organization or connection",
            )
        relay_state = claims.get("relay_state")
        return_to = relay_state if isinstance(relay_state, str) else None
        logger.info(
            "IdP-initiated login for %s",
            params.get("organization_id") or params.get("connection_id"),
        )
        return (yield from self._start_login(request, return_to, params))

    def _start_login(
        self, request: Request, return_to: str | None, params: Mapping[str, str]
    ) -> Flow[Outcome]:
        metadata = yield from self.oidc.metadata()
        redirect_uri = self.redirect_uri(request)
        auth = self.oidc.authorization_request(metadata, redirect_uri, params)
        name, value = self.cookies.new_state(
            auth.state,
            auth.nonce,
            auth.code_verifier,
            safe_return_path(return_to),
            redirect_uri,
        )
        secure = self.secure(request)
        cookies = [
            self.cookies.set_cookie(name, value, secure=secure, max_age=STATE_LIFETIME)
        ]
        cookies.extend(self._evict_states(request, secure))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("login started, request %s", self.request_id(request))
        return redirect(auth.url, set_cookies=cookies)

    def _evict_states(self, request: Request, secure: bool) -> list[str]:
        """Delete the oldest state cookies so that at most MAX_STATES remain."""
        header = request.headers.get("cookie")
        if not header or self.cookies.state_prefix not in header:
            return []
        states = []
        for name, value in parse_cookies(header).items():
            if name.startswith(self.cookies.state_prefix):
                signed_at = self.cookies.state_age(value)
                states.append((signed_at if signed_at is not None else 0.0, name))
        states.sort()
        excess = len(states) - (MAX_STATES - 1)
        return [
            self.cookies.delete_cookie(name, secure=secure)
            for _, name in states[: max(excess, 0)]
        ]

    # Callback

    def _callback(self, request: Request) -> Flow[Outcome]:
        if request.method not in ("GET", "HEAD"):
            return self._method_not_allowed(request, "GET")
        query = dict(parse_qsl(request.query, keep_blank_values=True))
        state = query.get("state", "")
        secure = self.secure(request)
        clear: list[str] = []
        entry = None
        # The state names a cookie below, so only the characters of a token made
        # by this middleware may pass, never a CR or LF.
        if _STATE.fullmatch(state):
            name = self.cookies.state_cookie_name(state)
            value = self._cookie(request, name)
            if value is not None:
                clear.append(self.cookies.delete_cookie(name, secure=secure))
                entry = self.cookies.load_state(value, state)
        try:
            return (yield from self._complete_login(request, query, entry, clear))
        except RequestError as exc:
            reply = self._reject(request, exc, referrer=True)
            reply.headers.extend(("Set-Cookie", cookie) for cookie in clear)
            return reply

    def _complete_login(
        self, request: Request, query: dict[str, str], entry: Any, clear: list[str]
    ) -> Flow[Outcome]:
        if "error" in query:
            status = 403 if query["error"] == "access_denied" else 400
            message = "The identity provider reported an error."
            # The provider's own words are shown only for this browser's login, so
            # a crafted link cannot put a sentence of its choosing on the site.
            if entry is not None:
                description = query.get("error_description") or query["error"]
                message = (
                    f"The identity provider reported an error: {description[:300]}"
                )
            raise LoginError(
                message,
                status=status,
                detail=f"provider error {query['error'][:60]!r}",
            )
        code = query.get("code")
        if not code or not query.get("state"):
            raise LoginError(
                "The sign-in response is missing its code or state.",
                detail="callback without code or state",
            )
        if entry is None:
            # RFC 9700 4.7: without this browser's signed state entry the callback
            # may be forged, replayed, expired or from another browser.
            raise LoginError(
                "This sign-in attempt is unknown or has expired. Please sign in again.",
                detail="no valid state entry for the callback's state",
            )
        metadata = yield from self.oidc.metadata()
        # RFC 9207: the iss parameter names the provider that sent the response, which
        # defeats mix-up attacks. It is checked before the code leaves this process.
        iss = query.get("iss")
        expects_iss = iss is not None or metadata.iss_parameter_supported
        if expects_iss and iss != self.settings.issuer:
            raise LoginError(
                "The sign-in response came from an unexpected identity provider.",
                detail=f"iss parameter {str(iss)[:100]!r} mismatch",
            )
        claimed = yield from self._claim_state(entry.state)
        if not claimed:
            raise LoginError(
                "This sign-in response was already used. Please sign in again.",
                detail="state replayed",
            )
        tokens = yield from self.oidc.exchange_code(
            metadata, code, entry.redirect_uri, entry.verifier
        )
        claims = yield from self.oidc.verify_id_token(
            metadata, tokens["id_token"], entry.nonce
        )
        access_token = tokens.get("access_token")
        userinfo = yield from self.oidc.fetch_userinfo(
            metadata,
            access_token if isinstance(access_token, str) else "",
            claims["sub"],
        )
        kept = session_claims(claims, userinfo)
        user = User.from_claims(kept)
        self.check_allowed(user)

        secure = self.secure(request)
        cookies = list(clear)
        cookies.extend((yield from self._new_session(kept, tokens["id_token"], secure)))
        logger.info("login of %s, request %s", user.sub, self.request_id(request))
        return redirect(entry.return_to, set_cookies=cookies, referrer=True)

    def _claim_state(self, state: str) -> Flow[bool]:
        if not self.uses_store:
            return self.used_states.claim(state)
        result = yield from self._store(
            StoreCall(
                "set",
                (STORE_PREFIX + "used:" + state, "1"),
                {"nx": True, "ex": STATE_LIFETIME},
            )
        )
        return bool(result)

    def _new_session(
        self, claims: dict[str, Any], id_token: str, secure: bool
    ) -> Flow[list[str]]:
        lifetime = self.settings.session_lifetime
        payload = self.cookies.new_session_payload(claims)
        cookies = []
        if self.uses_store:
            session_id = new_session_id()
            payload["idt"] = id_token
            key = STORE_PREFIX + "s:" + session_id
            yield from self._store(
                StoreCall("set", (key, json.dumps(payload)), {"ex": lifetime})
            )
            yield from self._index_session(session_id, claims)
            value = self.cookies.dump_session_id(session_id)
        else:
            value = self.cookies.dump_session(payload)
            if len(value) > MAX_COOKIE_SIZE - 200:
                raise LoginError(
                    "Your account has too many groups or claims for a cookie session.",
                    status=400,
                    detail=f"session cookie of {len(value)} bytes; use a redis "
                    "session store (SSO_SESSION_STORE)",
                )
            token_cookie = self.cookies.dump_id_token(id_token)
            if len(token_cookie) < MAX_COOKIE_SIZE - 200:
                # The ID token is only needed as id_token_hint at logout, so its
                # cookie is scoped to the logout path.
                cookies.append(
                    self.cookies.set_cookie(
                        self.cookies.id_token_cookie,
                        token_cookie,
                        secure=secure,
                        max_age=lifetime,
                        path=self.cookies.logout_path,
                    )
                )
        cookies.append(
            self.cookies.set_cookie(
                self.cookies.cookie_name, value, secure=secure, max_age=lifetime
            )
        )
        return cookies

    def _index_session(self, session_id: str, claims: Mapping[str, Any]) -> Flow[None]:
        lifetime = self.settings.session_lifetime
        for kind in ("sid", "sub"):
            value = claims.get(kind)
            if isinstance(value, str):
                key = f"{STORE_PREFIX}{kind}:{value}"
                yield from self._store(StoreCall("sadd", (key, session_id)))
                yield from self._store(StoreCall("expire", (key, lifetime)))

    # Logout

    def _logout(self, request: Request) -> Flow[Outcome]:
        if request.method not in ("GET", "POST", "HEAD"):
            return self._method_not_allowed(request, "GET, POST")
        if not self._same_site(request):
            if request.method == "POST":
                return error_reply(
                    request,
                    403,
                    "cross_site_request",
                    "A sign-out request from another site was rejected.",
                )
            # A cross-site GET, or one from a browser without fetch metadata, gets a
            # confirmation form: a link on another site cannot sign the user out.
            return html_page(
                200,
                "Sign out",
                (
                    "<p>Do you want to sign out?</p>"
                    f'<form method="post" action="{html.escape(request.path)}">'
                    '<button type="submit">Sign out</button></form>'
                ),
            )

        id_token = yield from self._end_local_session(request)
        secure = self.secure(request)
        cookies = [
            self.cookies.delete_cookie(self.cookies.cookie_name, secure=secure),
            self.cookies.delete_cookie(
                self.cookies.id_token_cookie,
                secure=secure,
                path=self.cookies.logout_path,
            ),
        ]
        logger.info("logout, request %s", self.request_id(request))

        try:
            metadata = yield from self.oidc.metadata()
        except ProviderError as exc:
            # The local session is already ended, so the user is signed out here
            # even when the provider cannot be notified.
            logger.warning(
                "logout without provider logout: %s, request %s",
                exc.detail,
                self.request_id(request),
            )
            metadata = None
        if metadata is not None and metadata.end_session_endpoint:
            # OpenID Connect RP-Initiated Logout 1.0: the provider ends its own
            # session, then returns the browser to post_logout_redirect_uri.
            params = {
                "client_id": self.settings.client_id,
                "post_logout_redirect_uri": self.post_logout_uri(request),
            }
            if id_token:
                params["id_token_hint"] = id_token
            separator = "&" if "?" in metadata.end_session_endpoint else "?"
            return redirect(
                metadata.end_session_endpoint + separator + urlencode(params),
                set_cookies=cookies,
            )

        headers = [("Set-Cookie", cookie) for cookie in cookies]
        if "text/html" in request.headers.get("accept", ""):
            return html_page(
                200,
                "Signed out",
                '<p>You are signed out.</p><p><a href="/">Return to the site</a></p>',
                headers=headers,
            )
        return json_reply(200, {"status": "signed_out"}, headers=headers)

    def _end_local_session(self, request: Request) -> Flow[str | None]:
        """End the request's session in this process or the store.

        Returns the session's ID token, for the provider's logout, when it is known.
        """
        value = self._cookie(request, self.cookies.cookie_name)
        if not value:
            return None
        if self.uses_store:
            session_id = self.cookies.load_session_id(value)
            if session_id is None:
                return None
            key = STORE_PREFIX + "s:" + session_id
            data = yield from self._store(StoreCall("get", (key,)))
            yield from self._store(StoreCall("delete", (key,)))
            try:
                stored = json.loads(data) if data else None
            except ValueError:
                return None
            token = stored.get("idt") if isinstance(stored, dict) else None
            return token if isinstance(token, str) else None

        session = self.cookies.load_session(value)
        if session is not None:
            # A cookie session cannot be deleted from the browser of an attacker
            # who copied it, so this process also stops accepting it.
            ended = session.session_id
            self.revocations.revoke_session(ended)
            self._forget(lambda other: other.session_id == ended)
        token_value = self._cookie(request, self.cookies.id_token_cookie)
        return self.cookies.load_id_token(token_value) if token_value else None

    def _same_site(self, request: Request) -> bool:
        """Tell whether a request comes from this site, by Fetch metadata or Origin."""
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            return site in ("same-origin", "none")
        origin = request.headers.get("origin")
        if origin is not None:
            return origin == self.origin(request)
        # Browsers send Origin on every cross-site POST. A POST without either header
        # therefore comes from a non-browser client, which no other site can drive.
        return request.method == "POST"

    # Small endpoints

    def _userinfo(self, request: Request) -> Flow[Outcome]:
        if request.method not in ("GET", "HEAD"):
            return self._method_not_allowed(request, "GET")
        session = yield from self.session(request)
        if session is None:
            return json_reply(
                401,
                {"error": "login_required", "error_description": "Sign-in required."},
            )
        self.check_allowed(session.user)
        return json_reply(200, session.user.to_json())

    def _check(self, request: Request) -> Flow[Outcome]:
        session = yield from self.session(request)
        if session is None:
            return json_reply(
                401,
                {"error": "login_required", "error_description": "Sign-in required."},
            )
        self.check_allowed(session.user)
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in identity_headers(session.user)
        ]
        return Reply(
            200, [*headers, ("Content-Type", "text/plain"), *security_headers()], b""
        )

    def _health(self, request: Request) -> Flow[Outcome]:
        if request.method not in ("GET", "HEAD"):
            return self._method_not_allowed(request, "GET")
        return Reply(
            200,
            [("Content-Type", "text/plain"), ("Cache-Control", "no-store")],
            b"ok\n",
        )
        yield  # pragma: no cover - makes this a generator like the other endpoints

    def _backchannel_logout(self, request: Request) -> Flow[Outcome]:
        if request.method != "POST":
            return self._method_not_allowed(request, "POST")
        body = yield ReadBody(MAX_BACKCHANNEL_BODY)
        if body is None:
            raise RequestError(
                "The logout request is too large.",
                status=413,
                detail="back-channel logout body over 64 KiB",
            )
        form = dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
        token = form.get("logout_token")
        if not token:
            raise RequestError(
                "The logout request has no logout_token.",
                detail="back-channel logout without logout_token",
            )
        metadata = yield from self.oidc.metadata()
        try:
            claims = yield from self.oidc.verify_logout_token(metadata, token)
        except TokenValidationError as exc:
            raise RequestError(
                "The logout token is invalid.",
                detail=f"logout token rejected: {exc.detail}",
            ) from exc
        sub = claims.get("sub") if isinstance(claims.get("sub"), str) else None
        sid = claims.get("sid") if isinstance(claims.get("sid"), str) else None
        if self.uses_store:
            yield from self._revoke_stored(sub, sid)
        else:
            self.revocations.revoke(sub, sid)
            self._forget(lambda session: _names_session(session, sub, sid))
        logger.info("back-channel logout of sub=%r sid=%r", sub, sid)
        return Reply(200, [("Cache-Control", "no-store")], b"")

    def _revoke_stored(self, sub: str | None, sid: str | None) -> Flow[None]:
        kind, value = ("sid", sid) if sid else ("sub", sub)
        index = f"{STORE_PREFIX}{kind}:{value}"
        members = yield from self._store(StoreCall("smembers", (index,)))
        keys = [
            STORE_PREFIX + "s:" + (m.decode() if isinstance(m, bytes) else m)
            for m in members or ()
        ]
        if keys:
            yield from self._store(StoreCall("delete", tuple(keys)))
        yield from self._store(StoreCall("delete", (index,)))

    # Helpers

    def _method_not_allowed(self, request: Request, allow: str) -> Reply:
        return error_reply(
            request,
            405,
            "method_not_allowed",
            f"This endpoint accepts {allow} only.",
            headers=[("Allow", allow)],
        )

    def _reject(
        self, request: Request, exc: RequestError, *, referrer: bool = False
    ) -> Reply:
        level = logging.ERROR if exc.status >= 500 else logging.WARNING
        logger.log(
            level,
            "%s %s rejected with %s: %s, request %s",
            _loggable(request.method),
            _loggable(request.path),
            exc.status,
            exc.detail,
            self.request_id(request),
        )
        retry = self.login_url if isinstance(exc, LoginError) else None
        return error_reply(
            request,
            exc.status,
            exc.code,
            exc.message,
            retry_url=retry,
            referrer=referrer,
        )

    def request_id(self, request: Request) -> str:
        value = request.headers.get("x-request-id")
        if value and _REQUEST_ID.fullmatch(value):
            return value
        return secrets.token_hex(8)

    def is_trusted_proxy(self, request: Request) -> bool:
        """Tell whether the peer is one of ``SSO_TRUSTED_PROXIES``."""
        if not self.trusted_networks or request.client is None:
            return False
        try:
            address = ipaddress.ip_address(request.client)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_networks)

    def origin(self, request: Request) -> str:
        """Return the site's origin: scheme and host, from trusted proxies too."""
        scheme, host = request.scheme, request.headers.get("host", "")
        if self.is_trusted_proxy(request):
            forwarded_proto = request.headers.get("x-forwarded-proto")
            forwarded_host = request.headers.get("x-forwarded-host")
            if forwarded_proto:
                scheme = forwarded_proto.split(",")[0].strip().lower()
            if forwarded_host:
                host = forwarded_host.split(",")[0].strip()
        if scheme not in ("http", "https"):
            scheme = "http"
        if not _HOST.fullmatch(host):
            raise RequestError(
                "The request's Host header is invalid.",
                detail=f"invalid host {host[:100]!r}",
            )
        return f"{scheme}://{host}"

    def secure(self, request: Request) -> bool:
        setting = self.settings.cookie_secure
        if setting != "auto":
            return setting == "true"
        return self.origin(request).startswith("https:")

    def redirect_uri(self, request: Request) -> str:
        if self.settings.redirect_uri:
            return self.settings.redirect_uri
        return self.origin(request) + self.settings.redirect_path

    def post_logout_uri(self, request: Request) -> str:
        if self.settings.post_logout_redirect_uri:
            return self.settings.post_logout_redirect_uri
        return self.origin(request) + "/"


def _loggable(text: str, limit: int = 200) -> str:
    """Escape control characters, so a request cannot forge a line in the log."""
    return text[:limit].encode("unicode_escape").decode("ascii")


def _names_session(session: Session, sub: str | None, sid: str | None) -> bool:
    if sid is not None:
        return session.sid == sid
    return session.user.sub == sub


def parse_cookies(header: str) -> Mapping[str, str]:
    """Parse a Cookie header with werkzeug, whatever bytes the client sent.

    Servers hand the header over as latin-1 text, and cookies are UTF-8. Invalid
    bytes are replaced rather than raised on, so such a cookie is simply invalid.
    """
    text = header.encode("latin-1", "replace").decode("utf-8", "replace")
    return parse_cookie(text)
