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
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import ray

from pipeline.config import Backlog, PipelineConfig, plan
from pipeline.progress import Progress
from pipeline.stages import ModelPool, Tasks
from realfill.config import FillConfig
from realfill.data import manifest, storage
from realfill.data.layout import Output
from realfill.data.lease import LeaseLost, OutputLease
from realfill.data.records import SceneRow, run_key
from realfill.data.runlog import describe, log_failure
from realfill.data.scene import list_scenes, printable
from realfill.plan import Plan, plan_run
from realfill.selection.rank import NO_EVIDENCE_ANYWHERE, NO_EVIDENCE_TEXT, NO_KNOWN_REGION
from realfill.stages import STAGES, Ran, Stage, Stores, Unit, Variant

LOG = logging.getLogger(__name__)

WAIT_S = 0.5
"""How often the driver looks up from ray.wait, so that a stop signal is acted on promptly."""
PLAN_S = 2.0
"""How often the driver re-plans from the cluster's resources (GPU nodes join and leave)."""
LOST = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
        ray.exceptions.ObjectLostError, ray.exceptions.LocalRayletDiedError)
"""Errors that say a call's worker, actor or node was lost, not that the stage failed: the call runs again
(every stage is idempotent: what it writes is keyed by what made it, and written whole)."""
BEST_SHOWN = 50
"""Scenes whose best image (or lack of evidence) the summary names; the scenes table has all of them."""


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    best: dict[str, str | None] = field(default_factory=dict)
    """Best-ranked image of every complete scene with known pixels, done now or skipped (None: no evidence)."""
    composed: list[str] = field(default_factory=list)
    """Complete scenes whose mask is a blank canvas: their samples are variations, none selected."""
    stopped_by: int | None = None
    """The signal (SIGINT, SIGTERM) that stopped the run, if one did."""
    unfinished: list[str] = field(default_factory=list)
    """Scenes in progress when the run was stopped: not recorded, the same command resumes them."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds of each stage's calls, summed (a call shared by several variants counts once)."""
    gpu_seconds: float = 0.0
    """GPU-seconds that calls held while they ran."""
    gpu_capacity_s: float = 0.0
    """GPU-seconds the cluster had while the run went (GPUs present, integrated over time as nodes came and
    went): gpu_seconds over this is the run's GPU utilisation."""
    gpus: int = 0
    """The most GPUs the cluster had at once during the run."""
    peak_gpus: float = 0.0
    """The most GPUs that the run's calls held at once."""
    rerun: int = 0
    """Calls started again by the driver after their worker, actor or node was lost past Ray's retries."""
    errors: list[str] = field(default_factory=list)
    """What went wrong with the run as a whole rather than one scene: its lease lost (it stopped), its
    manifest not folded at its end (what it recorded stays in the journal)."""
    wall_s: float = 0.0

    def completed(self, label: str, row: SceneRow) -> None:
        """A scene that is complete, done now or skipped: its best image, or that it was composed."""
        if row.selection == NO_KNOWN_REGION:
            self.composed.append(label)
        else:
            self.best[label] = row.best_uri

    def text(self) -> str:
        lines = [f"done: {len(self.done)}, already complete (skipped): {len(self.skipped)}, "
                 f"failed: {len(self.failed)}; wall time {self.wall_s:.1f}s",
                 "time per stage (summed over calls): "
                 + ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in self.stage_seconds.items())]
        if self.gpus and self.gpu_capacity_s:
            lines.append(f"GPUs: peak {self.peak_gpus:g} in use at once, up to {self.gpus} present; utilisation "
                         f"{self.gpu_seconds / self.gpu_capacity_s:.0%} of the GPU-seconds present")
        if self.rerun:
            lines.append(f"calls run again after their worker or node was lost: {self.rerun} (see the run's log)")
        lines += [f"error: {error}" for error in self.errors]
        if self.stopped_by is not None or self.unfinished:
            cause = f"stopped by {signal.Signals(self.stopped_by).name}" if self.stopped_by is not None else "stopped"
            lines.append(f"{cause}: {len(self.unfinished)} scenes in progress were not recorded "
                         f"({', '.join(printable(label) for label in sorted(self.unfinished)) or 'none'}); the same "
                         f"command resumes them")
        lines += [f"failed {printable(label)}: {error}" for label, error in sorted(self.failed.items())]
        best = sorted((label, uri) for label, uri in self.best.items() if uri is not None)
        lines += [f"best {printable(label)}: {uri}" for label, uri in best[:BEST_SHOWN]]
        if len(best) > BEST_SHOWN:
            lines.append(f"best of {len(best) - BEST_SHOWN} more scenes: the scenes table's best_uri")
        lacking = sorted(label for label, uri in self.best.items() if uri is None)
        if lacking and len(lacking) == len(self.best):
            lines.append(NO_EVIDENCE_ANYWHERE)
        lines += [f"no evidence {printable(label)}: {NO_EVIDENCE_TEXT}" for label in lacking[:BEST_SHOWN]]
        if len(lacking) > BEST_SHOWN:
            lines.append(f"no evidence in {len(lacking) - BEST_SHOWN} more scenes: the scenes table's selection")
        if self.composed:
            lines.append(f"blank canvases (scene composition, their samples are variations, none selected): "
                         f"{', '.join(printable(label) for label in sorted(self.composed)[:BEST_SHOWN])}"
                         + (f" and {len(self.composed) - BEST_SHOWN} more" if len(self.composed) > BEST_SHOWN else ""))
        return "\n".join(lines)


