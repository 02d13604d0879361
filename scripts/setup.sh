#!/usr/bin/env bash
# Create .venv and install the service into it as an editable package (`lipsync` command
# included). Add "dev" for tests and conversion (the `conversion`, `dev` and `ray` extras).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
target=.
[ "${1:-}" = "dev" ] && target=".[conversion,dev,ray]"
# Skip pip when neither the pins nor the package metadata changed since the last install.
stamp=".venv/.installed-$(cat pyproject.toml requirements*.txt | sha256sum | cut -c1-16)-${1:-serving}"
if [ ! -f "$stamp" ]; then
    .venv/bin/pip install --quiet --disable-pip-version-check -e "$target"
    touch "$stamp"
fi
