"""The stages on Ray: one task that runs any stage's call, an actor that holds a stage's model across calls,
and the launchers the driver starts calls through.

The stages themselves are realfill.stages' Ray-free classes; only their jobs (URIs and small rows) and results
cross process boundaries, never images.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections import deque

import ray

from pipeline.config import PipelineConfig, Plan, samplers_wanted
from realfill.data.layout import scene_id_of
from realfill.environment import check_environment
from realfill.method.models import quiet_libraries
from realfill.method.sample import Sampler
from realfill.stages import Job, Ran, Runtime, Stage, run_timed

FAULTS = "REALFILL_FAULTS"
"""Tests only: a Python file whose at_call(STAGE) every stage call (and tuning step) runs first, so that a test
can kill, hold or gather workers there, as a preemption or a lost node would (tests/faults.py)."""


@functools.cache
def fault_injector():
    """The injector REALFILL_FAULTS names, loaded once per worker process (None: no faults, the usual case)."""
    path = os.environ.get(FAULTS)
    if not path:
        return None
    spec = importlib.util.spec_from_file_location("realfill_faults", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.at_call


def fault_hooks(stage: str) -> None:
    injector = fault_injector()
    if injector is not None:
        injector(stage)


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
