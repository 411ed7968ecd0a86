"""Manifests: one scene's record never costs another's, a failure never replaces good rows, recording costs
the same number of storage calls at any size, and folding keeps a folder of segments per table that plain
readers read, rewrites only the segments of what it folds in, and leaves one current row per scene after a
kill at any storage call."""


import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from realfill.data import manifest
from realfill.data.records import SCHEMA_VERSION, SampleRow, SceneRow

KEY_A, KEY_B = "0123456789abcdef", "fedcba9876543210"


def rows(scene_id: str, run_key: str, status: str = "ok", seeds: int = 2) -> tuple[list[SampleRow], SceneRow]:
    samples = [] if status != "ok" else [
        SampleRow(scene_id=scene_id, seed=seed, uri=f"/x/{scene_id}/{seed}.png", status="ok", run_key=run_key,
                  width=8, height=8, matches=1, score=1.0, rank=seed + 1, selected=seed == 0)
        for seed in range(seeds)]
    scene = SceneRow(scene_id=scene_id, scene_uri=f"/scenes/{scene_id}", status=status,
                     error=None if status == "ok" else "boom", run_key=run_key, num_samples=len(samples), config="{}")
    return samples, scene


def test_schemas_are_derived_from_the_rows():
    assert manifest.SAMPLES.names == [name for name in SampleRow.__dataclass_fields__]
    assert manifest.SAMPLES.field("seed").type == pa.int64() and not manifest.SAMPLES.field("seed").nullable
    assert manifest.SAMPLES.field("rank").type == pa.int32() and manifest.SAMPLES.field("rank").nullable
    assert manifest.SCENES.field("created_at").type == pa.timestamp("ms", tz="UTC")
    assert manifest.SCENES.metadata == {b"realfill.schema_version": b"7", b"realfill.table": b"scenes"}


def test_any_scene_id_gets_a_visible_bounded_part(tmp_path):
    out = str(tmp_path)
    ids = ["a" * 250, ".hidden", "_under", "x\\dup", "dup", "été", "compacted-x"]
    for scene_id in ids:
        manifest.write_scene(out, *rows(scene_id, KEY_A))
    for table in ("samples", "scenes"):
        names = [path.name for path in (tmp_path / "manifest" / "_journal" / table).iterdir()]
        assert len(names) == len(ids) and all(len(name) < 120 and name[0] not in "._" for name in names)
    assert set(manifest.completed_scenes(out, KEY_A)) == set(ids), "none replaces another"
    manifest.compact(out)
    assert set(manifest.completed_scenes(out, KEY_A)) == set(ids)
    scenes = pq.read_table(tmp_path / "manifest" / "scenes").column("scene_id").to_pylist()
    assert sorted(scenes) == sorted(ids), "every id is in the table a plain reader reads"


@pytest.mark.parametrize("compact_between", [False, True])
def test_a_failure_never_replaces_good_rows(tmp_path, compact_between):
    out = str(tmp_path)

    def record(*args, **kwargs):
        manifest.write_scene(out, *rows(*args, **kwargs))
        if compact_between:
            manifest.compact(out)

    record("s", KEY_A)
    record("s", KEY_B, status="failed")  # another config fails
    record("s", KEY_A, status="failed")  # the same config fails on a re-run
    scenes = manifest.read_table(out, "scenes").to_pylist()
    assert sorted((row["run_key"], row["status"]) for row in scenes) == [(KEY_A, "failed"), (KEY_A, "ok")]
    assert manifest.read_table(out, "samples").num_rows == 2 and set(manifest.completed_scenes(out, KEY_A)) == {"s"}
    record("s", KEY_B, seeds=3)  # a good result of the new config replaces everything
    scenes = manifest.read_table(out, "scenes").to_pylist()
    assert [(row["run_key"], row["status"]) for row in scenes] == [(KEY_B, "ok")]
    samples = manifest.read_table(out, "samples")
    assert samples.num_rows == 3 and set(samples.column("run_key").to_pylist()) == {KEY_B}
    manifest.compact(out)
    direct = pq.read_table(tmp_path / "manifest" / "samples")
    assert direct.num_rows == 3, "after folding a plain pyarrow reader sees exactly the current rows"


