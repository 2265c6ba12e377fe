"""A peer: the framework adapters of the official Scalekit SDK, on a signed-in request.

``scalekit-sdk-python`` pins many packages of its own (grpcio, protobuf, mcp,
Faker, pydantic and more), so it lives in a separate virtual environment under
/tmp, made by :func:`setup_venv`. The worker, ``peer_worker.py``, runs in that
environment with this checkout on ``PYTHONPATH`` and times, in one process and
one framework at a time: the bare route, the route behind sso-middleware, and the
route behind the SDK's ``ScalekitAuth``. The SDK's client is a stand-in object,
which no signed-in request with an unexpired session touches, so nothing leaves
the process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
DEFAULT_VENV = Path("/tmp/sso-middleware-bench-peer")
SDK_REQUIREMENT = "scalekit-sdk-python==2.21.0"
# The SDK with its Flask and FastAPI extras, and sso-middleware's own dependencies,
# which this checkout does not install into that environment.
PEER_REQUIREMENTS = [
    SDK_REQUIREMENT,
    "flask>=3.0",
    "fastapi>=0.110",
    "asgiref>=3.8",
    "cachetools>=5.3",
    "httpx>=0.27",
    "itsdangerous>=2.1",
    "PyJWT[crypto]>=2.8",
    "werkzeug>=3.0",
]
SETUP_TIMEOUT = 600


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def setup_venv(venv: Path) -> None:
    """Create the peer's virtual environment and install the SDK into it."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [
            str(venv_python(venv)),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *PEER_REQUIREMENTS,
        ],
        check=True,
        timeout=SETUP_TIMEOUT,
    )


def run_worker(venv: Path, number: int, repeats: int, warmup: int) -> dict[str, Any]:
    """Run the timing worker in the peer's environment and return its figures."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(BENCHMARKS_DIR)])
    completed = subprocess.run(
        [
            str(venv_python(venv)),
            str(BENCHMARKS_DIR / "peer_worker.py"),
            str(number),
            str(repeats),
            str(warmup),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"peer worker failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# The section, in the benchmark process


def peer(number: int, repeats: int, warmup: int, venv: Path, setup: bool) -> Any:
    import statistics

    from harness import Budget, Section

    section = Section(
        "Peer: Scalekit SDK framework adapters, signed-in request",
        f"In-process calls in the SDK's own environment ({SDK_REQUIREMENT}): the "
        "same route bare, behind sso-middleware, and behind the SDK's ScalekitAuth "
        "(AES-GCM session cookie, checked on every request; the FastAPI adapter runs "
        f"the check in a worker thread). Flask: {number} requests per run, FastAPI: "
        f"half as many, median of {repeats} runs.",
        ["case", "µs/request", "overhead µs", "overhead vs sso-middleware"],
    )
    if not venv_python(venv).exists():
        if not setup:
            section.notes.append(
                f"Skipped: no peer environment at {venv}. "
                "`python benchmarks/run.py --setup-peer` creates it."
            )
            section.budgets.append(
                Budget("peer comparison", "measured", "skipped", None)
            )
            return section
        setup_venv(venv)
    results = run_worker(venv, number, repeats, warmup)
    section.data = results
    section.notes.append(
        "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    )
    labels = {
        "bare": "bare route",
        "sso": "sso-middleware",
        "scalekit": "Scalekit SDK ScalekitAuth",
    }
    for framework in ("flask", "fastapi"):
        runs = results[framework]
        medians = {name: statistics.median(values) for name, values in runs.items()}
        sso_over = medians["sso"] - medians["bare"]
        for name, label in labels.items():
            over = medians[name] - medians["bare"]
            section.rows.append(
                [
                    f"{framework}: {label}",
                    f"{medians[name] / 1000:.2f}",
                    "" if name == "bare" else f"{over / 1000:+.2f}",
                    _ratio(over, sso_over) if name == "scalekit" else "",
                ]
            )
    return section


def _ratio(over: float, sso_over: float) -> str:
    # Below a microsecond the middleware's overhead is within the noise of a
    # framework request, and a ratio to it would mean nothing.
    if sso_over < 1000:
        return "sso-middleware's is under 1 µs"
    return f"{over / sso_over:.1f}x"