CONNECT_S = 10.0
"""How long a cluster's address may take to answer a TCP connection before the run gives up on it."""


class RayUnavailable(RuntimeError):
    """Ray could not be started, or the cluster's address does not answer; the message says which."""


def reachable(address: str) -> None:
    """Raise RayUnavailable unless HOST:PORT (or ray://HOST:PORT) accepts a TCP connection within CONNECT_S:
    Ray itself would retry an address that does not answer for minutes without a word."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"--address {address}: expected HOST:PORT, ray://HOST:PORT, auto or local")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S).close()
    except OSError as exc:
        raise RayUnavailable(f"no Ray cluster answers at {address} ({exc.strerror or exc or 'timed out'}): is it "
                             f"running (`ray start --head`), and is the address its GCS address?") from None


def connect(address: str | None, verbose: bool = False) -> bool:
    """Join the cluster at address (or $RAY_ADDRESS; 'auto': the one running on this machine), else start a
    private local Ray that never joins another on the machine. True if we started or joined it (and so shut it
    down after). verbose: the workers' output is shown on the driver. A start that fails, or an address that
    does not answer, is one RayUnavailable line (the traceback goes to the run's log)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address not in ("local", "auto"):
        reachable(address)
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # the workers' lines in a log: no colour escapes
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=verbose)
    except Exception as exc:  # Ray's own errors at start are of many types, each with a long traceback
        what = "start a local Ray" if address == "local" else f"join the Ray cluster at {address}"
        LOG.error("could not %s", what, exc_info=exc)
        raise RayUnavailable(f"could not {what}: {describe(exc)} (the full error is in the run's log)") from None
    LOG.info("ray: %s (%s)", address, ray.cluster_resources())
    return True


HELD: list[bool] = []
"""Open hold_ray() blocks (one entry each): Ray that a run starts inside one stays up until the outermost ends."""


@contextmanager
def hold_ray():
    """Ray that a run inside the block starts stays up until the block ends, so that what the command does after
    the run (its report, a sweep's evaluation) runs on the same Ray; it is shut down then if it was started
    inside. A command whose run needs no Ray (everything already complete) starts none."""
    was_up = ray.is_initialized()
    HELD.append(True)
    try:
        yield
    finally:
        HELD.pop()
        if not was_up and not HELD and ray.is_initialized():
            ray.shutdown()


def release(started: bool) -> None:
    """The end of a run that started Ray (started): shut down, unless a hold_ray block keeps it."""
    if started and not HELD:
        ray.shutdown()


def root_cause(exc: BaseException) -> BaseException:
    """The stage's own exception inside Ray's wrapper, when there is one."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def peak_concurrency(intervals: list[tuple[float, float, float]]) -> float:
    """The most of (start, end, amount) intervals' amounts that overlap at any moment."""
    events = sorted([(start, amount) for start, _, amount in intervals] + [(end, -amount) for _, end, amount in
                                                                          intervals], key=lambda e: (e[0], e[1]))
    peak = level = 0.0
    for _, change in events:
        level += change
        peak = max(peak, level)
    return peak