def test_recording_costs_the_same_storage_calls_at_any_size(counting):
    out = "counting://bounded/run"
    costs = {}
    for index in range(120):
        counting.clear()
        manifest.write_scene(out, *rows(f"scene{index:04d}", KEY_A))
        costs[index] = sum(counting.values())
    assert costs[119] == costs[10] and "ls" not in counting and "find" not in counting, costs


def fold_costs(monkeypatch, counting, out: str, scenes: int, redo: str | None = None) -> list[tuple]:
    """`realfill fill` in a loop: each scene recorded then folded. Per fold: its storage calls, the rows it read
    and the rows it wrote, and the segments it wrote."""
    read, written = [], []
    real_read, real_write = manifest.read_parts, manifest.write_arrow

    def counted_read(*args):
        read.append(real_read(*args))
        return read[-1]

    def counted_write(uri, arrow):
        written.append((uri, arrow.num_rows))
        real_write(uri, arrow)

    monkeypatch.setattr(manifest, "read_parts", counted_read)
    monkeypatch.setattr(manifest, "write_arrow", counted_write)
    costs = []
    for index in range(scenes + (redo is not None)):
        manifest.write_scene(out, *(rows(f"s{index:04d}", KEY_A) if index < scenes else rows(redo, KEY_B, seeds=3)))
        read.clear(), written.clear(), counting.clear()
        manifest.compact(out)
        costs.append((sum(counting.values()), sum(table.num_rows for table in read),
                      sum(count for _, count in written), sorted({uri.rsplit("/", 1)[1] for uri, _ in written})))
    return costs


def test_a_fold_costs_what_it_folds_in_not_the_table(monkeypatch, counting):
    """A fill loop: the fold of the 40th scene costs the same storage calls and rows as that of the 12th (both
    the 4th scene of a segment of 4), where folding the whole table would write 10x the rows; a scene redone is
    rewritten in its own segment alone."""
    monkeypatch.setattr(manifest, "SEGMENT_SCENES", 4)
    out = "counting://folds/run"
    costs = fold_costs(monkeypatch, counting, out, 40, redo="s0005")
    assert costs[39][:3] == costs[11][:3] and costs[39][3] == ["segment-000009.parquet"], costs
    assert costs[11][2] == 4 + 4 * 2, "a segment's 4 scene rows and 8 sample rows, nothing else"
    assert costs[40][3] == ["segment-000001.parquet"], "s0005 stays where it was placed"
    samples, scenes = manifest.read_tables(out)
    assert scenes.num_rows == 40 and samples.num_rows == 81
    store = fsspec.filesystem("counting")
    plain = pa.concat_tables(pq.read_table(path, filesystem=store)
                             for path in store.glob(f"{out}/manifest/samples/*.parquet")).to_pandas()
    assert sorted(set(plain[plain.scene_id == "s0005"].run_key)) == [KEY_B] and len(plain) == 81


def journal_names(root, table: str) -> list[str]:
    folder = root / "manifest" / "_journal" / table
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_folding_keeps_rows_written_meanwhile(tmp_path, monkeypatch):
    out = str(tmp_path)
    for index in range(30):
        manifest.write_scene(out, *rows(f"s{index}", KEY_A))
    manifest.write_scene(out, *rows("s3", KEY_B, status="failed"))
    before = manifest.read_tables(out)
    real_current = manifest.current_samples

    def a_scene_lands_meanwhile(samples, scenes):
        manifest.write_scene(out, *rows("late", KEY_A))
        manifest.write_scene(out, *rows("s7", KEY_B, seeds=3))  # a part folded now is replaced meanwhile
        return real_current(samples, scenes)

    monkeypatch.setattr(manifest, "current_samples", a_scene_lands_meanwhile)
    assert manifest.compact(out) == 61
    monkeypatch.undo()
    assert sorted(path.name for path in (tmp_path / "manifest").iterdir()) == ["_journal", "_placement", "samples",
                                                                               "scenes"]
    assert journal_names(tmp_path, "scenes") == journal_names(tmp_path, "samples") == [
        "scene-late.parquet", "scene-s7.parquet"], "what was written or replaced meanwhile stays"
    after = manifest.read_tables(out)
    assert after[1].num_rows == before[1].num_rows + 1 and after[0].num_rows == before[0].num_rows + 2 + 1
    manifest.compact(out)
    assert journal_names(tmp_path, "scenes") == journal_names(tmp_path, "samples") == []
    assert manifest.read_tables(out)[1].num_rows == 32  # 31 scenes' good rows and s3's newer failure
    plain = pd.read_parquet(tmp_path / "manifest" / "scenes")
    assert len(plain) == 32 and set(plain[plain.scene_id == "s7"].run_key) == {KEY_B}


