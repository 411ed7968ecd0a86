"""Sampling throughput: the same seeds generated one per pass vs batched, tiny model on CPU.
The images are the same either way (one generator per seed); only the time differs.

    python benchmarks/bench_sampling.py
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch

from realfill.config import SampleConfig
from realfill.data.scene import load_scene
from realfill.example import write_example
from realfill.method.models import quiet_libraries, tiny_model_path
from realfill.method.sample import Condition, Sampler

SEEDS = list(range(16))


def timed(sampler: Sampler, scene, batch_size: int) -> tuple[float, dict[int, np.ndarray]]:
    config = SampleConfig(resolution=128, steps=10, batch_size=batch_size, scheduler="dpm")
    started = time.perf_counter()
    images = dict(sampler.generate(scene, config, SEEDS, Condition("a photo of sks")))
    return time.perf_counter() - started, images


def main() -> None:
    quiet_libraries()
    with tempfile.TemporaryDirectory() as scratch:
        scene = load_scene(write_example(f"{scratch}/example"))
        sampler = Sampler(tiny_model_path(), device="cpu")
        timed(sampler, scene, 1)  # warm-up
        one, single_images = timed(sampler, scene, 1)
        eight, batched_images = timed(sampler, scene, 8)
    worst = max(int(np.abs(single_images[s].astype(int) - batched_images[s].astype(int)).max()) for s in SEEDS)
    print(f"{len(SEEDS)} seeds, tiny model, 128px long side, 10 DPM-Solver++ steps, CPU "
          f"({torch.get_num_threads()} threads)")
    print(f"- batch 1: {len(SEEDS) / one:.2f} seeds/s")
    print(f"- batch 8: {len(SEEDS) / eight:.2f} seeds/s")
    print(f"- speed-up from batching: {one / eight:.2f}x (largest pixel difference between the two: {worst})")


if __name__ == "__main__":
    main()
