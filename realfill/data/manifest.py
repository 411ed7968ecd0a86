"""Parquet manifests of a run: OUT/manifest/samples/ (one row per sample) and OUT/manifest/scenes/ (one row per
scene). Each table is a folder of Parquet segments that holds only current rows, at every moment and after any
crash, so any Parquet reader (pandas, DuckDB, Polars, pyarrow, Spark, Ray Data) reads the folder as it is.

Recording a scene costs a bounded number of storage calls, however many scenes the run has: its rows go to
journal parts named by the scene alone (OUT/manifest/_journal/TABLE/scene-NAME.parquet, and
scene-NAME.failed.parquet for a failure), so a newer record of the scene replaces its part without any
listing.

Folding (`compact`) moves the journal's rows into the segments. A scene's rows live in one segment (the same
number in both tables), chosen the first time the scene is folded and kept in its placement
(OUT/manifest/_placement/scene-NAME): a new scene joins the newest segment until that holds SEGMENT_SCENES
scenes. A fold rewrites only the segments of the scenes it folds, each in one atomic write with the newer rows
in place of the older, so its cost follows what changed, not the table's size (a loop of `realfill fill` stays
linear), and then removes the parts it folded in. A run folds as it goes (`Folding`) and at its end. Readers
here read the segments and the journal together, so they are never behind; a plain reader sees the tables as
of the last fold. A crash at any point leaves each segment whole (old or new) and the journal still holding
every record not folded yet; folding the same part twice changes nothing (a scene's rows are taken from one
source: the newest).
"""

from __future__ import annotations

import io
import posixpath
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from realfill.data import storage
from realfill.data.layout import Output, storage_name
from realfill.data.lease import fence
from realfill.data.records import ROWS, SCHEMA_VERSION, SampleRow, SceneRow, arrow_schema, from_values

OLDEST_READABLE = 1
"""Versions 1 to 4 have the columns of 5 or fewer (read as null); 1 to 3 kept their parts in OUT/manifest/TABLE/
(read as journal parts), 4 and 5 a table in one file, OUT/manifest/TABLE.parquet (read as the oldest source):
the next fold moves them into segments."""
TABLES = {table: arrow_schema(row_type, table) for table, row_type in ROWS.items()}
SAMPLES, SCENES = TABLES["samples"], TABLES["scenes"]
FAILED = ".failed"
"""Suffix of a part that records a failure: it never replaces or removes a part of good rows."""
SOURCE = "__source"
"""A column added while reading: which file a row came from (0, 1, ... in the order read: later ones win ties)."""
SEGMENT = "segment-"
"""How a segment's name starts (anything else in a table's folder is a part of version 1 to 3)."""
SEGMENT_SCENES = 1024
"""Scenes a segment takes in before new scenes go to a new one: what bounds the rows a fold rewrites."""
FOLD_MIN_PARTS = 32
"""A run folds its journal once it holds this many parts, or a quarter of the scenes already folded (up to a
segment's), if more."""
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
                                               Output(out_uri).one_file("scenes")))


def listed(folder: str) -> dict[str, str]:
    """A folder's Parquet parts (paths in their filesystem) with their stamps (storage.stamp); temporaries and
    hidden files are not parts."""
    path = storage.filesystem(folder)[1]
    return {posixpath.join(path, name): stamp for name, stamp in storage.stamped(folder).items()
            if name.endswith(".parquet") and not name.startswith((".", "_"))}


def is_segment(path: str) -> bool:
    return posixpath.basename(path).startswith(SEGMENT)


def listing(out_uri: str, table: str) -> tuple[dict[int, str], dict[str, str]]:
    """From one listing of the table's folder and one of its journal: the segments (paths in their filesystem)
    by number, and the parts not folded yet with what identifies their contents (an older layout's first:
    they are older, then the journal's)."""
    folder = listed(Output(out_uri).table(table))
    segments = {int(posixpath.basename(path)[len(SEGMENT):].split(".")[0]): path
                for path in sorted(folder) if is_segment(path)}
    legacy = {path: folder[path] for path in sorted(folder) if not is_segment(path)}
    parts = listed(Output(out_uri).journal(table))
    return segments, legacy | {path: parts[path] for path in sorted(parts)}


