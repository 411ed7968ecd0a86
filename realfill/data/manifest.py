"""Parquet manifests of a run: OUT/manifest/samples/ (one row per sample) and OUT/manifest/scenes/
(one row per scene), each folder one table for `pyarrow.dataset`, pandas or Ray Data.

Recording a scene costs a bounded number of storage calls, however many scenes the run has: its rows go
to parts named by the scene alone (`scene-NAME.parquet`, and `scene-NAME.failed.parquet` for a failure),
written atomically, so a newer config of the scene replaces its part without any listing. At the end of a
run `compact` folds every part into one file per table, so a run of 10,000 scenes leaves two files, not
20,000. Readers here resolve what is current (each scene's newest good record, and a failure newer than
it), so a table read in the middle of a run, or one left by an interrupted run, is never ambiguous.
"""

from __future__ import annotations

import io
import posixpath
import uuid
from dataclasses import asdict, replace
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from realfill.data import storage
from realfill.data.records import ROWS, SCHEMA_VERSION, SampleRow, SceneRow, arrow_schema
from realfill.data.scene import storage_name

OLDEST_READABLE = 1
"""Schema version 1 has the columns of 2 (only the part names differ), so its runs are read as they are."""
TABLES = {table: arrow_schema(row_type, table) for table, row_type in ROWS.items()}
SAMPLES, SCENES = TABLES["samples"], TABLES["scenes"]
FAILED = ".failed"
"""Suffix of a part that records a failure: it never replaces or removes a part of good rows."""
COMPACTED = "compacted-"
"""Prefix of the parts that compaction writes (scene parts start with `scene-`, so the two never meet)."""


def now() -> datetime:
    return datetime.now(timezone.utc)


def table_uri(out_uri: str, table: str) -> str:
    return storage.join(out_uri, "manifest", table)


def part_name(scene_id: str, failed: bool = False) -> str:
    """A scene's part, by its storage name (bounded, visible): re-recording the scene replaces it."""
    return f"scene-{storage_name(scene_id)}{FAILED if failed else ''}.parquet"


def to_arrow(table: str, rows: list) -> pa.Table:
    return pa.Table.from_pylist([asdict(row) for row in rows], schema=TABLES[table])


def write_arrow(uri: str, arrow: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(arrow, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def read_arrow(uri: str) -> pa.Table:
    """A Parquet file written by write_arrow (metrics, requests, a sweep's table)."""
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)))


def write_part(out_uri: str, table: str, rows: list, name: str) -> str:
    """Write rows (stamped with the time) as one Parquet part of a manifest table; returns its URI."""
    stamp = now()
    stamped = [row if row.created_at else replace(row, created_at=stamp) for row in rows]
    uri = storage.join(table_uri(out_uri, table), name)
    write_arrow(uri, to_arrow(table, stamped))
    return uri


def write_scene(out_uri: str, samples: list[SampleRow], scene: SceneRow) -> None:
    """Record one scene's outcome in a fixed number of storage calls. A good outcome writes its samples
    part, then its scene part (a scene counts as done only once its samples are on storage), then drops the
    scene's failure part, if any. A failure writes its failure part alone: good rows are replaced by good
    rows, never by a failure."""
    if scene.ok:
        write_part(out_uri, "samples", samples, part_name(scene.scene_id))
    write_part(out_uri, "scenes", [scene], part_name(scene.scene_id, failed=not scene.ok))
    if scene.ok:
        storage.remove(storage.join(table_uri(out_uri, "scenes"), part_name(scene.scene_id, failed=True)))


def part_files(out_uri: str, table: str) -> list[str]:
    """The table's Parquet files (paths in their filesystem); temporaries and hidden files are not parts."""
    fs, path = url_to_fs(table_uri(out_uri, table))
    if not fs.exists(path):
        return []
    return sorted(entry for entry in fs.ls(path, detail=False)
                  if entry.endswith(".parquet") and not posixpath.basename(entry).startswith((".", "_")))


def read_parts(out_uri: str, table: str, files: list[str]) -> pa.Table:
    """The rows of the given parts, as written. A part of a newer schema version, of the other table, or
    not written by realfill is refused with a message naming it."""
    if not files:
        return TABLES[table].empty_table()
    fs, _ = url_to_fs(table_uri(out_uri, table))
    dataset = ds.dataset(files, filesystem=fs, format="parquet", schema=TABLES[table])
    for fragment in dataset.get_fragments():
        metadata = fragment.physical_schema.metadata or {}
        version, kind = metadata.get(b"realfill.schema_version"), metadata.get(b"realfill.table")
        where = storage.join(table_uri(out_uri, table), posixpath.basename(fragment.path))
        if version is None or kind != table.encode():
            raise ValueError(f"{where}: not a realfill {table} table part")
        if not OLDEST_READABLE <= int(version) <= SCHEMA_VERSION:
            raise ValueError(f"{where}: manifest schema version {int(version)}; this realfill reads versions "
                             f"{OLDEST_READABLE} to {SCHEMA_VERSION} (upgrade realfill to read this run)")
    return dataset.to_table()


