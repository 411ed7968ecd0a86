"""Training-batch preparation from phone-size photos: drawing from the photos as loaded vs from copies
downscaled once (what `tune` does), at the paper's batch 16 and resolution 512.

    python benchmarks/bench_batch.py
"""

from __future__ import annotations

import time

import numpy as np

from realfill.config import TuneConfig
from realfill.data.scene import Scene
from realfill.method.tune import TrainingImage, make_batch, training_images

STEPS = 10


def main() -> None:
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8) for _ in range(4)]
    hole = np.zeros((3000, 4000), bool)
    hole[1000:2000, 1500:2500] = True
    scene = Scene("phone", "memory://phone", target=photos[0], mask=hole, refs=photos[1:], ref_uris=[])
    config = TuneConfig()
    as_loaded = [TrainingImage(ref, np.zeros(ref.shape[:2], bool)) for ref in scene.refs]
    as_loaded.append(TrainingImage(scene.target, scene.mask))

    started = time.perf_counter()
    for step in range(STEPS):
        make_batch(as_loaded, config, np.random.default_rng(step))
    raw = (time.perf_counter() - started) / STEPS
    started = time.perf_counter()
    prepared = training_images(scene, config)
    once = time.perf_counter() - started
    started = time.perf_counter()
    for step in range(STEPS):
        make_batch(prepared, config, np.random.default_rng(step))
    scaled = (time.perf_counter() - started) / STEPS
    print(f"4 photos of 4000x3000, batch {config.batch_size} at {config.resolution}, {STEPS} steps")
    print(f"- from the photos as loaded: {raw * 1000:.0f} ms per batch")
    print(f"- from copies downscaled once ({once * 1000:.0f} ms, once per scene): {scaled * 1000:.0f} ms per batch")
    print(f"- speed-up per step: {raw / scaled:.1f}x")


if __name__ == "__main__":
    main()
