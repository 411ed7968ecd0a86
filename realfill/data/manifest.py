"""Parquet manifests of a run: OUT/manifest/samples.parquet (one row per sample) and
OUT/manifest/scenes.parquet (one row per scene). Each table is one file that holds only current rows, at
every moment and after any crash, so any Parquet reader (pandas, DuckDB, Polars, pyarrow, Spark, Ray Data)
reads it as it is.

Recording a scene costs a bounded number of storage calls, however many scenes the run has: its rows go to
journal parts named by the scene alone (OUT/manifest/_journal/TABLE/scene-NAME.parquet, and
scene-NAME.failed.parquet for a failure), so a newer record of the scene replaces its part without any
listing. Folding (`compact`) rewrites each table file with the journal's rows in their place (one atomic
write per table) and then removes the parts it folded in. A run folds as it goes (`Folding`: each fold
costs the table's size and the journal grows by a quarter of the table between folds, so the cost stays
linear in the run) and at its end. Readers here read the table and the journal together, so they are never
behind; a plain reader sees the tables as of the last fold. A crash at any point leaves each table whole
(old or new) and the journal still holding every record not folded yet; folding the same part twice changes
nothing (a scene's rows are taken from one source: the newest).
"""

from __future__ import annotations

import io
import posixpath
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from realfill.data import storage
from realfill.data.layout import Output, storage_name
from realfill.data.lease import fence
from realfill.data.records import ROWS, SCHEMA_VERSION, SampleRow, SceneRow, arrow_schema, from_values

OLDEST_READABLE = 1
"""Versions 1 to 4 have the columns of 5 or fewer (read as null); 1 to 3 kept their parts in OUT/manifest/TABLE/
(read as journal parts, and folded into the table files at the next fold)."""
TABLES = {table: arrow_schema(row_type, table) for table, row_type in ROWS.items()}
SAMPLES, SCENES = TABLES["samples"], TABLES["scenes"]
FAILED = ".failed"
"""Suffix of a part that records a failure: it never replaces or removes a part of good rows."""
SOURCE = "__source"
"""A column added while reading: which file a row came from (0 the table file, then each journal part)."""
FOLD_MIN_PARTS = 32
"""A run folds its journal once it holds this many parts, or a quarter of the scenes already folded, if more."""
FOLD_MAX_S = 300.0
"""... or once the oldest part not yet folded is this old (so a plain reader is never far behind)."""


def now() -> datetime:
    return datetime.now(timezone.utc)


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
    """Write rows (stamped with the time) as one journal part of a manifest table; returns its URI."""
    stamp = now()
    stamped = [row if row.created_at else replace(row, created_at=stamp) for row in rows]
    uri = storage.join(Output(out_uri).journal(table), name)
    write_arrow(uri, to_arrow(table, stamped))
    return uri


def write_scene(out_uri: str, samples: list[SampleRow], scene: SceneRow) -> None:
    """Record one scene's outcome in a fixed number of storage calls. A good outcome writes its samples
    part, then its scene part (a scene counts as done only once its samples are on storage), then drops the
    scene's failure part, if any. A failure writes its failure part alone: good rows are replaced by good
    rows, never by a failure. A run that lost its output's lease records nothing (LeaseLost)."""
    fence(out_uri)
    if scene.ok:
        write_part(out_uri, "samples", samples, part_name(scene.scene_id))
    write_part(out_uri, "scenes", [scene], part_name(scene.scene_id, failed=not scene.ok))
    if scene.ok:
        storage.remove(storage.join(Output(out_uri).journal("scenes"), part_name(scene.scene_id, failed=True)))


def exists(out_uri: str) -> bool:
    """Whether a run has recorded anything here (folded or not), in this layout or an older one."""
    return any(storage.exists(uri) for uri in (Output(out_uri).table("scenes"), Output(out_uri).journal("scenes"),
                                               Output(out_uri).legacy("scenes")))


def listed(folder: str) -> dict[str, str]:
    """A folder's Parquet parts (paths in their filesystem) with their stamps (storage.stamp); temporaries and
    hidden files are not parts."""
    path = storage.filesystem(folder)[1]
    return {posixpath.join(path, name): stamp for name, stamp in storage.stamped(folder).items()
            if name.endswith(".parquet") and not name.startswith((".", "_"))}


