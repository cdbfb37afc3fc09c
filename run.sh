#!/usr/bin/env bash
# The README's main command: set up ./.venv, then open the browser app on the embedded default
# (the shipped base model models/default_base.pt and samples/). Extra arguments go to launch.py.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
exec .venv/bin/python launch.py "$@"
