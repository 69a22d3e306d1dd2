"""``shared.blobs.RangedBlob``: a blob read as a seekable file, one ranged GET per read, against
Azurite; recording reads a chunk file's key columns through it (issue 12: the chunk's
aggregates, most of its bytes, are neither downloaded nor held).
"""

from __future__ import annotations

import io
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

from shared.blobs import BlobStore
from shared.settings import Settings


@pytest.fixture
def store(azurite) -> BlobStore:
    settings = Settings.from_env({"ScoringStorage": azurite.connection_string})
    return BlobStore.from_settings(settings)


def _chunk_like(rows: int) -> bytes:
    """A Parquet file shaped like a chunk: small key columns, large float columns."""
    rng = np.random.default_rng(3)
    table = pa.table(
        {
            "device": pa.array(np.repeat([f"d{i:04d}" for i in range(rows // 100)], 100)),
            "bucket": pa.array(np.tile(np.arange(100, dtype=np.int64), rows // 100)),
            **{name: rng.normal(size=rows) for name in ("mean", "min", "max", "std")},
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def test_reading_a_few_columns_fetches_only_their_bytes(store):
    container = f"ranged-{uuid.uuid4().hex[:8]}"
    data = _chunk_like(400_000)
    store.upload(container, "chunk.parquet", data)
    source = store.open(container, "chunk.parquet")
    assert source.size == len(data)
    keys = pq.ParquetFile(source, pre_buffer=False).read(columns=["device", "bucket"])
    expected = pq.read_table(io.BytesIO(data), columns=["device", "bucket"])
    assert keys.equals(expected)
    assert 0 < source.fetched < len(data) / 10, (source.fetched, len(data))
    # Kept: a second pass over the same columns reads nothing more from storage.
    kept = store.open(container, "chunk.parquet", keep=True)
    first = pq.ParquetFile(kept, pre_buffer=False)
    assert first.read(columns=["device", "bucket"]).equals(expected)
    fetched = kept.fetched
    assert first.read(columns=["device", "bucket"]).equals(expected)
    assert kept.fetched == fetched
    # Whole, it is the same bytes.
    whole = store.open(container, "chunk.parquet")
    assert whole.read() == data and whole.fetched == len(data)
    assert whole.read() == b""  # at the end
    whole.seek(-4, io.SEEK_END)
    assert whole.read() == data[-4:]
    with pytest.raises(ValueError):
        whole.seek(-1)


def test_a_blob_rewritten_while_read_fails_the_read_instead_of_mixing_versions(store):
    container = f"ranged-{uuid.uuid4().hex[:8]}"
    data = _chunk_like(100_000)
    store.upload(container, "chunk.parquet", data)
    source = store.open(container, "chunk.parquet")
    assert source.read(4) == b"PAR1"
    store.upload(container, "chunk.parquet", _chunk_like(200_000))  # a new version, new ETag
    with pytest.raises(ResourceModifiedError):
        source.read(4)
    # Through a Parquet reader (as recording reads a chunk file): the storage error comes out
    # as itself, which recording lets through for the host's retry, not as a damaged file.
    store.upload(container, "chunk.parquet", data)
    source = store.open(container, "chunk.parquet")
    first_read = source.readinto

    def rewritten_after_the_footer(buffer):
        n = first_read(buffer)
        store.upload(container, "chunk.parquet", _chunk_like(200_000))
        return n

    source.readinto = rewritten_after_the_footer
    with pytest.raises(ResourceModifiedError):
        pq.ParquetFile(source, pre_buffer=False).read(columns=["mean"])


def test_opening_a_missing_blob_says_so(store):
    container = f"ranged-{uuid.uuid4().hex[:8]}"
    store.ensure_container(container)
    with pytest.raises(ResourceNotFoundError):
        store.open(container, "nothing.parquet")
