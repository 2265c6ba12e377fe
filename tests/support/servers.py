"""Real servers for the tests: the mock OpenID provider, redis-server, nginx, uvicorn.

Each server runs as a subprocess on a free loopback port. Its output goes to a log
file in a temporary directory, and the whole process group is killed when its
context ends, so a failed test leaves nothing running.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx
import werkzeug.serving

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 3.0
LOG_TAIL_LINES = 40

CLIENT_ID = "test-client"
CLIENT_SECRET = "test-secret"
# 40 characters, above the 32 that the SSO_SECRET_KEY setting requires.
SECRET_KEY = "test-secret-key-0123456789-abcdefghijklm"

ALICE_CLAIMS: dict[str, Any] = {
    "sub": "alice",
    "email": "alice@example.com",
    "name": "Alice Example",
    "preferred_username": "alice",
    "groups": ["staff", "admins"],
    "roles": ["admin"],
}
BOB_CLAIMS: dict[str, Any] = {
    "sub": "bob",
    "email": "bob@other.example",
    "name": "Bob",
    "groups": ["guests"],
}


class ServerStartError(RuntimeError):
    """A server exited or timed out before it was ready."""


def free_port() -> int:
    """Return a TCP port on the loopback interface that nothing listens on."""
    # NOTE: the port is free when this returns, but another process may bind it
    # before the server does. The server then fails to start and the error shows
    # its log.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_open(port: int, host: str = LOOPBACK) -> bool:
    """Return whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_binary(name: str) -> str:
    """Return the path of an executable, or raise naming the command that installs it.

    /usr/sbin and /sbin are searched too, because Debian installs nginx there and
    they are not on every user's PATH.
    """
    search_path = os.pathsep.join(
        [os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"]
    )
    path = shutil.which(name, path=search_path)
    if path is None:
        raise ServerStartError(
            f"{name} not found on PATH: run scripts/test.sh, which installs it "
            "with apt-get, or install it yourself"
        )
    return path


def wait_for_http(
    url: str,
    timeout: float = STARTUP_TIMEOUT,
    *,
    expected_status: int | None = None,
) -> httpx.Response:
    """Poll ``url`` with GET until it returns a response, and return that response.

    Any status counts unless ``expected_status`` is given. Raises ``TimeoutError``
    with the last error when ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    last_error = "no attempt made"
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while True:
            try:
                response = client.get(url)
            except httpx.HTTPError as exc:
                last_error = repr(exc)
            else:
                if expected_status is None or response.status_code == expected_status:
                    return response
                last_error = f"status {response.status_code}"
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{url} did not respond within {timeout} s: {last_error}"
                )
            time.sleep(0.05)


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Build the environment of a server subprocess.

    ``SSO_*`` variables of the calling shell are dropped so that only ``extra``
    configures the product. The repository root goes first on ``PYTHONPATH``, so
    ``tests.support.apps`` can be imported by an ASGI server.
    """
    env = {
        name: value for name, value in os.environ.items() if not name.startswith("SSO_")
    }
    python_path = [str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        python_path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(python_path)
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_COLOR"] = "1"
    if extra:
        env.update(extra)
    return env


class Process:
    """A subprocess that logs to a file and is killed when the context ends.

    Entering the context starts the process and polls ``ready`` until it returns
    true. When the process exits first or ``timeout`` seconds pass, the tail of its
    log is printed, the process is killed, and ``ServerStartError`` is raised.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        name: str | None = None,
        ready: Callable[[], bool] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        timeout: float = STARTUP_TIMEOUT,
        log_dir: Path | None = None,
    ) -> None:
        self.args = [str(arg) for arg in args]
        self.name = name or Path(self.args[0]).name
        self._ready = ready
        self._env = dict(env) if env is not None else subprocess_env()
        self._cwd = cwd if cwd is not None else REPO_ROOT
        self._timeout = timeout
        self._log_dir = log_dir
        self._temp_dir: tempfile.TemporaryDirectory[str] | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._final_log: str | None = None
        self.log_path = Path()

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self._popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    def __enter__(self) -> Self:
        log_dir = self._log_dir
        if log_dir is None:
            self._temp_dir = tempfile.TemporaryDirectory(prefix=f"{self.name}-")
            log_dir = Path(self._temp_dir.name)
        self.log_path = log_dir / f"{self.name}.log"
        with self.log_path.open("wb") as log_file:
            # A new session makes the process a group leader, so stop() also
            # reaches its children: nginx workers, or the Chromium that
            # chromedriver starts.
            self._popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
            )
        try:
            self._wait_until_ready()
        except BaseException as exc:
            tail = self.log_tail()
            print(f"--- last lines of the {self.name} log ---\n{tail}", file=sys.stderr)
            self._cleanup()
            if isinstance(exc, ServerStartError):
                raise ServerStartError(f"{exc}\n{tail}") from None
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._cleanup()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self._timeout
        while True:
            status = self.popen.poll()
            if status is not None:
                raise ServerStartError(
                    f"{self.name} exited with status {status} before it was ready: "
                    f"{' '.join(self.args)}"
                )
            if self._ready is None or self._ready():
                return
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"{self.name} was not ready within {self._timeout} s: "
                    f"{' '.join(self.args)}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Send SIGTERM to the process group, then SIGKILL after ``timeout`` s.

        Returns the exit status, or None when the process was never started.
        """
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait()
        # Children can outlive their leader, for example nginx workers after the
        # master was killed, so the group is always killed once more.
        self._signal_group(signal.SIGKILL)
        return self._popen.returncode

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.popen.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _cleanup(self) -> None:
        self.stop()
        # The log stays readable after its temporary directory is removed, so a
        # test can inspect what the server wrote up to its exit.
        self._final_log = self.log_text()
        if self._temp_dir is not None:
            self._temp_dir.cleanup()
            self._temp_dir = None

    def log_text(self) -> str:
        """Return everything the process has written so far."""
        if self._final_log is not None:
            return self._final_log
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _port_ready(port: int) -> Callable[[], bool]:
    return lambda: port_is_open(port)


def _http_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            response = httpx.get(url, timeout=2.0, trust_env=False)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    return check


# --- the mock OpenID provider -------------------------------------------------


@dataclass(frozen=True)
class Provider:
    """A running ``oidc-provider-mock`` server.

    The mock takes its issuer from the URL used to reach it, so it must be reached
    at ``http://127.0.0.1:<port>``: through ``localhost`` it names another issuer.
    Its JWKS has one RSA key, and its ID tokens carry no ``kid`` header.
    """

    issuer: str
    port: int
    process: Process = field(repr=False, compare=False)

    def url(self, path: str = "/") -> str:
        """Return the absolute URL of ``path`` (which starts with ``/``)."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        return self.issuer + path

    @property
    def authorize_url(self) -> str:
        return self.url("/oauth2/authorize")

    @property
    def token_url(self) -> str:
        return self.url("/oauth2/token")

    def discovery(self) -> dict[str, Any]:
        """Fetch the discovery document."""
        response = httpx.get(
            self.url("/.well-known/openid-configuration"), trust_env=False
        )
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    def set_user(self, sub: str, claims: Mapping[str, Any]) -> None:
        """Replace the claims of user ``sub`` (created when unknown).

        The provider is shared by the whole test session: restore a predefined
        user after changing it.
        """
        response = httpx.put(
            self.url(f"/users/{sub}"), json=dict(claims), trust_env=False
        )
        response.raise_for_status()


def user_claims_argument(claims: Mapping[str, Any]) -> str:
    return json.dumps(dict(claims), separators=(",", ":"))


@contextmanager
def start_provider(
    users: Sequence[Mapping[str, Any]] = (ALICE_CLAIMS, BOB_CLAIMS),
    *,
    port: int | None = None,
    require_nonce: bool = True,
    extra_args: Sequence[str] = (),
) -> Iterator[Provider]:
    """Run ``python -m oidc_provider_mock`` with predefined ``users``.

    Any client id and secret are accepted, and the provider responds to the
    authorization form's POST of ``sub=<user>`` with a redirect that carries the
    code and state.
    """
    port = port if port is not None else free_port()
    issuer = f"http://{LOOPBACK}:{port}"
    args = [
        sys.executable,
        "-m",
        "oidc_provider_mock",
        "--port",
        str(port),
        "--host",
        LOOPBACK,
    ]
    if require_nonce:
        args.append("--require-nonce")
    for claims in users:
        args += ["--user-claims", user_claims_argument(claims)]
    args += list(extra_args)
    ready = _http_ready(f"{issuer}/.well-known/openid-configuration")
    with Process(args, name="oidc-provider-mock", ready=ready) as process:
        yield Provider(issuer=issuer, port=port, process=process)


def settings_env(provider: Provider, **overrides: str) -> dict[str, str]:
    """Return ``SSO_*`` variables that point the product at ``provider``.

    Keyword overrides use setting names: ``session_store="redis://..."`` sets
    ``SSO_SESSION_STORE``.
    """
    env = {
        "SSO_ISSUER": provider.issuer,
        "SSO_CLIENT_ID": CLIENT_ID,
        "SSO_CLIENT_SECRET": CLIENT_SECRET,
        "SSO_SECRET_KEY": SECRET_KEY,
    }
    for name, value in overrides.items():
        env[f"SSO_{name.upper()}"] = value
    return env


# --- redis-server ---------------------------------------------------------------


def redis_ping(port: int, host: str = LOOPBACK) -> bool:
    """Return whether a Redis server on ``host:port`` replies PONG to PING."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def start_redis(port: int | None = None) -> Iterator[str]:
    """Run an in-memory ``redis-server`` on loopback and yield its ``redis://`` URL."""
    binary = require_binary("redis-server")
    port = port if port is not None else free_port()
    with tempfile.TemporaryDirectory(prefix="redis-server-") as directory:
        args = [
            binary,
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
        ]
        ready = functools.partial(redis_ping, port)
        with Process(args, name="redis-server", ready=ready, log_dir=Path(directory)):
            yield f"redis://{LOOPBACK}:{port}/0"


# --- nginx ------------------------------------------------------------------------

# The main context around a test's configuration. Every path nginx writes is
# inside the temporary prefix directory, so several instances can run at once.
NGINX_MAIN_TEMPLATE = """\
{{user}}
worker_processes 1;
pid {{root}}/nginx.pid;
error_log stderr info;

events {
    worker_connections 256;
}

http {
    access_log {{root}}/access.log;
    client_body_temp_path {{root}}/client_body;
    proxy_temp_path {{root}}/proxy;
    fastcgi_temp_path {{root}}/fastcgi;
    uwsgi_temp_path {{root}}/uwsgi;
    scgi_temp_path {{root}}/scgi;
    default_type application/octet-stream;
    types {
        text/html html;
        text/plain txt;
        application/json json;
    }

{{body}}
}
"""

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def render_template(template: str, values: Mapping[str, object]) -> str:
    """Replace each ``{{name}}`` in ``template`` with ``values[name]``.

    Only a word between double braces is replaced, so nginx's single braces and
    ``$variables`` stay untouched. An unknown placeholder raises ``KeyError``.
    """
    missing = sorted(set(_PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise KeyError(f"no value for the template placeholders {missing}")
    return _PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), template)


@dataclass(frozen=True)
class NginxServer:
    """A running nginx and the prefix directory that contains its files."""

    port: int
    directory: Path
    config_path: Path
    process: Process = field(repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


@contextmanager
def start_nginx(
    body: str, *, port: int | None = None, **values: object
) -> Iterator[NginxServer]:
    """Run nginx with ``body`` as the content of its ``http`` block.

    ``body`` is a template: ``{{port}}`` is the port to listen on, ``{{root}}`` the
    temporary prefix directory, and any other ``{{name}}`` comes from ``values``.
    For example::

        server {
            listen 127.0.0.1:{{port}};
            location / { proxy_pass {{upstream}}; }
        }
    """
    binary = require_binary("nginx")
    port = port if port is not None else free_port()
    with tempfile.TemporaryDirectory(prefix="nginx-") as directory:
        root = Path(directory)
        all_values: dict[str, object] = {"port": port, "root": root, **values}
        # The workers of an nginx started by root run as "nobody" unless the
        # configuration names a user, and "nobody" cannot read the 0700
        # temporary directory.
        user = "user root;" if os.geteuid() == 0 else ""
        config = render_template(
            NGINX_MAIN_TEMPLATE,
            {"user": user, "root": root, "body": render_template(body, all_values)},
        )
        config_path = root / "nginx.conf"
        config_path.write_text(config, encoding="utf-8")
        # "-e stderr" keeps nginx from opening the system error log before it
        # reads the configuration (the option exists since nginx 1.19.5).
        args = [
            binary,
            "-c",
            str(config_path),
            "-p",
            str(root),
            "-e",
            "stderr",
            "-g",
            "daemon off;",
        ]
        with Process(
            args, name="nginx", ready=_port_ready(port), log_dir=root
        ) as process:
            yield NginxServer(
                port=port, directory=root, config_path=config_path, process=process
            )


# --- Python applications under uvicorn, and the product's command line -------------


@dataclass(frozen=True)
class AppServer:
    """A running HTTP server on loopback."""

    port: int
    process: Process = field(repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def url_for(self, path: str) -> str:
        """Return the absolute URL of ``path`` (which starts with ``/``)."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        return self.url + path


@contextmanager
def uvicorn_server(
    app_spec: str,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    *,
    factory: bool = False,
    interface: str = "auto",
    extra_args: Sequence[str] = (),
) -> Iterator[AppServer]:
    """Serve ``MODULE:ATTR`` with ``python -m uvicorn`` on loopback.

    ``env`` is added to the test process's environment without its ``SSO_*``
    variables. uvicorn's ``auto`` interface never picks WSGI, so a WSGI application
    such as ``tests.support.apps:flask_wrapped`` needs ``interface="wsgi"``.
    """
    port = port if port is not None else free_port()
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        app_spec,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--interface",
        interface,
    ]
    if factory:
        args.append("--factory")
    args += list(extra_args)
    # uvicorn binds its socket only after the application's lifespan startup, so
    # an open port means the application is ready.
    with Process(
        args, name="uvicorn", ready=_port_ready(port), env=subprocess_env(env)
    ) as process:
        yield AppServer(port=port, process=process)


@contextmanager
def cli_server(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
) -> Iterator[AppServer]:
    """Run ``python -m sso_middleware ARGS`` and wait until it listens on ``port``.

    Every ``{port}`` in ``args`` becomes the port (a free one unless given), so
    callers write the listening options themselves, for example
    ``["proxy", "--upstream", url, "--host", "127.0.0.1", "--port", "{port}"]``.
    """
    port = port if port is not None else free_port()
    command = [sys.executable, "-m", "sso_middleware"]
    command += [arg.replace("{port}", str(port)) for arg in args]
    with Process(
        command,
        name="sso-middleware",
        ready=_port_ready(port),
        env=subprocess_env(env),
    ) as process:
        yield AppServer(port=port, process=process)


# --- small in-process servers -------------------------------------------------------


@contextmanager
def serve_wsgi_in_thread(app: WSGIApplication) -> Iterator[str]:
    """Serve a WSGI application from a thread of the test process; yield its URL.

    For small stand-ins (static pages, a relying party) that need no separate
    process. Each request runs in its own thread.
    """
    server = werkzeug.serving.make_server(LOOPBACK, 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(STOP_TIMEOUT)
        server.server_close()