def run_pipeline(scenes_root: str, out_uri: str, config: FillConfig, pipeline: PipelineConfig,
                 show_progress: bool = True, adapters: str | None = None, scene_uris: list[str] | None = None,
                 leased: bool = False) -> RunSummary:
    """Complete every scene under scenes_root (or just scene_uris) into out_uri with one config (`realfill run`;
    leased: see run_variants)."""
    out_uri = storage.normalize(out_uri)
    return run_variants(scenes_root, [Variant("", out_uri, config)], pipeline, show_progress,
                        adapters=storage.normalize(adapters) if adapters else Output(out_uri).adapters,
                        samples=Output(out_uri).samples, scene_uris=scene_uris, leased=leased)


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
        done = set()
        for variant in variants:
            finished = {} if pipeline.force else manifest.completed_scenes(variant.out_uri, run_key(variant.config))
            for uri in scene_uris:
                unit = Unit(uri, variant)
                if unit.scene_id in finished:
                    done.add((variant.name, uri))
                    summary.skipped.append(unit.label)
                    summary.completed(unit.label, finished[unit.scene_id])
        run_plan = plan_run(scene_uris, variants, done)
        try:
            if run_plan.groups:
                started_ray = connect(pipeline.address, pipeline.verbose)
                try:
                    driver = Driver(Stores(adapters, samples, pipeline.force), pipeline, summary, show_progress,
                                    run_plan)
                    with stop_on_signals(driver):
                        driver.run()
                finally:
                    release(started_ray)
        finally:
            for out_uri in outputs:
                fold_at_end(out_uri, summary)
    summary.wall_s = time.perf_counter() - started
    return summary


def fold_at_end(out_uri: str, summary: RunSummary) -> None:
    """The run's last fold of an output. One that fails (a full disk, the store down, the lease lost) is said
    in the summary, which is still printed: every record is in the journal, and the next run folds it."""
    try:
        manifest.compact(out_uri)
    except LeaseLost as exc:
        if str(exc) not in summary.errors:
            summary.errors.append(str(exc))
    except Exception as exc:
        summary.errors.append(f"the manifest of {out_uri} was not folded at the end: {log_failure('folding', exc)} "
                              f"(its records are kept in its journal; the next run, or `realfill report`, reads them)")


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


@dataclass
class Shared:
    """A finished call's result, kept for the units of its key that have not reached it yet."""

    ran: Ran
    left: int
    """Units of the plan it still feeds."""


