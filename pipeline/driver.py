"""The `realfill run` driver: units of work (a scene under a variant) through tune -> sample -> rank,
pipelined with ray.wait.

A unit goes to its next stage as soon as the last one ends, and units that need the same call (variants
of a sweep with the same training, or the same images) share it: equal tune configs train once, samplers
serve any variant, ranking is per variant. At most max_in_flight scenes are in progress at once. Only URIs
and small rows pass through the driver. Each finished unit is recorded in its variant's manifest at once,
so an interrupted run loses nothing that was done, and the same command resumes it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter, deque
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import ray
from tqdm.auto import tqdm

from pipeline.config import Backlog, PipelineConfig, Variant, plan
from pipeline.stages import RankStage, SampleStage, Stage, StitchStage, TuneStage, Unit
from realfill.config import FillConfig
from realfill.data import manifest, records, storage
from realfill.data.lease import OutputLease
from realfill.data.records import run_key
from realfill.data.scene import list_scenes
from realfill.fill import default_adapters, default_samples, describe, scene_row
from realfill.selection.rank import NO_EVIDENCE_ANYWHERE, NO_EVIDENCE_TEXT

WAIT_S = 0.5
"""How often the driver looks up from ray.wait, so that a stop signal is acted on promptly."""
BEST_SHOWN = 50
"""Scenes whose best image (or lack of evidence) the summary names; the scenes table has all of them."""


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
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds of each stage's calls, summed (a call shared by several variants counts once)."""
    gpu_seconds: float = 0.0
    """GPU-seconds that calls held while they ran: over wall time and GPUs, the cluster's utilisation."""
    gpus: int = 0
    wall_s: float = 0.0

    def text(self) -> str:
        lines = [f"done: {len(self.done)}, already complete (skipped): {len(self.skipped)}, "
                 f"failed: {len(self.failed)}; wall time {self.wall_s:.1f}s",
                 "time per stage (summed over calls): "
                 + ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in self.stage_seconds.items())]
        if self.gpus and self.wall_s:
            lines.append(f"GPU utilisation: {self.gpu_seconds / (self.wall_s * self.gpus):.0%} of {self.gpus} GPUs")
        if self.stopped_by is not None:
            lines.append(f"stopped by {signal.Signals(self.stopped_by).name}: {len(self.unfinished)} scenes in "
                         f"progress were not recorded ({', '.join(sorted(self.unfinished)) or 'none'}); the same "
                         f"command resumes them")
        lines += [f"failed {label}: {error}" for label, error in sorted(self.failed.items())]
        best = sorted((label, uri) for label, uri in self.best.items() if uri is not None)
        lines += [f"best {label}: {uri}" for label, uri in best[:BEST_SHOWN]]
        if len(best) > BEST_SHOWN:
            lines.append(f"best of {len(best) - BEST_SHOWN} more scenes: the scenes table's best_uri")
        lacking = sorted(label for label, uri in self.best.items() if uri is None)
        if lacking and len(lacking) == len(self.best):
            lines.append(NO_EVIDENCE_ANYWHERE)
        lines += [f"no evidence {label}: {NO_EVIDENCE_TEXT}" for label in lacking[:BEST_SHOWN]]
        if len(lacking) > BEST_SHOWN:
            lines.append(f"no evidence in {len(lacking) - BEST_SHOWN} more scenes: the scenes table's selection")
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
    """Complete every scene under scenes_root into out_uri with one config (`realfill run`)."""
    out_uri = storage.normalize(out_uri)
    return run_variants(scenes_root, [Variant("", out_uri, config)], pipeline, show_progress,
                        adapters=storage.normalize(adapters) if adapters else default_adapters(out_uri),
                        samples=default_samples(out_uri))


