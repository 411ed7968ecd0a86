"""Parquet manifests of a run: OUT/manifest/samples/ (one row per sample) and OUT/manifest/scenes/
(one row per scene). Each scene writes its own part file, named by scene and run key, atomically;
each folder reads back as one table with `pyarrow.dataset`, pandas or Ray Data."""

from __future__ import annotations

import io
import posixpath
import re
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


def write_scene(out_uri: str, samples: list[dict], scene: dict) -> None:
    """Record one scene's outcome: its samples part, then its scene part (the scene row is written last,
    so a scene counts as done only once its samples are on storage), then drop the parts that earlier
    runs with another config wrote for this scene, so the manifest holds one config per scene."""
    scene_id, run_key = scene["scene_id"], scene["run_key"]
    write_part(out_uri, "samples", samples, scene_id, run_key)
    write_part(out_uri, "scenes", [scene], scene_id, run_key)
    own_parts = re.compile(re.escape(scene_id) + r"-[0-9a-f]{16}\.parquet")
    for table in TABLES:
        fs, path = url_to_fs(table_uri(out_uri, table))
        for name in fs.ls(path, detail=False):
            base = posixpath.basename(name)
            if own_parts.fullmatch(base) and base != part_name(scene_id, run_key):
                fs.rm(name)


def completed_scenes(out_uri: str, run_key: str) -> dict[str, str | None]:
    """Scenes that a run with this config already finished (what a resume skips), with their best image."""
    rows = read_table(out_uri, "scenes").to_pylist()
    return {row["scene_id"]: row["best_uri"] for row in rows if row["status"] == "ok" and row["run_key"] == run_key}


def where_tables(out_uri: str) -> list[str]:
    """Where a run's two tables are, for its last lines: each is read on its own (reading OUT/manifest
    as one dataset would merge the two schemas into one table without a word)."""
    out_uri = storage.normalize(out_uri)
    return [f"samples table (one row per sample): {table_uri(out_uri, 'samples')}",
            f"scenes table (one row per scene):   {table_uri(out_uri, 'scenes')}"]


def read_table(out_uri: str, table: str) -> pa.Table:
    """The whole manifest table (empty with the right schema when nothing has been written)."""
    uri = table_uri(out_uri, table)
    fs, path = url_to_fs(uri)
    if not fs.exists(path):
        return TABLES[table].empty_table()
    dataset = ds.dataset(path, filesystem=fs, format="parquet", schema=TABLES[table])
    return dataset.to_table()
