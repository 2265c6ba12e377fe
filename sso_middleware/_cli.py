"""The ``sso-middleware`` command: ``proxy``, ``serve``, ``check`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import inspect
import io
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, NamedTuple, TextIO

import httpx
import jwt
import uvicorn
from uvicorn.importer import ImportFromStringError, import_from_string

from ._errors import ConfigurationError, ProviderError
from ._oidc import ProviderMetadata
from ._proxy import (
    DEFAULT_CLIENT_BODY_TIMEOUT,
    DEFAULT_UPSTREAM_TIMEOUT,
    ASGIApp,
    ProxyApp,
    build_proxy,
)
from ._serve import DEFAULT_THREADS, WsgiToAsgiWithUser, wrap_for_serving
from ._settings import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, Settings, env_name

logger = logging.getLogger("sso_middleware")

DEFAULT_LISTEN = ("127.0.0.1", 4180)
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

# Seconds that a stopping server waits for requests in progress before it cancels
# them. Streamed responses can last forever, so the wait must end.
GRACEFUL_SHUTDOWN_SECONDS = 10

# uvicorn's limit_concurrency. Slow clients and long streams each keep a
# connection open, and without a limit they could exhaust the process's file
# descriptors. NOTE: a guess, not a measured capacity. The proxy uses two
# descriptors per request, so with the common "ulimit -n" of 1024 it can still
# run out before it reaches this limit.
DEFAULT_LIMIT_CONCURRENCY = 1000

Closer = Callable[[], Awaitable[None]]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sso-middleware`` command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    configure_logging(args.log_level)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigurationError as error:
        print(error, file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser, with one flag for each field of :class:`Settings`."""
    parser = argparse.ArgumentParser(
        prog="sso-middleware",
        description="OpenID Connect single sign-on in front of any web application.",
        epilog="Settings are read from SSO_* environment variables; a flag given on "
        "the command line overrides its variable. Run 'sso-middleware COMMAND --help' "
        "for the flags of each command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="the lowest level of log messages written to stderr (default: info)",
    )
    settings = _settings_parser()

    proxy = commands.add_parser(
        "proxy",
        parents=[common, settings],
        help="run an authenticating reverse proxy in front of an HTTP server",
        description="Serve an authenticating reverse proxy: signed-in requests are "
        "forwarded to the upstream with the X-Forwarded-User, -Email, "
        "-Preferred-Username and -Groups headers.",
    )
    proxy.add_argument(
        "--upstream",
        required=True,
        metavar="URL",
        help="base URL of the application to protect, such as http://127.0.0.1:8080",
    )
    proxy.add_argument(
        "--upstream-timeout",
        type=_positive_float,
        default=DEFAULT_UPSTREAM_TIMEOUT,
        metavar="SECONDS",
        help="seconds to wait for the upstream to connect, and then for each read or "
        f"write (default: {DEFAULT_UPSTREAM_TIMEOUT:g})",
    )
    proxy.add_argument(
        "--client-body-timeout",
        type=_positive_float,
        default=DEFAULT_CLIENT_BODY_TIMEOUT,
        metavar="SECONDS",
        help="seconds to wait for each next part of a request body from the client; "
        f"a client that pauses longer gets 408 (default: "
        f"{DEFAULT_CLIENT_BODY_TIMEOUT:g})",
    )
    _add_server_options(proxy)
    proxy.set_defaults(handler=_run_proxy)

    serve = commands.add_parser(
        "serve",
        parents=[common, settings],
        help="run a Python WSGI or ASGI application behind the middleware",
        description="Import a WSGI or ASGI application, put the middleware in front "
        "of it and serve it with uvicorn. The application's code is not changed.",
    )
    serve.add_argument(
        "app",
        metavar="APP",
        help="the application as module:attribute, such as myproject.wsgi:application "
        "(the current directory is searched first)",
    )
    serve.add_argument(
        "--interface",
        choices=("auto", "wsgi", "asgi"),
        default="auto",
        help="the application's interface, or auto to detect it (default: auto)",
    )
    serve.add_argument(
        "--threads",
        type=_positive_int,
        default=DEFAULT_THREADS,
        metavar="N",
        help="WSGI requests handled at once, each in its own thread "
        f"(default: {DEFAULT_THREADS})",
    )
    _add_server_options(serve)
    serve.set_defaults(handler=_run_serve)

    check = commands.add_parser(
        "check",
        parents=[common, settings],
        help="check the settings and the provider's discovery document",
        description="Validate the settings, fetch the provider's discovery document "
        "and signing keys, and print what is wrong. Exits with 0 when all is well, 1 "
        "when the provider is unusable and 2 when the settings are invalid.",
    )
    check.set_defaults(handler=_run_check)

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="start a local provider, a sample application and the proxy",
        description="Start a local OpenID provider (oidc-provider-mock), a sample "
        "application and the proxy in front of it, all on 127.0.0.1, to try a login "
        "in the browser. Ctrl-C stops all three.",
    )
    demo.add_argument(
        "--port",
        type=_port,
        default=8000,
        help="port of the proxy, the address to open in the browser (default: 8000)",
    )
    demo.set_defaults(handler=_run_demo)
    return parser


