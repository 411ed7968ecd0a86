"""The stages on Ray: one task that runs any stage's call, an actor that holds a stage's model across calls,
and the launchers the driver starts calls through.

The stages themselves are realfill.stages' Ray-free classes; only their jobs (URIs and small rows) and results
cross process boundaries, never images.
"""

from __future__ import annotations

import os
import time
from collections import deque

import ray

from pipeline.config import PipelineConfig, Plan, samplers_wanted
from realfill.data.layout import scene_id_of
from realfill.environment import check_environment
from realfill.method.models import quiet_libraries
from realfill.method.sample import Sampler
from realfill.stages import Job, Ran, Runtime, Stage, run_timed

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


def step_reporter(stage: Stage, job: Job, verbose: bool):
    """A stepped call's after_step: the test hooks at every step (a worker lost mid-training), and with
    verbose a line every tenth of the steps (on the worker's stdout, which Ray forwards to the driver)."""
    steps = job.config.tune.train_steps
    every = max(1, steps // 10)

    def after_step(step: int, loss: float) -> None:
        fault_hooks(stage.name)
        if verbose and (step % every == 0 or step == steps):
            print(f"{stage.name} {scene_id_of(job.scene_uri)}: step {step}/{steps}, loss {loss:.4f}", flush=True)

    return after_step


@ray.remote
def stage_task(stage: Stage, job: Job, verbose: bool) -> Ran:
    """One call of a stage that holds no model."""
    check_environment()  # a node whose libraries differ from the driver's fails with one clear line
    quiet_libraries()
    if stage.stepped:
        return run_timed(stage, job, Runtime(after_step=step_reporter(stage, job, verbose)))
    fault_hooks(stage.name)
    return run_timed(stage, job, Runtime())


@ray.remote
class ModelActor:
    """Holds each model a stage's calls ask for once (the base model; the Paint-by-Example model in a sweep
    that has it) and runs the stage's calls with it."""

    def __init__(self, stage: Stage):
        check_environment()
        quiet_libraries()
        self.stage = stage
        self.models: dict[tuple, Sampler] = {}

    def run(self, job: Job) -> Ran:
        fault_hooks(self.stage.name)
        model = self.stage.model(job.config)
        if model not in self.models:
            self.models[model] = self.stage.load(job.config)
        return run_timed(self.stage, job, Runtime(sampler=self.models[model]))


class Tasks:
    """A stage's calls as Ray tasks, each with the GPUs the plan gives the stage."""

    def __init__(self, stage: Stage, plan: Plan, pipeline: PipelineConfig):
        self.stage, self.plan, self.pipeline = stage, plan, pipeline

    @property
    def gpus(self) -> float:
        return self.plan.gpus_per_call(self.stage)

    def submit(self, job: Job) -> ray.ObjectRef:
        return stage_task.options(num_gpus=self.gpus, max_retries=self.pipeline.retries).remote(
            self.stage, job, self.pipeline.verbose)

    def finished(self, ref: ray.ObjectRef, error: BaseException | None) -> None:
        """A call ended: nothing to give back."""

    def cancel(self, ref: ray.ObjectRef) -> None:
        ray.cancel(ref, force=True)

    def close(self) -> None:
        """Tasks hold nothing between calls."""


class ModelPool:
    """A pool of actors that hold a stage's model, each with its GPU for its lifetime.

    The pool is elastic within the plan's limits, so that GPUs go where the work is: its target size is the
    share of the GPUs that this stage's backlog is of all GPU work in flight or waiting (in seconds, from the
    calls measured so far). It grows when a call waits for an actor and the pool is below target, and gives
    an actor's GPU back when the pool is above it."""

    def __init__(self, stage: Stage, plan: Plan, pipeline: PipelineConfig, backlog):
        self.stage, self.plan, self.pipeline = stage, plan, pipeline
        self.backlog = backlog
        """backlog(): the run's Backlog now."""
        self.idle = deque(self.new_actor() for _ in range(plan.samplers))
        self.size = plan.samplers
        self.busy: dict[ray.ObjectRef, ray.actor.ActorHandle] = {}

    @property
    def gpus(self) -> float:
        return self.plan.gpus_per_call(self.stage)

    def new_actor(self) -> ray.actor.ActorHandle:
        retries = self.pipeline.retries
        return ModelActor.options(num_gpus=self.gpus, max_restarts=retries,
                                  max_task_retries=retries).remote(self.stage)

    def target(self) -> int:
        return samplers_wanted(self.plan, self.backlog())

    def submit(self, job: Job) -> ray.ObjectRef | None:
        if not self.idle and self.size < self.target():
            self.idle.append(self.new_actor())  # it takes the next GPU that frees up
            self.size += 1
        if not self.idle:
            return None
        actor = self.idle.popleft()
        ref = actor.run.remote(job)
        self.busy[ref] = actor
        return ref

    def finished(self, ref: ray.ObjectRef, error: BaseException | None) -> None:
        actor = self.busy.pop(ref)
        if self.size > self.target():
            ray.kill(actor)  # its GPU goes to the other stages' calls
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
