"""The process-wide application context: settings, the SQL engine and the blob store.

Built once per process (a Functions worker, the CLI, a test) from the environment, so that the
trigger adapters stay a few lines: ``ctx = get_context()`` and call a service with it.

``function_app`` imports this module on every cold start, so it imports nothing heavy itself:
SQLAlchemy, the blob SDK and the settings' parser are loaded when the context is first built,
i.e. by the first function call that needs them (bench/bench_coldstart.py measures both).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from sqlalchemy import Engine

    from shared.blobs import BlobStore
    from shared.settings import Settings


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    store: BlobStore

    @classmethod
    def create(cls, settings: Settings | None = None) -> AppContext:
        from shared.blobs import BlobStore
        from shared.db.engine import make_engine
        from shared.settings import Settings

        settings = settings or Settings.from_env()
        return cls(settings, make_engine(settings), BlobStore.from_settings(settings))


_lock = threading.Lock()
_context: AppContext | None = None


def get_context() -> AppContext:
    """The shared context, created from the environment on first use."""
    global _context
    with _lock:
        if _context is None:
            _context = AppContext.create()
        return _context


def set_context(context: AppContext | None) -> None:
    """Install a context (the CLI and tests do, so trigger functions use their settings)."""
    global _context
    with _lock:
        _context = context
