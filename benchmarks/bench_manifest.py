"""Recording scenes in a manifest: storage calls per recorded scene at 100 and 1,000 scenes, and the time
to read the tables afterwards, for the previous way (schema 1: parts named by scene and config, both
folders listed at every record to drop a scene's older parts) vs now (parts named by scene alone, no
listing; compacted into one file per table at the end of the run).

Stages do no model work here: each scene records 8 sample rows and its scene row. Calls are counted by a
filesystem wrapper around an in-memory store (what an object store would be asked); read times are on
local disk.

    python benchmarks/bench_manifest.py
"""

from __future__ import annotations

import posixpath
import re
import tempfile
import time
from collections import Counter

import fsspec
import pyarrow.dataset as ds
from fsspec.core import url_to_fs
from fsspec.implementations.memory import MemoryFileSystem

from realfill.data import manifest
from realfill.data.records import KEY_LENGTH, SampleRow, SceneRow
from realfill.data.scene import storage_name

RUN_KEY = "0123456789abcdef"
COUNTED = {"ls", "info", "exists", "open", "mv", "rm", "rm_file", "makedirs", "mkdir", "find", "cat_file",
           "pipe_file", "copy", "isdir", "isfile"}


class CountingFileSystem(MemoryFileSystem):
    """Counts every call, and the keys that listings return (an S3 LIST request returns at most 1,000)."""

    protocol = "counting"
    calls: Counter = Counter()

    def __getattribute__(self, name):
        if name in COUNTED:
            CountingFileSystem.calls[name] += 1
        return super().__getattribute__(name)

    def ls(self, path, detail=True, **kwargs):
        entries = super().ls(path, detail=detail, **kwargs)
        CountingFileSystem.calls["keys listed"] += len(entries)
        CountingFileSystem.calls["LIST requests"] += max(1, -(-len(entries) // 1000))
        return entries


def rows(index: int) -> tuple[list[SampleRow], SceneRow]:
    scene_id = f"scene{index:05d}"
    samples = [SampleRow(scene_id=scene_id, seed=seed, uri=f"/samples/{scene_id}/seed-{seed:05d}.png", status="ok",
                         run_key=RUN_KEY, width=512, height=512, matches=seed, score=float(seed), rank=8 - seed,
                         selected=seed == 7) for seed in range(8)]
    return samples, SceneRow(scene_id=scene_id, scene_uri=f"/scenes/{scene_id}", status="ok", run_key=RUN_KEY,
                             best_uri=samples[7].uri, num_samples=8, config="{}")


def record_with_listing(out: str, samples: list[SampleRow], scene: SceneRow) -> None:
    """The schema-1 way, kept here to measure against: one part per (scene, config), then both folders
    listed to drop the scene's other parts."""
    name = f"{storage_name(scene.scene_id)}-{scene.run_key}.parquet"
    manifest.write_part(out, "samples", samples, name)
    manifest.write_part(out, "scenes", [scene], name)
    own = re.compile(rf"{re.escape(storage_name(scene.scene_id))}-[0-9a-f]{{{KEY_LENGTH}}}(\.failed)?\.parquet")
    for table in manifest.TABLES:
        fs, path = url_to_fs(manifest.table_uri(out, table))
        for entry in fs.ls(path, detail=False):
            if own.fullmatch(posixpath.basename(entry)) and posixpath.basename(entry) != name:
                fs.rm(entry)


def record_now(out: str, samples: list[SampleRow], scene: SceneRow) -> None:
    manifest.write_scene(out, samples, scene)


def calls_per_scene(record, scenes: int) -> tuple[int, int, int, int]:
    """For the last scene recorded: its filesystem calls, the keys its listings returned, its S3 LIST
    requests; and the LIST requests of the whole run."""
    out = f"counting://bench-{record.__name__}-{scenes}/run"
    calls = CountingFileSystem.calls
    calls.clear()
    for index in range(scenes):
        before = Counter(calls)
        record(out, *rows(index))
    last = calls - before
    filesystem_calls = sum(count for name, count in last.items() if name in COUNTED)
    return filesystem_calls, last["keys listed"], last["LIST requests"], calls["LIST requests"]


def read_seconds(out: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for table in manifest.TABLES:
            ds.dataset(manifest.table_uri(out, table), format="parquet").to_table()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    fsspec.register_implementation("counting", CountingFileSystem, clobber=True)
    print("| scenes | way | fs calls, last scene | keys listed, last scene | S3 LIST requests, last scene | "
          "S3 LIST requests, whole run |")
    print("|---|---|---|---|---|---|")
    for scenes in (100, 1000):
        for label, record in (("list both folders at each record (schema 1)", record_with_listing),
                              ("parts named by scene, no listing (now)", record_now)):
            print(f"| {scenes} | {label} | " + " | ".join(map(str, calls_per_scene(record, scenes))) + " |")
        MemoryFileSystem.store.clear()
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(1000):
            record_now(scratch, *rows(index))
        files = sum(len(manifest.part_files(scratch, table)) for table in manifest.TABLES)
        uncompacted = read_seconds(scratch)
        started = time.perf_counter()
        manifest.compact(scratch)
        compact_s = time.perf_counter() - started
        compacted = read_seconds(scratch)
        after = sum(len(manifest.part_files(scratch, table)) for table in manifest.TABLES)
    print()
    print("| 1,000 scenes on local disk | files | read both tables (pyarrow.dataset) |")
    print("|---|---|---|")
    print(f"| before compaction | {files} | {uncompacted * 1000:.0f} ms |")
    print(f"| after compaction ({compact_s * 1000:.0f} ms, once at the end of a run) | {after} | "
          f"{compacted * 1000:.0f} ms |")
    print(f"| **read speed-up** | | **{uncompacted / compacted:.1f}x** |")


if __name__ == "__main__":
    main()
