#!/usr/bin/env bash
# One command: install everything the tests need, lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy   # files and options: [tool.mypy] in pyproject.toml
exec .venv/bin/python -m pytest "$@"
