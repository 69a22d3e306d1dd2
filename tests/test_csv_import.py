"""CSV import, counted row for row: a real NAB file (timestamp,value) and a reference-layout file
(TS,Device,Sensor,Value) written by the simulator; re-importing changes nothing."""

from datetime import datetime

import pytest
import sqlalchemy as sa

from shared.db.schema import readings
from shared.ingestion.csv_import import CsvLayoutError, import_csv
from shared.simulate import FleetSpec, make_fleet, write_csv
from tests.conftest import NAB


def stored(ctx, **where) -> int:
    query = sa.select(sa.func.count()).select_from(readings)
    for column, value in where.items():
        query = query.where(readings.c[column] == value)
    with ctx.engine.connect() as conn:
        return conn.execute(query).scalar_one()


def test_nab_file_imports_row_for_row(ctx):
    path = NAB / "realAWSCloudwatch" / "ec2_cpu_utilization_24ae8d.csv"
    if not path.exists():
        pytest.skip(f"NAB data not found at {path}")
    rows = len(path.read_text().splitlines()) - 1
    result = import_csv(
        path,
        ctx.engine,
        ctx.store,
        ctx.settings.deadletter_container,
        device="ec2_cpu_utilization",
        sensor="24ae8d",
    )
    assert result.counts.inserted == rows and result.rejected == 0
    assert stored(ctx, device="ec2_cpu_utilization", sensor="24ae8d") == rows
    again = import_csv(
        path,
        ctx.engine,
        ctx.store,
        ctx.settings.deadletter_container,
        device="ec2_cpu_utilization",
        sensor="24ae8d",
    )
    assert (again.counts.inserted, again.counts.duplicates) == (0, rows)
    assert stored(ctx) == rows


def test_reference_layout_with_bad_rows(ctx, tmp_path):
    fleet = make_fleet(
        FleetSpec(
            start=datetime(2026, 2, 1),
            end=datetime(2026, 2, 1, 0, 10),
            devices=3,
            sensors_per_device=5,
        )
    )
    path = tmp_path / "readings.csv"
    rows = write_csv(fleet, path)
    assert rows == 3 * 5 * 120
    with open(path, "a") as handle:
        handle.write("2026-02-01 00:00:00,device-001,sensor-01,not-a-number\n")
        handle.write("garbage\n")
    result = import_csv(path, ctx.engine, ctx.store, ctx.settings.deadletter_container)
    assert result.counts.inserted == rows
    assert result.rejected == 2
    assert stored(ctx) == rows
    assert stored(ctx, device="device-002", sensor="sensor-03") == 120
    (blob,) = ctx.store.list(ctx.settings.deadletter_container, "import/")
    assert blob.startswith("import/readings-")


def test_unknown_layout_is_refused(ctx, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(CsvLayoutError, match="unknown CSV layout"):
        import_csv(path, ctx.engine, ctx.store, ctx.settings.deadletter_container)
    path.write_text("timestamp,value\n2026-01-01 00:00:00,1\n")
    with pytest.raises(CsvLayoutError, match="--device and --sensor"):
        import_csv(path, ctx.engine, ctx.store, ctx.settings.deadletter_container)
