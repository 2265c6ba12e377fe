"""End to end on 127.0.0.1: uvicorn servers under load from wrk.

Each server is one uvicorn process with one worker. wrk runs in its own process,
on the same two cores, so the absolute figures are lower than on a machine where
the load generator has cores of its own. The ratios between scenarios, measured
in the same run, are what the budgets judge.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import fixtures
from harness import Budget, Section

BENCHMARKS_DIR = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
SERVER_START_TIMEOUT = 20.0


@dataclass(frozen=True)
class LoadPlan:
    """The wrk parameters of every load run and the number of rounds."""

    seconds: int
    threads: int
    connections: int
    rounds: int
    latency_seconds: int  # for the one-connection runs; 0 skips them


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    server_cpu_us: float = 0.0  # CPU time of the server processes per request


@dataclass
class Scenario:
    """One URL under load, with the cookie it sends, and its results per round.

    ``pids`` are the server processes whose CPU time the requests cost: the
    proxy and its upstream for the proxy scenarios.
    """

    label: str
    url: str
    cookie: str | None
    connections: int
    threads: int
    pids: tuple[int, ...] = ()
    results: list[WrkResult] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(result, attribute) for result in self.results)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # Proxy variables must not send loopback traffic anywhere else.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    env.update(fixtures.settings_env())
    env.update(extra or {})
    return env


def uvicorn_command(factory: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "--app-dir",
        str(BENCHMARKS_DIR),
        factory,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def has_proxy_command() -> bool:
    """Tell whether ``python -m sso_middleware proxy`` exists in this checkout."""
    return importlib.util.find_spec("sso_middleware.__main__") is not None


def proxy_command(upstream: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sso_middleware",
        "proxy",
        "--upstream",
        upstream,
        "--listen",
        f"{LOOPBACK}:{port}",
        # The uvicorn servers run without access logs, so the proxy does too.
        "--log-level",
        "warning",
    ]


@contextmanager
def running(command: list[str], port: int, env: dict[str, str]) -> Iterator[int]:
    """Start a server, wait until its port accepts connections, stop it after.

    The server's output goes to a temporary file, because a pipe that is never
    read fills up and blocks the server in the middle of a load run.
    """
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=BENCHMARKS_DIR.parent,
        )
        try:
            _wait_for_port(process, port, output)
            yield process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _wait_for_port(
    process: subprocess.Popen[bytes], port: int, output: IO[bytes]
) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if process.poll() is not None:
            output.seek(0)
            log = output.read().decode(errors="replace")
            raise RuntimeError(
                f"server {process.args!r} exited with {process.returncode}: {log[-2000:]}"
            )
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server on port {port} did not start") from None
            time.sleep(0.05)


def fetch(url: str, cookie: str | None) -> tuple[int, dict[str, str], bytes]:
    """Send one GET, as the check before a load run, and return the response."""
    match = re.fullmatch(r"http://([\d.]+):(\d+)(/.*)", url)
    if match is None or match.group(1) != LOOPBACK:
        raise ValueError(f"only {LOOPBACK} URLs are loaded, not {url!r}")
    connection = http.client.HTTPConnection(
        match.group(1), int(match.group(2)), timeout=5
    )
    try:
        headers = {"Cookie": cookie} if cookie else {}
        connection.request("GET", match.group(3), headers=headers)
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _milliseconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Read the figures of ``wrk --latency`` output (wrk 4.1)."""
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.MULTILINE))
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s+(\d+) requests in", output, re.MULTILINE)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if rate is None or total is None or set(percentiles) != {"50", "99"}:
        raise ValueError(f"unexpected wrk output:\n{output}")
    if int(total.group(1)) == 0:
        raise ValueError(f"wrk completed no request:\n{output}")
    return WrkResult(
        requests_per_second=float(rate.group(1)),
        p50_ms=_milliseconds(percentiles["50"]),
        p99_ms=_milliseconds(percentiles["99"]),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(value) for value in errors.groups()) if errors else 0,
    )


