#!/usr/bin/env bash
# Creates ./.venv with the project's dependencies (idempotent). Usage: bash setup.sh [requirements file]
set -euo pipefail
cd "$(dirname "$0")"
req="${1:-requirements.txt}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# A plain install from the registry: torch and torchvision must come from the same build (see README).
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -r "$req"