class Killed(BaseException):
    """A process killed at a chosen storage call: nothing after it happens."""


def killed_at(monkeypatch, call: int) -> list[int]:
    """Make the call-th write or removal of storage raise Killed (counting from 0); returns the counter."""
    from fsspec.implementations.local import LocalFileSystem

    count = [0]

    def counted(real):
        def wrapper(*args, **kwargs):
            if count[0] == call:
                raise Killed
            count[0] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(manifest.storage, "write_bytes", counted(manifest.storage.write_bytes))
    monkeypatch.setattr(LocalFileSystem, "rm", counted(LocalFileSystem.rm))
    monkeypatch.setattr(LocalFileSystem, "rm_file", counted(LocalFileSystem.rm_file))
    return count


def later_run(out: str) -> None:
    """A second run: s1 redone with another config, s4 new, s2 fails again, s0 fails where it was good, then
    the fold at its end."""
    manifest.write_scene(out, *rows("s1", KEY_B, seeds=3))
    manifest.write_scene(out, *rows("s4", KEY_A))
    manifest.write_scene(out, *rows("s2", KEY_A, status="failed"))
    manifest.write_scene(out, *rows("s0", KEY_B, status="failed"))
    manifest.compact(out)


@pytest.mark.parametrize("segment_scenes", [2, manifest.SEGMENT_SCENES])
def test_a_kill_at_any_storage_call_leaves_one_current_row_per_scene_for_every_reader(tmp_path, monkeypatch,
                                                                                     segment_scenes):
    """A first run (s0..s2, s2 failed) folded; then a later run killed at each of its storage calls in turn
    (its scenes in one segment, or in two: s4 joins s2's).
    Whatever call the kill hit: a plain reader of the table folders sees one row per scene (and per scene one
    set of samples), realfill's reader sees each scene's newest record, and the next fold makes the plain
    tables equal to realfill's, exactly as if nothing had been killed."""
    def first_run(out: str) -> None:
        for scene_id in ("s0", "s1"):
            manifest.write_scene(out, *rows(scene_id, KEY_A))
        manifest.write_scene(out, *rows("s2", KEY_A, status="failed"))
        manifest.compact(out)

    monkeypatch.setattr(manifest, "SEGMENT_SCENES", segment_scenes)
    clean = tmp_path / "clean"
    first_run(str(clean))
    later_run(str(clean))
    expected = [table.sort_by([("scene_id", "ascending"), ("status", "ascending")]).drop_columns(["created_at"])
                for table in manifest.read_tables(str(clean))]
    calls = killed_at(monkeypatch, -1)
    first_run(str(tmp_path / "count"))
    start = calls[0]
    later_run(str(tmp_path / "count"))
    total = calls[0] - start
    monkeypatch.undo()
    monkeypatch.setattr(manifest, "SEGMENT_SCENES", segment_scenes)
    assert total >= 10
    for call in range(total):
        out = tmp_path / f"kill-{call}"
        first_run(str(out))
        killed_at(monkeypatch, call)
        with pytest.raises(Killed):
            later_run(str(out))
        monkeypatch.undo()
        monkeypatch.setattr(manifest, "SEGMENT_SCENES", segment_scenes)
        plain_scenes = pd.read_parquet(out / "manifest" / "scenes")
        assert not plain_scenes.duplicated(["scene_id", "status"]).any(), f"kill at call {call}"
        plain_samples = pd.read_parquet(out / "manifest" / "samples")
        assert plain_samples.groupby("scene_id").run_key.nunique().max() == 1, f"kill at call {call}"
        assert not plain_samples.duplicated(["scene_id", "seed"]).any(), f"kill at call {call}"
        samples, scenes = manifest.read_tables(str(out))
        assert not scenes.to_pandas().duplicated(["scene_id", "status"]).any()
        assert not samples.to_pandas().duplicated(["scene_id", "seed"]).any()
        later_run(str(out))  # the same command again
        again = [table.sort_by([("scene_id", "ascending"), ("status", "ascending")]).drop_columns(["created_at"])
                 for table in manifest.read_tables(str(out))]
        assert again[0].equals(expected[0]) and again[1].equals(expected[1]), f"kill at call {call}"
        plain = pq.read_table(out / "manifest" / "scenes").sort_by(
            [("scene_id", "ascending"), ("status", "ascending")]).drop_columns(["created_at"])
        assert plain.equals(expected[1]), f"kill at call {call}"


