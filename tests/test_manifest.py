"""Manifests: one scene's record never costs another's, a failure never replaces good rows, recording costs
the same number of storage calls at any size, and compaction folds a run into one file per table."""

from collections import Counter

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from realfill.data import manifest
from realfill.data.records import SampleRow, SceneRow

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
    assert manifest.SCENES.metadata == {b"realfill.schema_version": b"3", b"realfill.table": b"scenes"}


def test_any_scene_id_gets_a_visible_bounded_part(tmp_path):
    out = str(tmp_path)
    ids = ["a" * 250, ".hidden", "_under", "x\\dup", "dup", "été", "compacted-x"]
    for scene_id in ids:
        manifest.write_scene(out, *rows(scene_id, KEY_A))
    for table in ("samples", "scenes"):
        names = [path.name for path in (tmp_path / "manifest" / table).iterdir()]
        assert len(names) == len(ids) and all(len(name) < 120 and name[0] not in "._" for name in names)
    scenes = ds.dataset(tmp_path / "manifest" / "scenes", format="parquet").to_table().column("scene_id").to_pylist()
    assert sorted(scenes) == sorted(ids), "every id is visible to pyarrow.dataset, none replaces another"
    assert set(manifest.completed_scenes(out, KEY_A)) == set(ids)
    manifest.compact(out)
    assert set(manifest.completed_scenes(out, KEY_A)) == set(ids)


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
    direct = ds.dataset(tmp_path / "manifest" / "samples", format="parquet").to_table()
    assert direct.num_rows == 3, "after compaction a plain pyarrow reader sees exactly the current rows"


class CountingFileSystem(MemoryFileSystem):
    """An in-memory store that counts every call a manifest makes of it."""

    protocol = "counting"
    calls: Counter = Counter()

    def __getattribute__(self, name):
        if name in {"ls", "info", "exists", "open", "mv", "rm", "rm_file", "makedirs", "mkdir", "find", "cat_file",
                    "pipe_file", "copy", "isdir", "isfile"}:
            CountingFileSystem.calls[name] += 1
        return super().__getattribute__(name)


@pytest.fixture
def counting():
    fsspec.register_implementation("counting", CountingFileSystem, clobber=True)
    CountingFileSystem.calls.clear()
    yield CountingFileSystem.calls
    MemoryFileSystem.store.clear()


def test_recording_costs_the_same_storage_calls_at_any_size(counting):
    out = "counting://bounded/run"
    costs = {}
    for index in range(120):
        counting.clear()
        manifest.write_scene(out, *rows(f"scene{index:04d}", KEY_A))
        costs[index] = sum(counting.values())
    assert costs[119] == costs[10] and "ls" not in counting and "find" not in counting, costs


def test_compaction_leaves_one_file_per_table_and_keeps_rows_written_meanwhile(tmp_path, monkeypatch):
    out = str(tmp_path)
    for index in range(30):
        manifest.write_scene(out, *rows(f"s{index}", KEY_A))
    manifest.write_scene(out, *rows("s3", KEY_B, status="failed"))
    before = manifest.read_tables(out)
    real_current = manifest.current_samples

    def a_scene_lands_meanwhile(samples, scenes):
        manifest.write_scene(out, *rows("late", KEY_A))
        return real_current(samples, scenes)

    monkeypatch.setattr(manifest, "current_samples", a_scene_lands_meanwhile)
    manifest.compact(out)
    monkeypatch.undo()
    files = {table: sorted(path.name for path in (tmp_path / "manifest" / table).iterdir()) for table in ("samples",
                                                                                                           "scenes")}
    assert [name for name in files["scenes"] if name.startswith("compacted-")] and "scene-late.parquet" in \
        files["scenes"] and len(files["scenes"]) == 2 and len(files["samples"]) == 2, files
    after = manifest.read_tables(out)
    assert after[1].num_rows == before[1].num_rows + 1 and after[0].num_rows == before[0].num_rows + 2
    manifest.compact(out)
    assert all(len(list((tmp_path / "manifest" / table).iterdir())) == 1 for table in ("samples", "scenes"))
    assert manifest.read_tables(out)[1].num_rows == 32  # 31 scenes' good rows and s3's newer failure


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
    assert [path.name.startswith("compacted-") for path in (tmp_path / "manifest" / "scenes").iterdir()] == [True]

    write_version(4, "scenes", "scene-future.parquet", [rows("future", KEY_A)[1]])
    with pytest.raises(ValueError, match=r"scene-future.parquet: manifest schema version 4; this realfill reads "
                                         r"versions 1 to 3 \(upgrade realfill"):
        manifest.read_table(out, "scenes")
