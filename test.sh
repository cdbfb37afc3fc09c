#!/usr/bin/env bash
# The README's test command: set up ./.venv and run the whole test suite (CPU, no downloads).
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh requirements-dev.txt
exec .venv/bin/python -m pytest -q tests "$@"
