#!/usr/bin/env bash
# Run the test suite: installs what it needs (see setup.sh --tests), then pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k ingestion
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
.venv/bin/python -m ruff check .
exec .venv/bin/python -m pytest "$@"
