"""The stages as Ray tasks and actors. Each wraps the same realfill function that `realfill fill` runs;
only URIs and small rows cross process boundaries, never images."""

from __future__ import annotations

import os
import time

import ray

from realfill.config import FillConfig
from realfill.environment import check_environment
from realfill.fill import rank_samples, sample_scene, tune_scene
from realfill.models import quiet_libraries, resolve_base_model
from realfill.sample import Sampler
from realfill.scene import load_scene

CRASH_ONCE = "REALFILL_TEST_CRASH_ONCE"
"""Test-only fault hook: 'STAGE:MARKER' makes the first STAGE call that finds no MARKER file create it
and kill its own worker process, as a preempted or OOM-killed worker would die."""


def crash_point(stage: str) -> None:
    spec = os.environ.get(CRASH_ONCE, "")
    name, _, marker = spec.partition(":")
    if name == stage and marker and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)


@ray.remote
def tune_task(scene_uri: str, adapters: str, config: FillConfig, force: bool) -> tuple[str, float]:
    """Fine-tune (or reuse, or resume) one scene's adapter; returns its URI and the seconds spent."""
    check_environment()  # a node whose libraries differ from the driver's fails with one clear line
    quiet_libraries()
    started = time.perf_counter()
    scene = load_scene(scene_uri, config.max_megapixels)
    adapter, _ = tune_scene(scene, adapters, config, show_progress=False, force=force,
                            after_step=lambda step: crash_point("tune"))
    return adapter, time.perf_counter() - started


@ray.remote
class SamplerActor:
    """Holds the base model once; per scene, swaps in the scene's adapter and samples all its seeds."""

    def __init__(self, base_model: str, device: str):
        check_environment()
        quiet_libraries()
        self.sampler = Sampler(resolve_base_model(base_model), device)

    def sample(self, scene_uri: str, adapter_uri: str, out_uri: str, config: FillConfig,
               force: bool) -> tuple[list[dict], float]:
        started = time.perf_counter()
        crash_point("sample")
        scene = load_scene(scene_uri, config.max_megapixels)
        rows = sample_scene(self.sampler, scene, adapter_uri, out_uri, config, show_progress=False, force=force)
        return rows, time.perf_counter() - started


@ray.remote
def rank_task(scene_uri: str, rows: list[dict], config: FillConfig) -> tuple[list[dict], float]:
    """Rank one scene's samples (reference features computed once for all of them)."""
    check_environment()
    started = time.perf_counter()
    crash_point("rank")
    ranked = rank_samples(load_scene(scene_uri, config.max_megapixels), rows, config)
    return ranked, time.perf_counter() - started