def configure_logging(level: str) -> None:
    """Send log records of ``level`` and above to stderr as plain lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log line includes the query string, which on the callback
    # contains the authorization code and the state.
    logging.getLogger("uvicorn.access").addFilter(_redact_access_query)
    # httpx logs the URL of every request at INFO, query string included, and the
    # proxy sends one request upstream for each request it serves.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def _redact_access_query(record: logging.LogRecord) -> bool:
    args = record.args
    if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
        path, separator, _ = args[2].partition("?")
        if separator:
            record.args = (*args[:2], path + "?...", *args[3:])
    return True


# Settings flags


def _settings_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group(
        "settings", "Each flag overrides the environment variable named in its help."
    )
    descriptions = _field_descriptions()
    for field in dataclasses.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        text = descriptions.get(field.name, "")
        help_text = f"{text} [{env_name(field.name)}]" if text else env_name(field.name)
        if not field.repr:
            # Secrets are the fields kept out of repr().
            help_text += (
                "; prefer the variable, as other local users can read command lines"
            )
        group.add_argument(
            flag,
            dest=field.name,
            default=None,
            metavar=_metavar(field),
            help=help_text.replace("%", "%%"),
        )
    return parser


def _field_descriptions() -> dict[str, str]:
    """Return the first paragraph of each ``:param name:`` in the Settings docstring."""
    doc = inspect.getdoc(Settings) or ""
    descriptions: dict[str, str] = {}
    pattern = re.compile(r":param (\w+):(.*?)(?=\n\s*\n|\n:param |\Z)", re.DOTALL)
    for match in pattern.finditer(doc):
        text = " ".join(match.group(2).split())
        descriptions[match.group(1)] = text.replace("``", "").rstrip(".")
    return descriptions


def _metavar(field: dataclasses.Field[Any]) -> str:
    if field.name == "scopes":
        return "'SCOPE ...'"
    if field.name == "auth_params":
        return "KEY=VALUE,..."
    if field.type in ("tuple[str, ...]", tuple[str, ...]):
        return "A,B,..."
    if field.type in ("int", "float", int, float):
        return "SECONDS"
    return field.name.split("_")[-1].upper()


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Build Settings from the environment, overridden by the flags given."""
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(Settings)
        if getattr(args, field.name, None) is not None
    }
    settings = Settings.from_env(**overrides)
    _validate_store_url(settings)
    return settings


# Argument types


def _listen(value: str) -> tuple[str, int]:
    """Parse HOST:PORT, or [IPV6]:PORT."""
    host, separator, port = value.rpartition(":")
    if not separator or not host:
        raise argparse.ArgumentTypeError(
            f"invalid address {value!r}: expected HOST:PORT, such as 127.0.0.1:4180"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, _port(port)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"invalid port {value!r}: expected a number from 1 to 65535"
        )
    return port


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise argparse.ArgumentTypeError(
            f"invalid value {value!r}: expected a number of seconds above 0"
        )
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(
            f"invalid value {value!r}: expected a whole number above 0"
        )
    return number


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    """Add --listen and --limit-concurrency, the options of the server."""
    default = f"{DEFAULT_LISTEN[0]}:{DEFAULT_LISTEN[1]}"
    parser.add_argument(
        "--listen",
        type=_listen,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default: {default})",
    )
    parser.add_argument(
        "--limit-concurrency",
        type=_positive_int,
        default=DEFAULT_LIMIT_CONCURRENCY,
        metavar="N",
        help="number of open connections, a new request's own included, at which "
        "the request gets 503 Service Unavailable (uvicorn's limit_concurrency, "
        f"default: {DEFAULT_LIMIT_CONCURRENCY})",
    )


