"""Work after a run, spread over the cluster instead of done on the head: the report's scene pages as Ray tasks
over chunks of scenes, and the metrics in actors that hold their backbones (on GPUs when the cluster has them).

The work itself is realfill's (ScenePages, evaluate_scene); only chunks of small rows and their results cross.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ray
from ray.util import ActorPool

from realfill.config import EvalConfig
from realfill.data import storage
from realfill.environment import check_environment
from realfill.evaluation.evaluate import SceneMetrics, SceneSamples, evaluate_scene
from realfill.evaluation.metrics import Evaluator
from realfill.method.models import quiet_libraries

CPUS_PER_EVALUATOR = 4
"""On a cluster without GPUs, one evaluation actor per this many CPUs (each holds DINO and CLIP, and its torch
uses several threads)."""


@ray.remote
def call_task(fn: Callable[[Any], Any], item: Any) -> Any:
    check_environment()
    return fn(item)


def ray_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """fn over items as Ray tasks of one CPU each, the results in the order of items. fn is put in the object
    store once, so what it holds (a report's list of earlier files) travels by reference, not with every task;
    at most twice the cluster's CPUs of tasks wait or run at once (ray.wait)."""
    shared = ray.put(fn)
    limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    refs: list[ray.ObjectRef] = []
    pending: list[ray.ObjectRef] = []
    for item in items:
        if len(pending) >= limit:
            _, pending = ray.wait(pending, num_returns=1)
        refs.append(call_task.remote(shared, item))
        pending.append(refs[-1])
    return ray.get(refs)


def chunk_map() -> storage.ChunkMap:
    """How a command's report runs its chunks: as Ray tasks when the command is on Ray (its run left Ray up, in
    hold_ray), else one after another in this process."""
    return ray_map if ray.is_initialized() else map


@ray.remote
class MetricActor:
    """Holds the metric backbones (DINO, CLIP, LPIPS) and evaluates scenes with them, one call a scene."""

    def __init__(self, config: EvalConfig):
        check_environment()
        quiet_libraries()
        self.evaluator = Evaluator(config)

    def unavailable(self) -> dict[str, str]:
        return self.evaluator.unavailable

    def evaluate(self, work: SceneSamples) -> SceneMetrics:
        return evaluate_scene(work, self.evaluator)


class MetricPool:
    """Evaluation on the cluster (an Evaluation, as realfill.evaluation.evaluate.InProcess is one here): an actor
    per GPU when the cluster has GPUs, else one per CPUS_PER_EVALUATOR CPUs, given scenes as they free up
    (ray.util.ActorPool). Used by `realfill eval --address` and a sweep's evaluation."""

    def __init__(self, config: EvalConfig, actors: int | None = None):
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        count = actors or gpus or max(1, int(resources.get("CPU", 1)) // CPUS_PER_EVALUATOR)
        self.actors = [MetricActor.options(num_gpus=1 if gpus else 0, max_restarts=3, max_task_retries=3).remote(config)
                       for _ in range(count)]
        self.unavailable: dict[str, str] = ray.get(self.actors[0].unavailable.remote())

    def map(self, works: list[SceneSamples]) -> Iterator[SceneMetrics]:
        """Each work's metrics, in the order of works."""
        return ActorPool(self.actors).map(lambda actor, work: actor.evaluate.remote(work), works)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors.clear()

    def __enter__(self) -> MetricPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