def run_variants(scenes_root: str, variants: list[Variant], pipeline: PipelineConfig, show_progress: bool,
                 adapters: str, samples: str, scene_uris: list[str] | None = None,
                 leased: bool = False) -> RunSummary:
    """Complete every scene under scenes_root (or just scene_uris) under every variant, in one pipeline:
    adapters and images are kept in the given stores and shared wherever the variants' settings agree. A unit
    already complete with its variant's config is skipped unless pipeline.force. Each variant's output is leased
    for the run (a second run on one stops at once with OutputBusy; leased: the caller holds the leases) and its
    manifest compacted at the end."""
    started = time.perf_counter()
    scenes_root = storage.normalize(scenes_root)
    devices = {variant.config.device for variant in variants}
    if len(devices) > 1:
        raise ValueError(f"every variant must use one device (samplers serve them all); got {sorted(devices)}")
    summary = RunSummary()
    scene_uris = scene_uris if scene_uris is not None else list_scenes(scenes_root)
    outputs = list(dict.fromkeys(variant.out_uri for variant in variants))
    with ExitStack() as leases:
        for out_uri in [] if leased else outputs:
            leases.enter_context(OutputLease(out_uri))
        todo: list[list[Unit]] = [[] for _ in scene_uris]
        for variant in variants:
            finished = {} if pipeline.force else manifest.completed_scenes(variant.out_uri, run_key(variant.config))
            for group, uri in zip(todo, scene_uris):
                unit = Unit(uri, variant)
                if unit.scene_id in finished:
                    summary.skipped.append(unit.label)
                    summary.best[unit.label] = finished[unit.scene_id]
                else:
                    group.append(unit)
        todo = [group for group in todo if group]
        try:
            if todo:
                started_ray = connect(pipeline.address)
                try:
                    driver = Driver(adapters, samples, pipeline, summary, show_progress, todo)
                    with stop_on_signals(driver):
                        driver.run()
                finally:
                    if started_ray:
                        ray.shutdown()
        finally:
            for out_uri in outputs:
                manifest.compact(out_uri)
    summary.wall_s = time.perf_counter() - started
    return summary


def making_seconds(unit: Unit) -> float | None:
    """A unit's seconds making images: stitching and sampling (the scenes table's sample_s)."""
    parts = [unit.seconds[stage] for stage in ("stitch", "sample") if stage in unit.seconds]
    return sum(parts) if parts else None


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


@dataclass(eq=False)
class Call:
    """A stage call in flight, and the units waiting for its result."""

    stage: Stage
    key: str
    units: list[Unit]


