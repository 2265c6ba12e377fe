# Set-up shared by scripts/test.sh, scripts/demo.sh and scripts/bench.sh: source it.
#
# Written for a fresh Debian machine with Python 3.11, run as root (or with sudo).
# Every step is skipped when its result is already there.

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

# install_system_packages COMMAND:PACKAGE...
# Installs with apt-get each Debian PACKAGE whose COMMAND is not on the PATH, and
# python3-venv when the venv module cannot bootstrap pip.
install_system_packages() {
    local packages=() pair
    # nginx lives in /usr/sbin, which is not on every user's PATH.
    local search_path="$PATH:/usr/sbin:/sbin"
    for pair in "$@"; do
        PATH="$search_path" command -v "${pair%%:*}" >/dev/null || packages+=("${pair#*:}")
    done
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

# install_python_packages EXTRA
# Creates .venv and installs the project in editable mode with the given extra. A
# stamp that records pyproject.toml's hash skips pip when nothing has changed.
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
