"""Peak memory while many distinct sessions pass through one process.

``python benchmarks/memory.py VARIANT COUNT`` runs in a fresh process, sends COUNT
requests with distinct valid session cookies through the ASGI application VARIANT
(``bare``, ``sso`` or ``starlette``) in-process, and prints the growth of the peak
resident set size (VmHWM in /proc/self/status) as JSON. The ``bare`` variant signs
the same sso-middleware cookies and sends them to the bare application, so its
growth is the cost of the loop itself.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from typing import Any

import fixtures
from harness import Budget, Section

VARIANTS = ("bare", "sso", "starlette")
WARMUP_REQUESTS = 500


def status_kib(field: str) -> int:
    """Return a ``kB`` field of /proc/self/status, such as VmHWM or VmRSS."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def build(variant: str) -> tuple[Any, Any]:
    """Return the application and a coroutine function that signs user i's cookie."""
    from sso_middleware import SSOMiddleware
    from sso_middleware._session import CookieCodec

    if variant == "starlette":
        from inprocess import HAND_ROLLED_COOKIE, starlette_app, starlette_cookie

        async def hand_rolled_cookie(index: int) -> str:
            value = await starlette_cookie(index)
            return fixtures.cookie_header(value, name=HAND_ROLLED_COOKIE)

        return starlette_app(), hand_rolled_cookie
    codec = CookieCodec(fixtures.settings())

    async def sso_cookie(index: int) -> str:
        return fixtures.cookie_header(fixtures.session_cookie_value(codec, index))

    if variant == "sso":
        return SSOMiddleware(fixtures.asgi_app, fixtures.settings()), sso_cookie
    return fixtures.asgi_app, sso_cookie


def measure_variant(variant: str, count: int) -> dict[str, Any]:
    loop = asyncio.new_event_loop()
    app, make_cookie = build(variant)
    recorder = fixtures.ResponseRecorder()

    async def send_all(first: int, number: int) -> int:
        failures = 0
        for index in range(first, first + number):
            scope = fixtures.asgi_scope(cookie=await make_cookie(index))
            await app(scope, fixtures.asgi_receive, recorder)
            failures += recorder.status != 200
        return failures

    # The warm-up users are distinct from the measured ones.
    loop.run_until_complete(send_all(10_000_000, WARMUP_REQUESTS))
    gc.collect()
    before_hwm = status_kib("VmHWM")
    before_rss = status_kib("VmRSS")
    failures = loop.run_until_complete(send_all(0, count))
    gc.collect()
    result = {
        "variant": variant,
        "sessions": count,
        "failures": failures,
        "hwm_before_kib": before_hwm,
        "hwm_after_kib": status_kib("VmHWM"),
        "rss_before_kib": before_rss,
        "rss_after_kib": status_kib("VmRSS"),
    }
    core = getattr(app, "core", None)
    if core is not None:
        result["remembered_cookie_headers"] = fixtures.remembered_count(core)
        verified = getattr(core.cookies, "_verified", None)
        result["verified_cookies"] = len(verified) if verified is not None else None
    loop.close()
    return result


def run_variant(variant: str, count: int) -> dict[str, Any]:
    """Run one variant in a fresh interpreter and return its figures."""
    completed = subprocess.run(
        [sys.executable, __file__, variant, str(count)],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def memory(count: int) -> Section:
    section = Section(
        "Memory: distinct sessions through one process",
        f"{count} requests, each with a new valid session cookie, sent in-process to "
        "an ASGI app in a fresh interpreter; growth of the peak RSS (VmHWM) from after "
        f"{WARMUP_REQUESTS} warm-up requests to the end.",
        ["case", "peak RSS growth MiB", "over bare MiB", "RSS at end MiB", "notes"],
    )
    results = {variant: run_variant(variant, count) for variant in VARIANTS}
    base = results["bare"]
    base_growth = base["hwm_after_kib"] - base["hwm_before_kib"]
    labels = {
        "bare": "bare app (cookie signing and the loop)",
        "sso": "sso-middleware",
        "starlette": "Starlette SessionMiddleware + user check",
    }
    for variant, result in results.items():
        growth = result["hwm_after_kib"] - result["hwm_before_kib"]
        notes = []
        if "remembered_cookie_headers" in result:
            notes.append(
                f"{result['remembered_cookie_headers']} remembered Cookie headers, "
                f"{result['verified_cookies']} verified cookies cached"
            )
        if result["failures"]:
            notes.append(f"{result['failures']} responses were not 200")
        section.rows.append(
            [
                labels[variant],
                f"{growth / 1024:.1f}",
                "" if variant == "bare" else f"{(growth - base_growth) / 1024:+.1f}",
                f"{result['rss_after_kib'] / 1024:.1f}",
                "; ".join(notes),
            ]
        )
    sso = results["sso"]
    growth = sso["hwm_after_kib"] - sso["hwm_before_kib"]
    section.budgets.append(
        Budget(
            f"{count} sessions, peak RSS growth",
            "< 50 MB",
            f"{growth / 1024:.1f} MiB ({(growth - base_growth) / 1024:+.1f} over bare)",
            growth * 1024 < 50_000_000 and not sso["failures"],
        )
    )
    section.data = results
    return section


if __name__ == "__main__":
    print(json.dumps(measure_variant(sys.argv[1], int(sys.argv[2]))))
