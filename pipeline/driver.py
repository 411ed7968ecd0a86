"""The `realfill run` driver: many scenes through tune -> sample -> rank, pipelined with ray.wait.

A scene goes to a sampler as soon as its adapter exists, ranking overlaps other scenes' sampling, and
at most max_in_flight scenes are between 'tune started' and 'recorded' at once. Only URIs and small
rows pass through the driver. Each finished scene is recorded in the manifest at once, so an
interrupted run loses nothing that was done, and the same command resumes it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

import ray
from tqdm.auto import tqdm

from pipeline.config import PipelineConfig
from pipeline.stages import SamplerActor, rank_task, tune_task
from realfill import manifest, storage
from realfill.config import FillConfig
from realfill.fill import default_adapters, describe, scene_row
from realfill.lease import OutputLease
from realfill.records import run_key
from realfill.scene import list_scenes, scene_id_of

STAGES = ("tune", "sample", "rank")
WAIT_S = 0.5
"""How often the driver looks up from ray.wait, so that a stop signal is acted on promptly."""
BEST_SHOWN = 50
"""Scenes whose best image the summary names; the scenes table has all of them."""


@dataclass
class SceneState:
    uri: str
    adapter: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def scene_id(self) -> str:
        return scene_id_of(self.uri)


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    best: dict[str, str | None] = field(default_factory=dict)
    """Best-ranked image of every complete scene, done now or skipped."""
    stopped_by: int | None = None
    """The signal (SIGINT, SIGTERM) that stopped the run, if one did."""
    unfinished: list[str] = field(default_factory=list)
    """Scenes in progress when the run was stopped: not recorded, the same command resumes them."""
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    wall_s: float = 0.0

    def text(self) -> str:
        lines = [f"done: {len(self.done)}, already complete (skipped): {len(self.skipped)}, "
                 f"failed: {len(self.failed)}; wall time {self.wall_s:.1f}s",
                 "time per stage (summed over scenes): "
                 + ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in self.stage_seconds.items())]
        if self.stopped_by is not None:
            lines.append(f"stopped by {signal.Signals(self.stopped_by).name}: {len(self.unfinished)} scenes in "
                         f"progress were not recorded ({', '.join(sorted(self.unfinished)) or 'none'}); the same "
                         f"command resumes them")
        lines += [f"failed {scene_id}: {error}" for scene_id, error in sorted(self.failed.items())]
        best = sorted(self.best.items())
        lines += [f"best {scene_id}: {uri}" for scene_id, uri in best[:BEST_SHOWN]]
        if len(best) > BEST_SHOWN:
            lines.append(f"best of {len(best) - BEST_SHOWN} more scenes: the scenes table's best_uri")
        return "\n".join(lines)


def connect(address: str | None) -> bool:
    """Join the cluster at address (or $RAY_ADDRESS), else start a local Ray. True if we started it."""
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    return True


def root_cause(exc: BaseException) -> BaseException:
    """The stage's own exception inside Ray's wrapper, when there is one."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def run_pipeline(scenes_root: str, out_uri: str, config: FillConfig, pipeline: PipelineConfig,
                 show_progress: bool = True, adapters: str | None = None) -> RunSummary:
    """Complete every scene under scenes_root into out_uri (adapters in the given store, default
    OUT/adapters); scenes already complete with this config are skipped unless pipeline.force.
    The output is leased for the run: a second run on it stops at once with OutputBusy."""
    started = time.perf_counter()
    scenes_root, out_uri = storage.normalize(scenes_root), storage.normalize(out_uri)
    adapters = storage.normalize(adapters) if adapters else default_adapters(out_uri)
    summary = RunSummary()
    scene_uris = list_scenes(scenes_root)
    with OutputLease(out_uri):
        finished = {} if pipeline.force else manifest.completed_scenes(out_uri, run_key(config))
        todo = []
        for uri in scene_uris:
            scene_id = scene_id_of(uri)
            if scene_id in finished:
                summary.skipped.append(scene_id)
                summary.best[scene_id] = finished[scene_id]
            else:
                todo.append(uri)
        if todo:
            started_ray = connect(pipeline.address)
            try:
                driver = Driver(out_uri, adapters, config, pipeline, summary, show_progress)
                with stop_on_signals(driver):
                    driver.run(todo)
            finally:
                if started_ray:
                    ray.shutdown()
    summary.wall_s = time.perf_counter() - started
    return summary


@contextmanager
def stop_on_signals(driver: Driver):
    """SIGINT and SIGTERM stop the driver's scheduling (a second one ends the process at once), so that what
    finished stays recorded, the summary is printed and Ray is shut down. Main thread only (Python's rule)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in signals}

    def stop(signum, frame):
        driver.stop_signal = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    for signum in signals:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class Plan:
    """How the stages map onto the cluster's resources."""

    gpus_per_tune: float
    gpus_per_sampler: float
    samplers: int
    max_in_flight: int


