"""Recording scenes in a manifest.

1. Storage calls per recorded scene at 100 and 1,000 scenes, schema 1 (parts named by scene and config,
   both folders listed at every record) vs now (journal parts named by scene alone, no listing).
2. 1,000 scenes on local disk, schema 3 (kept here to measure against: parts in the folder plain readers
   read, written as a temporary file and a move, compacted into that folder at the end of a run) vs now
   (journal parts, folded into the tables' segments as the run goes and at its end): the time to record
   them all, to compact or fold at the end, and what a plain reader (pandas) sees when a second run that
   redoes 100 of the scenes with another config was killed before its end.
3. A loop of `realfill fill` (each scene recorded, then folded) on a table of 1,000 and of 10,000 scenes on
   local disk, schema 5 (kept here to measure against: one file per table, rewritten whole at each fold) vs now
   (segments: a fold rewrites the segment of the scene it folds): milliseconds per fold.

Stages do no model work here: each scene records 8 sample rows and its scene row. Calls are counted by a
filesystem wrapper around an in-memory store (what an object store would be asked).

    python benchmarks/bench_manifest.py
"""

from __future__ import annotations

import os
import posixpath
import re
import tempfile
import time
from collections import Counter
from dataclasses import replace

import fsspec
import pandas as pd
import pyarrow.parquet as pq
from fsspec.implementations.memory import MemoryFileSystem

from realfill.data import manifest, storage
from realfill.data.layout import Output, storage_name
from realfill.data.records import KEY_LENGTH, SampleRow, SceneRow

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
        fs, path = storage.filesystem(Output(out).journal(table))
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


def record_schema3(out: str, samples: list[SampleRow], scene: SceneRow) -> None:
    """The schema-3 way: the scene's parts in the folders plain readers read, each a temporary file then a move."""
    for table, rows in (("samples", samples), ("scenes", [scene])):
        stamp = manifest.now()
        arrow = manifest.to_arrow(table, [replace(row, created_at=stamp) for row in rows])
        folder = Output(out).table(table)
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(folder, f".tmp-{scene.scene_id}")
        pq.write_table(arrow, temporary)
        os.replace(temporary, os.path.join(folder, manifest.part_name(scene.scene_id)))


def compact_schema3(out: str) -> None:
    """The schema-3 compaction: the current rows into one new file per folder, then the parts removed."""
    samples, scenes = manifest.read_tables(out)
    for table, arrow in (("samples", samples), ("scenes", scenes)):
        folder = Output(out).table(table)
        parts = os.listdir(folder)
        pq.write_table(arrow, os.path.join(folder, f"compacted-{table}.parquet"))
        for name in parts:
            os.remove(os.path.join(folder, name))


def plain_scene_rows(out: str, layout: str) -> int:
    """Scene rows a plain reader (pandas) sees in the table's folder."""
    return len(pd.read_parquet(Output(out).table("scenes")))


def second_run_killed(out: str, record, redone: int = 100) -> None:
    """A second run that redoes `redone` scenes with another config and is killed before its end."""
    for index in range(redone):
        samples, scene = rows(index)
        key = "fedcba9876543210"
        record(out, [replace(row, run_key=key) for row in samples], replace(scene, run_key=key))


def local_disk(scenes: int = 1000) -> list[str]:
    lines = ["| 1,000 scenes, local disk | record all | compact / fold at the end | plain reader's scene rows "
             "after a second run redoing 100 scenes was killed | realfill's reader |", "|---|---|---|---|---|"]
    for layout in ("schema 3", "now"):
        with tempfile.TemporaryDirectory() as out:
            folding = manifest.Folding(out)

            def record(where, samples, scene):
                if layout == "schema 3":
                    record_schema3(where, samples, scene)
                else:
                    manifest.write_scene(where, samples, scene)
                    folding.recorded()

            started = time.perf_counter()
            for index in range(scenes):
                record(out, *rows(index))
            recorded = time.perf_counter() - started
            started = time.perf_counter()
            compact_schema3(out) if layout == "schema 3" else folding.fold()
            ended = time.perf_counter() - started
            second_run_killed(out, record)
            plain, own = plain_scene_rows(out, layout), manifest.read_table(out, "scenes").num_rows
        label = "parts in the folder, compacted at the end (schema 3)" if layout == "schema 3" else \
            "journal, folded as the run goes (now)"
        lines.append(f"| {label} | {recorded:.2f} s | {ended * 1000:.0f} ms | {plain} | {own} |")
    return lines


def compact_schema5(out: str) -> None:
    """The schema-5 fold: every current row read, then written whole as one file per table, then the journal's
    parts removed."""
    parts = {table: manifest.journal(out, table) for table in manifest.TABLES}
    samples, scenes = manifest.read_tables(out)
    manifest.write_arrow(Output(out).one_file("samples"), samples)
    manifest.write_arrow(Output(out).one_file("scenes"), scenes)
    for table in manifest.TABLES:
        for path in parts[table]:
            os.remove(path)


def table_of(out: str, scenes: int, layout: str) -> None:
    """A manifest of `scenes` scenes, as schema 5 left it (one file per table) or as now (in segments)."""
    recorded = [rows(index) for index in range(scenes)]
    stamp = manifest.now()
    for table, records in (("samples", [row for samples, _ in recorded for row in samples]),
                           ("scenes", [scene for _, scene in recorded])):
        arrow = manifest.to_arrow(table, [replace(row, created_at=stamp) for row in records])
        manifest.write_arrow(Output(out).one_file(table), arrow)
    if layout == "now":
        manifest.compact(out)  # moves a schema-5 table into segments


def fill_loop(sizes: tuple[int, ...] = (1000, 10000), folds: int = 20) -> list[str]:
    lines = ["| table of | one file per table, rewritten whole (schema 5) | segments (now) | schema 5 / now |",
             "|---|---|---|---|"]
    for scenes in sizes:
        per_fold = {}
        for layout, fold in (("schema 5", compact_schema5), ("now", manifest.compact)):
            with tempfile.TemporaryDirectory() as out:
                table_of(out, scenes, layout)
                spent = 0.0
                for index in range(scenes, scenes + folds):
                    manifest.write_scene(out, *rows(index))
                    started = time.perf_counter()
                    fold(out)
                    spent += time.perf_counter() - started
                assert manifest.read_table(out, "scenes").num_rows == scenes + folds
                per_fold[layout] = spent / folds * 1000
        lines.append(f"| {scenes:,} scenes | {per_fold['schema 5']:.1f} ms per fold | {per_fold['now']:.1f} ms per "
                     f"fold | {per_fold['schema 5'] / per_fold['now']:.1f}x |")
    return lines


def main() -> None:
    fsspec.register_implementation("counting", CountingFileSystem, clobber=True)
    print("| scenes | way | fs calls, last scene | keys listed, last scene | S3 LIST requests, last scene | "
          "S3 LIST requests, whole run |")
    print("|---|---|---|---|---|---|")
    for scenes in (100, 1000):
        for label, record in (("list both folders at each record (schema 1)", record_with_listing),
                              ("journal parts named by scene, no listing (now)", record_now)):
            print(f"| {scenes} | {label} | " + " | ".join(map(str, calls_per_scene(record, scenes))) + " |")
        MemoryFileSystem.store.clear()
    print()
    print("\n".join(local_disk()))
    print()
    print("\n".join(fill_loop()))


if __name__ == "__main__":
    main()
