"""Scale: what the head pays per unit as a run grows from 1,000 to 100,000 scenes, and per photo as an album
grows from 1,000 to 10,000 photos. Flat per-unit figures (ratios near 1 between sizes) mean the run's cost
around the GPU work grows no faster than the work itself.

    python benchmarks/bench_scale.py [--units 1000 10000 100000] [--photos 1000 10000]

Each run size is measured in a fresh process (its peak memory is its own), on Ray's multi-node harness
(`ray.cluster_utils.Cluster`): a head with no CPU (it only drives, as the shipped KubeRay head) and two worker
nodes of four logical CPUs. The scenes are tiny (the same small PNGs in every scene folder) and the method's two
stages are synthetic: stitch writes the target as its image, rank puts that image first. So the driver does
its real work (plan, scheduling with ray.wait, recording every scene, folding the manifest as it goes) while the
workers do next to nothing, and the report that follows has real thumbnails, sheets and pages to make.

Per unit: the driver's CPU seconds (all its threads, Ray's included) and its peak memory growth over the run;
the CPU seconds of recording (each scene's journal parts) and of the folds, in the run and at its end (the CPU of
the driver's thread that calls them: its other threads' work meanwhile is Ray's, counted above); then the
report, on the same cluster (scene pages as Ray tasks over chunks, the index by the driver): wall and driver CPU
per scene. CPU seconds, not wall, where the head shares its two cores with the workers' nodes here.
Per photo: bytes read to list an album and check an uncrop request for every photo (headers only, through an
fsspec store that counts what is read: bench_listing's album), and the driver's seconds for it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from realfill.data import storage

HERE = Path(__file__).resolve().parent
NODES, CPUS_PER_NODE = 2, 4


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def tiny_scene_files() -> dict[str, bytes]:
    """One small scene's files (48x32 target with a hole, two references), encoded once for every scene."""
    rng = np.random.default_rng(0)
    world = cv2.GaussianBlur(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), (0, 0), 2)
    mask = np.zeros((32, 48), np.uint8)
    mask[8:20, 16:32] = 255
    return {"target/target.png": png(world[:32, :48]), "target/mask.png": png(mask),
            "ref/00.png": png(world[32:, :48]), "ref/01.png": png(world[:32, 48:])}


TARGET_PNG = tiny_scene_files()["target/target.png"]


def write_scenes(root: Path, count: int) -> list[str]:
    """count tiny scenes under root (plain file writes: setting up is not what is measured); their URIs."""
    files, uris = tiny_scene_files(), []
    for index in range(count):
        scene = root / f"scene-{index:06d}"
        for name, data in files.items():
            path = scene / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        uris.append(str(scene))
    return uris


def synthetic_stitch(job, runtime) -> str:
    """The stitch stage's call, without stitching: the target, written as the scene's image."""
    uri = storage.join(job.stores.samples, Path(job.scene_uri).name, "stitch.png")
    storage.write_bytes(uri, TARGET_PNG)
    return uri


def synthetic_rank(job, runtime):
    """The rank stage's call, without matching: the one image first, selected."""
    from realfill.selection.rank import GEOMETRY
    from realfill.stages import Ranked

    return Ranked([replace(row, matches=12, score=20.0, rank=1, selected=True, width=48, height=32)
                   for row in job.rows], GEOMETRY)