class Driver:
    """One run's scheduling state: the plan, the calls in flight, and the units waiting for a stage."""

    def __init__(self, stores: Stores, pipeline: PipelineConfig, summary: RunSummary, show_progress: bool,
                 run_plan: Plan):
        self.stores, self.pipeline, self.summary, self.run_plan = stores, pipeline, summary, run_plan
        self.start_plan = self.plan = plan(ray.cluster_resources(), pipeline)
        self.planned_at = time.monotonic()
        summary.gpus = self.plan.gpus
        self.launchers = {stage: ModelPool(stage, self.plan, pipeline, self.backlog) if stage.holds_model
                          else Tasks(stage, self.plan, pipeline) for stage in STAGES}
        self.seconds: Counter[Stage] = Counter()
        """Seconds of each stage's calls, summed (a call shared by several units counts once)."""
        self.calls_done: Counter[Stage] = Counter()
        self.lost: Counter[tuple[Stage, str]] = Counter()
        """Times each call (stage, key) was lost with its worker and started again."""
        self.gpu_calls: list[tuple[float, float, float]] = []
        """(start, end, GPUs) of every GPU call that ended, from its worker's clock."""
        self.model_waiting: set[str] = set()
        """Keys of model-holding calls that units ready for them need (taken as the driver starts calls)."""
        self.position: dict[Unit, int] = {}
        """Each admitted unit's next stage (an index into STAGES)."""
        self.ready: deque[Unit] = deque()
        """Units waiting for their next stage's call to start."""
        self.calls: dict[ray.ObjectRef, Call] = {}
        self.in_flight: dict[tuple[Stage, str], Call] = {}
        self.shared: dict[tuple[Stage, str], Shared] = {}
        self.gone: Counter[tuple[Stage, str]] = Counter()
        """Units of a call not made yet that failed before they reached it."""
        self.waiting: deque[list[Unit]] = deque(run_plan.groups)
        """Scenes not started yet, each with its units (one per variant)."""
        self.stop_signal: int | None = None
        """Set by stop_on_signals: schedule nothing more, record nothing unfinished."""
        units = run_plan.units
        self.folding = {out: manifest.Folding(out) for out in dict.fromkeys(unit.variant.out_uri for unit in units)}
        self.progress = Progress("progress", {stage.name: total for stage, total in run_plan.totals().items()},
                                 show_progress)

    def mean_seconds(self, stage: Stage) -> float:
        """A stage's mean call so far (1 s until one has ended: the stages count as equal until measured)."""
        return self.seconds[stage] / self.calls_done[stage] if self.calls_done[stage] else 1.0

    def backlog(self) -> Backlog:
        """GPU work in flight or waiting, in expected seconds: the model-holding stage's calls in flight and those
        that units waiting for it will make, and the other GPU stages' calls in flight."""
        in_flight = Counter(call.stage for call in self.calls.values())
        model = sum((in_flight[stage] + len(self.model_waiting)) * self.mean_seconds(stage)
                    for stage in STAGES if stage.holds_model)
        other = sum(in_flight[stage] * self.mean_seconds(stage) for stage in STAGES
                    if not stage.holds_model and self.plan.gpus_per_call(stage))
        return Backlog(tune_s=other, sample_s=model)

    def replan(self, force: bool = False) -> None:
        """Follow the cluster: its GPUs now set the capacities (the GPUs per call stay the start's), and the
        GPU-seconds present are counted for the utilisation."""
        now = time.monotonic()
        if not force and now - self.planned_at < PLAN_S:
            return
        self.summary.gpu_capacity_s += self.plan.gpus * (now - self.planned_at)
        self.planned_at = now
        resources = ray.cluster_resources()
        updated = plan(resources, self.pipeline, start=self.start_plan)
        if (updated.gpus, updated.max_in_flight) != (self.plan.gpus, self.plan.max_in_flight):
            LOG.info("cluster: %s; scenes in flight up to %d, samplers up to %d", resources, updated.max_in_flight,
                     updated.max_samplers)
        self.plan = updated
        self.summary.gpus = max(self.summary.gpus, updated.gpus)
        for launcher in self.launchers.values():
            launcher.plan = updated

    def run(self) -> None:
        try:
            while self.waiting or self.position:
                if self.stop_signal is not None:
                    self.stop()
                    break
                self.replan()
                self.admit()
                self.start_calls()
                ready, _ = ray.wait(list(self.calls), num_returns=1, timeout=WAIT_S)
                if ready:
                    try:
                        self.finish(ready[0])
                    except LeaseLost as exc:  # another run holds the output now: this one writes nothing more
                        LOG.error("%s", exc)
                        self.summary.errors.append(str(exc))
                        self.stop()
                        break
        finally:
            self.replan(force=True)
            self.summary.peak_gpus = peak_concurrency(self.gpu_calls)
            self.summary.stage_seconds = {stage.name: self.seconds[stage] for stage in STAGES
                                          if self.calls_done[stage]}  # the stages this run's methods used
            for launcher in self.launchers.values():
                launcher.close()
            self.progress.close()

    def admit(self) -> None:
        """Start scenes (each with all its variants) while fewer than max_in_flight are in progress."""
        while self.waiting and len({unit.scene_uri for unit in self.position}) < self.plan.max_in_flight:
            for unit in self.waiting.popleft():
                self.advance(unit, 0)

    def advance(self, unit: Unit, start: int) -> None:
        """The unit on to the first stage from start that it goes through (rank always does), or recorded."""
        index = next((index for index in range(start, len(STAGES)) if STAGES[index] in unit.keys), None)
        if index is None:
            self.record(unit)
            return
        self.position[unit] = index
        self.ready.append(unit)

    def start_calls(self) -> None:
        """Every ready unit takes its key's result if it is already there, joins its call in flight, or starts
        one, or waits for capacity."""
        self.model_waiting = {unit.keys[STAGES[self.position[unit]]] for unit in self.ready
                              if STAGES[self.position[unit]].holds_model}
        blocked = deque()
        while self.ready:
            unit = self.ready.popleft()
            stage = STAGES[self.position[unit]]
            key = (stage, unit.keys[stage])
            if key in self.shared:
                self.take(unit, stage, self.shared[key].ran)
                self.release(key)
                continue
            if key in self.in_flight:
                self.in_flight[key].units.append(unit)
                continue
            ref = self.launchers[stage].submit(stage.job(unit, self.stores))
            if ref is None:
                blocked.append(unit)
                continue
            self.calls[ref] = self.in_flight[key] = Call(stage, key[1], [unit])
        self.ready = blocked

    def take(self, unit: Unit, stage: Stage, ran: Ran) -> None:
        stage.into(unit, ran)
        self.progress.advance(stage.name)
        self.advance(unit, self.position[unit] + 1)

    def release(self, key: tuple[Stage, str]) -> None:
        """One more unit of key took its result (or will never need it): forget it once none is left."""
        self.shared[key].left -= 1
        if self.shared[key].left <= 0:
            del self.shared[key]

    def finish(self, ref: ray.ObjectRef) -> None:
        call = self.calls.pop(ref)
        key = (call.stage, call.key)
        del self.in_flight[key]
        try:
            ran, error = ray.get(ref), None
        except Exception as exc:  # the stage raised, or its worker died past its retries
            ran, error = None, exc
        self.launchers[call.stage].finished(ref, error)
        if isinstance(error, LOST) and self.lost[key] < self.pipeline.retries:
            # past Ray's own retries (an actor stays unavailable while its node is being declared dead)
            self.lost[key] += 1
            self.summary.rerun += 1
            LOG.warning("%s of %s: its worker was lost (%s); running it again (%d of %d)", call.stage.name,
                        ", ".join(unit.label for unit in call.units), describe(error), self.lost[key],
                        self.pipeline.retries)
            self.ready.extend(call.units)
            return
        if error is not None:
            line = log_failure(f"{call.stage.name} of {', '.join(unit.label for unit in call.units)}", error,
                               root_cause(error))
            for unit in call.units:
                self.fail(unit, line)
            return
        self.account(call.stage, ran)
        left = self.run_plan.feeds[key] - len(call.units) - self.gone.pop(key, 0)
        if left > 0:
            self.shared[key] = Shared(ran, left)
        for unit in call.units:
            self.take(unit, call.stage, ran)

    def account(self, stage: Stage, ran: Ran) -> None:
        self.seconds[stage] += ran.seconds
        self.calls_done[stage] += 1
        gpus = self.plan.gpus_per_call(stage)
        self.summary.gpu_seconds += ran.seconds * gpus
        if gpus:
            self.gpu_calls.append((ran.started, ran.started + ran.seconds, gpus))

    def fail(self, unit: Unit, line: str) -> None:
        """A unit failed at its stage: it counts as passed for the stages it will not reach, and the calls
        it would have joined later feed one unit fewer."""
        later = [stage for stage in STAGES[self.position[unit]:] if stage in unit.keys]
        self.progress.fail([stage.name for stage in later])
        for stage in later[1:]:
            key = (stage, unit.keys[stage])
            if key in self.shared:
                self.release(key)
            else:
                self.gone[key] += 1
        self.record(unit, error=line)

    def stop(self) -> None:
        """Cancel what is in flight; the units not recorded yet are left for the next run to resume."""
        self.summary.stopped_by = self.stop_signal
        self.summary.unfinished = sorted(unit.label for unit in self.position)
        for ref, call in self.calls.items():
            self.launchers[call.stage].cancel(ref)
        self.calls.clear()

    def record(self, unit: Unit, error: str | None = None) -> None:
        """Write the unit's manifest parts now: a finished scene is never lost to a later failure. A unit
        that cannot be recorded (storage refuses the write) fails alone; the run goes on."""
        row = unit.scene_row(error)
        recorded = True
        try:
            manifest.write_scene(unit.variant.out_uri, [] if error else unit.rows, row)
        except LeaseLost:
            raise  # not recorded: the unit stays in progress, and the run stops
        except Exception as exc:  # e.g. a name the store refuses, a full disk, a lost connection
            recorded = False
            recording = log_failure(f"recording {unit.label}", exc)
            if not error:
                self.progress.failed += 1
            error = f"{error + '; ' if error else ''}could not record its outcome: {recording}"
        del self.position[unit]
        if error:
            self.summary.failed[unit.label] = error
        else:
            self.summary.done.append(unit.label)
            self.summary.completed(unit.label, row)
        if recorded:  # the fold may raise LeaseLost: the unit is counted by then
            try:
                self.folding[unit.variant.out_uri].recorded()
            except LeaseLost:
                raise
            except Exception as exc:  # the record is in the journal: the next fold takes it in
                log_failure(f"folding the manifest of {unit.variant.out_uri}", exc)