def journal(out_uri: str, table: str) -> dict[str, str]:
    """The table's parts not folded yet, with what identifies their contents: an older layout's first (they
    are older), then the journal's."""
    legacy, parts = listed(Output(out_uri).legacy(table)), listed(Output(out_uri).journal(table))
    return {path: legacy[path] for path in sorted(legacy)} | {path: parts[path] for path in sorted(parts)}


def part_files(out_uri: str, table: str) -> list[str]:
    return list(journal(out_uri, table))


def check_part(fragment, table: str, where: str) -> None:
    """A part of a newer schema version, of the other table, or not written by realfill is refused."""
    metadata = fragment.physical_schema.metadata or {}
    version, kind = metadata.get(b"realfill.schema_version"), metadata.get(b"realfill.table")
    if version is None or kind != table.encode():
        raise ValueError(f"{where}: not a realfill {table} table part")
    if not OLDEST_READABLE <= int(version) <= SCHEMA_VERSION:
        raise ValueError(f"{where}: manifest schema version {int(version)}; this realfill reads versions "
                         f"{OLDEST_READABLE} to {SCHEMA_VERSION} (upgrade realfill to read this run)")


def read_parts(out_uri: str, table: str, files: list[str]) -> pa.Table:
    """The rows of the table file and of the given parts, as written, each with its SOURCE (0 the table
    file, then 1, 2, ... in the order given: later sources win ties). A part of a newer schema version, of
    the other table, or not written by realfill is refused with a message naming it."""
    fs, table_path = storage.filesystem(Output(out_uri).table(table))
    pieces = [TABLES[table].empty_table().append_column(SOURCE, pa.array([], pa.int32()))]
    for index, path in enumerate([table_path, *files]):
        where = path if storage.is_local(fs) else fs.unstrip_protocol(path)
        with storage.naming("reading", where):
            if index == 0 and not fs.exists(path):
                continue
            dataset = ds.dataset(path, filesystem=fs, format="parquet", schema=TABLES[table])
            for fragment in dataset.get_fragments():
                check_part(fragment, table, where)
            rows = dataset.to_table()
        pieces.append(rows.append_column(SOURCE, pa.array([index] * rows.num_rows, pa.int32())))
    return pa.concat_tables(pieces)


def columns(table: pa.Table, *names: str) -> list[tuple]:
    return list(zip(*(table.column(name).to_pylist() for name in names)))


def current_scenes(scenes: pa.Table) -> pa.Table:
    """Each scene's newest good row, and its newest failure when that is newer (a failure beside the last
    good result); older rows were replaced, and a row read twice (folded, and still in its part) is one."""
    newest: dict[tuple[str, bool], int] = {}
    rows = columns(scenes, "scene_id", "status", "created_at", SOURCE)
    order = [(created, source) for _, _, created, source in rows]
    for index, (scene_id, status, _, _) in enumerate(rows):
        slot = (scene_id, status == "ok")
        if slot not in newest or order[index] > order[newest[slot]]:
            newest[slot] = index
    keep = [index for (scene_id, ok), index in newest.items()
            if ok or (scene_id, True) not in newest or order[index][0] > order[newest[(scene_id, True)]][0]]
    return scenes.take(pa.array(sorted(keep), pa.int64())).drop_columns([SOURCE])


def current_samples(samples: pa.Table, scenes: pa.Table) -> pa.Table:
    """The samples of each scene's current good record, from one source: the newest that holds samples of
    that scene and config. Samples whose scene row was never written (a run stopped between the two writes)
    are not part of the table."""
    good = {(scene_id, key) for scene_id, key, status in columns(scenes, "scene_id", "run_key", "status")
            if status == "ok"}
    keys = columns(samples, "scene_id", "run_key", "created_at", SOURCE)
    newest: dict[tuple[str, str], tuple] = {}
    for scene_id, key, created, source in keys:
        if (scene_id, key) in good:
            newest[(scene_id, key)] = max((created, source), newest.get((scene_id, key), (created, source)))
    keep = [index for index, (scene_id, key, created, source) in enumerate(keys)
            if newest.get((scene_id, key)) == (created, source)]
    return samples.take(pa.array(keep, pa.int64())).drop_columns([SOURCE])