class Timed:
    """Seconds spent in a function, summed over its calls: wall, and the CPU of the thread that calls it (the
    process's CPU would count the work of Ray's threads that runs meanwhile)."""

    def __init__(self, owner, name: str):
        self.owner, self.name, self.original = owner, name, getattr(owner, name)
        self.wall = self.cpu = 0.0
        self.calls = 0
        setattr(owner, name, self)

    def __call__(self, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return self.original(*args, **kwargs)
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.thread_time() - cpu
            self.calls += 1


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_run(units: int) -> dict:
    """One size, in this process: the run, then its report, on a fresh multi-node Ray."""
    import ray
    from ray.cluster_utils import Cluster

    from pipeline.config import PipelineConfig
    from pipeline.driver import run_pipeline
    from pipeline.fanout import ray_map
    from realfill.config import FillConfig
    from realfill.data import manifest
    from realfill.evaluation.report import write_report
    from realfill.stages import RANK, STITCH

    STITCH.run, RANK.run = synthetic_stitch, synthetic_rank  # travel with the stages to the workers
    with tempfile.TemporaryDirectory() as scratch:
        scenes = write_scenes(Path(scratch) / "scenes", units)
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
        try:
            for _ in range(NODES):
                cluster.add_node(num_cpus=CPUS_PER_NODE)
            ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
            recording, folding = Timed(manifest, "write_scene"), Timed(manifest, "compact")
            out = str(Path(scratch) / "out")
            before_mb, wall, cpu = rss_mb(), time.perf_counter(), time.process_time()
            summary = run_pipeline(str(Path(scratch) / "scenes"), out, FillConfig(method="stitch"),
                                   PipelineConfig(), show_progress=False, scene_uris=scenes)
            run_wall, run_cpu = time.perf_counter() - wall, time.process_time() - cpu
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            assert len(summary.done) == units and not summary.failed, summary.text()
            wall, cpu = time.perf_counter(), time.process_time()
            report = write_report(out, map_chunks=ray_map)
            report_wall, report_cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert report.scenes == units and report.thumbnails_made == 4 * units, report
        finally:
            ray.shutdown()
            cluster.shutdown()
    return {"units": units, "run_s": run_wall, "driver_cpu_ms": 1000 * run_cpu / units,
            "driver_peak_kb": 1024 * (peak_mb - before_mb) / units, "record_ms": 1000 * recording.cpu / units,
            "fold_ms": 1000 * folding.cpu / units, "folds": folding.calls, "report_s": report_wall,
            "report_ms": 1000 * report_wall / units, "report_cpu_ms": 1000 * report_cpu / units}


def measure_listing(photos: int) -> dict:
    """bench_listing's album of distinct photos on a counting in-memory store: listing and uncrop checks."""
    import fsspec

    sys.path.insert(0, str(HERE))
    from bench_listing import listing_and_checks, make_album, measure

    from synthetic import BytesReadFileSystem

    fsspec.register_implementation("bytesread", BytesReadFileSystem, clobber=True)
    BytesReadFileSystem.store.clear()
    make_album(photos, 640)
    seconds, read, listed = measure(listing_and_checks)
    BytesReadFileSystem.store.clear()
    assert listed == photos
    return {"photos": photos, "kib_per_photo": read / photos / 1024, "ms_per_photo": 1000 * seconds / photos}


def in_fresh_process(argument: str, value: int) -> dict:
    result = subprocess.run([sys.executable, __file__, argument, str(value)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{argument} {value} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ratio(rows: list[dict], key: str) -> str:
    return f"{rows[-1][key] / rows[0][key]:.2f}×" if rows[0][key] else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, nargs="*", default=[1000, 10000, 100000])
    parser.add_argument("--photos", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--one-run", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-listing", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent / "tests"))
    if args.one_run:
        print(json.dumps(measure_run(args.one_run)))
        return
    if args.one_listing:
        print(json.dumps(measure_listing(args.one_listing)))
        return
    runs = []
    for units in args.units:
        runs.append(in_fresh_process("--one-run", units))
        print(f"measured {units:,} units: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
    columns = {"driver_cpu_ms": "driver CPU per unit", "driver_peak_kb": "driver peak memory per unit",
               "record_ms": "recording: CPU per unit", "fold_ms": "folding: CPU per unit",
               "report_ms": "report per scene", "report_cpu_ms": "report: driver CPU per scene"}
    units = {"driver_peak_kb": "KiB"}
    if runs:
        print("| units | run | " + " | ".join(columns.values()) + " | folds | report |")
        print("|---|---|" + "---|" * len(columns) + "---|---|")
        for row in runs:
            cells = [f"{row[key]:.2f} {units.get(key, 'ms')}" for key in columns]
            print(f"| {row['units']:,} | {row['run_s']:.0f} s | " + " | ".join(cells) +
                  f" | {row['folds']} | {row['report_s']:.0f} s |")
        print(f"| ratio {runs[-1]['units']:,} / {runs[0]['units']:,} | | " +
              " | ".join(ratio(runs, key) for key in columns) + " | | |")
    listings = [in_fresh_process("--one-listing", photos) for photos in args.photos]
    if listings:
        print("\n| photos | bytes read per photo | driver per photo |")
        print("|---|---|---|")
        for row in listings:
            print(f"| {row['photos']:,} | {row['kib_per_photo']:.2f} KiB | {row['ms_per_photo']:.2f} ms |")
        print(f"| ratio {listings[-1]['photos']:,} / {listings[0]['photos']:,} | {ratio(listings, 'kib_per_photo')} | "
              f"{ratio(listings, 'ms_per_photo')} |")


if __name__ == "__main__":
    main()
