#!/usr/bin/env bash
# The local demo on embedded defaults (SQLite + Azurite + local executor): installs what it
# needs, then runs `python -m shared.cli demo`. Extra arguments go to the demo command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m shared.cli demo "$@"
