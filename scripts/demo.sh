#!/usr/bin/env bash
# Run the local demonstration: scripts/demo.sh [DEMO OPTIONS...]
#
# Creates .venv with python3 -m venv when it is missing, installs the project with
# its demo extra (which brings the mock OpenID provider), then runs
# "sso-middleware demo". A stamp that records pyproject.toml's hash skips pip when
# the dependencies have not changed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

extra=demo
stamp=".venv/.installed-$extra"
if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv" >&2
    python3 -m venv .venv
fi
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    echo "Installing the project with pip install -e '.[$extra]'" >&2
    PIP_NO_INPUT=1 .venv/bin/python -m pip install --quiet \
        --disable-pip-version-check -e ".[$extra]"
    echo "$wanted" > "$stamp"
fi

exec .venv/bin/sso-middleware demo "$@"
