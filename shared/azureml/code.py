"""The code snapshot of a scoring job: a folder that *contains* the ``scoring`` package.

Every executor runs the same command line, ``python -m scoring.score ...`` (see
:class:`shared.executors.base.StepCommand`). Azure ML runs a job's command in the root of its code
snapshot, so for ``-m scoring.score`` to resolve, the snapshot must hold ``scoring/`` as a
subfolder. Two ways were possible:

* ``code=<repo root>``: would upload the whole app (``shared/``, tests, infra, ``node_modules``)
  unless an ``.amlignore`` at the root lists everything but ``scoring/``, an ignore file that
  silently breaks whenever someone adds a top-level folder;
* ``code=scoring/`` itself: the snapshot root would *be* the package, so the command would have to
  become ``python score.py`` (a second command line, and the package's relative imports break).

So the executor **stages** a folder holding a copy of ``scoring/`` (Python sources and its
environment files, no caches) and points ``code`` at it. The snapshot is exactly the package the
local executor imports. azure-ai-ml names an anonymous code asset by a hash of the relative paths
and contents of the folder, so staging into a fresh temporary folder for each submission still
uploads the code once per change of ``scoring/``, not once per run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

SCORING_PACKAGE = "scoring"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*", "tests", "*.egg-info")


def scoring_source_dir() -> Path:
    """The folder of the ``scoring`` package this app runs (found without importing it:
    importing ``scoring`` loads numpy and pyarrow)."""
    spec = importlib.util.find_spec(SCORING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'scoring' package is not importable: cannot stage the job code")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def stage_code(dest: str | Path, source: str | Path | None = None) -> Path:
    """Copy the ``scoring`` package into ``dest/scoring`` and return ``dest`` (the job's code).

    ``dest`` is emptied of a previous ``scoring/`` copy first, so a stale module never lingers in
    the snapshot.
    """
    dest = Path(dest).resolve()
    source = Path(source) if source is not None else scoring_source_dir()
    target = dest / SCORING_PACKAGE
    if target.exists():
        shutil.rmtree(target)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, ignore=_IGNORED)
    return dest


@contextlib.contextmanager
def staged_code() -> Iterator[Path]:
    """A temporary code folder for one submission (azure-ai-ml uploads it inside
    ``jobs.create_or_update``, so it may go once that call returns)."""
    with tempfile.TemporaryDirectory(prefix="scoring-code-") as tmp:
        yield stage_code(tmp)
