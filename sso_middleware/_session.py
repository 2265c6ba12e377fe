"""Signed cookies: the session, the login states in flight, and their caches."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from cachetools import LRUCache, TTLCache
from itsdangerous import BadData, TimestampSigner
from werkzeug.http import dump_cookie

from ._settings import Settings
from ._user import User

# A login has this many seconds to come back from the provider.
STATE_LIFETIME = 600
# At most this many logins can be in flight in one browser: each has its own state
# cookie, and the oldest is evicted, so many tabs cannot grow the Cookie header
# without bound.
MAX_STATES = 5
# Browsers keep cookies up to about 4096 bytes, name and attributes included
# (RFC 6265 6.1 sets that as the minimum a browser must support).
MAX_COOKIE_SIZE = 4000
VERIFIED_CACHE_SIZE = 10_000

# The claims a session keeps. Everything else in the ID token is dropped, so the
# cookie stays small.
KEPT_CLAIMS = (
    "sub",
    "iss",
    "email",
    "email_verified",
    "name",
    "preferred_username",
    "given_name",
    "family_name",
    "groups",
    "roles",
    "sid",
    "oid",
    "organization_id",
    "amr",
    "acr",
    "auth_time",
    "locale",
)


@dataclass(frozen=True, slots=True)
class LoginState:
    """The secrets of one login in flight, kept in its own signed cookie."""

    state: str
    nonce: str
    verifier: str
    return_to: str
    redirect_uri: str
    issued_at: float


@dataclass(frozen=True, slots=True)
class Session:
    """A verified session: the user, when it ends, and its ids for revocation.

    ``session_id`` is a random id inside the signed payload. Revocation goes by it,
    never by the cookie's text, because a signed value can be spelled in more than
    one way (Base64 padding, for one) and still verify.
    """

    user: User
    expires_at: float
    issued_at: float
    sid: str | None
    session_id: str


_MISSING = object()


def _derived_keys(secret_keys: tuple[str, ...], purpose: str) -> list[bytes]:
    """Derive one key per secret for ``purpose``, in itsdangerous' order.

    Deriving once here, with HMAC-SHA256 as itsdangerous' "hmac" derivation does,
    spares itsdangerous a derivation on every signature. itsdangerous signs with
    the last key and verifies with all, and the first secret signs.
    """
    salt = f"sso-middleware.{purpose}".encode()
    derived = [
        hmac.new(secret.encode("utf-8"), salt, hashlib.sha256).digest()
        for secret in secret_keys
    ]
    return list(reversed(derived))


def _signer(secret_keys: tuple[str, ...], purpose: str) -> TimestampSigner:
    return TimestampSigner(
        _derived_keys(secret_keys, purpose),
        key_derivation="none",
        digest_method=hashlib.sha256,
    )


class _SignedJSON:
    """JSON values signed with a timestamp, as URL-safe cookie values.

    It does what itsdangerous' URLSafeTimedSerializer does, with one signer built
    up front instead of one per call, which halves the cost of a verification.
    """

    def __init__(self, secret_keys: tuple[str, ...], purpose: str) -> None:
        self._signer = _signer(secret_keys, purpose)

    def dumps(self, value: Any) -> str:
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return self._signer.sign(_b64(data)).decode("ascii")

    def loads(self, signed: str, *, max_age: int) -> Any:
        """Return the value, or raise BadData when it is invalid or expired."""
        payload = self._signer.unsign(signed, max_age=max_age)
        try:
            return json.loads(_unb64(payload.decode("ascii")))
        except ValueError as exc:
            raise BadData("invalid payload") from exc


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8")).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> str:
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")


def session_claims(
    claims: Mapping[str, Any], userinfo: Mapping[str, Any]
) -> dict[str, Any]:
    """Return the claims a session keeps: the ID token's, completed by userinfo."""
    kept = {name: userinfo[name] for name in KEPT_CLAIMS if name in userinfo}
    kept.update({name: claims[name] for name in KEPT_CLAIMS if name in claims})
    return kept


