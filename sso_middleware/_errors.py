"""The exceptions of sso-middleware.

Every error that the package raises derives from :class:`SSOError`. Errors met while a
request is handled carry the HTTP status and a short, public message, so that one
place turns them into a response page and a log line.
"""

from __future__ import annotations


class SSOError(Exception):
    """Base class of every error raised by sso-middleware."""


class ConfigurationError(SSOError, ValueError):
    """Invalid or missing settings.

    ``problems`` maps each bad setting, named as its environment variable, to a
    sentence that describes a valid value.
    """

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = dict(problems)
        lines = [f"  {name}: {message}" for name, message in self.problems.items()]
        super().__init__("Invalid sso-middleware settings:\n" + "\n".join(lines))


class RequestError(SSOError):
    """An error that ends one request with an error page.

    ``status`` is the HTTP status of the page, ``code`` a short machine-readable
    reason (the ``error`` member of the JSON body) and ``message`` a sentence that is
    safe to show to the user. ``detail`` goes to the log only.
    """

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, detail: str = "", status: int | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail or message
        if status is not None:
            self.status = status


class LoginError(RequestError):
    """A callback that cannot complete a login: bad state, code or ID token."""

    code = "login_failed"


class TokenValidationError(LoginError):
    """An ID token or logout token that fails verification."""

    code = "invalid_token"


class ProviderError(RequestError):
    """The identity provider is unreachable or returned an unusable response."""

    status = 502
    code = "provider_error"


class AccessDenied(RequestError):
    """An authenticated user whom the allow-lists do not admit."""

    status = 403
    code = "access_denied"


class StoreUnavailable(RequestError):
    """The session store cannot be reached."""

    status = 503
    code = "session_store_unavailable"