def current_tables(out_uri: str, files: dict[str, list[str]]) -> tuple[pa.Table, pa.Table]:
    """The current samples and scenes rows of the table files and the given parts of each table."""
    scenes = current_scenes(read_parts(out_uri, "scenes", files["scenes"]))
    return current_samples(read_parts(out_uri, "samples", files["samples"]), scenes), scenes


READ_ATTEMPTS = 5
"""A reader lists the journal, then reads it: a part that a fold removed in between is read again from the
table file the fold wrote, by listing and reading again (each fold removes only parts already in the table)."""


def while_folding(read):
    """read() again (up to READ_ATTEMPTS times) when a part it listed was folded and removed meanwhile."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return read()
        except FileNotFoundError:
            if attempt == READ_ATTEMPTS - 1:
                raise


def read_tables(out_uri: str) -> tuple[pa.Table, pa.Table]:
    """The current samples and scenes tables (empty with the right schema when nothing has been written)."""
    return while_folding(lambda: current_tables(out_uri, {table: part_files(out_uri, table) for table in TABLES}))


def read_table(out_uri: str, table: str) -> pa.Table:
    """One current manifest table (the scenes table alone reads no samples)."""
    if table == "scenes":
        return while_folding(lambda: current_scenes(read_parts(out_uri, "scenes", part_files(out_uri, "scenes"))))
    return read_tables(out_uri)[0]


def compact(out_uri: str) -> int:
    """Fold every journal part into the table files: each table file is rewritten whole with only the current
    rows (samples first: a scene counts as done only once its samples are there), then the parts folded in
    are removed, each only if it is still what was read (a part written or replaced meanwhile stays, and is
    folded next time). A run that lost its output's lease folds nothing (LeaseLost). Returns the number of
    parts folded."""
    before = {table: journal(out_uri, table) for table in TABLES}
    if not any(before.values()):
        return 0
    fence(out_uri)
    samples, scenes = current_tables(out_uri, {table: list(parts) for table, parts in before.items()})
    write_arrow(Output(out_uri).table("samples"), samples)
    write_arrow(Output(out_uri).table("scenes"), scenes)
    for table, parts in before.items():
        still = journal(out_uri, table)
        fs, legacy = storage.filesystem(Output(out_uri).legacy(table))
        for path, stamp in parts.items():
            if still.get(path) == stamp:
                with storage.naming("removing", path):
                    fs.rm(path)
        with storage.naming("removing", legacy):
            if fs.isdir(legacy) and not fs.ls(legacy, detail=False):
                fs.rm(legacy, recursive=True)
    return sum(len(parts) for parts in before.values())


@dataclass
class Folding:
    """When a run folds its journal as it goes: once it holds FOLD_MIN_PARTS parts or a quarter of the
    scenes folded so far, whichever is more (so folds cost a constant factor of the run's writes), or once
    its oldest part is FOLD_MAX_S old (so a plain reader is never far behind)."""

    out_uri: str
    folded: int = 0
    """Scene records folded in by this run."""
    pending: int = 0
    since: float | None = None
    """When the oldest record not folded yet was written (monotonic seconds)."""

    def recorded(self) -> None:
        self.pending += 1
        self.since = self.since if self.since is not None else time.monotonic()
        if self.pending >= max(FOLD_MIN_PARTS, self.folded // 4) or time.monotonic() - self.since >= FOLD_MAX_S:
            self.fold()

    def fold(self) -> None:
        compact(self.out_uri)
        self.folded += self.pending
        self.pending, self.since = 0, None


def rows_of(table: pa.Table, row_type: type) -> list:
    return [from_values(row_type, values) for values in table.to_pylist()]


def completed_scenes(out_uri: str, run_key: str) -> dict[str, SceneRow]:
    """Scenes that a run with this config already finished (what a resume skips), with their rows."""
    scenes = rows_of(read_table(out_uri, "scenes"), SceneRow)
    return {row.scene_id: row for row in scenes if row.ok and row.run_key == run_key}


def where_tables(out_uri: str) -> list[str]:
    """Where a run's two tables are, for its last lines."""
    out_uri = storage.normalize(out_uri)
    return [f"samples table (one row per sample): {Output(out_uri).table('samples')}",
            f"scenes table (one row per scene):   {Output(out_uri).table('scenes')}"]