def journal(out_uri: str, table: str) -> dict[str, str]:
    """The table's parts not folded yet, with their stamps (see listing)."""
    return listing(out_uri, table)[1]


def one_file(out_uri: str, table: str) -> list[str]:
    """The table file of version 4 or 5, while it is there (the next fold moves its rows into segments)."""
    uri = Output(out_uri).one_file(table)
    return [storage.filesystem(uri)[1]] if storage.exists(uri) else []


def sources(out_uri: str, table: str) -> list[str]:
    """Every file that holds the table's rows, oldest first: a version 4 or 5 table file, the segments, then
    the parts not folded yet."""
    segments, parts = listing(out_uri, table)
    return [*one_file(out_uri, table), *segments.values(), *parts]


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
    """The rows of the given files of the output's filesystem, as written, each with its SOURCE (0, 1, ... in
    the order given). A part of a newer schema version, of the other table, or not written by
    realfill is refused with a message naming it."""
    fs = storage.filesystem(out_uri)[0]
    pieces = [TABLES[table].empty_table().append_column(SOURCE, pa.array([], pa.int32()))]
    for index, path in enumerate(files):
        where = path if storage.is_local(fs) else fs.unstrip_protocol(path)
        with storage.naming("reading", where):
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


def current_of(samples: pa.Table, scenes: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The current samples and scenes rows among rows read with their SOURCE."""
    scenes = current_scenes(scenes)
    return current_samples(samples, scenes), scenes


def current_tables(out_uri: str) -> tuple[pa.Table, pa.Table]:
    """The current samples and scenes rows of every file that holds them."""
    return current_of(*(read_parts(out_uri, table, sources(out_uri, table)) for table in TABLES))


READ_ATTEMPTS = 5
"""A reader lists the journal, then reads it: a part that a fold removed in between is read again from the
segment the fold wrote, by listing and reading again (each fold removes only parts already in a segment)."""


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
    return while_folding(lambda: current_tables(out_uri))


def read_table(out_uri: str, table: str) -> pa.Table:
    """One current manifest table (the scenes table alone reads no samples)."""
    if table == "scenes":
        return while_folding(lambda: current_scenes(read_parts(out_uri, "scenes", sources(out_uri, "scenes"))))
    return read_tables(out_uri)[0]


def newest_segment(out_uri: str, numbers: set[int]) -> tuple[int, int]:
    """The newest segment's number and how many scene rows it holds (0 and 0 for a table with none)."""
    if not numbers:
        return 0, 0
    uri = Output(out_uri).segment("scenes", max(numbers))
    fs, path = storage.filesystem(uri)
    with storage.naming("reading", uri):
        if not fs.exists(path):
            return max(numbers), 0  # a fold stopped between a new segment's samples and its scenes
        with fs.open(path, "rb") as handle:
            return max(numbers), pq.read_metadata(handle).num_rows


def place(out_uri: str, scene_ids: list[str], numbers: set[int]) -> dict[str, int]:
    """Each scene's segment: where it was placed the first time it was folded (a scene never moves), else the
    newest segment while it holds fewer than SEGMENT_SCENES scenes, then new ones. A new placement is written
    before the scene's rows are, so a fold stopped in between puts them in the same segment next time."""
    output = Output(out_uri)
    where = {scene_id: output.placement(part_name(scene_id)) for scene_id in scene_ids}
    found = storage.read_each(list(where.values()))
    placed = {scene_id: int(found[uri]) for scene_id, uri in where.items() if uri in found}
    new = [scene_id for scene_id in scene_ids if scene_id not in placed]
    number, held = newest_segment(out_uri, numbers) if new else (0, 0)
    for scene_id in new:
        if held >= SEGMENT_SCENES:
            number, held = number + 1, 0
        placed[scene_id], held = number, held + 1
    storage.write_each({where[scene_id]: str(placed[scene_id]).encode() for scene_id in new})
    return placed


def shifted(rows: pa.Table, by: int) -> pa.Table:
    """Rows read as sources 0, 1, ... renumbered from `by` (so that they win ties against sources read before)."""
    index = rows.schema.get_field_index(SOURCE)
    return rows.set_column(index, SOURCE, pc.add(rows.column(SOURCE), pa.scalar(by, pa.int32())))


def compact(out_uri: str) -> int:
    """Fold every journal part (and a version 4 or 5 table file) into the segments: each segment that holds a
    folded scene is rewritten whole with the current rows of its scenes (samples first: a scene counts as
    done only once its samples are there), then the parts folded in are removed, each only if it is still
    what was read (a part written or replaced meanwhile stays, and is folded next time). A run that lost its
    output's lease folds nothing (LeaseLost). Returns the number of parts folded."""
    output = Output(out_uri)
    existing, before = {}, {}
    for table in TABLES:
        existing[table], before[table] = listing(out_uri, table)
    older = {table: one_file(out_uri, table) for table in TABLES}
    if not any(before.values()) and not any(older.values()):
        return 0
    fence(out_uri)
    changes = {table: read_parts(out_uri, table, older[table] + list(before[table])) for table in TABLES}
    touched = sorted(set().union(*(changes[table].column("scene_id").to_pylist() for table in TABLES)))
    home = place(out_uri, touched, set().union(*existing.values()))
    numbers = sorted(set(home.values()))
    rows = {}
    for table in TABLES:
        held = [number for number in numbers if number in existing[table]]
        kept = read_parts(out_uri, table, [existing[table][number] for number in held])
        home |= dict(zip(kept.column("scene_id").to_pylist(), (held[source] for source in
                                                              kept.column(SOURCE).to_pylist())))
        rows[table] = pa.concat_tables([kept, shifted(changes[table], len(held))])
    current = dict(zip(("samples", "scenes"), current_of(rows["samples"], rows["scenes"])))
    for table in ("samples", "scenes"):
        segment_of = pa.array([home[scene_id] for scene_id in current[table].column("scene_id").to_pylist()],
                              pa.int64())
        for number in numbers:
            write_arrow(output.segment(table, number), current[table].filter(pc.equal(segment_of, number)))
    fs = storage.filesystem(out_uri)[0]
    for table, parts in before.items():
        still = journal(out_uri, table)
        for path in [path for path, stamp in parts.items() if still.get(path) == stamp] + older[table]:
            with storage.naming("removing", path):
                fs.rm(path)
    return sum(len(parts) for parts in before.values())


@dataclass
class Folding:
    """When a run folds its journal as it goes: once it holds FOLD_MIN_PARTS parts or a quarter of the
    scenes folded so far (up to a segment's), whichever is more (so the segments a fold rewrites cost a
    constant factor of what it folds in), or once its oldest part is FOLD_MAX_S old (so a plain reader is
    never far behind)."""

    out_uri: str
    folded: int = 0
    """Scene records folded in by this run."""
    pending: int = 0
    since: float | None = None
    """When the oldest record not folded yet was written (monotonic seconds)."""

    def recorded(self) -> None:
        self.pending += 1
        self.since = self.since if self.since is not None else time.monotonic()
        enough = max(FOLD_MIN_PARTS, min(self.folded, SEGMENT_SCENES) // 4)
        if self.pending >= enough or time.monotonic() - self.since >= FOLD_MAX_S:
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
    return [f"samples table (one row per sample): {Output(out_uri).table('samples')}/",
            f"scenes table (one row per scene):   {Output(out_uri).table('scenes')}/"]