class CookieCodec:
    """Signs and verifies the middleware's cookies with itsdangerous.

    The first of ``settings.secret_keys`` signs and all of them verify, so a key can
    be rotated without logging everybody out.
    """

    def __init__(self, settings: Settings) -> None:
        keys = settings.secret_keys
        self._session = _SignedJSON(keys, "session")
        self._id_token = _SignedJSON(keys, "id-token")
        self._session_id = _SignedJSON(keys, "session-id")
        self._state = _signer(keys, "state")
        self.lifetime = settings.session_lifetime
        self.cookie_name = settings.cookie_name
        self.state_prefix = settings.cookie_name + ".state."
        base = settings.cookie_name
        # A __Host- cookie must have Path=/, so the ID token cookie, which is scoped
        # to the logout path, uses the __Secure- prefix instead.
        if base.startswith("__Host-"):
            base = "__Secure-" + base[len("__Host-") :]
        self.id_token_cookie = base + ".idt"
        self.logout_path = settings.endpoint_prefix + "/logout"
        self._verified: LRUCache[str, Session | None | object] = LRUCache(
            VERIFIED_CACHE_SIZE
        )
        # cachetools caches are not thread-safe, and WSGI servers run requests in
        # threads.
        self._lock = threading.Lock()

    # Sessions

    def dump_session(self, payload: Mapping[str, Any]) -> str:
        return self._session.dumps(dict(payload))

    def load_session(self, value: str) -> Session | None:
        """Verify a session cookie, with a cache of the cookies already verified.

        A cache hit does no HMAC or JSON work. The expiry is checked on every call.
        A value too long to be a session is rejected before the cache, so junk
        cookies cannot fill it with large keys.
        """
        if len(value) > MAX_COOKIE_SIZE:
            return None
        with self._lock:
            cached = self._verified.get(value, _MISSING)
        if cached is _MISSING:
            session = self._load_session(value)
            with self._lock:
                self._verified[value] = session
        else:
            session = cast("Session | None", cached)
        if session is None or session.expires_at <= time.time():
            return None
        return session

    def _load_session(self, value: str) -> Session | None:
        try:
            payload = self._session.loads(value, max_age=self.lifetime)
        except BadData:
            return None
        return session_from_payload(payload)

    def new_session_payload(self, claims: Mapping[str, Any]) -> dict[str, Any]:
        now = int(time.time())
        return {
            "c": dict(claims),
            "id": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + self.lifetime,
        }

    def dump_session_id(self, session_id: str) -> str:
        return self._session_id.dumps(session_id)

    def load_session_id(self, value: str) -> str | None:
        """Verify a server-side session's cookie and return its session id."""
        if len(value) > 512:
            return None
        try:
            session_id = self._session_id.loads(value, max_age=self.lifetime)
        except BadData:
            return None
        return session_id if isinstance(session_id, str) else None

    # Login states

    def new_state(
        self, state: str, nonce: str, verifier: str, return_to: str, redirect_uri: str
    ) -> tuple[str, str]:
        """Return the name and value of a new state cookie.

        The value is the dot-separated fields, signed with a timestamp. The fields
        are URL-safe Base64 or tokens made of its alphabet, so no JSON is needed.
        """
        fields = (state, nonce, verifier, _b64(return_to), _b64(redirect_uri))
        value = self._state.sign(".".join(fields)).decode("ascii")
        return self.state_cookie_name(state), value

    def state_cookie_name(self, state: str) -> str:
        # The name carries part of the state so that the callback finds its own
        # entry among several logins in flight. The full state is compared inside.
        return self.state_prefix + state[:16]

    def load_state(self, value: str, state: str) -> LoginState | None:
        """Verify a state cookie and check that it belongs to ``state``."""
        try:
            payload, signed_at = self._state.unsign(
                value, max_age=STATE_LIFETIME, return_timestamp=True
            )
            fields = payload.decode("ascii").split(".")
            if len(fields) != 5:
                return None
            # RFC 9700 4.7.1: the state binds the callback to this browser's login.
            if not hmac.compare_digest(fields[0].encode(), state.encode()):
                return None
            return LoginState(
                fields[0],
                fields[1],
                fields[2],
                _unb64(fields[3]),
                _unb64(fields[4]),
                signed_at.timestamp(),
            )
        except (BadData, ValueError):
            return None

    def state_age(self, value: str) -> float | None:
        """Return when a state cookie was signed, or None when it is invalid."""
        try:
            _, signed_at = self._state.unsign(
                value, max_age=STATE_LIFETIME, return_timestamp=True
            )
        except BadData:
            return None
        return float(signed_at.timestamp())

    # ID token for logout

    def dump_id_token(self, token: str) -> str:
        return self._id_token.dumps(token)

    def load_id_token(self, value: str) -> str | None:
        try:
            token = self._id_token.loads(value, max_age=self.lifetime)
        except BadData:
            return None
        return token if isinstance(token, str) else None

    # Cookie headers

    def set_cookie(
        self, name: str, value: str, *, secure: bool, max_age: int, path: str = "/"
    ) -> str:
        """Format a Set-Cookie value: HttpOnly and SameSite=Lax always.

        SameSite=Lax keeps the cookie off cross-site subrequests and POSTs, yet sends
        it on the top-level navigation back from the provider.
        """
        return dump_cookie(
            name,
            value,
            max_age=max_age,
            path=path,
            secure=secure,
            httponly=True,
            samesite="Lax",
        )

    def delete_cookie(self, name: str, *, secure: bool, path: str = "/") -> str:
        return dump_cookie(
            name,
            "",
            max_age=0,
            expires=0,
            path=path,
            secure=secure,
            httponly=True,
            samesite="Lax",
        )

    def is_own_cookie(self, name: str) -> bool:
        return (
            name == self.cookie_name
            or name == self.id_token_cookie
            or name.startswith(self.state_prefix)
        )


