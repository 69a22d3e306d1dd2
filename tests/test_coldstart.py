"""The Functions host imports ``function_app.py`` on every cold start: that import stays light.

Each function imports the services it needs when first called (``bench/bench_coldstart.py``
measures both costs); what no function needs at import time must not be imported then. The
worker-index test imports those lazy imports in a clean virtualenv, so none can go missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ("sqlalchemy", "azure.storage.blob", "azure.ai.ml", "pandas", "numpy", "pyarrow", "sklearn")


def test_importing_function_app_loads_no_heavy_library():
    code = (
        "import json, sys, function_app; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DATA_DIR": str(ROOT / ".data")},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
