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
from realfill.records import KEY_LENGTH
from realfill.scene import storage_name

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


FAILED = ".failed"
"""Suffix of a part that records a failure: it never replaces or removes a part of good rows."""


def part_name(scene_id: str, run_key: str, failed: bool = False) -> str:
    """One part per (scene, run config, outcome), named after the scene's storage name (bounded, visible):
    re-running the same scene and config replaces it, never duplicates."""
    return f"{storage_name(scene_id)}-{run_key}{FAILED if failed else ''}.parquet"


def write_part(out_uri: str, table: str, rows: list[dict], name: str) -> str:
    """Write rows as one Parquet part of a manifest table; returns its URI."""
    schema = TABLES[table]
    stamped = [{"created_at": now(), **row} for row in rows]
    arrow = pa.Table.from_pylist(stamped, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(arrow, buffer)
    uri = storage.join(table_uri(out_uri, table), name)
    storage.write_bytes(uri, buffer.getvalue())
    return uri


def write_scene(out_uri: str, samples: list[dict], scene: dict) -> None:
    """Record one scene's outcome. A good outcome writes its samples part, then its scene part (a scene counts
    as done only once its samples are on storage), then drops every other part of the scene: earlier configs
    and earlier failures, so the manifest holds one good config per scene. A failure writes its scene part
    alone and drops only earlier failures: good rows are replaced by good rows, never by a failure."""
    scene_id, run_key, failed = scene["scene_id"], scene["run_key"], scene["status"] != "ok"
    name = part_name(scene_id, run_key, failed)
    if not failed:
        write_part(out_uri, "samples", samples, name)
    write_part(out_uri, "scenes", [scene], name)
    own_parts = re.compile(
        rf"{re.escape(storage_name(scene_id))}-[0-9a-f]{{{KEY_LENGTH}}}({re.escape(FAILED)})?\.parquet")
    for table in TABLES:
        fs, path = url_to_fs(table_uri(out_uri, table))
        for entry in fs.ls(path, detail=False) if fs.exists(path) else []:
            match = own_parts.fullmatch(posixpath.basename(entry))
            if match and posixpath.basename(entry) != name and (not failed or match.group(1)):
                fs.rm(entry)


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
