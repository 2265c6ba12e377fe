"""The framework-free request and outcome types, and the pure HTTP rules."""

from __future__ import annotations

import html
import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from ._user import AnonymousUser, User


@dataclass(slots=True)
class Request:
    """The parts of a request that the core reads, built by an adapter.

    ``path`` is the percent-decoded path that the application routes on, and
    ``target`` the raw path and query, used as the return address after login.
    ``headers`` has lower-case names; repeated headers are joined with ``", "``
    (``"; "`` for Cookie).
    """

    method: str
    scheme: str
    path: str
    target: str
    query: str
    headers: Mapping[str, str]
    client: str | None = None
    websocket: bool = False


@dataclass(slots=True)
class Reply:
    """A response that the middleware sends itself."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


@dataclass(slots=True)
class Forward:
    """Pass the request on to the application.

    ``cookie`` is the Cookie header with the middleware's own cookies removed (None
    removes the header). ``set_cookies`` are added to the application's response.
    """

    user: User | AnonymousUser
    cookie: str | None
    set_cookies: list[str] = field(default_factory=list)


Outcome = Reply | Forward

# Client-sent headers that could pose as the middleware's identity headers. WSGI
# servers merge "_" into "-", so both spellings are removed.
SPOOFABLE_HEADERS = frozenset(
    {
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-preferred-username",
        "x-forwarded-groups",
        "x-forwarded-access-token",
        "remote-user",
        "x-remote-user",
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-groups",
        "x-auth-request-preferred-username",
    }
)


def is_spoofable(name: str) -> bool:
    return name.replace("_", "-") in SPOOFABLE_HEADERS


def accepts_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def is_navigation(request: Request) -> bool:
    """Tell whether a browser would show the response as a page.

    Fetch metadata decides where the browser sends it. Without it, a GET or HEAD that
    accepts HTML is taken as a navigation.
    """
    if request.method not in ("GET", "HEAD"):
        return False
    mode = request.headers.get("sec-fetch-mode")
    if mode is not None:
        return mode == "navigate"
    return accepts_html(request)


def is_preflight(request: Request) -> bool:
    return (
        request.method == "OPTIONS"
        and "origin" in request.headers
        and "access-control-request-method" in request.headers
    )


_CONTROL = re.compile(r"[\x00-\x20\x7f\\]")


def safe_return_path(value: str | None) -> str:
    """Return ``value`` when it is a path on this site, otherwise ``"/"``.

    Rejects anything a browser could read as another origin: a scheme, ``//`` or
    ``/\\`` (browsers treat a backslash as a slash), control characters and
    whitespace that browsers strip, checked both raw and percent-decoded. CR and LF
    are among them, so the value cannot inject a header.
    """
    if not value or len(value) > 2048:
        return "/"
    for candidate in (value, unquote(value)):
        if (
            not candidate.startswith("/")
            or candidate.startswith("//")
            or _CONTROL.search(candidate)
        ):
            return "/"
        parts = urlsplit(candidate)
        if parts.scheme or parts.netloc:
            return "/"
    # Non-ASCII characters are percent-encoded so the header stays ASCII.
    return quote(value, safe="/?&=%#;:@!$'()*+,~-._")


def normalize_path(path: str) -> str:
    """Normalize a percent-decoded path for matching public paths.

    Drops ``;`` parameters from each segment, resolves dot segments and folds
    repeated slashes, so ``/public/..;/admin`` and ``/public/%2e%2e/admin`` (decoded
    by the server to ``/public/../admin``) both become ``/admin``. The path is not
    decoded a second time, because the application routes on the once-decoded path.
    """
    segments = [segment.split(";", 1)[0] for segment in path.split("/")]
    normalized = posixpath.normpath("/" + "/".join(segments).lstrip("/"))
    if normalized.startswith("//"):
        normalized = "/" + normalized.lstrip("/")
    if path.endswith("/") and normalized != "/":
        normalized += "/"
    return normalized


def compile_globs(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """Compile glob patterns, where ``*`` matches any characters, ``/`` included."""
    parts = [
        ".*".join(re.escape(piece) for piece in pattern.split("*"))
        for pattern in patterns
    ]
    if not parts:
        return None
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL)


def security_headers(*, referrer: bool = False) -> list[tuple[str, str]]:
    headers = [
        ("Cache-Control", "no-store"),
        ("Vary", "Cookie"),
        ("X-Content-Type-Options", "nosniff"),
    ]
    if referrer:
        # The callback URL carries the code and state: no Referer may leak them.
        headers.append(("Referrer-Policy", "no-referrer"))
    return headers


def redirect(
    location: str, *, set_cookies: Iterable[str] = (), referrer: bool = False
) -> Reply:
    headers = [("Location", location), *security_headers(referrer=referrer)]
    headers.extend(("Set-Cookie", cookie) for cookie in set_cookies)
    return Reply(302, headers)


def json_reply(
    status: int, body: object, *, headers: Iterable[tuple[str, str]] = ()
) -> Reply:
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return Reply(
        status,
        [("Content-Type", "application/json"), *security_headers(), *headers],
        data,
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:4rem auto;
padding:0 1rem;color:#222}}h1{{font-size:1.4rem}}code{{background:#f3f3f3;padding:0 .2rem}}
button{{font:inherit;padding:.4rem 1rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def html_page(
    status: int,
    title: str,
    body_html: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    referrer: bool = False,
) -> Reply:
    page = _PAGE.format(title=html.escape(title), body=body_html).encode("utf-8")
    return Reply(
        status,
        [
            ("Content-Type", "text/html; charset=utf-8"),
            (
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
            ),
            *security_headers(referrer=referrer),
            *headers,
        ],
        page,
    )


def error_reply(
    request: Request,
    status: int,
    code: str,
    message: str,
    *,
    retry_url: str | None = None,
    referrer: bool = False,
    headers: Iterable[tuple[str, str]] = (),
) -> Reply:
    """Return an error as an HTML page for browsers and as JSON otherwise."""
    if accepts_html(request):
        body = f"<p>{html.escape(message)}</p>"
        if retry_url is not None:
            body += f'<p><a href="{html.escape(retry_url)}">Sign in again</a></p>'
        return html_page(
            status,
            _TITLES.get(status, "Request failed"),
            body,
            headers=headers,
            referrer=referrer,
        )
    reply = json_reply(
        status, {"error": code, "error_description": message}, headers=headers
    )
    if referrer:
        reply.headers.append(("Referrer-Policy", "no-referrer"))
    return reply


_TITLES = {
    400: "Sign-in failed",
    401: "Sign-in required",
    403: "Access denied",
    404: "Not found",
    405: "Method not allowed",
    413: "Request too large",
    502: "Identity provider unavailable",
    503: "Service unavailable",
    504: "Identity provider timed out",
}
