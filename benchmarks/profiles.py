"""Profile one benchmark scenario, to explain a figure.

    python benchmarks/profiles.py asgi-hit        # in-process, with pyinstrument
    python benchmarks/profiles.py proxy           # a server under wrk, with py-spy

In-process scenarios (asgi-hit, asgi-miss, wsgi-miss, redirect, callback) run
their requests under pyinstrument and print its call tree. Server scenarios
(protected, proxy, check) start the servers of the loopback benchmark, load one
with wrk and sample it with ``py-spy record``, then print the functions with the
largest share of samples, inclusive and self.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent
if str(BENCHMARKS_DIR) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS_DIR))

import fixtures
import loopback
from cold import LoginBench

from sso_middleware import SSOMiddleware

IN_PROCESS = ("asgi-hit", "asgi-miss", "wsgi-miss", "redirect", "callback")
SERVERS = ("protected", "proxy", "check")


# In-process scenarios: each returns a function that handles n requests.


def _asgi_hit(n: int) -> Callable[[], None]:
    loop = asyncio.new_event_loop()
    middleware = SSOMiddleware(fixtures.asgi_app, fixtures.settings(), interface="asgi")
    cookie = fixtures.cookie_header(
        fixtures.session_cookie_value(middleware.core.cookies)
    )
    scope = fixtures.asgi_scope(cookie=cookie)

    async def requests() -> None:
        for _ in range(n):
            await middleware(dict(scope), fixtures.asgi_receive, fixtures.asgi_discard)

    return lambda: loop.run_until_complete(requests())


def _asgi_miss(n: int) -> Callable[[], None]:
    loop = asyncio.new_event_loop()
    middleware = SSOMiddleware(fixtures.asgi_app, fixtures.settings(), interface="asgi")
    codec = middleware.core.cookies
    scopes = [
        fixtures.asgi_scope(
            cookie=fixtures.cookie_header(fixtures.session_cookie_value(codec, index))
        )
        for index in range(n)
    ]

    async def requests() -> None:
        for scope in scopes:
            await middleware(scope, fixtures.asgi_receive, fixtures.asgi_discard)

    return lambda: loop.run_until_complete(requests())


def _wsgi_miss(n: int) -> Callable[[], None]:
    middleware = SSOMiddleware(fixtures.wsgi_app, fixtures.settings(), interface="wsgi")
    codec = middleware.core.cookies
    environs = [
        fixtures.wsgi_environ(
            cookie=fixtures.cookie_header(fixtures.session_cookie_value(codec, index))
        )
        for index in range(n)
    ]

    def requests() -> None:
        for environ in environs:
            b"".join(middleware(environ, fixtures.wsgi_start_response))

    return requests


def _redirect(n: int) -> Callable[[], None]:
    bench = LoginBench("asgi", asyncio.new_event_loop())
    bench.prepare_callback()  # fetches discovery
    run = bench.redirect_runner(bench.middleware)
    return lambda: run(n) and None


def _callback(n: int) -> Callable[[], None]:
    bench = LoginBench("asgi", asyncio.new_event_loop())
    logins = [bench.prepare_callback() for _ in range(n + 1)]
    shares: list[float] = []
    run = bench.callback_runner(iter(logins), shares)
    run(1)  # fetches the JWKS
    return lambda: run(n) and None


SCENARIOS: dict[str, tuple[Callable[[int], Callable[[], None]], int]] = {
    "asgi-hit": (_asgi_hit, 200_000),
    "asgi-miss": (_asgi_miss, 20_000),
    "wsgi-miss": (_wsgi_miss, 20_000),
    "redirect": (_redirect, 20_000),
    "callback": (_callback, 1_000),
}


def profile_in_process(name: str) -> str:
    from pyinstrument import Profiler

    build, count = SCENARIOS[name]
    requests = build(count)
    profiler = Profiler(interval=0.0005)
    profiler.start()
    requests()
    profiler.stop()
    return str(profiler.output_text(unicode=True, color=False, short_mode=False))


# Server scenarios


def summarize_collapsed(path: Path, top: int) -> str:
    """Return the functions with the largest inclusive and self share of samples.

    ``path`` contains py-spy's raw (collapsed stack) output: one line per stack,
    frames separated by ``;`` and the sample count last.
    """
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        total += count
        frames = [_short_frame(frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    lines = [f"{total} samples", "", "inclusive:"]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    lines += ["", "self:"]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)


def _short_frame(frame: str) -> str:
    """Turn ``func (/long/path/site-packages/pkg/mod.py:12)`` into ``func (pkg/mod.py)``."""
    frame = re.sub(r"\(\S*?/(?:site-packages|python3\.\d+|main)/", "(", frame)
    return re.sub(r":\d+\)$", ")", frame)


def _py_spy() -> str:
    """Return the py-spy executable: the one beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    return found


def profile_server(name: str, seconds: int, top: int) -> str:
    plan = loopback.LoadPlan(seconds, 2, 32, 1, 0)
    cookie = loopback.signed_in_cookie()
    upstream_port, server_port = loopback.free_port(), loopback.free_port()
    upstream = f"http://{loopback.LOOPBACK}:{upstream_port}"
    if name == "protected":
        command = loopback.uvicorn_command("servers:protected", server_port)
        path = "/"
    else:
        if loopback.has_proxy_command():
            command = loopback.proxy_command(upstream, server_port)
        else:
            command = loopback.uvicorn_command("servers:proxy", server_port)
        path = "/_sso/check" if name == "check" else "/"
    with ExitStack() as stack:
        stack.enter_context(
            loopback.running(
                loopback.uvicorn_command("servers:bare", upstream_port),
                upstream_port,
                loopback.server_env(),
            )
        )
        pid = stack.enter_context(
            loopback.running(
                command, server_port, loopback.server_env({"BENCH_UPSTREAM": upstream})
            )
        )
        scenario = loopback.Scenario(
            name,
            f"http://{loopback.LOOPBACK}:{server_port}{path}",
            cookie,
            plan.connections,
            plan.threads,
        )
        loopback.run_wrk(scenario, 1)
        raw = Path(tempfile.mkdtemp()) / "samples.txt"
        sampler = subprocess.Popen(
            [
                _py_spy(),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        result = loopback.run_wrk(scenario, seconds)
        _, errors = sampler.communicate(timeout=seconds + 30)
        if sampler.returncode != 0:
            raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace')}")
    header = (
        f"{name}: {result.requests_per_second:.0f} requests/s, p50 "
        f"{result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms under wrk -t2 -c32 "
        f"-d{seconds}s"
    )
    return header + "\n\n" + summarize_collapsed(raw, top)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=IN_PROCESS + SERVERS)
    parser.add_argument("--seconds", type=int, default=5, help="load time of servers")
    parser.add_argument("--top", type=int, default=30, help="functions listed")
    args = parser.parse_args(argv)
    if args.scenario in IN_PROCESS:
        print(profile_in_process(args.scenario))
    else:
        print(profile_server(args.scenario, args.seconds, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
