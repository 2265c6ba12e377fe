"""A Flask application behind SSOMiddleware, used as WSGI middleware.

Every page needs a login except ``/public``, when ``SSO_PUBLIC_PATHS=/public`` is
set. The signed-in user is ``request.environ["sso.user"]``. On a public path without
a session it is the anonymous user, whose ``is_authenticated`` is false. See
README.md in this directory for the settings and the commands to run it.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from sso_middleware import SSOMiddleware

app = Flask(__name__)


@app.get("/")
def index() -> dict[str, Any]:
    user = request.environ["sso.user"]
    return {
        "message": f"Hello, {user.display_name}!",
        "sub": user.sub,
        "email": user.email,
        "groups": list(user.groups),
        # The WSGI middleware also sets REMOTE_USER, which many WSGI tools read.
        "remote_user": request.environ.get("REMOTE_USER"),
    }


@app.get("/public")
def public() -> dict[str, Any]:
    user = request.environ["sso.user"]
    if user.is_authenticated:
        return {"message": f"Hello, {user.display_name}. This page is public."}
    return {"message": "Hello, visitor. This page is public: sign in at /_sso/login."}


# Settings come from the SSO_* environment variables. A missing or invalid one
# raises ConfigurationError here, at import, naming every bad variable.
app.wsgi_app = SSOMiddleware(app.wsgi_app)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000)
