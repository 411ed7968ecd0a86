"""The stages as Ray tasks and actors, and the `Stage` objects the driver moves units of work through.

Each remote function wraps the same realfill function that `realfill fill` runs; only URIs and small rows
cross process boundaries, never images. A stage is one class: what key lets units share a call, how a call
is started, and how its result goes into a unit. Adding a stage means writing one and listing it in
`pipeline.driver.Driver.stages`.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field, replace

import ray

from pipeline.config import PipelineConfig, Plan, Variant, samplers_wanted
from realfill.config import FillConfig
from realfill.data import records
from realfill.data.layout import scene_id_of
from realfill.data.records import SampleRow
from realfill.data.scene import load_scene
from realfill.environment import check_environment
from realfill.fill import rank_samples, sample_scene, sampler_for, samples_folder, stitch_rows, stitch_scene, tune_scene
from realfill.method.models import quiet_libraries
from realfill.method.sample import Sampler

CRASH_ONCE = "REALFILL_TEST_CRASH_ONCE"
"""Test-only fault hook: 'STAGE:MARKER' makes the first STAGE call that finds no MARKER file create it
and kill its own worker process, as a preempted or OOM-killed worker would die."""
HOLD_ONCE = "REALFILL_TEST_HOLD_ONCE"
"""Test-only hook: 'STAGE:MARKER' makes the first STAGE call that finds no MARKER write its node's id there
and wait (for its node to be taken away by the test); its retry finds the MARKER and goes on."""
GATHER = "REALFILL_TEST_GATHER"
"""Test-only hook: 'STAGE:FOLDER:N' makes every STAGE call wait until N calls of it have started (at most
HOOK_WAIT_S): it can go on only if the run had N of them running at once."""
HOOK_WAIT_S = 300.0


def hooks(name: str, stage: str) -> list[str]:
    """The arguments of a test hook's specs (comma-separated 'STAGE:ARG[:ARG]') that name this stage."""
    return [spec.split(":", 1)[1] for spec in os.environ.get(name, "").split(",")
            if spec.partition(":")[0] == stage and ":" in spec]


def fault_hooks(stage: str) -> None:
    """Where a stage call meets the test hooks above (nothing happens unless one is set)."""
    for marker in hooks(CRASH_ONCE, stage):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
    for marker in hooks(HOLD_ONCE, stage):
        if not os.path.exists(marker):
            with open(f"{marker}.tmp", "w") as handle:
                handle.write(ray.get_runtime_context().get_node_id())
            os.replace(f"{marker}.tmp", marker)
            time.sleep(HOOK_WAIT_S)
    for spec in hooks(GATHER, stage):
        folder, _, count = spec.rpartition(":")
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, ray.get_runtime_context().get_task_id()), "w").close()  # once per call
        deadline = time.monotonic() + HOOK_WAIT_S
        while len(os.listdir(folder)) < int(count) and time.monotonic() < deadline:
            time.sleep(0.1)


@dataclass
class Stitched:
    """What the stitch stage hands on: the stitch result, by URI."""

    uri: str
    seconds: float
    started: float
    """When the call started running (epoch seconds, on its worker): for the run's GPU concurrency."""


@dataclass
class Tuned:
    """What the tune stage hands on: the adapter, by URI and key."""

    adapter_uri: str
    adapter_key: str
    seconds: float
    started: float


@dataclass
class Rows:
    """What the sample and rank stages hand on: one row per seed."""

    rows: list[SampleRow]
    seconds: float
    started: float


@ray.remote
def stitch_task(scene_uri: str, samples: str, config: FillConfig, force: bool) -> Stitched:
    """Make (or reuse) one scene's stitch result: geometry on a CPU, no model."""
    check_environment()  # a node whose libraries differ from the driver's fails with one clear line
    started, wall = time.perf_counter(), time.time()
    fault_hooks("stitch")
    uri = stitch_scene(load_scene(scene_uri, config.max_megapixels), samples, config, force)
    return Stitched(uri, time.perf_counter() - started, wall)


