"""The timing worker of the Scalekit SDK comparison, run in the SDK's environment.

``python peer_worker.py NUMBER REPEATS WARMUP``, with this checkout and the
benchmarks folder on ``PYTHONPATH``, prints the runs of each case as JSON. See
``peer.py``, which creates the environment and starts this worker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import sys
import time
from importlib.metadata import version
from typing import Any

import fixtures
from fastapi import Depends, FastAPI, Request
from flask import Flask, g, request
from harness import Plan, Runner, asgi_runner, measure, wsgi_runner
from scalekit.frameworks.fastapi import ScalekitAuth as FastAPIScalekitAuth
from scalekit.frameworks.flask import ScalekitAuth as FlaskScalekitAuth

from sso_middleware import SSOMiddleware


class NoNetworkClient:
    """Stands in for ScalekitClient. A call would mean a token refresh: a bug here."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"the benchmark made the SDK call ScalekitClient.{name}")


def scalekit_cookie(manager: Any, claims: dict[str, Any]) -> str:
    """Return an encrypted SDK session as its callback stores it, tokens included.

    The tokens are random strings of typical JWT length: only their size matters
    to the cost of decrypting the cookie.
    """
    now = time.time()
    return str(
        manager.create_session_cookie(
            {
                "user": {**claims, "exp": now + 3600, "iat": now},
                "access_token": secrets.token_urlsafe(600),
                "refresh_token": secrets.token_urlsafe(32),
                "id_token": secrets.token_urlsafe(700),
                "expires_at": now + 3600,
            }
        )
    )


def sso_cookie() -> str:
    owner = SSOMiddleware(fixtures.wsgi_app, fixtures.settings(), interface="wsgi")
    return fixtures.cookie_header(fixtures.session_cookie_value(owner.core.cookies))


# Flask


def flask_bare() -> Flask:
    app = Flask("bare")
    app.add_url_rule("/dashboard", "dashboard", lambda: "ok")
    return app


def flask_sso() -> Flask:
    app = Flask("sso")
    app.add_url_rule("/dashboard", "dashboard", lambda: request.environ["sso.user"].sub)
    app.wsgi_app = SSOMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, fixtures.settings(), interface="wsgi"
    )
    return app


def flask_scalekit() -> tuple[Flask, str]:
    app = Flask("scalekit")
    auth = FlaskScalekitAuth(
        app,
        client=NoNetworkClient(),  # type: ignore[arg-type]
        redirect_uri=fixtures.REDIRECT_URI,
        cookie_encryption_secret=fixtures.SECRET_KEY,
        cookie_secure=False,
    )
    app.add_url_rule(
        "/dashboard", "dashboard", auth.requires_auth(lambda: g.scalekit_user["sub"])
    )
    cookie = fixtures.cookie_header(
        scalekit_cookie(auth.manager, fixtures.claims()), name=auth.manager.cookie_name
    )
    return app, cookie


def flask_cases() -> dict[str, Runner]:
    sso = sso_cookie()
    peer_app, peer_cookie = flask_scalekit()
    cases = {
        "bare": (flask_bare(), sso),
        "sso": (flask_sso(), sso),
        "scalekit": (peer_app, peer_cookie),
    }
    runners = {}
    for name, (app, cookie) in cases.items():
        environ = fixtures.wsgi_environ(cookie=cookie)
        statuses: list[str] = []

        def start_response(
            status: str, headers: Any, exc_info: Any = None, seen: list[str] = statuses
        ) -> None:
            seen.append(status)

        b"".join(app(dict(environ), start_response))
        if not statuses or not statuses[0].startswith("200"):
            raise RuntimeError(f"Flask {name} returned status {statuses}, expected 200")
        runners[name] = wsgi_runner(
            app, itertools.repeat(environ), fixtures.wsgi_start_response
        )
    return runners


# FastAPI


def fastapi_bare() -> FastAPI:
    app = FastAPI()

    @app.get("/dashboard")
    async def dashboard() -> str:
        return "ok"

    return app


def fastapi_sso() -> FastAPI:
    app = FastAPI()

    @app.get("/dashboard")
    async def dashboard(request: Request) -> str:
        return str(request.scope["user"].sub)

    app.add_middleware(SSOMiddleware, settings=fixtures.settings(), interface="asgi")
    return app


def fastapi_scalekit() -> tuple[FastAPI, str]:
    app = FastAPI()
    auth = FastAPIScalekitAuth(
        client=NoNetworkClient(),  # type: ignore[arg-type]
        redirect_uri=fixtures.REDIRECT_URI,
        cookie_encryption_secret=fixtures.SECRET_KEY,
        cookie_secure=False,
    )
    auth.install(app)

    @app.get("/dashboard")
    # FastAPI declares dependencies as parameter defaults, as the SDK documents.
    async def dashboard(user: dict[str, Any] = Depends(auth.requires_auth)) -> str:  # noqa: B008
        return str(user["sub"])

    cookie = fixtures.cookie_header(
        scalekit_cookie(auth.manager, fixtures.claims()), name=auth.manager.cookie_name
    )
    return app, cookie


def fastapi_cases(loop: asyncio.AbstractEventLoop) -> dict[str, Runner]:
    sso = sso_cookie()
    peer_app, peer_cookie = fastapi_scalekit()
    cases = {
        "bare": (fastapi_bare(), sso),
        "sso": (fastapi_sso(), sso),
        "scalekit": (peer_app, peer_cookie),
    }
    runners = {}
    for name, (app, cookie) in cases.items():
        scope = fixtures.asgi_scope(cookie=cookie)
        recorder = fixtures.ResponseRecorder()
        loop.run_until_complete(app(dict(scope), fixtures.asgi_receive, recorder))
        if recorder.status != 200:
            raise RuntimeError(
                f"FastAPI {name} returned status {recorder.status}, expected 200"
            )
        runners[name] = asgi_runner(
            loop,
            app,
            itertools.repeat(scope),
            fixtures.asgi_receive,
            fixtures.asgi_discard,
        )
    return runners


def main(number: int, repeats: int, warmup: int) -> dict[str, Any]:
    plan = Plan(number, repeats, warmup)
    loop = asyncio.new_event_loop()
    try:
        flask_timings = measure(flask_cases(), plan)
        # A FastAPI request costs several times a Flask one, so it gets fewer.
        fastapi_timings = measure(fastapi_cases(loop), plan.scaled(0.5))
    finally:
        loop.close()
    packages = ("scalekit-sdk-python", "flask", "fastapi", "starlette")
    return {
        "versions": {name: version(name) for name in packages},
        "flask": {name: t.runs_ns for name, t in flask_timings.items()},
        "fastapi": {name: t.runs_ns for name, t in fastapi_timings.items()},
    }


if __name__ == "__main__":
    figures = main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps(figures))
