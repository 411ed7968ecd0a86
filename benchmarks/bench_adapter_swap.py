"""Adapter swapping in a long-lived sampler: unload + load (what diffusers' API does by default) vs
copying the weights into the active adapter in place (what Sampler.use_adapter does for adapters of
the same layout). Reports time per swap and resident-memory growth over many swaps.

    python benchmarks/bench_adapter_swap.py [SWAPS]
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time

from realfill.config import TuneConfig
from realfill.data.scene import load_scene
from realfill.example import write_example
from realfill.method.models import quiet_libraries, tiny_model_path
from realfill.method.sample import Sampler
from realfill.method.tune import tune


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def swap_many(sampler: Sampler, adapters: list[str], swaps: int, reload: bool) -> tuple[float, float]:
    """(ms per swap, MiB of resident growth per 100 swaps, after a warm-up)."""
    for index in range(20):
        if reload:
            sampler.use_adapter(None)
        sampler.use_adapter(adapters[index % len(adapters)])
    gc.collect()
    before, started = rss_mib(), time.perf_counter()
    for index in range(swaps):
        if reload:
            sampler.use_adapter(None)
        sampler.use_adapter(adapters[index % len(adapters)])
    elapsed = time.perf_counter() - started
    gc.collect()
    return 1000 * elapsed / swaps, (rss_mib() - before) * 100 / swaps


def main() -> None:
    quiet_libraries()
    swaps = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    base = tiny_model_path()
    with tempfile.TemporaryDirectory() as scratch:
        scene = load_scene(write_example(f"{scratch}/example"))
        adapters = []
        for seed in range(4):
            uri = f"{scratch}/adapter-{seed}"
            tune(scene, base, TuneConfig(resolution=64, train_steps=2, batch_size=2, checkpoint_every=0), uri,
                 key=f"seed-{seed}", seed=seed, device="cpu", show_progress=False)
            adapters.append(uri)
        sampler = Sampler(base, device="cpu")
        reload_ms, reload_growth = swap_many(sampler, adapters, swaps, reload=True)
        inplace_ms, inplace_growth = swap_many(sampler, adapters, swaps, reload=False)
    print(f"{swaps} swaps between 4 adapters, tiny model, CPU")
    print("| way | ms per swap | resident growth per 100 swaps |")
    print("|---|---|---|")
    print(f"| unload + load_lora_weights | {reload_ms:.1f} | {reload_growth:.2f} MiB |")
    print(f"| copy in place (Sampler.use_adapter) | {inplace_ms:.1f} | {inplace_growth:.2f} MiB |")
    print(f"speed-up: {reload_ms / inplace_ms:.2f}x")


if __name__ == "__main__":
    main()