def current_scenes(scenes: pa.Table) -> pa.Table:
    """Each scene's newest good row, and its newest failure when that is newer (a failure beside the last
    good result); older rows were replaced."""
    newest: dict[tuple[str, bool], int] = {}
    rows = columns(scenes, "scene_id", "status", "created_at")
    times = [created for _, _, created in rows]
    for index, (scene_id, status, created) in enumerate(rows):
        slot = (scene_id, status == "ok")
        if slot not in newest or created > times[newest[slot]]:
            newest[slot] = index
    keep = [index for (scene_id, ok), index in newest.items()
            if ok or (scene_id, True) not in newest or times[index] > times[newest[(scene_id, True)]]]
    return scenes.take(pa.array(sorted(keep), pa.int64()))


def columns(table: pa.Table, *names: str) -> list[tuple]:
    return list(zip(*(table.column(name).to_pylist() for name in names)))


def current_samples(samples: pa.Table, scenes: pa.Table) -> pa.Table:
    """The samples of each scene's current good record (its newest samples part of that config); samples
    whose scene row was never written (a run stopped between the two writes) are not part of the table."""
    good = {(scene_id, key) for scene_id, key, status in columns(scenes, "scene_id", "run_key", "status")
            if status == "ok"}
    keys = columns(samples, "scene_id", "run_key", "created_at")
    newest: dict[tuple[str, str], datetime] = {}
    for scene_id, key, created in keys:
        if (scene_id, key) in good:
            newest[(scene_id, key)] = max(created, newest.get((scene_id, key), created))
    keep = [index for index, (scene_id, key, created) in enumerate(keys) if newest.get((scene_id, key)) == created]
    return samples.take(pa.array(keep, pa.int64()))


def current_tables(out_uri: str, files: dict[str, list[str]]) -> tuple[pa.Table, pa.Table]:
    """The current samples and scenes rows of the given parts of each table."""
    scenes = current_scenes(read_parts(out_uri, "scenes", files["scenes"]))
    return current_samples(read_parts(out_uri, "samples", files["samples"]), scenes), scenes


def read_tables(out_uri: str) -> tuple[pa.Table, pa.Table]:
    """The current samples and scenes tables (empty with the right schema when nothing has been written)."""
    return current_tables(out_uri, {table: part_files(out_uri, table) for table in TABLES})


def read_table(out_uri: str, table: str) -> pa.Table:
    """One current manifest table (the scenes table alone reads no samples)."""
    if table == "scenes":
        return current_scenes(read_parts(out_uri, "scenes", part_files(out_uri, "scenes")))
    return read_tables(out_uri)[0]


def compact(out_uri: str) -> None:
    """Fold every part of both tables into one file per table, holding only the current rows. Parts that
    appear while it runs are not touched (they are newer, so they win when read), and each new file appears
    atomically before the parts it replaces are removed: no row is ever lost."""
    files = {table: part_files(out_uri, table) for table in TABLES}
    if all(len(names) <= 1 and all(posixpath.basename(name).startswith(COMPACTED) for name in names)
           for names in files.values()):
        return
    samples, scenes = current_tables(out_uri, files)
    token = uuid.uuid4().hex[:16]
    for table, arrow in (("samples", samples), ("scenes", scenes)):
        write_arrow(storage.join(table_uri(out_uri, table), f"{COMPACTED}{token}.parquet"), arrow)
    for table, names in files.items():
        fs, _ = url_to_fs(table_uri(out_uri, table))
        for name in names:
            fs.rm(name)


def rows_of(table: pa.Table, row_type: type) -> list:
    return [row_type(**values) for values in table.to_pylist()]


def completed_scenes(out_uri: str, run_key: str) -> dict[str, str | None]:
    """Scenes that a run with this config already finished (what a resume skips), with their best image."""
    scenes = rows_of(read_table(out_uri, "scenes"), SceneRow)
    return {row.scene_id: row.best_uri for row in scenes if row.ok and row.run_key == run_key}


def where_tables(out_uri: str) -> list[str]:
    """Where a run's two tables are, for its last lines: each is read on its own (reading OUT/manifest
    as one dataset would merge the two schemas into one table without a word)."""
    out_uri = storage.normalize(out_uri)
    return [f"samples table (one row per sample): {table_uri(out_uri, 'samples')}",
            f"scenes table (one row per scene):   {table_uri(out_uri, 'scenes')}"]