def step_reporter(scene_uri: str, steps: int, verbose: bool):
    """A tune task's after_step: the test hooks, and with verbose a line every tenth of the steps (on the
    worker's stdout, which Ray forwards to the driver)."""
    every = max(1, steps // 10)

    def after_step(step: int, loss: float) -> None:
        fault_hooks("tune")
        if verbose and (step % every == 0 or step == steps):
            print(f"tune {scene_id_of(scene_uri)}: step {step}/{steps}, loss {loss:.4f}", flush=True)

    return after_step


@ray.remote
def tune_task(scene_uri: str, adapters: str, config: FillConfig, force: bool, stitched: str | None,
              verbose: bool) -> Tuned:
    """Fine-tune (or reuse, or resume) one scene's adapter."""
    check_environment()
    quiet_libraries()
    started, wall = time.perf_counter(), time.time()
    scene = load_scene(scene_uri, config.max_megapixels)
    uri, info = tune_scene(scene, adapters, config, show_progress=False, force=force, stitched=stitched,
                           after_step=step_reporter(scene_uri, config.tune.train_steps, verbose))
    return Tuned(uri, info.key, time.perf_counter() - started, wall)


@ray.remote
class SamplerActor:
    """Holds each model it is asked for once (the base model; the Paint-by-Example model in a sweep that has
    it); per scene, swaps in the scene's adapter when the method has one and samples all its seeds."""

    def __init__(self):
        check_environment()
        quiet_libraries()
        self.samplers: dict[tuple[str, bool, str], Sampler] = {}

    def sample(self, scene_uri: str, tuned: Tuned | None, samples: str, config: FillConfig, force: bool,
               stitched: str | None) -> Rows:
        started, wall = time.perf_counter(), time.time()
        fault_hooks("sample")
        model = (config.model, config.by_example, config.sample.precision)  # `tiny` names both tiny models
        if model not in self.samplers:
            self.samplers[model] = sampler_for(config)
        scene = load_scene(scene_uri, config.max_megapixels)
        folder = samples_folder(samples, scene, tuned.adapter_key if tuned else None, config)
        rows = sample_scene(self.samplers[model], scene, tuned.adapter_uri if tuned else None, folder,
                            config, show_progress=False, force=force, stitched=stitched)
        return Rows(rows, time.perf_counter() - started, wall)


@ray.remote
def rank_task(scene_uri: str, rows: list[SampleRow], config: FillConfig) -> Rows:
    """Rank one scene's samples under one config (reference features computed once for all of them)."""
    check_environment()
    started, wall = time.perf_counter(), time.time()
    fault_hooks("rank")
    ranked = rank_samples(load_scene(scene_uri, config.max_megapixels), rows, config)
    return Rows(ranked, time.perf_counter() - started, wall)


@dataclass(eq=False)
class Unit:
    """One scene under one variant: what moves through the stages and is recorded at the end."""

    scene_uri: str
    variant: Variant
    stitched: str | None = None
    tuned: Tuned | None = None
    rows: list[SampleRow] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def config(self) -> FillConfig:
        return self.variant.config

    @property
    def scene_id(self) -> str:
        return scene_id_of(self.scene_uri)

    @property
    def label(self) -> str:
        """How the run's summary names it: the scene, after its variant's name when the run has several."""
        return f"{self.variant.name}/{self.scene_id}" if self.variant.name else self.scene_id


class Stage:
    """One step every unit of a run goes through, in order. Units with equal keys that need the stage at
    the same time share one call (its result goes into each of them)."""

    name: str
    gpus: float = 0.0
    """GPUs a call holds while it runs: the run's busy GPU-seconds count them."""

    def __init__(self, plan: Plan, pipeline: PipelineConfig):
        self.plan, self.pipeline = plan, pipeline

    def needed(self, unit: Unit) -> bool:
        """Whether the unit's method goes through this stage (the driver skips it otherwise)."""
        return True

    def key(self, unit: Unit) -> str:
        """By default a unit shares its call with no other."""
        return str(id(unit))

    def submit(self, unit: Unit) -> ray.ObjectRef | None:
        """Start the call for unit (and every unit sharing its key); None when there is no capacity now."""
        raise NotImplementedError

    def apply(self, unit: Unit, result) -> None:
        """Take the call's result into a unit."""
        raise NotImplementedError

    def finished(self, ref: ray.ObjectRef, error: BaseException | None) -> None:
        """A call ended (with its result, or error): give back what it held."""

    def cancel(self, ref: ray.ObjectRef) -> None:
        ray.cancel(ref, force=True)

    def close(self) -> None:
        """The run is over: release what the stage holds."""


class StitchStage(Stage):
    """CPU tasks: the stitch method's image, or the stitch result that init stitch starts sampling from."""

    name = "stitch"

    def __init__(self, plan: Plan, pipeline: PipelineConfig, samples: str):
        super().__init__(plan, pipeline)
        self.samples = samples

    def needed(self, unit: Unit) -> bool:
        return unit.config.stitches

    def key(self, unit: Unit) -> str:
        return records.stitching_key(unit.scene_uri, unit.config)

    def submit(self, unit: Unit) -> ray.ObjectRef:
        return stitch_task.options(max_retries=self.pipeline.retries).remote(
            unit.scene_uri, self.samples, unit.config, self.pipeline.force)

    def apply(self, unit: Unit, result: Stitched) -> None:
        unit.stitched, unit.seconds["stitch"] = result.uri, result.seconds
        if not unit.config.samples:
            unit.rows = stitch_rows(unit.scene_id, result.uri, unit.config)


class TuneStage(Stage):
    name = "tune"

    def __init__(self, plan: Plan, pipeline: PipelineConfig, adapters: str):
        super().__init__(plan, pipeline)
        self.adapters, self.gpus = adapters, plan.gpus_per_tune

    def needed(self, unit: Unit) -> bool:
        return unit.config.tunes

    def key(self, unit: Unit) -> str:
        return records.training_key(unit.scene_uri, unit.config)

    def submit(self, unit: Unit) -> ray.ObjectRef:
        return tune_task.options(num_gpus=self.gpus, max_retries=self.pipeline.retries).remote(
            unit.scene_uri, self.adapters, unit.config, self.pipeline.force, unit.stitched, self.pipeline.verbose)

    def apply(self, unit: Unit, result: Tuned) -> None:
        unit.tuned, unit.seconds["tune"] = result, result.seconds


class SampleStage(Stage):
    """A pool of sampler actors, each holding the base model and its GPU for its lifetime. One call makes
    the images of every variant that shares them (the most seeds any of them asks for).

    The pool is elastic within the plan's limits, so that GPUs go where the work is: its target size is the
    share of the GPUs that sampling's backlog is of all GPU work in flight or waiting (in seconds, from the
    calls measured so far). It grows when a unit waits for a sampler and the pool is below target, and gives
    a sampler's GPU back when the pool is above it."""

    name = "sample"

    def __init__(self, plan: Plan, pipeline: PipelineConfig, samples: str, seeds_needed: dict[str, int], backlog):
        super().__init__(plan, pipeline)
        self.samples, self.gpus = samples, plan.gpus_per_sampler
        self.seeds_needed, self.backlog = seeds_needed, backlog
        """backlog(): the run's Backlog now."""
        self.idle = deque(self.new_actor() for _ in range(plan.samplers))
        self.size = plan.samplers
        self.busy: dict[ray.ObjectRef, ray.actor.ActorHandle] = {}

    def new_actor(self) -> ray.actor.ActorHandle:
        retries = self.pipeline.retries
        return SamplerActor.options(num_gpus=self.gpus, max_restarts=retries, max_task_retries=retries).remote()

    def target(self) -> int:
        return samplers_wanted(self.plan, self.backlog())

    def needed(self, unit: Unit) -> bool:
        return unit.config.samples

    def key(self, unit: Unit) -> str:
        return records.sampling_key(unit.scene_uri, unit.config)

    def submit(self, unit: Unit) -> ray.ObjectRef | None:
        if not self.idle and self.size < self.target():
            self.idle.append(self.new_actor())  # it takes the next GPU that frees up
            self.size += 1
        if not self.idle:
            return None
        actor = self.idle.popleft()
        config = replace(unit.config, sample=replace(unit.config.sample, num_samples=self.seeds_needed[self.key(unit)]))
        ref = actor.sample.remote(unit.scene_uri, unit.tuned, self.samples, config, self.pipeline.force,
                                  unit.stitched)
        self.busy[ref] = actor
        return ref

    def apply(self, unit: Unit, result: Rows) -> None:
        wanted = set(records.seeds(unit.config))
        unit.rows, unit.seconds["sample"] = [row for row in result.rows if row.seed in wanted], result.seconds

    def finished(self, ref: ray.ObjectRef, error: BaseException | None) -> None:
        actor = self.busy.pop(ref)
        if self.size > self.target():
            ray.kill(actor)  # its GPU goes to the tune calls
            self.size -= 1
        else:
            self.idle.append(self.new_actor() if isinstance(error, ray.exceptions.RayActorError) else actor)

    def cancel(self, ref: ray.ObjectRef) -> None:
        ray.kill(self.busy.pop(ref))

    def close(self) -> None:
        for actor in [*self.idle, *self.busy.values()]:
            ray.kill(actor)
        self.idle.clear()
        self.busy.clear()


class RankStage(Stage):
    """Tasks, one per unit (on CPUs unless gpus_per_rank): ranking is what differs between variants that
    share images."""

    name = "rank"

    def __init__(self, plan: Plan, pipeline: PipelineConfig):
        super().__init__(plan, pipeline)
        self.gpus = pipeline.gpus_per_rank

    def submit(self, unit: Unit) -> ray.ObjectRef:
        return rank_task.options(max_retries=self.pipeline.retries, num_gpus=self.gpus).remote(
            unit.scene_uri, unit.rows, unit.config)

    def apply(self, unit: Unit, result: Rows) -> None:
        unit.rows, unit.seconds["rank"] = result.rows, result.seconds