def test_plain_readers_read_the_tables_as_they_are(tmp_path, monkeypatch):
    """pandas, DuckDB, Polars and pyarrow, as the README shows them, each see the current rows of a table of
    several segments, one scene redone in the oldest."""
    import duckdb
    import polars as pl

    monkeypatch.setattr(manifest, "SEGMENT_SCENES", 2)
    out = str(tmp_path)
    for index in range(5):
        manifest.write_scene(out, *rows(f"s{index}", KEY_A))
        manifest.compact(out)
    manifest.write_scene(out, *rows("s1", KEY_B, seeds=3))
    manifest.compact(out)
    scenes, samples = tmp_path / "manifest" / "scenes", tmp_path / "manifest" / "samples"
    assert len(list(scenes.iterdir())) == 3
    assert len(pd.read_parquet(scenes)) == 5 and len(pd.read_parquet(samples)) == 11
    assert duckdb.sql(f"SELECT count(*) FROM '{scenes}/*.parquet'").fetchall() == [(5,)]
    assert duckdb.sql(f"SELECT count(*) FROM '{samples}/*.parquet' WHERE scene_id = 's1' AND run_key = '{KEY_B}'"
                      ).fetchall() == [(3,)]
    assert pl.read_parquet(f"{scenes}/*.parquet").height == 5
    assert pl.scan_parquet(f"{samples}/*.parquet").collect().height == 11
    assert ds.dataset(scenes, format="parquet").to_table().num_rows == 5


def test_a_run_written_by_schema_version_1_is_read_and_a_newer_one_is_refused(tmp_path):
    out = str(tmp_path)

    def write_version(version: int, table: str, name: str, records: list) -> None:
        schema = manifest.TABLES[table].with_metadata({"realfill.schema_version": str(version),
                                                       "realfill.table": table})
        stamped = [type(row)(**{**row.__dict__, "created_at": manifest.now()}) for row in records]
        arrow = pa.Table.from_pylist([row.__dict__ for row in stamped], schema=schema)
        manifest.write_arrow(str(tmp_path / "manifest" / table / name), arrow)

    samples, scene = rows("old", KEY_A)
    write_version(1, "samples", f"old-{KEY_A}.parquet", samples)  # version 1 named parts by scene and config
    write_version(1, "scenes", f"old-{KEY_A}.parquet", [scene])
    assert set(manifest.completed_scenes(out, KEY_A)) == {"old"}
    manifest.write_scene(out, *rows("old", KEY_B, seeds=3))  # a new config of an old run's scene replaces it
    assert manifest.read_table(out, "samples").num_rows == 3
    manifest.compact(out)
    assert sorted(path.name for path in (tmp_path / "manifest").iterdir()) == ["_journal", "_placement", "samples",
                                                                               "scenes"]
    assert [path.name for path in (tmp_path / "manifest" / "scenes").iterdir()] == ["segment-000000.parquet"], \
        "the old layout's parts are folded into a segment"
    assert manifest.read_table(out, "samples").num_rows == 3

    newer = SCHEMA_VERSION + 1
    write_version(newer, "scenes", "scene-future.parquet", [rows("future", KEY_A)[1]])
    with pytest.raises(ValueError, match=rf"scene-future.parquet: manifest schema version {newer}; this realfill "
                                         rf"reads versions 1 to {SCHEMA_VERSION} \(upgrade realfill"):
        manifest.read_table(out, "scenes")


