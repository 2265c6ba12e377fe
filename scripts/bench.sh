#!/usr/bin/env bash
# Run the benchmark suite: scripts/bench.sh [benchmarks/run.py OPTIONS...]
#
# Installs wrk for the loopback part and the project with its bench extra into
# .venv, then prints the report of benchmarks/run.py.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

install_system_packages wrk:wrk
install_python_packages bench

exec .venv/bin/python benchmarks/run.py "$@"
