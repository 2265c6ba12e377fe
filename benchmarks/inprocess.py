"""Authenticated requests called in-process: the middleware's hot path.

Each benchmark calls a trivial application directly, with no server, in three
forms: alone, behind sso-middleware with a session cookie it has seen before (the
remembered Cookie header), and behind the way people write it by hand (Starlette's
``SessionMiddleware`` with a check for a user in ASGI, werkzeug's ``Request`` with
``itsdangerous`` in WSGI). The figure that counts is each form's time minus the
bare application's, measured in the same run.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import fixtures
from harness import (
    TIMING_HEADERS,
    Budget,
    Plan,
    Runner,
    Section,
    asgi_runner,
    measure,
    overhead_rows,
    raw_runs,
    wsgi_runner,
)
from itsdangerous import BadData, URLSafeTimedSerializer
from starlette.middleware.sessions import SessionMiddleware
from werkzeug.wrappers import Request as WerkzeugRequest

from sso_middleware import SSOMiddleware

HAND_ROLLED_COOKIE = "session"
HAND_ROLLED_MAX_AGE = 28800


_NO_BYPASS = (
    "The row with the hot path bypassed is missing: the middleware no longer has "
    "the internal attribute that benchmarks/fixtures.py replaces."
)

# ASGI


def require_session_user(app: Any) -> Any:
    """Wrap ``app`` so that a request without ``session["user"]`` gets 401."""
    denied_start = {
        "type": "http.response.start",
        "status": 401,
        "headers": [(b"content-length", b"0")],
    }
    denied_body = {"type": "http.response.body", "body": b""}

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope["session"].get("user"):
            await send(denied_start)
            await send(denied_body)
            return
        await app(scope, receive, send)

    return guarded


def starlette_app() -> Any:
    """Return the hand-rolled ASGI stack: SessionMiddleware and a user check."""
    return SessionMiddleware(
        require_session_user(fixtures.asgi_app),
        secret_key=fixtures.SECRET_KEY,
        session_cookie=HAND_ROLLED_COOKIE,
        max_age=HAND_ROLLED_MAX_AGE,
    )


async def starlette_cookie(index: int = 0) -> str:
    """Return a session cookie that SessionMiddleware itself signed for a user."""

    async def sign_in(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["session"]["user"] = fixtures.claims(index)
        await fixtures.asgi_app(scope, receive, send)

    middleware = SessionMiddleware(
        sign_in,
        secret_key=fixtures.SECRET_KEY,
        session_cookie=HAND_ROLLED_COOKIE,
        max_age=HAND_ROLLED_MAX_AGE,
    )
    recorder = fixtures.ResponseRecorder()
    await middleware(fixtures.asgi_scope(), fixtures.asgi_receive, recorder)
    set_cookie = recorder.header_values(b"set-cookie")[0]
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


def starlette_cookie_value(loop: asyncio.AbstractEventLoop, index: int = 0) -> str:
    return loop.run_until_complete(starlette_cookie(index))


async def check_asgi_status(app: Any, scope: dict[str, Any], expected: int) -> None:
    """Raise unless ``app`` responds to ``scope`` with status ``expected``."""
    recorder = fixtures.ResponseRecorder()
    await app(dict(scope), fixtures.asgi_receive, recorder)
    if recorder.status != expected:
        raise RuntimeError(
            f"benchmark request got status {recorder.status}, expected {expected}"
        )


def asgi_hot_path(plan: Plan) -> Section:
    loop = asyncio.new_event_loop()
    try:
        return _asgi_hot_path(loop, plan)
    finally:
        loop.close()


def _asgi_hot_path(loop: asyncio.AbstractEventLoop, plan: Plan) -> Section:
    middleware = SSOMiddleware(fixtures.asgi_app, fixtures.settings(), interface="asgi")
    full_path = SSOMiddleware(fixtures.asgi_app, fixtures.settings(), interface="asgi")
    # With the remembered Cookie headers bypassed, every request takes the full
    # path: request parsing, the core's generator and the verified-cookie cache.
    bypassed = fixtures.bypass_hot_path(full_path)
    hand_rolled = starlette_app()

    sso_cookie = fixtures.session_cookie_value(middleware.core.cookies)
    sso_scope = fixtures.asgi_scope(cookie=fixtures.cookie_header(sso_cookie))
    starlette_scope = fixtures.asgi_scope(
        cookie=fixtures.cookie_header(
            starlette_cookie_value(loop), name=HAND_ROLLED_COOKIE
        )
    )
    for app, scope in (
        (fixtures.asgi_app, sso_scope),
        (middleware, sso_scope),
        (full_path, sso_scope),
        (hand_rolled, starlette_scope),
    ):
        loop.run_until_complete(check_asgi_status(app, scope, 200))

    def runner(app: Any, scope: dict[str, Any]) -> Runner:
        return asgi_runner(
            loop,
            app,
            itertools.repeat(scope),
            fixtures.asgi_receive,
            fixtures.asgi_discard,
        )

    cases = {
        "bare": runner(fixtures.asgi_app, sso_scope),
        "sso": runner(middleware, sso_scope),
        "sso_full": runner(full_path, sso_scope),
        "starlette": runner(hand_rolled, starlette_scope),
    }
    if not bypassed:
        del cases["sso_full"]
    timings = measure(cases, plan)
    labels = {
        "bare": "bare ASGI app",
        "sso": "sso-middleware, remembered cookie (hot path)",
        "sso_full": "sso-middleware, hot path bypassed (verified-cookie cache)",
        "starlette": "Starlette SessionMiddleware + user check",
    }
    section = Section(
        "In-process ASGI, authenticated request",
        "The same valid session cookie on every request, the app called directly "
        f"({plan.number} requests per run, median of {plan.repeats} runs).",
        TIMING_HEADERS,
        overhead_rows(timings, "bare", {k: v for k, v in labels.items() if k in cases}),
    )
    if not bypassed:
        section.notes.append(_NO_BYPASS)
    over_sso = timings["sso"].median_ns - timings["bare"].median_ns
    over_hand = timings["starlette"].median_ns - timings["bare"].median_ns
    section.budgets.append(
        Budget(
            "ASGI cache hit overhead",
            "≤ 3 µs over bare",
            f"{over_sso / 1000:+.2f} µs",
            over_sso <= 3000,
        )
    )
    section.budgets.append(
        Budget(
            "ASGI hit vs SessionMiddleware",
            "≥ 4x less overhead",
            f"{over_hand / max(over_sso, 1):.1f}x less",
            over_hand >= 4 * over_sso,
        )
    )
    section.data = raw_runs(timings)
    return section


# WSGI


def werkzeug_app(serializer: URLSafeTimedSerializer) -> Any:
    """Return the hand-rolled WSGI check: werkzeug's cookies and itsdangerous."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        request = WerkzeugRequest(environ)
        value = request.cookies.get(HAND_ROLLED_COOKIE)
        user = None
        if value is not None:
            try:
                user = serializer.loads(value, max_age=HAND_ROLLED_MAX_AGE).get("user")
            except BadData:
                user = None
        if not user:
            start_response("401 Unauthorized", [("Content-Length", "0")])
            return [b""]
        environ["REMOTE_USER"] = user["sub"]
        return fixtures.wsgi_app(environ, start_response)

    return app


