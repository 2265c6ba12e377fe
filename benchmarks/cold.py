"""The paths that do real work: a new cookie, a login redirect and the callback.

Every request below takes the middleware's full path. The provider is
``fixtures.MockProvider`` behind ``httpx.MockTransport``, with discovery and the
JWKS fetched during the warm-up, so the figures are the CPU time of this process.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
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
from inprocess import (
    HAND_ROLLED_COOKIE,
    check_asgi_status,
    check_wsgi_status,
    hand_rolled_serializer,
    starlette_app,
    starlette_cookie_value,
    werkzeug_app,
)

from sso_middleware import SSOMiddleware

CALLBACK_PATH = "/_sso/callback"


def cache_miss(plan: Plan) -> Section:
    """Time the first request of each session cookie, against the hand-rolled stacks."""
    loop = asyncio.new_event_loop()
    try:
        return _cache_miss(loop, plan)
    finally:
        loop.close()


def _cache_miss(loop: asyncio.AbstractEventLoop, plan: Plan) -> Section:
    asgi_sso = SSOMiddleware(fixtures.asgi_app, fixtures.settings(), interface="asgi")
    wsgi_sso = SSOMiddleware(fixtures.wsgi_app, fixtures.settings(), interface="wsgi")
    codec = asgi_sso.core.cookies
    serializer = hand_rolled_serializer()
    count = plan.total
    # Distinct users give distinct cookies, so neither the remembered Cookie headers
    # nor the verified-cookie cache contains them. The hand-rolled stacks get distinct
    # cookies too, although they cache nothing.
    sso_cookies = [
        fixtures.cookie_header(fixtures.session_cookie_value(codec, index))
        for index in range(count)
    ]
    starlette_cookies = [
        fixtures.cookie_header(
            starlette_cookie_value(loop, index), name=HAND_ROLLED_COOKIE
        )
        for index in range(count)
    ]
    werkzeug_cookies = [
        fixtures.cookie_header(
            serializer.dumps({"user": fixtures.claims(index)}), name=HAND_ROLLED_COOKIE
        )
        for index in range(count)
    ]
    sso_scopes = [fixtures.asgi_scope(cookie=cookie) for cookie in sso_cookies]
    starlette_scopes = [fixtures.asgi_scope(cookie=c) for c in starlette_cookies]
    sso_environs = [fixtures.wsgi_environ(cookie=cookie) for cookie in sso_cookies]
    werkzeug_environs = [fixtures.wsgi_environ(cookie=c) for c in werkzeug_cookies]

    hand_asgi = starlette_app()
    hand_wsgi = werkzeug_app(serializer)
    # The status checks use a cookie beyond the timed ones, so every timed
    # request is a first request.
    extra = count + 1
    loop.run_until_complete(
        check_asgi_status(
            SSOMiddleware(fixtures.asgi_app, fixtures.settings(), interface="asgi"),
            fixtures.asgi_scope(
                cookie=fixtures.cookie_header(
                    fixtures.session_cookie_value(codec, extra)
                )
            ),
            200,
        )
    )
    loop.run_until_complete(check_asgi_status(hand_asgi, starlette_scopes[0], 200))
    check_wsgi_status(hand_wsgi, werkzeug_environs[0], 200)

    def asgi(app: Any, scopes: list[dict[str, Any]]) -> Runner:
        return asgi_runner(
            loop, app, iter(scopes), fixtures.asgi_receive, fixtures.asgi_discard
        )

    def wsgi(app: Any, environs: list[dict[str, Any]]) -> Runner:
        return wsgi_runner(app, iter(environs), fixtures.wsgi_start_response)

    asgi_timings = measure(
        {
            "bare": asgi(fixtures.asgi_app, sso_scopes),
            "sso": asgi(asgi_sso, sso_scopes),
            "starlette": asgi(hand_asgi, starlette_scopes),
        },
        plan,
    )
    wsgi_timings = measure(
        {
            "bare": wsgi(fixtures.wsgi_app, sso_environs),
            "sso": wsgi(wsgi_sso, sso_environs),
            "werkzeug": wsgi(hand_wsgi, werkzeug_environs),
        },
        plan,
    )
    remembered = fixtures.remembered_count(asgi_sso.core)
    section = Section(
        "Cold path: first request with a new session cookie",
        f"{count} distinct valid cookies, each sent once ({plan.number} requests per "
        f"run, median of {plan.repeats} runs). At the end the middleware remembered "
        f"{remembered} Cookie headers.",
        TIMING_HEADERS,
    )
    section.rows = overhead_rows(
        asgi_timings,
        "bare",
        {
            "bare": "ASGI: bare app",
            "sso": "ASGI: sso-middleware, new cookie",
            "starlette": "ASGI: Starlette SessionMiddleware + user check",
        },
    ) + overhead_rows(
        wsgi_timings,
        "bare",
        {
            "bare": "WSGI: bare app",
            "sso": "WSGI: sso-middleware, new cookie",
            "werkzeug": "WSGI: werkzeug Request + itsdangerous check",
        },
    )
    sso_ns = asgi_timings["sso"].median_ns
    hand_ns = asgi_timings["starlette"].median_ns
    section.budgets.append(
        Budget(
            "ASGI cache miss vs SessionMiddleware",
            "≤ SessionMiddleware's request",
            f"{sso_ns / 1000:.2f} µs vs {hand_ns / 1000:.2f} µs",
            sso_ns <= hand_ns,
        )
    )
    sso_ns = wsgi_timings["sso"].median_ns
    hand_ns = wsgi_timings["werkzeug"].median_ns
    section.budgets.append(
        Budget(
            "WSGI cache miss vs werkzeug + itsdangerous",
            "≤ the hand-rolled request",
            f"{sso_ns / 1000:.2f} µs vs {hand_ns / 1000:.2f} µs",
            sso_ns <= hand_ns,
        )
    )
    section.data = {
        "asgi": raw_runs(asgi_timings),
        "wsgi": raw_runs(wsgi_timings),
    }
    return section


# Login: the redirect and the callback


class LoginBench:
    """One middleware, ASGI or WSGI, with the mock provider, for timing logins."""

    def __init__(self, interface: str, loop: asyncio.AbstractEventLoop) -> None:
        self.interface = interface
        self.loop = loop
        self.provider = fixtures.MockProvider()
        app = fixtures.asgi_app if interface == "asgi" else fixtures.wsgi_app
        self.bare = app
        self.middleware = SSOMiddleware(
            app,
            fixtures.settings(),
            interface=interface,
            transport=self.provider.transport(),
        )
        self.logins = 0

    def call(self, path: str, query: str = "", cookie: str | None = None) -> Any:
        """Send one GET and return (status, Location, Set-Cookie values)."""
        if self.interface == "asgi":
            recorder = fixtures.ResponseRecorder()
            scope = fixtures.asgi_scope(path, cookie=cookie, query=query)
            self.loop.run_until_complete(
                self.middleware(scope, fixtures.asgi_receive, recorder)
            )
            location = recorder.header_values(b"location")
            return (
                recorder.status,
                location[0] if location else "",
                (recorder.header_values(b"set-cookie")),
            )
        seen: dict[str, Any] = {}

        def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
            seen["status"] = int(status.split()[0])
            seen["headers"] = headers

        environ = fixtures.wsgi_environ(path, cookie=cookie, query=query)
        b"".join(self.middleware(environ, start_response))
        headers = seen["headers"]
        location = [value for name, value in headers if name.lower() == "location"]
        cookies = [value for name, value in headers if name.lower() == "set-cookie"]
        return seen["status"], location[0] if location else "", cookies

    def prepare_callback(self) -> tuple[str, str]:
        """Start a login, sign its ID token, and return the callback's query and cookie.

        The redirect and the RSA signature happen here, outside the timed loop.
        """
        status, location, set_cookies = self.call("/dashboard")
        if status != 302:
            raise RuntimeError(f"login redirect got status {status}, expected 302")
        params = fixtures.authorization_params(location)
        self.logins += 1
        code = f"code-{self.interface}-{self.logins}"
        self.provider.issue_code(code, params["nonce"], self.logins)
        query = f"code={code}&state={params['state']}"
        return query, fixtures.state_cookie_pair(set_cookies)

    def redirect_runner(self, app: Any) -> Runner:
        if self.interface == "asgi":
            scope = fixtures.asgi_scope("/dashboard", query="tab=activity")
            return asgi_runner(
                self.loop,
                app,
                itertools.repeat(scope),
                fixtures.asgi_receive,
                fixtures.asgi_discard,
            )
        environ = fixtures.wsgi_environ("/dashboard", query="tab=activity")
        return wsgi_runner(app, itertools.repeat(environ), fixtures.wsgi_start_response)

    def callback_runner(
        self, logins: Iterator[tuple[str, str]], handler_share: list[float]
    ) -> Runner:
        """Return a runner of callbacks that records the mock provider's time.

        ``handler_share`` receives, per run, the provider's nanoseconds per request.
        The runner returns the elapsed time without them.
        """

        def requests(
            build: Callable[..., dict[str, Any]],
        ) -> Iterator[dict[str, Any]]:
            for query, cookie in logins:
                yield build(CALLBACK_PATH, cookie=cookie, query=query)

        if self.interface == "asgi":
            inner = asgi_runner(
                self.loop,
                self.middleware,
                requests(fixtures.asgi_scope),
                fixtures.asgi_receive,
                fixtures.asgi_discard,
            )
        else:
            inner = wsgi_runner(
                self.middleware,
                requests(fixtures.wsgi_environ),
                fixtures.wsgi_start_response,
            )

        def run(n: int) -> tuple[int, int]:
            before = self.provider.handler_ns
            elapsed, cpu = inner(n)
            provider_ns = self.provider.handler_ns - before
            handler_share.append(provider_ns / n)
            # The provider runs in this thread, so its time counts as CPU too.
            return elapsed - provider_ns, cpu - provider_ns

        return run


def login_paths(redirect_plan: Plan, callback_plan: Plan) -> Section:
    loop = asyncio.new_event_loop()
    try:
        return _login_paths(loop, redirect_plan, callback_plan)
    finally:
        loop.close()


def _login_paths(
    loop: asyncio.AbstractEventLoop, redirect_plan: Plan, callback_plan: Plan
) -> Section:
    section = Section(
        "Cold path: login redirect and callback",
        f"Redirect: an unauthenticated page load, discovery cached "
        f"({redirect_plan.number} requests per run, median of {redirect_plan.repeats} "
        f"runs). Callback: state cookie check, code exchange, RS256 ID token "
        f"verification, userinfo and the new session cookie, each login prepared "
        f"beforehand ({callback_plan.number} callbacks per run, median of "
        f"{callback_plan.repeats} runs), minus the mock provider's own time.",
        TIMING_HEADERS,
    )
    for interface in ("asgi", "wsgi"):
        bench = LoginBench(interface, loop)
        # The first login fetches discovery and the JWKS, so none of the timed
        # requests does.
        query, cookie = bench.prepare_callback()
        status, _, set_cookies = bench.call(CALLBACK_PATH, query, cookie)
        if status != 302 or not any(
            value.startswith(fixtures.COOKIE_NAME + "=") for value in set_cookies
        ):
            raise RuntimeError(f"{interface} callback got status {status}")

        redirect_timings = measure(
            {
                "bare": bench.redirect_runner(bench.bare),
                "redirect": bench.redirect_runner(bench.middleware),
            },
            redirect_plan,
        )
        logins = [bench.prepare_callback() for _ in range(callback_plan.total)]
        handler_share: list[float] = []
        callback_timings = measure(
            {"callback": bench.callback_runner(iter(logins), handler_share)},
            callback_plan,
        )
        label = interface.upper()
        base = redirect_timings["bare"].median_ns
        section.rows += overhead_rows(
            redirect_timings,
            "bare",
            {"bare": f"{label}: bare app", "redirect": f"{label}: login redirect"},
        )
        callback = callback_timings["callback"]
        cpu_base = redirect_timings["bare"].cpu_median_ns
        section.rows.append(
            [
                f"{label}: callback, without the mock provider",
                f"{callback.median_us:.2f}",
                f"±{callback.spread_us / 2:.2f}",
                f"{(callback.median_ns - base) / 1000:+.2f}",
                f"{callback.median_ns / base:.0f}x",
                f"{callback.cpu_median_ns / 1000:.2f}",
                f"{(callback.cpu_median_ns - cpu_base) / 1000:+.2f}",
            ]
        )
        provider_ns = sorted(handler_share)[len(handler_share) // 2]
        section.notes.append(
            f"{label}: the mock provider spent {provider_ns / 1000:.1f} µs per callback "
            "(two requests), subtracted above."
        )
        redirect_over = redirect_timings["redirect"].median_ns - base
        section.budgets.append(
            Budget(
                f"{label} login redirect",
                "< 50 µs over bare",
                f"{redirect_over / 1000:.1f} µs",
                redirect_over < 50_000,
            )
        )
        callback_over = callback.median_ns - base
        section.budgets.append(
            Budget(
                f"{label} callback CPU",
                "< 1 ms",
                f"{callback_over / 1000:.0f} µs",
                callback_over < 1_000_000,
            )
        )
        section.data[interface] = {
            "redirect": raw_runs(redirect_timings),
            "callback": raw_runs(callback_timings),
            "provider_ns": handler_share,
        }
    return section
