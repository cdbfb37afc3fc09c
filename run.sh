#!/usr/bin/env bash
# The README's main command: set up ./.venv, then run the demo on the embedded default
# (the shipped base model, models/default_base.pt, learns the class tagged in samples/).
# Extra arguments are passed to `python -m wilss add-class`.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
out="outputs/demo-$(date +%Y%m%d-%H%M%S).pt"
exec .venv/bin/python -m wilss add-class --images samples --class arrow=#ff8000 --out "$out" "$@"
