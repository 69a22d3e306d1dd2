"""``function_app.py`` loads in the Functions Python worker, as a deployment would run it.

The worker's own indexing code (``azure-functions-runtime`` from PyPI, the Python worker as a
library) indexes the app inside ``.venv-worker/``: a clean virtualenv on Python >= 3.13 built
from ``requirements.txt`` alone plus that package, i.e. exactly what a deployment installs
(``scripts/setup.sh --tests`` builds it). Each indexed function must pass
``Registry().add_indexed_function``; the Functions host itself is not run (it cannot be here):
the worker's load checks need only the host protocol's ``BindingInfo`` enum values, which
``tests/worker_index_check.py`` defines from FunctionRpc.proto.

When one function fails these checks the worker reports the whole index as failed and the host
starts with no function at all, so this is the test that stands between a green suite and an
app that runs nothing in Azure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

WORKER_PYTHON = ROOT / ".venv-worker" / "bin" / "python"
CHECK = ROOT / "tests" / "worker_index_check.py"
INSTALL_HINT = (
    "needs Python >= 3.13 for azure-functions-runtime: install one (`pyenv install 3.13`, "
    "Debian's python3.13, or set PYTHON313=/path/to/python3.13), then run "
    "`bash scripts/setup.sh --tests` to build .venv-worker/"
)


def run_check(app_dir, app_settings: dict[str, str] | None = None) -> tuple[int, dict, str]:
    if not WORKER_PYTHON.exists():
        pytest.skip(f"no worker virtualenv (.venv-worker/): {INSTALL_HINT}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(app_settings or {})
    proc = subprocess.run(
        [str(WORKER_PYTHON), str(CHECK), str(app_dir)],
        cwd=app_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    report = json.loads(lines[-1]) if lines else {}
    return proc.returncode, report, proc.stderr[-4000:]


def test_worker_venv_is_clean_and_on_a_worker_python():
    """The virtualenv holds Python >= 3.13 and nothing from the dev requirements."""
    if not WORKER_PYTHON.exists():
        pytest.skip(f"no worker virtualenv (.venv-worker/): {INSTALL_HINT}")
    probe = (
        "import sys, importlib.util as u; print(sys.version_info >= (3, 13)); "
        "print([m for m in ('pytest', 'psycopg', 'ruff') if u.find_spec(m)])"
    )
    out = subprocess.run(
        [str(WORKER_PYTHON), "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "True"
    assert out[1] == "[]", "the worker venv must hold requirements.txt only"


def test_every_function_is_indexed_and_loads_in_the_worker():
    code, report, stderr = run_check(ROOT)
    assert "index_error" not in report, report.get("index_error") or stderr
    functions = report["functions"]
    failed = {name: error for name, error in functions.items() if error != "ok"}
    assert not failed, f"the worker refuses: {failed}"
    # Whatever functions exist now: each one the FunctionApp declares is indexed and loads.
    assert report["declared"] > 0
    assert len(functions) == report["declared"]
    missing = {m: e for m, e in report["imports"].items() if e != "ok"}
    assert not missing, f"not importable from requirements.txt alone: {missing}"
    assert code == 0, stderr


def _app_copy(tmp_path):
    """A copy of the app's deployable files, for the negative checks below."""
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(ROOT / "function_app.py", app)
    for package in ("shared", "scoring"):
        shutil.copytree(ROOT / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
    return app


def test_the_check_catches_an_annotation_the_worker_refuses(tmp_path):
    """``list[func.EventHubEvent]`` was refused by the worker (a non-type annotation to it):
    the check must see that, or it proves nothing."""
    app = _app_copy(tmp_path)
    source = (app / "function_app.py").read_text()
    assert "def ingest_readings(events: List[func.EventHubEvent])" in source
    (app / "function_app.py").write_text(
        source.replace(
            "def ingest_readings(events: List[func.EventHubEvent])",
            "def ingest_readings(events: list[func.EventHubEvent])",
        )
    )
    code, report, stderr = run_check(app)
    assert code == 1
    error = report["functions"]["ingest_readings"]
    assert "invalid non-type annotation" in error, stderr


def test_the_check_catches_a_lazy_import_missing_from_requirements(tmp_path):
    """An import inside a function body of an app module (here one the HTTP handlers reach)
    that requirements.txt does not provide fails the check, as it would fail in Azure on the
    first call."""
    app = _app_copy(tmp_path)
    api = app / "shared" / "api.py"
    api.write_text(
        api.read_text() + "\n\ndef _needs_a_dev_only_package():\n    import psycopg  # noqa: F401\n"
    )
    code, report, _ = run_check(app)
    assert code == 1
    assert report["imports"]["psycopg"] != "ok"
    assert all(v == "ok" for v in report["functions"].values())


def test_the_check_follows_handlers_named_in_route_declarations(tmp_path):
    """HTTP handlers are imported by the name their route declares (``"module:function"``,
    shared.routes), not by an import statement: a package requirements.txt lacks, imported
    in one of them, fails the check too."""
    app = _app_copy(tmp_path)
    handlers = app / "shared" / "events" / "http.py"
    handlers.write_text(
        handlers.read_text()
        + "\n\ndef _needs_a_dev_only_package():\n    import psycopg  # noqa: F401\n"
    )
    code, report, _ = run_check(app)
    assert code == 1
    assert report["imports"]["psycopg"] != "ok"
    assert report["imports"]["shared.events.http:anomalies_handler"] == "ok"


@pytest.mark.parametrize(
    "name, value, rule",
    [
        ("BUCKET_SECONDS", "abc", "is not an integer"),
        ("MAX_WINDOW_HOURS", "1e308", "must be at most"),
        ("LOG_LEVEL", "verbose", "must be one of"),
    ],
)
def test_a_malformed_setting_fails_the_index_naming_it(name, value, rule):
    """The README's promise: a malformed app setting stops the app at start. The worker imports
    function_app to index it; the settings are validated there, so the index fails (the host
    starts no function) and its error names the setting and the rule."""
    code, report, stderr = run_check(ROOT, {name: value})
    assert code == 1
    error = report.get("index_error", "")
    assert "SettingsError" in error and name in error and rule in error, error or stderr