class Driver:
    """One run's scheduling state: the stages, the calls in flight, and the units waiting for a stage."""

    def __init__(self, adapters: str, samples: str, pipeline: PipelineConfig, summary: RunSummary,
                 show_progress: bool, groups: list[list[Unit]]):
        self.pipeline, self.summary = pipeline, summary
        self.plan = plan(ray.cluster_resources(), pipeline)
        summary.gpus = self.plan.gpus
        units = [unit for group in groups for unit in group]
        seeds_needed: dict[str, int] = {}
        for unit in units:
            key = records.sampling_key(unit.scene_uri, unit.config)
            seeds_needed[key] = max(seeds_needed.get(key, 0), unit.config.sample.num_samples)
        self.stages: list[Stage] = [
            StitchStage(self.plan, pipeline, samples),
            TuneStage(self.plan, pipeline, adapters),
            SampleStage(self.plan, pipeline, samples, seeds_needed, backlog=self.backlog),
            RankStage(self.plan, pipeline),
        ]
        self.summary.stage_seconds = {stage.name: 0.0 for stage in self.stages}
        self.calls_done: Counter[str] = Counter()
        self.sample_waiting: set[str] = set()
        """Sample keys that units ready for sampling need (taken as the driver starts calls)."""
        self.position: dict[Unit, int] = {}
        """Each admitted unit's next stage."""
        self.ready: deque[Unit] = deque()
        """Units waiting for their next stage's call to start."""
        self.calls: dict[ray.ObjectRef, Call] = {}
        self.sharing: dict[tuple[str, str], Call] = {}
        self.waiting: deque[list[Unit]] = deque(groups)
        """Scenes not started yet, each with its units (one per variant)."""
        self.stop_signal: int | None = None
        """Set by stop_on_signals: schedule nothing more, record nothing unfinished."""
        self.bars = {stage.name: tqdm(desc=f"{stage.name:>6}", position=position, unit="call",
                                      disable=not show_progress) for position, stage in enumerate(self.stages)}

    def mean_seconds(self, stage: str) -> float:
        """A stage's mean call so far (1 s until one has ended: the stages count as equal until measured)."""
        return self.summary.stage_seconds[stage] / self.calls_done[stage] if self.calls_done[stage] else 1.0

    def backlog(self) -> Backlog:
        """GPU work in flight or waiting, in expected seconds: tune calls in flight, sample calls in flight
        and those that units waiting for a sampler will make."""
        in_flight = Counter(call.stage.name for call in self.calls.values())
        return Backlog(tune_s=in_flight["tune"] * self.mean_seconds("tune"),
                       sample_s=(in_flight["sample"] + len(self.sample_waiting)) * self.mean_seconds("sample"))

    def run(self) -> None:
        try:
            while self.waiting or self.position:
                if self.stop_signal is not None:
                    self.stop()
                    break
                self.admit()
                self.start_calls()
                ready, _ = ray.wait(list(self.calls), num_returns=1, timeout=WAIT_S)
                if ready:
                    self.finish(ready[0])
        finally:
            self.summary.stage_seconds = {name: seconds for name, seconds in self.summary.stage_seconds.items()
                                          if self.calls_done[name]}  # the stages this run's methods used
            for stage in self.stages:
                stage.close()
            for bar in self.bars.values():
                bar.close()

    def admit(self) -> None:
        """Start scenes (each with all its variants) while fewer than max_in_flight are in progress."""
        while self.waiting and len({unit.scene_uri for unit in self.position}) < self.plan.max_in_flight:
            for unit in self.waiting.popleft():
                self.position[unit] = self.next_stage(unit, 0)
                self.ready.append(unit)

    def next_stage(self, unit: Unit, start: int) -> int:
        """The first stage from start that the unit's method goes through (rank always does)."""
        return next(index for index in range(start, len(self.stages)) if self.stages[index].needed(unit))

    def start_calls(self) -> None:
        """Every ready unit joins a call in flight with its key, or starts one, or waits for capacity."""
        self.sample_waiting = {self.stages[self.position[unit]].key(unit) for unit in self.ready
                               if self.stages[self.position[unit]].name == "sample"}
        blocked = deque()
        while self.ready:
            unit = self.ready.popleft()
            stage = self.stages[self.position[unit]]
            key = (stage.name, stage.key(unit))
            if key in self.sharing:
                self.sharing[key].units.append(unit)
                continue
            ref = stage.submit(unit)
            if ref is None:
                blocked.append(unit)
                continue
            self.calls[ref] = self.sharing[key] = Call(stage, key[1], [unit])
            self.bars[stage.name].total = (self.bars[stage.name].total or 0) + 1
        self.ready = blocked

    def finish(self, ref: ray.ObjectRef) -> None:
        call = self.calls.pop(ref)
        del self.sharing[(call.stage.name, call.key)]
        try:
            result, error = ray.get(ref), None
        except Exception as exc:  # the stage raised, or its worker died past its retries
            result, error = None, exc
        call.stage.finished(ref, error)
        self.bars[call.stage.name].update(1)
        if error is not None:
            for unit in call.units:
                self.record(unit, error=describe(root_cause(error)))
            return
        self.summary.stage_seconds[call.stage.name] += result.seconds
        self.calls_done[call.stage.name] += 1
        self.summary.gpu_seconds += result.seconds * call.stage.gpus
        for unit in call.units:
            call.stage.apply(unit, result)
            if call.stage is self.stages[-1]:
                self.record(unit)
            else:
                self.position[unit] = self.next_stage(unit, self.position[unit] + 1)
                self.ready.append(unit)

    def stop(self) -> None:
        """Cancel what is in flight; the units not recorded yet are left for the next run to resume."""
        self.summary.stopped_by = self.stop_signal
        self.summary.unfinished = sorted(unit.label for unit in self.position)
        for ref, call in self.calls.items():
            call.stage.cancel(ref)
        self.calls.clear()

    def record(self, unit: Unit, error: str | None = None) -> None:
        """Write the unit's manifest parts now: a finished scene is never lost to a later failure. A unit
        that cannot be recorded (storage refuses the write) fails alone; the run goes on."""
        samples = [] if error else unit.rows
        row = scene_row(unit.scene_id, unit.scene_uri, unit.config, error=error,
                        adapter=unit.tuned.adapter_uri if unit.tuned else None, samples=samples,
                        tune_s=unit.seconds.get("tune"), sample_s=making_seconds(unit),
                        rank_s=unit.seconds.get("rank"))
        try:
            manifest.write_scene(unit.variant.out_uri, samples, row)
        except Exception as exc:  # e.g. a name the store refuses, a full disk, a lost connection
            error = f"{error + '; ' if error else ''}could not record its outcome: {describe(exc)}"
        del self.position[unit]
        if error:
            self.summary.failed[unit.label] = error
            for bar in self.bars.values():
                bar.set_postfix(failed=len(self.summary.failed))
        else:
            self.summary.done.append(unit.label)
            self.summary.best[unit.label] = row.best_uri
