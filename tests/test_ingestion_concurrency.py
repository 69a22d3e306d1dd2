"""Concurrent ingestion on a real PostgreSQL server: overlapping batches in opposite key order.

Two Event Hubs partitions (or a retried batch beside a fresh one) can carry the same readings.
Inserted in arrival order, each transaction locks its keys in its own order, and PostgreSQL
kills one of them as a deadlock victim (8 rounds of 10 before the fix): the batch fails and is
retried. In key order one waits for the other; a victim that still occurs is retried.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import psycopg
import pytest
import sqlalchemy as sa

from shared.db import migrate
from shared.db.engine import engine_for_url
from shared.db.retry import call_with_sql_retry, is_transient
from shared.db.schema import readings
from shared.ingestion.store import insert_readings
from shared.ingestion.validation import Reading
from tests.conftest import fresh_postgres_url

T0 = datetime(2026, 5, 1)
ROUNDS = 10
ROWS = 4000


def _batch(offset: int, reverse: bool) -> list[Reading]:
    rows = [
        Reading(T0 + timedelta(seconds=offset + i), f"dev-{i % 7}", f"s-{i % 3}", float(i))
        for i in range(ROWS)
    ]
    return rows[::-1] if reverse else rows


def test_overlapping_batches_in_opposite_order_never_deadlock(postgres_server):
    engine = engine_for_url(fresh_postgres_url(postgres_server))
    migrate.upgrade(engine)
    errors: list[BaseException] = []
    inserted = 0
    lock = threading.Lock()
    try:
        for r in range(ROUNDS):
            start = threading.Barrier(2)

            def insert(reverse: bool, offset: int = r * 10 * ROWS, start=start) -> None:
                nonlocal inserted
                start.wait()
                try:
                    counts = insert_readings(engine, _batch(offset, reverse))
                    with lock:
                        inserted += counts.inserted
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=insert, args=(rev,)) for rev in (False, True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not errors, f"{len(errors)} of {ROUNDS} rounds failed: {errors[0]!r}"
        with engine.connect() as conn:
            stored = conn.execute(sa.select(sa.func.count()).select_from(readings)).scalar_one()
        # Nothing lost, nothing twice: each key once, and the counts agree.
        assert stored == inserted == ROUNDS * ROWS
    finally:
        engine.dispose()


def test_a_deadlock_victim_is_retried(postgres_server):
    """A real deadlock (two transactions locking two rows in opposite order): the victim's
    error is transient to the retry, which re-runs its unit of work to success."""
    engine = engine_for_url(fresh_postgres_url(postgres_server))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (id int primary key, v int)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1, 0), (2, 0)"))
        barrier = threading.Barrier(2)
        attempts = {"a": 0, "b": 0}
        victims: list[BaseException] = []

        def work(name: str, first: int, second: int) -> None:
            attempts[name] += 1
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE t SET v = v + 1 WHERE id = :i"), {"i": first})
                if attempts[name] == 1:
                    barrier.wait(timeout=10)
                conn.execute(sa.text("UPDATE t SET v = v + 1 WHERE id = :i"), {"i": second})

        def run(name: str, first: int, second: int) -> None:
            try:
                call_with_sql_retry(lambda: work(name, first, second), 20, "test")
            except BaseException as exc:  # noqa: BLE001 - reported below
                victims.append(exc)

        threads = [
            threading.Thread(target=run, args=("a", 1, 2)),
            threading.Thread(target=run, args=("b", 2, 1)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not victims, victims
        assert sorted(attempts.values()) == [1, 2]  # exactly one victim, retried once
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT sum(v) FROM t")).scalar_one() == 4
    finally:
        engine.dispose()


@pytest.mark.parametrize("code", ["40P01", "40001"])
def test_deadlock_and_serialization_failures_are_transient(code):
    assert is_transient(psycopg.errors.lookup(code)("x"))
