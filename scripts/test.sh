#!/usr/bin/env bash
# Install what the test suite needs, then run it: scripts/test.sh [PYTEST ARGS...]
#
# Written for a fresh Debian machine with Python 3.11, run as root (or with sudo).
# The system packages provide the real servers that the tests start themselves:
# redis-server, nginx, Chromium and chromedriver. The Python packages go to .venv.
# Every step is skipped when its result is already there, so later runs go straight
# to pytest. The exit status is pytest's.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

install_system_packages() {
    local packages=()
    # nginx lives in /usr/sbin, which is not on every user's PATH.
    local search_path="$PATH:/usr/sbin:/sbin"
    PATH="$search_path" command -v redis-server >/dev/null || packages+=(redis-server)
    PATH="$search_path" command -v nginx >/dev/null || packages+=(nginx)
    command -v chromium >/dev/null || packages+=(chromium)
    command -v chromedriver >/dev/null || packages+=(chromium-driver)
    # Debian splits the venv module's pip bootstrap into its own package.
    python3 -c 'import ensurepip' 2>/dev/null || packages+=(python3-venv)
    if [ "${#packages[@]}" -eq 0 ]; then
        return
    fi
    echo "Installing ${packages[*]} with apt-get" >&2
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${packages[@]}"
}

# Install the project in editable mode with the given extra. A stamp that records
# pyproject.toml's hash skips pip when the dependencies have not changed.
install_python_packages() {
    local extra="$1"
    local stamp=".venv/.installed-$extra"
    if [ ! -x .venv/bin/python ]; then
        echo "Creating .venv" >&2
        python3 -m venv .venv
    fi
    local wanted
    wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
        return
    fi
    echo "Installing the project with pip install -e '.[$extra]'" >&2
    PIP_NO_INPUT=1 .venv/bin/python -m pip install --quiet \
        --disable-pip-version-check -e ".[$extra]"
    echo "$wanted" > "$stamp"
}

install_system_packages
install_python_packages test

# PATH gains /usr/sbin so the fixtures find nginx when run by a non-root user.
PATH="$PATH:/usr/sbin:/sbin" exec .venv/bin/python -m pytest "$@"