def test_a_run_of_version_5_is_read_and_its_table_files_move_into_segments(tmp_path):
    """Version 5 kept each table in one file (OUT/manifest/TABLE.parquet): read as the oldest rows, moved into
    segments by the next fold, a scene redone since then replacing its old rows."""
    out = str(tmp_path)
    for table, records in (("samples", rows("a", KEY_A)[0] + rows("b", KEY_A)[0]),
                           ("scenes", [rows("a", KEY_A)[1], rows("b", KEY_A)[1]])):
        schema = manifest.TABLES[table].with_metadata({"realfill.schema_version": "5", "realfill.table": table})
        stamped = [type(row)(**{**row.__dict__, "created_at": manifest.now()}) for row in records]
        manifest.write_arrow(str(tmp_path / "manifest" / f"{table}.parquet"),
                             pa.Table.from_pylist([row.__dict__ for row in stamped], schema=schema))
    manifest.write_scene(out, *rows("b", KEY_B, seeds=3))
    assert set(manifest.completed_scenes(out, KEY_A)) == {"a"} and manifest.read_table(out, "samples").num_rows == 5
    assert manifest.compact(out) == 2
    assert sorted(path.name for path in (tmp_path / "manifest").iterdir()) == ["_journal", "_placement", "samples",
                                                                               "scenes"]
    plain = pd.read_parquet(tmp_path / "manifest" / "samples")
    assert sorted(zip(plain.scene_id, plain.run_key)) == [("a", KEY_A)] * 2 + [("b", KEY_B)] * 3


def test_a_version_6_segment_without_the_support_columns_reads_them_as_null(tmp_path):
    """Version 7 added the samples' support and support_uri and the scenes' best_support: a run recorded before
    reads them as null, and its next fold writes them (as null) into its segments."""
    out, added = str(tmp_path), {"samples": ["support", "support_uri"], "scenes": ["best_support"]}
    for table, records in (("samples", rows("a", KEY_A)[0]), ("scenes", [rows("a", KEY_A)[1]])):
        schema = pa.schema([column for column in manifest.TABLES[table] if column.name not in added[table]],
                           metadata={"realfill.schema_version": "6", "realfill.table": table})
        stamped = [{**row.__dict__, "created_at": manifest.now()} for row in records]
        manifest.write_arrow(str(tmp_path / "manifest" / table / "segment-000000.parquet"),
                             pa.Table.from_pylist([{name: row[name] for name in schema.names} for row in stamped],
                                                  schema=schema))
    samples, scenes = manifest.read_tables(out)
    assert samples.num_rows == 2 and samples.column("support").to_pylist() == [None, None]
    assert scenes.column("best_support").to_pylist() == [None]
    manifest.write_scene(out, *rows("b", KEY_A))
    manifest.compact(out)
    assert pd.read_parquet(tmp_path / "manifest" / "samples").support_uri.isna().all()


def test_a_reader_reads_every_row_while_a_fold_removes_the_parts_it_listed(tmp_path, monkeypatch):
    """`realfill report` or `eval` reading while the run folds: a part listed, then folded and removed before
    it is read, is read from the segment the fold wrote."""
    out = str(tmp_path)
    for index in range(3):
        manifest.write_scene(out, *rows(f"s{index}", KEY_A))
    real_listing = manifest.listing
    folds = []

    def folded_right_after_listing(out_uri, table):
        found = real_listing(out_uri, table)
        if not folds:
            folds.append(None)
            folds[0] = manifest.compact(out_uri)
        return found

    monkeypatch.setattr(manifest, "listing", folded_right_after_listing)
    samples, scenes = manifest.read_tables(out)
    assert folds == [6] and journal_names(tmp_path, "scenes") == []
    assert sorted(scenes.column("scene_id").to_pylist()) == ["s0", "s1", "s2"] and samples.num_rows == 6
