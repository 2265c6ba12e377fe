#!/usr/bin/env bash
# Install what the test suite needs, then run it: scripts/test.sh [PYTEST ARGS...]
#
# The system packages provide the real servers that the tests start themselves:
# redis-server, nginx, Chromium and chromedriver. The Python packages go to .venv.
# The exit status is pytest's.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

install_system_packages redis-server:redis-server nginx:nginx chromium:chromium \
    chromedriver:chromium-driver
install_python_packages test

# PATH gains /usr/sbin so the fixtures find nginx when run by a non-root user.
PATH="$PATH:/usr/sbin:/sbin" exec .venv/bin/python -m pytest "$@"