def session_from_payload(payload: Any) -> Session | None:
    """Build a session from a verified payload, or None when it is malformed."""
    if not isinstance(payload, dict):
        return None
    claims = payload.get("c")
    expires_at = payload.get("exp")
    issued_at = payload.get("iat")
    session_id = payload.get("id")
    if (
        not isinstance(claims, dict)
        or not isinstance(claims.get("sub"), str)
        or not isinstance(expires_at, int | float)
        or not isinstance(issued_at, int | float)
        or not isinstance(session_id, str)
    ):
        return None
    sid = claims.get("sid")
    return Session(
        user=User.from_claims(claims),
        expires_at=float(expires_at),
        issued_at=float(issued_at),
        sid=sid if isinstance(sid, str) else None,
        session_id=session_id,
    )


class Revocations:
    """Sessions ended by back-channel logout, remembered in this process.

    Entries live as long as a session can, so a revoked cookie stays refused until it
    would have expired anyway.
    """

    def __init__(self, lifetime: int) -> None:
        self._sids: TTLCache[str, float] = TTLCache(100_000, lifetime)
        self._subs: TTLCache[str, float] = TTLCache(100_000, lifetime)
        self._sessions: TTLCache[str, bool] = TTLCache(100_000, lifetime)
        self._lock = threading.Lock()
        self._any = False

    def __bool__(self) -> bool:
        # A flag, not the caches' lengths, because TTLCache expires entries on
        # every len() and this runs on each cache miss.
        return self._any

    def _mark(self) -> None:
        self._any = True

    def revoke_session(self, session_id: str) -> None:
        with self._lock:
            self._sessions[session_id] = True
            self._mark()

    def revoke(self, sub: str | None, sid: str | None) -> None:
        now = time.time()
        with self._lock:
            self._mark()
            if sid:
                self._sids[sid] = now
            elif sub:
                # Without a sid the provider ends every session of the user that
                # exists now. Sessions started later are not affected.
                self._subs[sub] = now

    def is_revoked(self, session: Session) -> bool:
        with self._lock:
            if session.session_id in self._sessions:
                return True
            if session.sid is not None and session.sid in self._sids:
                return True
            revoked_at = self._subs.get(session.user.sub)
        return revoked_at is not None and session.issued_at <= revoked_at


class UsedStates:
    """States already redeemed in this process, so a callback cannot be replayed."""

    def __init__(self) -> None:
        self._used: TTLCache[str, bool] = TTLCache(100_000, STATE_LIFETIME)
        self._lock = threading.Lock()

    def claim(self, state: str) -> bool:
        """Mark ``state`` used. Return False when it was used before."""
        with self._lock:
            if state in self._used:
                return False
            self._used[state] = True
            return True


def new_session_id() -> str:
    return secrets.token_urlsafe(32)
