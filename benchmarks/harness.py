"""Timing loops, medians, budgets and the report table.

Each case is a function ``run(n) -> (elapsed_ns, cpu_ns)`` that handles ``n``
requests and times them itself, with ``time.perf_counter_ns`` and
``time.thread_time_ns``, so an asynchronous case can time its loop inside the
event loop. The figures are the wall-clock times. The CPU times show how much
other processes on the machine stretched them: on an idle machine the two agree. Cases that are compared run interleaved, in a
rotating order, so that a slow spell of the machine hits all of them alike.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

Runner = Callable[[int], tuple[int, int]]


@dataclass(frozen=True)
class Plan:
    """How many requests to time, how often, and after how many warm-up requests."""

    number: int
    repeats: int
    warmup: int

    def scaled(self, factor: float) -> Plan:
        """Return the plan with ``number`` and ``warmup`` times ``factor``."""
        return Plan(
            max(int(self.number * factor), 10),
            self.repeats,
            max(int(self.warmup * factor), 5),
        )

    @property
    def total(self) -> int:
        """The number of requests one case handles, warm-up included."""
        return self.warmup + self.number * self.repeats


@dataclass
class Timing:
    """The median time per request of one case, with every run's figure."""

    name: str
    runs_ns: list[float] = field(default_factory=list)
    cpu_runs_ns: list[float] = field(default_factory=list)

    @property
    def median_ns(self) -> float:
        return statistics.median(self.runs_ns)

    @property
    def cpu_median_ns(self) -> float:
        return statistics.median(self.cpu_runs_ns)

    @property
    def median_us(self) -> float:
        return self.median_ns / 1000.0

    @property
    def spread_us(self) -> float:
        """The interquartile range of the runs, a measure of their noise."""
        if len(self.runs_ns) < 4:
            return (max(self.runs_ns) - min(self.runs_ns)) / 1000.0
        quartiles = statistics.quantiles(self.runs_ns, n=4)
        return (quartiles[2] - quartiles[0]) / 1000.0


def raw_runs(timings: dict[str, Timing]) -> dict[str, dict[str, list[float]]]:
    """Return every run's nanoseconds per request, wall-clock and CPU, for JSON."""
    return {
        name: {"wall_ns": timing.runs_ns, "cpu_ns": timing.cpu_runs_ns}
        for name, timing in timings.items()
    }


def measure(cases: dict[str, Runner], plan: Plan) -> dict[str, Timing]:
    """Time every case ``plan.repeats`` times, interleaved, and keep the medians."""
    for run in cases.values():
        run(plan.warmup)
    timings = {name: Timing(name) for name in cases}
    names = list(cases)
    for repeat in range(plan.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            elapsed, cpu = cases[name](plan.number)
            timings[name].runs_ns.append(elapsed / plan.number)
            timings[name].cpu_runs_ns.append(cpu / plan.number)
    return timings


def asgi_runner(
    loop: asyncio.AbstractEventLoop,
    app: Callable[..., Awaitable[None]],
    scopes: Iterator[dict[str, Any]],
    receive: Callable[[], Awaitable[Any]],
    send: Callable[[Any], Awaitable[None]],
) -> Runner:
    """Return a runner that calls ``app`` with the next scopes, each one copied.

    The copy stands for the new scope a server builds for every request, and makes
    the calls independent of whatever an earlier call stored in the scope.
    """

    async def timed(n: int) -> tuple[int, int]:
        batch = list(itertools.islice(scopes, n))
        cpu_started = time.thread_time_ns()
        started = time.perf_counter_ns()
        for scope in batch:
            await app(dict(scope), receive, send)
        elapsed = time.perf_counter_ns() - started
        return elapsed, time.thread_time_ns() - cpu_started

    return lambda n: loop.run_until_complete(timed(n))


def wsgi_runner(
    app: Callable[..., Any],
    environs: Iterator[dict[str, Any]],
    start_response: Callable[..., Any],
) -> Runner:
    """Return a runner that calls ``app`` with copies of the next environs.

    The body is joined and ``close()`` is called when present, as a server would.
    """

    def timed(n: int) -> tuple[int, int]:
        batch = list(itertools.islice(environs, n))
        cpu_started = time.thread_time_ns()
        started = time.perf_counter_ns()
        for environ in batch:
            result = app(dict(environ), start_response)
            b"".join(result)
            close = getattr(result, "close", None)
            if close is not None:
                close()
        elapsed = time.perf_counter_ns() - started
        return elapsed, time.thread_time_ns() - cpu_started

    return timed


# Budgets


@dataclass(frozen=True)
class Budget:
    """One target of the suite and whether the measured figure meets it."""

    name: str
    target: str
    measured: str
    passed: bool | None  # None when the figure could not be measured

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "SKIP"
        return "PASS" if self.passed else "MISS"


# The report


@dataclass
class Section:
    """The figures of one part of the suite, for the report and the JSON output."""

    title: str
    description: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def overhead_rows(
    timings: dict[str, Timing], baseline: str, labels: dict[str, str]
) -> list[list[str]]:
    """Return table rows of µs per request and overhead over ``baseline``."""
    base = timings[baseline].median_ns
    rows = []
    for name, label in labels.items():
        timing = timings[name]
        over = timing.median_ns - base
        ratio = timing.median_ns / base
        cpu_over = timing.cpu_median_ns - timings[baseline].cpu_median_ns
        rows.append(
            [
                label,
                f"{timing.median_us:.2f}",
                f"±{timing.spread_us / 2:.2f}",
                "" if name == baseline else f"{over / 1000:+.2f}",
                "" if name == baseline else f"{ratio:.2f}x",
                f"{timing.cpu_median_ns / 1000:.2f}",
                "" if name == baseline else f"{cpu_over / 1000:+.2f}",
            ]
        )
    return rows


TIMING_HEADERS = [
    "case",
    "µs/request",
    "IQR/2",
    "overhead µs",
    "vs bare",
    "CPU µs/request",
    "CPU overhead µs",
]


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Return a Markdown table whose columns line up in a terminal too."""
    widths = [len(header) for header in headers]
    for row in rows:
        for column, cell in enumerate(row):
            widths[column] = max(widths[column], len(cell))

    def line(cells: list[str]) -> str:
        padded = [cell.ljust(widths[column]) for column, cell in enumerate(cells)]
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(headers), separator, *(line(row) for row in rows)])


def us(value_ns: float) -> str:
    """Format nanoseconds as microseconds with two decimals."""
    return f"{value_ns / 1000.0:.2f}"