def cpu_seconds(pid: int) -> float:
    """Return the user and system CPU time that process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name in parentheses may contain spaces, so the fields are
        # counted from its closing parenthesis (proc(5): utime and stime are the
        # 14th and 15th fields, in clock ticks).
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(scenario: Scenario, seconds: int) -> WrkResult:
    command = [
        "wrk",
        f"-t{scenario.threads}",
        f"-c{scenario.connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "--latency",
    ]
    if scenario.cookie:
        command += ["-H", f"Cookie: {scenario.cookie}"]
    command.append(scenario.url)
    cpu_before = sum(cpu_seconds(pid) for pid in scenario.pids)
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30, check=True
    )
    cpu_used = sum(cpu_seconds(pid) for pid in scenario.pids) - cpu_before
    result = parse_wrk(completed.stdout)
    result.server_cpu_us = cpu_used * 1e6 / result.requests
    return result


def signed_in_cookie() -> str:
    """Return a Cookie header with a valid session, signed by a new interpreter.

    The servers import the package when they start, so the cookie is signed by the
    same code as the one they run, even if the package changed on disk since this
    process imported it.
    """
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import fixtures\n"
                "from sso_middleware._session import CookieCodec\n"
                "codec = CookieCodec(fixtures.settings())\n"
                "print(fixtures.cookie_header(fixtures.session_cookie_value(codec)))"
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=BENCHMARKS_DIR,
    )
    return completed.stdout.strip()


def loopback(plan: LoadPlan) -> Section:
    section = Section(
        "End to end on loopback (uvicorn + wrk)",
        f"One uvicorn worker per server (asyncio loop, h11), wrk -t{plan.threads} "
        f"-c{plan.connections} -d{plan.seconds}s --latency, median of {plan.rounds} "
        "rounds run in turn. The one-connection rows use wrk -t1 -c1 "
        f"-d{plan.latency_seconds}s. Server CPU is the user and system time of the "
        "server processes (proxy and upstream together for the proxy) per request, "
        "from /proc.",
        [
            "scenario",
            "requests/s",
            "vs baseline",
            "p50 ms",
            "p99 ms",
            "server CPU µs/request",
            "errors",
        ],
    )
    if shutil.which("wrk") is None:
        section.notes.append(
            "Skipped: wrk is not installed (Debian: apt-get install -y wrk)."
        )
        section.budgets += [
            Budget("uvicorn authenticated throughput", "≥ 90% of bare", "no wrk", None),
            Budget("proxy throughput", "≥ 50% of upstream direct", "no wrk", None),
            Budget("proxy added p99", "< 2 ms", "no wrk", None),
        ]
        return section

    cookie = signed_in_cookie()
    bare_port, protected_port, proxy_port = free_port(), free_port(), free_port()
    upstream = f"http://{LOOPBACK}:{bare_port}"
    if has_proxy_command():
        proxy_cmd = proxy_command(upstream, proxy_port)
        section.notes.append(
            "The proxy is `python -m sso_middleware proxy --upstream URL --listen "
            "HOST:PORT --log-level warning`; the uvicorn servers run without access "
            "logs too."
        )
    else:
        proxy_cmd = uvicorn_command("servers:proxy", proxy_port)
        section.notes.append(
            "`python -m sso_middleware proxy` does not exist in this checkout, so the "
            "proxy ran as `uvicorn --factory servers:proxy` (build_proxy)."
        )

    with ExitStack() as stack:
        bare_pid = stack.enter_context(
            running(uvicorn_command("servers:bare", bare_port), bare_port, server_env())
        )
        protected_pid = stack.enter_context(
            running(
                uvicorn_command("servers:protected", protected_port),
                protected_port,
                server_env(),
            )
        )
        proxy_pid = stack.enter_context(
            running(proxy_cmd, proxy_port, server_env({"BENCH_UPSTREAM": upstream}))
        )
        proxy_url = f"http://{LOOPBACK}:{proxy_port}"
        wide = (plan.connections, plan.threads)
        load = [
            Scenario(
                "bare app (also the upstream)",
                f"{upstream}/",
                None,
                *wide,
                pids=(bare_pid,),
            ),
            Scenario(
                "app behind the middleware, signed in",
                f"http://{LOOPBACK}:{protected_port}/",
                cookie,
                *wide,
                pids=(protected_pid,),
            ),
            Scenario(
                "proxy in front of the upstream, signed in",
                f"{proxy_url}/",
                cookie,
                *wide,
                pids=(proxy_pid, bare_pid),
            ),
            Scenario(
                "proxy's /_sso/check, signed in",
                f"{proxy_url}/_sso/check",
                cookie,
                *wide,
                pids=(proxy_pid,),
            ),
        ]
        latency = []
        if plan.latency_seconds:
            latency = [
                Scenario(
                    "upstream direct, 1 connection",
                    f"{upstream}/",
                    None,
                    1,
                    1,
                    pids=(bare_pid,),
                ),
                Scenario(
                    "proxy, signed in, 1 connection",
                    f"{proxy_url}/",
                    cookie,
                    1,
                    1,
                    pids=(proxy_pid, bare_pid),
                ),
            ]
        _check_responses(load)
        for scenario in load:
            run_wrk(scenario, 1)  # warm-up
        for _ in range(plan.rounds):
            for scenario in load:
                scenario.results.append(run_wrk(scenario, plan.seconds))
            for scenario in latency:
                scenario.results.append(run_wrk(scenario, plan.latency_seconds))

    bare, protected, proxied, _ = load
    for scenario in load + latency:
        base = latency[0] if scenario in latency else bare
        section.rows.append(_row(scenario, None if scenario is base else base))
    failed = [
        s.label
        for s in load + latency
        if any(r.non_2xx or r.socket_errors for r in s.results)
    ]
    if failed:
        section.notes.append(
            "Some responses were not 2xx or had socket errors: " + ", ".join(failed)
        )
    section.budgets += _budgets(plan, bare, protected, proxied, latency)
    section.data["scenarios"] = {
        s.label: [r.__dict__ for r in s.results] for s in load + latency
    }
    return section


def _row(scenario: Scenario, base: Scenario | None) -> list[str]:
    rate = scenario.median("requests_per_second")
    ratio = f"{rate / base.median('requests_per_second'):.0%}" if base else ""
    errors = sum(r.non_2xx + r.socket_errors for r in scenario.results)
    return [
        scenario.label,
        f"{rate:.0f}",
        ratio,
        f"{scenario.median('p50_ms'):.2f}",
        f"{scenario.median('p99_ms'):.2f}",
        f"{scenario.median('server_cpu_us'):.0f}",
        str(errors),
    ]


def _budgets(
    plan: LoadPlan,
    bare: Scenario,
    protected: Scenario,
    proxied: Scenario,
    latency: list[Scenario],
) -> list[Budget]:
    bare_rate = bare.median("requests_per_second")
    auth_ratio = protected.median("requests_per_second") / bare_rate
    proxy_ratio = proxied.median("requests_per_second") / bare_rate
    added_p99 = proxied.median("p99_ms") - bare.median("p99_ms")
    # The same two ratios from the servers' CPU time per request, which other
    # processes on the machine disturb less than the request rate.
    bare_cpu = bare.median("server_cpu_us")
    auth_cpu_ratio = bare_cpu / protected.median("server_cpu_us")
    proxy_cpu_ratio = bare_cpu / proxied.median("server_cpu_us")
    budgets = [
        Budget(
            "uvicorn authenticated throughput",
            "≥ 90% of bare",
            f"{auth_ratio:.0%}",
            auth_ratio >= 0.9,
        ),
        Budget(
            "same, from server CPU per request",
            "≥ 90% of bare",
            f"{auth_cpu_ratio:.0%}",
            auth_cpu_ratio >= 0.9,
        ),
        Budget(
            "proxy throughput",
            "≥ 50% of upstream direct",
            f"{proxy_ratio:.0%}",
            proxy_ratio >= 0.5,
        ),
        Budget(
            "same, from server CPU per request",
            "≥ 50% of upstream direct",
            f"{proxy_cpu_ratio:.0%}",
            proxy_cpu_ratio >= 0.5,
        ),
        Budget(
            f"proxy added p99, {plan.connections} connections",
            "< 2 ms",
            f"{added_p99:+.2f} ms",
            added_p99 < 2.0,
        ),
    ]
    if latency:
        direct_one, proxy_one = latency
        added_one = proxy_one.median("p99_ms") - direct_one.median("p99_ms")
        budgets.append(
            Budget(
                "proxy added p99, 1 connection",
                "< 2 ms",
                f"{added_one:+.2f} ms",
                added_one < 2.0,
            )
        )
    return budgets


def _check_responses(scenarios: list[Scenario]) -> None:
    """Raise unless every scenario's URL returns 200, so wrk measures the right path."""
    for scenario in scenarios:
        status, headers, _ = fetch(scenario.url, scenario.cookie)
        if status != 200:
            raise RuntimeError(
                f"{scenario.label}: {scenario.url} returned status {status}"
            )
        if scenario.url.endswith("/_sso/check") and "x-forwarded-user" not in headers:
            raise RuntimeError(f"{scenario.label}: no X-Forwarded-User header")
