"""A sweep's GPU utilisation: the variants one after another, each a whole run with Ray started again (how
sweeps ran before), vs every (scene, variant) through one pipeline (`realfill sweep`).

A simulated cluster: `ray.init(num_gpus=4)` on this CPU machine (Ray schedules the logical GPUs; the tiny
model runs on the CPU), with 8 logical CPUs so that CPU slots are not what limits a 4-GPU node. Utilisation
is busy GPU-seconds (calls holding a GPU while they run) / (wall time × GPUs).

    python benchmarks/bench_sweep.py [N_SCENES]
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import ray

from pipeline.config import PipelineConfig
from pipeline.driver import run_pipeline, run_variants
from realfill.config import FillConfig, RankConfig, SampleConfig, TuneConfig
from realfill.example import write_example
from realfill.method.models import tiny_model_path
from realfill.stages import Variant

GPUS, CPUS = 4, 8


def variants() -> dict[str, FillConfig]:
    """Three variants with the same training: two share their images too, one samples with DPM-Solver++."""
    tune = TuneConfig(resolution=64, train_steps=300, batch_size=4, checkpoint_every=0)
    sample = SampleConfig(resolution=64, num_samples=32, steps=40, batch_size=8)

    def config(sample: SampleConfig, rank: RankConfig) -> FillConfig:
        return FillConfig(base_model="tiny", device="cpu", tune=tune, sample=sample, rank=rank)

    return {"paper": config(sample, RankConfig()), "top1": config(sample, RankConfig(keep=1)),
            "dpm": config(SampleConfig(**{**sample.__dict__, "scheduler": "dpm"}), RankConfig())}


def start_ray() -> None:
    ray.init(num_gpus=GPUS, num_cpus=CPUS, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)


def serial(root: str, out: str) -> tuple[float, float]:
    """Each variant a run of its own, Ray started for each; adapters shared (as the old sweep did)."""
    started, busy = time.perf_counter(), 0.0
    for name, config in variants().items():
        start_ray()
        try:
            summary = run_pipeline(root, f"{out}/{name}", config, PipelineConfig(), show_progress=False,
                                   adapters=f"{out}/adapters")
        finally:
            ray.shutdown()
        assert not summary.failed, summary.failed
        busy += summary.gpu_seconds
    return time.perf_counter() - started, busy


def one_pipeline(root: str, out: str) -> tuple[float, float]:
    started = time.perf_counter()
    start_ray()
    try:
        runs = [Variant(name, f"{out}/variants/{name}", config) for name, config in variants().items()]
        summary = run_variants(root, runs, PipelineConfig(), show_progress=False, adapters=f"{out}/adapters",
                               samples=f"{out}/samples")
    finally:
        ray.shutdown()
    assert not summary.failed, summary.failed
    return time.perf_counter() - started, summary.gpu_seconds


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tiny_model_path()  # built once, outside both timings
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "scenes"
        for index in range(count):
            write_example(str(root / f"scene{index:02d}"), seed=index, outpaint=index % 2 == 1)
        ways = {"variants one after another (a run each)": serial(str(root), f"{scratch}/serial"),
                "one pipeline for every (scene, variant)": one_pipeline(str(root), f"{scratch}/one")}
    print(f"{count} scenes x {len(variants())} variants (one training config), tiny model, "
          f"ray.init(num_gpus={GPUS}, num_cpus={CPUS}) on {os.cpu_count()} cores")
    print("| way | wall time | busy GPU-s | GPU utilisation |")
    print("|---|---|---|---|")
    for name, (wall, busy) in ways.items():
        print(f"| {name} | {wall:.1f} s | {busy:.1f} | {busy / (wall * GPUS):.0%} |")
    (serial_wall, serial_busy), (one_wall, one_busy) = ways.values()
    print(f"| **ratio** | **{serial_wall / one_wall:.2f}x faster** | | "
          f"**{(one_busy / one_wall) / (serial_busy / serial_wall):.2f}x** |")


if __name__ == "__main__":
    main()
