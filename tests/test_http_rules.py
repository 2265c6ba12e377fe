from __future__ import annotations

import pytest

from sso_middleware._http import (
    Request,
    compile_globs,
    is_navigation,
    is_preflight,
    normalize_path,
    safe_return_path,
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/public/..;/admin", "/admin", id="matrix-dotdot"),
        pytest.param("/public/../admin", "/admin", id="dotdot"),
        pytest.param("/public/./x", "/public/x", id="dot"),
        pytest.param("/static/a;jsessionid=1/b", "/static/a/b", id="segment-params"),
        pytest.param("//static//x", "/static/x", id="repeated-slashes"),
        pytest.param("/../../etc", "/etc", id="above-root"),
        pytest.param("/dir/", "/dir/", id="trailing-slash"),
        pytest.param("", "/", id="empty"),
    ],
)
def test_normalize_path(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


def test_globs_match_across_slashes() -> None:
    pattern = compile_globs(["/static/*", "/healthz"])
    assert pattern is not None
    assert pattern.match("/static/css/site.css")
    assert pattern.match("/healthz")
    assert not pattern.match("/healthz/x")
    assert not pattern.match("/admin?x=/static/")


def test_globs_escape_regex_characters() -> None:
    pattern = compile_globs(["/a.b/(x)"])
    assert pattern is not None
    assert pattern.match("/a.b/(x)")
    assert not pattern.match("/aXb/(x)")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("/dashboard?tab=1#top", "/dashboard?tab=1#top", id="path-query"),
        pytest.param("/café", "/caf%C3%A9", id="non-ascii-encoded"),
        pytest.param(None, "/", id="missing"),
        pytest.param("", "/", id="empty"),
        pytest.param("dashboard", "/", id="relative"),
        pytest.param("/a\r\nSet-Cookie: x=1", "/", id="crlf"),
        pytest.param("/a%0d%0aSet-Cookie:x", "/", id="encoded-crlf"),
        pytest.param("/" + "a" * 3000, "/", id="too-long"),
    ],
)
def test_safe_return_path(value: str | None, expected: str) -> None:
    assert safe_return_path(value) == expected


def make_request(method: str = "GET", **headers: str) -> Request:
    return Request(
        method=method,
        scheme="http",
        path="/",
        target="/",
        query="",
        headers={name.replace("_", "-"): value for name, value in headers.items()},
    )


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        pytest.param(make_request(accept="text/html,*/*"), True, id="html-get"),
        pytest.param(make_request("HEAD", accept="text/html"), True, id="html-head"),
        pytest.param(make_request(accept="application/json"), False, id="json"),
        pytest.param(make_request(accept="*/*"), False, id="curl"),
        pytest.param(make_request("POST", accept="text/html"), False, id="post"),
        pytest.param(
            make_request(accept="text/html", sec_fetch_mode="cors"),
            False,
            id="fetch-cors",
        ),
        pytest.param(
            make_request(accept="*/*", sec_fetch_mode="navigate"),
            True,
            id="fetch-navigate",
        ),
    ],
)
def test_is_navigation(request_: Request, expected: bool) -> None:
    assert is_navigation(request_) is expected


def test_preflight_needs_origin_and_method() -> None:
    preflight = make_request(
        "OPTIONS", origin="https://a.example", access_control_request_method="PUT"
    )
    assert is_preflight(preflight)
    assert not is_preflight(make_request("OPTIONS"))
