"""Run the sso-middleware benchmark suite and print a Markdown report.

    python benchmarks/run.py            # the full suite, about five minutes
    python benchmarks/run.py --quick    # a smoke test of every part, under a minute

Every figure is compared with a baseline measured in the same run on the same
machine: the bare application, a hand-rolled session check, or the upstream
server. The report ends with each budget and PASS or MISS. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

BENCHMARKS_DIR = Path(__file__).resolve().parent
if str(BENCHMARKS_DIR) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS_DIR))

import cold
import inprocess
import loopback
import memory
import peer
from harness import Budget, Plan, Section, table

SECTIONS = ("asgi", "wsgi", "miss", "login", "loopback", "memory", "peer")
PACKAGES = (
    "sso-middleware",
    "httpx",
    "httpcore",
    "anyio",
    "uvicorn",
    "starlette",
    "werkzeug",
    "itsdangerous",
    "cachetools",
    "PyJWT",
    "cryptography",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="run every part with small counts and 1 s loads, as a smoke test",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated parts to run, from {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--json", type=Path, help="also write every run's raw figures to this file"
    )
    parser.add_argument(
        "--peer-venv",
        type=Path,
        default=peer.DEFAULT_VENV,
        help="virtual environment of the Scalekit SDK (default: %(default)s)",
    )
    parser.add_argument(
        "--setup-peer",
        action="store_true",
        help="create the Scalekit SDK environment when it is missing; the full "
        "suite does this without the flag, --quick only with it",
    )
    parser.add_argument(
        "--no-peer", action="store_true", help="skip the Scalekit SDK comparison"
    )
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown part {', '.join(sorted(unknown))}: use {SECTIONS}")
    return args


def machine() -> list[str]:
    """Return the lines that describe the machine, the software and its load."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            versions.append(f"{name} not installed")
    repo = str(BENCHMARKS_DIR.parent)
    revision = subprocess.run(
        ["git", "-C", repo, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", repo, "status", "--porcelain", "--", "sso_middleware"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if revision and changed:
        revision += " with uncommitted changes to sso_middleware/"
    return [
        f"- CPU: {os.cpu_count()} cores (nproc), {model}",
        (
            f"- Python {platform.python_version()} "
            f"({platform.python_implementation()}), "
            f"{platform.system()} {platform.release()}"
        ),
        f"- Commit {revision or 'unknown'}; " + ", ".join(versions),
    ]


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def plans(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "hot": Plan(3000, 3, 300),
            "miss": Plan(300, 3, 50),
            "redirect": Plan(500, 3, 50),
            "callback": Plan(20, 3, 3),
            "load": loopback.LoadPlan(1, 2, 32, 1, 1),
            "sessions": 5000,
            "peer": (2000, 3, 200),
        }
    return {
        "hot": Plan(20000, 7, 2000),
        "miss": Plan(2000, 7, 200),
        "redirect": Plan(5000, 7, 500),
        "callback": Plan(200, 7, 20),
        "load": loopback.LoadPlan(5, 2, 32, 5, 5),
        "sessions": 100_000,
        "peer": (10000, 7, 1000),
    }


def sections_to_run(
    args: argparse.Namespace,
) -> list[tuple[str, Callable[[], Section]]]:
    plan = plans(args.quick)
    wanted = args.only.split(",")
    setup_peer = args.setup_peer or not args.quick
    available: dict[str, Callable[[], Section]] = {
        "asgi": lambda: inprocess.asgi_hot_path(plan["hot"]),
        "wsgi": lambda: inprocess.wsgi_hot_path(plan["hot"]),
        "miss": lambda: cold.cache_miss(plan["miss"]),
        "login": lambda: cold.login_paths(plan["redirect"], plan["callback"]),
        "loopback": lambda: loopback.loopback(plan["load"]),
        "memory": lambda: memory.memory(plan["sessions"]),
        "peer": lambda: peer.peer(*plan["peer"], args.peer_venv, setup_peer),
    }
    if args.no_peer and "peer" in wanted:
        wanted.remove("peer")
    return [(name, available[name]) for name in SECTIONS if name in wanted]


def render(section: Section, seconds: float) -> str:
    lines = [f"## {section.title}", "", section.description, ""]
    if section.rows:
        lines += [table(section.headers, section.rows), ""]
    lines += [f"- {note}" for note in section.notes]
    lines.append(f"- Took {seconds:.0f} s.")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    print("# sso-middleware benchmarks" + (" (--quick)" if args.quick else ""))
    print()
    print(f"Command: `python benchmarks/run.py {' '.join(argv)}`")
    print()
    print("\n".join(machine()))
    print(f"- Load average at the start (1, 5, 15 min): {load_average()}")
    print(flush=True)

    budgets: list[Budget] = []
    raw: dict[str, Any] = {}
    for name, run_section in sections_to_run(args):
        section_started = time.monotonic()
        try:
            section = run_section()
        except Exception:  # noqa: BLE001
            # One broken part should not hide the figures of the others.
            error = traceback.format_exc()
            print(f"## {name}: failed\n\n```\n{error}```\n", flush=True)
            budgets.append(Budget(name, "runs", "failed", False))
            raw[name] = {"error": error}
            continue
        print(render(section, time.monotonic() - section_started), flush=True)
        budgets += section.budgets
        raw[name] = {"rows": section.rows, "data": section.data}

    print("## Budgets\n")
    print(
        table(
            ["budget", "target", "measured", "verdict"],
            [[b.name, b.target, b.measured, b.verdict] for b in budgets],
        )
    )
    print()
    print(f"- Load average at the end (1, 5, 15 min): {load_average()}")
    print(f"- Total time: {time.monotonic() - started:.0f} s.")
    if args.json:
        raw["budgets"] = [b.__dict__ for b in budgets]
        args.json.write_text(json.dumps(raw, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
