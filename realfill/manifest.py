"""Parquet manifests of a run: OUT/manifest/samples/ (one row per sample) and OUT/manifest/scenes/
(one row per scene). Each scene writes its own part file, named by scene and run key, atomically;
each folder reads back as one table with `pyarrow.dataset`, pandas or Ray Data."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from realfill import storage

SCHEMA_VERSION = 1

SAMPLES = pa.schema(
    [
        pa.field("scene_id", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("run_key", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("matches", pa.int32()),
        pa.field("score", pa.float64()),
        pa.field("rank", pa.int32()),
        pa.field("selected", pa.bool_()),
        pa.field("created_at", pa.timestamp("ms", tz="UTC")),
    ],
    metadata={"realfill.schema_version": str(SCHEMA_VERSION), "realfill.table": "samples"},
)

SCENES = pa.schema(
    [
        pa.field("scene_id", pa.string(), nullable=False),
        pa.field("scene_uri", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("run_key", pa.string(), nullable=False),
        pa.field("adapter_uri", pa.string()),
        pa.field("best_uri", pa.string()),
        pa.field("num_samples", pa.int32()),
        pa.field("tune_s", pa.float64()),
        pa.field("sample_s", pa.float64()),
        pa.field("rank_s", pa.float64()),
        pa.field("config", pa.string()),
        pa.field("created_at", pa.timestamp("ms", tz="UTC")),
    ],
    metadata={"realfill.schema_version": str(SCHEMA_VERSION), "realfill.table": "scenes"},
)

TABLES = {"samples": SAMPLES, "scenes": SCENES}


def now() -> datetime:
    return datetime.now(timezone.utc)


def table_uri(out_uri: str, table: str) -> str:
    return storage.join(out_uri, "manifest", table)


def part_name(scene_id: str, run_key: str) -> str:
    """One part per (scene, run config): re-running the same scene and config replaces it, never duplicates."""
    return f"{scene_id}-{run_key}.parquet"


def write_part(out_uri: str, table: str, rows: list[dict], scene_id: str, run_key: str) -> str:
    """Write rows as one Parquet part of a manifest table; returns its URI."""
    schema = TABLES[table]
    stamped = [{"created_at": now(), **row} for row in rows]
    arrow = pa.Table.from_pylist(stamped, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(arrow, buffer)
    uri = storage.join(table_uri(out_uri, table), part_name(scene_id, run_key))
    storage.write_bytes(uri, buffer.getvalue())
    return uri


def read_table(out_uri: str, table: str) -> pa.Table:
    """The whole manifest table (empty with the right schema when nothing has been written)."""
    uri = table_uri(out_uri, table)
    fs, path = url_to_fs(uri)
    if not fs.exists(path):
        return TABLES[table].empty_table()
    dataset = ds.dataset(path, filesystem=fs, format="parquet", schema=TABLES[table])
    return dataset.to_table()