def plan(resources: dict[str, float], pipeline: PipelineConfig) -> Plan:
    """Defaults from what the cluster has now; explicit settings always win."""
    gpus = int(resources.get("GPU", 0))

    def given_or(value, default):
        return value if value is not None else default

    return Plan(
        gpus_per_tune=given_or(pipeline.gpus_per_tune, min(gpus, 1)),
        gpus_per_sampler=given_or(pipeline.gpus_per_sampler, min(gpus, 1)),
        samplers=given_or(pipeline.samplers, max(1, gpus // 4)),
        max_in_flight=given_or(pipeline.max_in_flight, max(2, 2 * (gpus or int(resources.get("CPU", 1))))),
    )


class Driver:
    """One run's scheduling state: the sampler pool, what is in flight, and where each scene stands."""

    def __init__(self, out_uri: str, adapters: str, config: FillConfig, pipeline: PipelineConfig,
                 summary: RunSummary, show_progress: bool):
        self.out_uri, self.adapters, self.config, self.pipeline = out_uri, adapters, config, pipeline
        self.summary = summary
        self.plan = plan(ray.cluster_resources(), pipeline)
        self.idle = deque(self.new_sampler() for _ in range(self.plan.samplers))
        self.in_flight: dict[ray.ObjectRef, tuple[str, SceneState, object]] = {}
        self.active = 0
        self.stop_signal: int | None = None
        """Set by stop_on_signals: schedule nothing more, record nothing unfinished."""
        self.bars = {stage: tqdm(desc=f"{stage:>6}", position=position, unit="scene", disable=not show_progress)
                     for position, stage in enumerate(STAGES)}

    def new_sampler(self):
        retries = self.pipeline.retries
        return SamplerActor.options(num_gpus=self.plan.gpus_per_sampler, max_restarts=retries,
                                    max_task_retries=retries).remote(self.config.base_model, self.config.device)

    def run(self, scene_uris: list[str]) -> None:
        for bar in self.bars.values():
            bar.reset(total=len(scene_uris))
        waiting, to_sample = deque(SceneState(uri) for uri in scene_uris), deque()
        while waiting or to_sample or self.in_flight:
            if self.stop_signal is not None:
                self.stop(to_sample)
                break
            while waiting and self.active < self.plan.max_in_flight:
                state = waiting.popleft()
                self.active += 1
                ref = tune_task.options(num_gpus=self.plan.gpus_per_tune, max_retries=self.pipeline.retries).remote(
                    state.uri, self.adapters, self.config, self.pipeline.force)
                self.in_flight[ref] = ("tune", state, None)
            while to_sample and self.idle:
                state, actor = to_sample.popleft(), self.idle.popleft()
                ref = actor.sample.remote(state.uri, state.adapter, self.out_uri, self.config, self.pipeline.force)
                self.in_flight[ref] = ("sample", state, actor)
            ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=WAIT_S)
            if not ready:
                continue
            stage, state, actor = self.in_flight.pop(ready[0])
            error = None
            try:
                result = ray.get(ready[0])
            except Exception as exc:  # the stage raised, or its worker died past its retries
                error = describe(root_cause(exc))
                if isinstance(exc, ray.exceptions.RayActorError):
                    actor = self.new_sampler()
            if actor is not None:
                self.idle.append(actor)
            if error:
                self.record(state, error=error)
                continue
            self.bars[stage].update(1)
            if stage == "tune":
                state.adapter, state.seconds["tune"] = result
                to_sample.append(state)
            elif stage == "sample":
                rows, state.seconds["sample"] = result
                self.in_flight[rank_task.options(max_retries=self.pipeline.retries).remote(
                    state.uri, rows, self.config)] = ("rank", state, None)
            else:
                rows, state.seconds["rank"] = result
                self.record(state, samples=rows)
        for bar in self.bars.values():
            bar.close()

    def stop(self, to_sample: deque) -> None:
        """Cancel what is in flight; the scenes not recorded yet are left for the next run to resume."""
        self.summary.stopped_by = self.stop_signal
        self.summary.unfinished = [state.scene_id for _, state, _ in self.in_flight.values()]
        self.summary.unfinished += [state.scene_id for state in to_sample]
        for ref, (_, _, actor) in self.in_flight.items():
            if actor is None:
                ray.cancel(ref, force=True)
            else:
                ray.kill(actor)
        for actor in self.idle:
            ray.kill(actor)
        self.in_flight.clear()

    def record(self, state: SceneState, samples: list[dict] = (), error: str | None = None) -> None:
        """Write the scene's manifest parts now: a finished scene is never lost to a later failure. A scene
        that cannot be recorded (storage refuses the write) fails alone; the run goes on."""
        row = scene_row(state.scene_id, state.uri, self.config, error=error, adapter=state.adapter,
                        samples=list(samples), tune_s=state.seconds.get("tune"),
                        sample_s=state.seconds.get("sample"), rank_s=state.seconds.get("rank"))
        try:
            manifest.write_scene(self.out_uri, list(samples), row)
        except Exception as exc:  # e.g. a name the store refuses, a full disk, a lost connection
            error = f"{error + '; ' if error else ''}could not record its outcome: {describe(exc)}"
        self.active -= 1
        if error:
            self.summary.failed[state.scene_id] = error
            for bar in self.bars.values():
                bar.set_postfix(failed=len(self.summary.failed))
        else:
            self.summary.done.append(state.scene_id)
            self.summary.best[state.scene_id] = row["best_uri"]
        for stage, seconds in state.seconds.items():
            self.summary.stage_seconds[stage] += seconds
