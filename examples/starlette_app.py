"""A Starlette application behind SSOMiddleware, used as ASGI middleware.

Every page needs a login except ``/public``, when ``SSO_PUBLIC_PATHS=/public`` is
set. The middleware sets ``scope["user"]``, so ``request.user`` works as with
Starlette's own AuthenticationMiddleware: a signed-in User, or on a public path
without a session the anonymous user, whose ``is_authenticated`` is false. See
README.md in this directory for the settings and the commands to run it.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sso_middleware import SSOMiddleware


async def index(request: Request) -> JSONResponse:
    user = request.user
    return JSONResponse(
        {
            "message": f"Hello, {user.display_name}!",
            "sub": user.sub,
            "email": user.email,
            "groups": list(user.groups),
        }
    )


async def public(request: Request) -> JSONResponse:
    if request.user.is_authenticated:
        message = f"Hello, {request.user.display_name}. This page is public."
    else:
        message = "Hello, visitor. This page is public: sign in at /_sso/login."
    return JSONResponse({"message": message})


# Settings come from the SSO_* environment variables. Keyword arguments override
# them, such as Middleware(SSOMiddleware, public_paths=["/public"]).
app = Starlette(
    routes=[Route("/", index), Route("/public", public)],
    middleware=[Middleware(SSOMiddleware)],
)