# Commands


def _run_proxy(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        app = build_proxy(
            settings,
            args.upstream,
            timeout=args.upstream_timeout,
            client_body_timeout=args.client_body_timeout,
        )
    except ValueError as error:
        if isinstance(error, ConfigurationError):
            raise
        print(f"sso-middleware proxy: {error}", file=sys.stderr)
        return 2
    inner = getattr(app, "app", None)
    closers = [_aclose_of(app)]
    if isinstance(inner, ProxyApp):
        closers.append(inner.aclose)
    logger.info("Forwarding signed-in requests to %s", args.upstream)
    return run_server(
        app,
        args.listen,
        args.log_level,
        closers=closers,
        limit_concurrency=args.limit_concurrency,
    )


def _run_serve(args: argparse.Namespace) -> int:
    # Like uvicorn, import the application from the current directory first.
    sys.path.insert(0, os.getcwd())
    try:
        application = import_from_string(args.app)
    except ImportFromStringError as error:
        print(f"sso-middleware serve: {error}", file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    app = wrap_for_serving(application, settings, args.interface, threads=args.threads)
    inner = getattr(app, "app", None)
    if isinstance(inner, WsgiToAsgiWithUser):
        logger.info("Serving WSGI application %s in %d threads", args.app, args.threads)
    else:
        logger.info("Serving ASGI application %s", args.app)
    return run_server(
        app,
        args.listen,
        args.log_level,
        closers=[_aclose_of(app)],
        limit_concurrency=args.limit_concurrency,
    )


def _run_check(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if isinstance(sys.stdout, io.TextIOWrapper):
        # Values from the provider may contain characters that the terminal's
        # encoding lacks, such as any non-ASCII character under LANG=C.
        sys.stdout.reconfigure(errors="backslashreplace")
    return check_provider(settings, sys.stdout)


def _run_demo(args: argparse.Namespace) -> int:
    # Imported here because the demo module imports this one.
    from ._demo import run_demo

    return run_demo(args.port, log_level=args.log_level)


def _aclose_of(app: Any) -> Closer:
    async def close() -> None:
        aclose = getattr(app, "aclose", None)
        if aclose is not None:
            await aclose()

    return close


# Serving


class StoppableServer(uvicorn.Server):
    """A uvicorn server that stops on SIGINT or SIGTERM and then returns normally.

    uvicorn (0.55) raises the caught signal again once the server has stopped, which
    would interrupt the closing of the HTTP clients that follows. A second signal
    stops the server without waiting for requests in progress.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        stop_signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in stop_signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def server_config(
    app: ASGIApp,
    host: str,
    port: int,
    log_level: str,
    *,
    limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY,
    **options: Any,
) -> uvicorn.Config:
    """Return the uvicorn configuration shared by the commands."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        interface="asgi3",
        lifespan="auto",
        workers=1,
        log_level=log_level,
        # Logging is configured by configure_logging, not by uvicorn.
        log_config=None,
        # The middleware decides itself which X-Forwarded-* headers to believe
        # (SSO_TRUSTED_PROXIES); uvicorn must not rewrite the client address first.
        proxy_headers=False,
        # uvicorn's own Date header stays on: the middleware's responses need one,
        # and the proxy removes the upstream's copy.
        server_header=False,
        limit_concurrency=limit_concurrency,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        **options,
    )


def run_server(
    app: ASGIApp,
    listen: tuple[str, int],
    log_level: str,
    *,
    closers: Sequence[Closer] = (),
    limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY,
) -> int:
    """Serve ``app`` with uvicorn until a signal stops it, then run ``closers``."""
    host, port = listen
    config = server_config(
        app, host, port, log_level, limit_concurrency=limit_concurrency
    )
    server = StoppableServer(config)

    async def serve() -> int:
        status = 0
        try:
            await server.serve()
        except SystemExit:
            # uvicorn exits this way when it cannot listen or the startup fails,
            # after it has logged the reason.
            status = 1
        finally:
            for close in closers:
                await close()
        return status

    return asyncio.run(serve())


# check

# Values from the provider longer than this are cut short in check's output.
MAX_SHOWN_CHARS = 200

# The key type (kty) that verifies each family of JWS algorithms, from RFC 7518
# (section 6.1) and RFC 8037 for EdDSA. HMAC algorithms are missing because the
# middleware verifies them with the client secret, never a JWKS key.
_KEY_TYPE_BY_PREFIX = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class _Report:
    """The lines that ``check`` prints, and whether any of them is an error.

    Lines contain values from the provider, so each one goes through
    :func:`_printable` before it is printed.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failed = False

    def ok(self, message: str) -> None:
        self._print("ok:", message)

    def note(self, message: str) -> None:
        self._print("note:", message)

    def error(self, message: str) -> None:
        self.failed = True
        self._print("error:", message)

    def _print(self, label: str, message: str) -> None:
        print(f"{label:<9}{_printable(message)}", file=self.out)


class _MetadataFindings(NamedTuple):
    """Findings of the discovery document's check that the keys' check needs."""

    jwks_uri: str | None
    # The ID token algorithms that both the provider and the settings accept.
    algorithms: frozenset[str]


def _printable(text: str) -> str:
    """Escape the characters of ``text`` that are not printable, as repr() does.

    A control character could move the cursor or clear the terminal, a line break
    could forge a report line, and a bidirectional override reorders what follows.
    """
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def _shown(value: Any) -> str:
    """Return the repr of a value from the provider, cut to MAX_SHOWN_CHARS."""
    try:
        text = repr(value)
    except RecursionError:
        return "(a value nested too deeply to show)"
    if len(text) > MAX_SHOWN_CHARS:
        return text[:MAX_SHOWN_CHARS] + "..."
    return text


def check_provider(settings: Settings, out: TextIO) -> int:
    """Check the provider's discovery document and keys, and print each finding.

    Returns 0 when the provider can be used with ``settings``, 1 otherwise.

    :raises ConfigurationError: when redis cannot parse the session store's URL.
    """
    store = _store_client(settings) if settings.uses_redis else None
    report = _Report(out)
    report.ok(
        f"settings are valid (issuer {settings.issuer}, client ID {settings.client_id})"
    )
    if not settings.redirect_uri:
        report.note(
            f"{env_name('redirect_uri')} is not set: the callback URL is derived from "
            "each request's Host header. Set it in production."
        )

    # OpenID Connect Discovery 1.0, section 4: the document is at the issuer plus
    # /.well-known/openid-configuration, after any trailing slash is removed.
    url = settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
    with httpx.Client(timeout=settings.http_timeout, follow_redirects=False) as client:
        metadata = _fetch_json(client, url, "discovery document", report)
        if metadata is not None:
            findings = _check_metadata(settings, metadata, report)
            if findings.jwks_uri is not None:
                keys = _fetch_json(
                    client, findings.jwks_uri, "signing keys (jwks_uri)", report
                )
                if keys is not None:
                    _check_keys(keys, findings.algorithms, report)
    if settings.uses_redis:
        _check_store(store, report)

    if report.failed:
        print(
            "The provider cannot be used as configured: fix the errors above.", file=out
        )
        return 1
    print("All checks passed.", file=out)
    return 0


def _fetch_json(
    client: httpx.Client, url: str, what: str, report: _Report
) -> dict[str, Any] | None:
    try:
        response = client.get(url, headers={"Accept": "application/json"})
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        # httpx.InvalidURL, for example for a port that is not a number, is not
        # an httpx.HTTPError.
        reason = str(error) or type(error).__name__
        report.error(f"{what} at {url} is unreachable: {reason}")
        return None
    if response.status_code != 200:
        report.error(
            f"{what} at {url} returned HTTP {response.status_code}, expected 200"
        )
        return None
    try:
        document = response.json()
    except RecursionError:
        report.error(f"{what} at {url} is JSON nested too deeply to parse")
        return None
    except ValueError:
        report.error(
            f"{what} at {url} is not JSON (Content-Type "
            f"{response.headers.get('content-type', 'missing')})"
        )
        return None
    if not isinstance(document, dict):
        report.error(f"{what} at {url} is not a JSON object")
        return None
    report.ok(f"{what} fetched from {url}")
    return document


def _string_list(
    metadata: dict[str, Any], name: str, report: _Report
) -> list[str] | None:
    """Return the member ``name`` when it is a list of strings, or None otherwise.

    Discovery lists are JSON arrays of strings (RFC 8414, section 2), so a member
    of another shape is reported as an error.
    """
    value = metadata.get(name)
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    report.error(
        f"the discovery document's {name} is not a list of strings: {_shown(value)}"
    )
    return None


def _check_metadata(
    settings: Settings, metadata: dict[str, Any], report: _Report
) -> _MetadataFindings:
    """Report on each member that the middleware uses."""
    # OpenID Connect Discovery 1.0, section 4.3: the issuer in the document must be
    # identical to the one the document was fetched for.
    issuer = metadata.get("issuer")
    if not isinstance(issuer, str):
        report.error("the discovery document has no issuer")
    elif issuer != settings.issuer:
        report.error(
            f"the discovery document's issuer is {_shown(issuer)} but "
            f"{env_name('issuer')} is {settings.issuer!r}: they must be identical, "
            f"so set {env_name('issuer')}={issuer}"
        )
    else:
        report.ok(f"issuer matches: {issuer}")

    # An https issuer must not send tokens or secrets over plain http, so its
    # endpoints must be https too.
    schemes = (
        ("https://",)
        if settings.issuer.startswith("https:")
        else ("https://", "http://")
    )
    endpoints: dict[str, str] = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = metadata.get(name)
        if not isinstance(value, str) or not value.startswith(schemes):
            report.error(f"the discovery document has no valid {name}: {_shown(value)}")
        else:
            endpoints[name] = value
            report.ok(f"{name}: {value}")

    auth_methods = _string_list(
        metadata, "token_endpoint_auth_methods_supported", report
    )
    if auth_methods is not None and not {
        "client_secret_basic",
        "client_secret_post",
    }.intersection(auth_methods):
        report.error(
            "the token endpoint supports neither client_secret_basic nor "
            f"client_secret_post (it lists {_shown(auth_methods)})"
        )

    methods = _string_list(metadata, "code_challenge_methods_supported", report)
    if methods is not None:
        if "S256" not in methods:
            report.error(
                "the provider does not list S256 in code_challenge_methods_supported "
                f"({_shown(methods)}); the middleware always sends a PKCE S256 "
                "challenge"
            )
        else:
            report.ok("PKCE S256 is supported")

    response_types = _string_list(metadata, "response_types_supported", report)
    if response_types is not None and "code" not in response_types:
        report.error(
            "the provider does not list 'code' in response_types_supported "
            f"({_shown(response_types)}); the middleware uses the code flow"
        )

    algorithms = _check_algorithms(settings, metadata, report)

    end_session = metadata.get("end_session_endpoint")
    if end_session:
        report.ok(f"end_session_endpoint: {end_session}")
    else:
        report.note(
            "the provider has no end_session_endpoint: sign-out ends the "
            "session here only, not at the provider"
        )

    if not report.failed:
        # The middleware's own validation is the final word: check must never pass
        # a document that the middleware would reject at the first login.
        try:
            ProviderMetadata.parse(metadata, settings)
        except ProviderError as error:
            report.error(error.detail)
        except (TypeError, ValueError, RecursionError) as error:
            report.error(
                "the middleware cannot read the discovery document: "
                f"{type(error).__name__}: {error}"
            )
    return _MetadataFindings(endpoints.get("jwks_uri"), algorithms)


def _check_algorithms(
    settings: Settings, metadata: dict[str, Any], report: _Report
) -> frozenset[str]:
    """Report the ID token algorithms that the middleware accepts, and return them."""
    name = "id_token_signing_alg_values_supported"
    accepted = frozenset(settings.id_token_algorithms or ASYMMETRIC_ALGORITHMS)
    if metadata.get(name) is None:
        # OpenID Connect Discovery 1.0, section 3: the member is required and must
        # include RS256, so the middleware assumes RS256 when it is missing.
        usable = frozenset(settings.id_token_algorithms) or frozenset({"RS256"})
    else:
        advertised = _string_list(metadata, name, report)
        if advertised is None:
            return frozenset()
        usable = accepted.intersection(advertised)
        if not usable:
            report.error(
                f"none of the provider's ID token algorithms {_shown(advertised)} "
                f"is accepted; set {env_name('id_token_algorithms')} to one of them"
            )
            return usable
    report.ok(f"ID token algorithms accepted: {', '.join(sorted(usable))}")
    return usable


def _check_keys(
    jwks: dict[str, Any], algorithms: frozenset[str], report: _Report
) -> None:
    """Report whether some key in the JWKS can verify the accepted algorithms."""
    asymmetric = sorted(algorithms - HMAC_ALGORITHMS)
    if algorithms and not asymmetric:
        report.note(
            "ID tokens are verified with the client secret (HMAC), so the "
            "signing keys are not used"
        )
        return
    entries = jwks.get("keys")
    if not isinstance(entries, list) or not entries:
        report.error("the signing key set (jwks_uri) has no keys")
        return
    key_types = _signing_key_types(entries)
    skipped = len(entries) - len(key_types)
    if skipped:
        report.note(
            f"{skipped} of {len(entries)} key(s) in the signing key set (jwks_uri) "
            "are skipped: they are invalid or not for signatures"
        )
    if not key_types:
        report.error("the signing key set (jwks_uri) has no usable signing key")
        return
    if not asymmetric:
        # No algorithm is accepted, which _check_algorithms has reported.
        return

    needed_types = {_KEY_TYPE_BY_PREFIX.get(algorithm[:2]) for algorithm in asymmetric}
    usable = [key_type for key_type in key_types if key_type in needed_types]
    listed = ", ".join(asymmetric)
    if usable:
        report.ok(f"{len(usable)} usable signing key(s) of {len(entries)} for {listed}")
    elif algorithms & HMAC_ALGORITHMS:
        report.note(
            f"no key in the signing key set (jwks_uri) can verify {listed}: only "
            "ID tokens signed with the client secret (HMAC) can be verified"
        )
    else:
        types = ", ".join(sorted(set(key_types)))
        report.error(
            f"no key in the signing key set (jwks_uri) can verify ID tokens signed "
            f"with {listed}: it has only keys of type {types}"
        )


def _signing_key_types(entries: list[Any]) -> list[str]:
    """Return the key type (kty) of each entry that the middleware can load.

    The rules are those of the middleware: entries that are not objects, are not
    for signatures or that PyJWT cannot load are skipped.
    """
    key_types: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            # PyJWT 2.15 raises TypeError for an "alg" that is not a string.
            continue
        key_types.append(str(entry["kty"]))
    return key_types


def _store_client(settings: Settings) -> Any:
    """Return a redis client for the session store, or None without the package.

    :raises ConfigurationError: when redis cannot parse the URL.
    """
    try:
        import redis
    except ImportError:
        return None
    _validate_store_url(settings)
    return redis.Redis.from_url(
        settings.session_store, socket_timeout=2, socket_connect_timeout=2
    )


def _validate_store_url(settings: Settings) -> None:
    """Raise ConfigurationError when redis cannot parse the session store's URL.

    Settings checks only the URL's scheme, and a port that is not a number would
    otherwise stop the server with a message that names no setting.
    """
    if not settings.uses_redis:
        return
    try:
        from redis.connection import parse_url
    except ImportError:
        # Reported by check, and by the session store when the server starts.
        return
    try:
        parse_url(settings.session_store)  # type: ignore[no-untyped-call]
    except ValueError as error:
        # The message names the part that is wrong, never the password.
        raise ConfigurationError(
            {
                env_name("session_store"): "must be a redis URL such as "
                f"redis://localhost:6379/0 ({error})"
            }
        ) from None


def _check_store(client: Any, report: _Report) -> None:
    if client is None:
        report.error(
            f"{env_name('session_store')} names redis, but the redis package "
            "is not installed: pip install 'sso-middleware[redis]'"
        )
        return
    import redis

    try:
        client.ping()
    except redis.RedisError as error:
        report.error(f"the session store is unreachable: {error}")
    else:
        report.ok("the session store answers")
    finally:
        client.close()
