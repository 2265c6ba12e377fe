#!/usr/bin/env bash
# Run the local demonstration: scripts/demo.sh [DEMO OPTIONS...]
#
# Installs the project with its demo extra (which brings the mock OpenID provider)
# into .venv, then runs "sso-middleware demo".
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

install_system_packages
install_python_packages demo

exec .venv/bin/sso-middleware demo "$@"