def hand_rolled_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(fixtures.SECRET_KEY, salt="cookie-session")


def check_wsgi_status(app: Any, environ: dict[str, Any], expected: int) -> None:
    """Raise unless ``app`` responds to ``environ`` with status ``expected``."""
    seen: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        seen.append(status)

    b"".join(app(dict(environ), start_response))
    if not seen or int(seen[0].split()[0]) != expected:
        raise RuntimeError(f"benchmark request got {seen}, expected {expected}")


def wsgi_hot_path(plan: Plan) -> Section:
    middleware = SSOMiddleware(fixtures.wsgi_app, fixtures.settings(), interface="wsgi")
    full_path = SSOMiddleware(fixtures.wsgi_app, fixtures.settings(), interface="wsgi")
    bypassed = fixtures.bypass_hot_path(full_path)
    serializer = hand_rolled_serializer()
    hand_rolled = werkzeug_app(serializer)

    sso_cookie = fixtures.session_cookie_value(middleware.core.cookies)
    sso_environ = fixtures.wsgi_environ(cookie=fixtures.cookie_header(sso_cookie))
    hand_environ = fixtures.wsgi_environ(
        cookie=fixtures.cookie_header(
            serializer.dumps({"user": fixtures.claims()}), name=HAND_ROLLED_COOKIE
        )
    )
    for app, environ in (
        (fixtures.wsgi_app, sso_environ),
        (middleware, sso_environ),
        (full_path, sso_environ),
        (hand_rolled, hand_environ),
    ):
        check_wsgi_status(app, environ, 200)

    def runner(app: Any, environ: dict[str, Any]) -> Runner:
        return wsgi_runner(app, itertools.repeat(environ), fixtures.wsgi_start_response)

    cases = {
        "bare": runner(fixtures.wsgi_app, sso_environ),
        "sso": runner(middleware, sso_environ),
        "sso_full": runner(full_path, sso_environ),
        "werkzeug": runner(hand_rolled, hand_environ),
    }
    if not bypassed:
        del cases["sso_full"]
    timings = measure(cases, plan)
    labels = {
        "bare": "bare WSGI app",
        "sso": "sso-middleware, remembered cookie (hot path)",
        "sso_full": "sso-middleware, hot path bypassed (verified-cookie cache)",
        "werkzeug": "werkzeug Request + itsdangerous check",
    }
    section = Section(
        "In-process WSGI, authenticated request",
        "The same valid session cookie on every request, the app called directly "
        f"({plan.number} requests per run, median of {plan.repeats} runs).",
        TIMING_HEADERS,
        overhead_rows(timings, "bare", {k: v for k, v in labels.items() if k in cases}),
    )
    if not bypassed:
        section.notes.append(_NO_BYPASS)
    over_sso = timings["sso"].median_ns - timings["bare"].median_ns
    over_hand = timings["werkzeug"].median_ns - timings["bare"].median_ns
    section.budgets.append(
        Budget(
            "WSGI cache hit overhead",
            "≤ 3 µs over bare",
            f"{over_sso / 1000:+.2f} µs",
            over_sso <= 3000,
        )
    )
    section.budgets.append(
        Budget(
            "WSGI hit vs werkzeug + itsdangerous",
            "≥ 4x less overhead",
            f"{over_hand / max(over_sso, 1):.1f}x less",
            over_hand >= 4 * over_sso,
        )
    )
    section.data = raw_runs(timings)
    return section
