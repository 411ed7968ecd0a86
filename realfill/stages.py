"""The stages of a scene as data: stitch -> tune -> sample -> rank, each one Ray-free class.

A stage says which methods go through it (`needed`), which units of a run may share one of its calls
(`key`, known before any scene is read), whether it holds a model and whether its calls take GPUs, which
scene-row timing its seconds count towards, how a call is made from a unit (`job`) and run (`run`), and how
the result goes back into the unit (`apply`). `realfill fill` runs the stages in process; the Ray pipeline
runs the same `run` in tasks and actors. Adding a stage is one class and its place in STAGES.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

from tqdm.auto import tqdm

from realfill.config import FillConfig
from realfill.data import records, storage
from realfill.data.layout import STITCH_FILE, keyed, scene_id_of, seed_file
from realfill.data.records import (
    AdapterInfo,
    SampleRow,
    SceneRow,
    Selection,
    adapter_key,
    digest,
    image_key,
    run_key,
    stitch_key,
    support_uri,
)
from realfill.data.runlog import InputError
from realfill.data.scene import Scene, load_scene, read_image
from realfill.method.adapter import ADAPTER_INFO, AdapterError, verified_adapter
from realfill.method.models import resolve_model
from realfill.method.sample import Condition, SampleFailure, Sampler, composite_sample
from realfill.method.stitch import exemplar, stitch
from realfill.method.tune import ExtraView, tune
from realfill.selection.rank import GEOMETRY, NO_KNOWN_REGION, Score, rank_scores, score_images, selection
from realfill.selection.support import map_image, support_fraction, support_map

LOG = logging.getLogger(__name__)


class SampleError(InputError, RuntimeError):
    """No sample of a scene could be made; the message says why."""


# --- what a run is made of ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One config of a run, and the output its manifests go to: a plain run has one, a sweep several
    (whose adapters and images are shared wherever their settings agree)."""

    name: str
    """How the summary names its scenes ('' for a plain run's only variant)."""
    out_uri: str
    """Where its manifests (and its lease) are."""
    config: FillConfig


@dataclass(frozen=True)
class Stores:
    """Where a run keeps what its stages make, shared by all its variants."""

    adapters: str
    samples: str
    force: bool = False
    """Make everything again, even what the stores hold already."""


@dataclass
class Timings:
    """A unit's seconds, as the scenes table has them (None: the unit's method has no such step)."""

    tune_s: float | None = None
    sample_s: float | None = None
    """Making images: sampling, and stitching."""
    rank_s: float | None = None

    def add(self, timing: str, seconds: float) -> None:
        setattr(self, timing, (getattr(self, timing) or 0.0) + seconds)


@dataclass(frozen=True)
class Tuned:
    """A unit's adapter, by URI and key."""

    adapter_uri: str
    adapter_key: str


@dataclass(eq=False)
class Unit:
    """One scene under one variant: what moves through the stages and is recorded at the end."""

    scene_uri: str
    variant: Variant
    stitched: str | None = None
    tuned: Tuned | None = None
    rows: list[SampleRow] = field(default_factory=list)
    selection: Selection | None = None
    """What the ranking of its samples rests on, once ranked."""
    timings: Timings = field(default_factory=Timings)
    keys: dict[Stage, str] = field(default_factory=dict)
    """Each stage's sharing key for this unit (set by the plan)."""
    seeds: dict[Stage, int] = field(default_factory=dict)
    """Seeds each stage's call makes for this unit and those sharing it (set by the plan)."""

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

    def scene_row(self, error: str | None = None) -> SceneRow:
        return scene_row(self.scene_id, self.scene_uri, self.config, error=error,
                         ranked=None if error or self.selection is None else Ranked(self.rows, self.selection),
                         adapter=self.tuned.adapter_uri if self.tuned else None, timings=self.timings)


@dataclass(frozen=True)
class Job:
    """The inputs of one stage call: small and picklable (images travel as URIs)."""

    scene_uri: str
    config: FillConfig
    stores: Stores
    stitched: str | None = None
    tuned: Tuned | None = None
    rows: tuple[SampleRow, ...] = ()


@dataclass
class Runtime:
    """What the process running a call provides besides the job."""

    show_progress: bool = False
    after_step: Callable[[int, float], None] | None = None
    """Called after each tuning step with (step, loss)."""
    sampler: Sampler | None = None
    """The loaded model, for the stage that holds one."""
    cache: dict[str, Scene] = field(default_factory=dict)
    """Scenes loaded in this process, by URI (one process running every stage of a scene reads it once)."""

    def scene(self, job: Job) -> Scene:
        if job.scene_uri not in self.cache:
            self.cache.clear()
            self.cache[job.scene_uri] = load_scene(job.scene_uri, job.config.max_megapixels)
        return self.cache[job.scene_uri]


@dataclass(frozen=True)
class Ran:
    """A call's result and how long it ran (on its worker's clock)."""

    result: object
    seconds: float
    started: float
    """When it started (epoch seconds): for the run's GPU concurrency."""


def run_timed(stage: Stage, job: Job, runtime: Runtime) -> Ran:
    started, wall = time.perf_counter(), time.time()
    result = stage.run(job, runtime)
    return Ran(result, time.perf_counter() - started, wall)


# --- the stages ---------------------------------------------------------------------------------------


class Stage:
    """One step every unit of a run goes through, in STAGES order, when its method needs it."""

    name: ClassVar[str]
    timing: ClassVar[Literal["tune_s", "sample_s", "rank_s"]]
    """The scene-row timing its seconds count towards."""
    holds_model: ClassVar[bool] = False
    """Whether a process keeps a model loaded across calls (the pipeline runs it in actors)."""
    gpus_setting: ClassVar[str | None] = None
    """The run setting that says how many GPUs each of its calls takes (None: CPU only)."""
    stepped: ClassVar[bool] = False
    """Whether its calls report each step (a long call that a lost worker can interrupt midway)."""

    def needed(self, config: FillConfig) -> bool:
        return True

    def key(self, unit: Unit) -> str:
        """Units with equal keys share one call."""
        raise NotImplementedError

    def job(self, unit: Unit, stores: Stores) -> Job:
        return Job(unit.scene_uri, unit.config, stores, unit.stitched, unit.tuned, tuple(unit.rows))

    def run(self, job: Job, runtime: Runtime):
        raise NotImplementedError

    def apply(self, unit: Unit, result) -> None:
        raise NotImplementedError

    def into(self, unit: Unit, ran: Ran) -> None:
        """A call's result and its seconds into a unit."""
        self.apply(unit, ran.result)
        unit.timings.add(self.timing, ran.seconds)

    def __repr__(self) -> str:
        return self.name


class StitchStage(Stage):
    """The stitch method's image, or the stitch result that init stitch starts sampling from (CPU)."""

    name, timing = "stitch", "sample_s"

    def needed(self, config: FillConfig) -> bool:
        return config.stitches

    def key(self, unit: Unit) -> str:
        return records.stitching_key(unit.scene_uri, unit.config)

    def run(self, job: Job, runtime: Runtime) -> str:
        return stitch_scene(runtime.scene(job), job.stores.samples, job.config, job.stores.force)

    def apply(self, unit: Unit, result: str) -> None:
        unit.stitched = result
        if not unit.config.samples:
            unit.rows = stitch_rows(unit.scene_id, result, unit.config)


class TuneStage(Stage):
    """realfill's LoRA fine-tuning on the scene."""

    name, timing, gpus_setting, stepped = "tune", "tune_s", "gpus_per_tune", True

    def needed(self, config: FillConfig) -> bool:
        return config.tunes

    def key(self, unit: Unit) -> str:
        return records.training_key(unit.scene_uri, unit.config)

    def run(self, job: Job, runtime: Runtime) -> Tuned:
        uri, info = tune_scene(runtime.scene(job), job.stores.adapters, job.config, runtime.show_progress,
                               after_step=runtime.after_step, force=job.stores.force, stitched=job.stitched)
        return Tuned(uri, info.key)

    def apply(self, unit: Unit, result: Tuned) -> None:
        unit.tuned = result


class SampleStage(Stage):
    """Seeds from the diffusion model: one call makes the images of every unit sharing them (the most seeds
    any of them asks for), with the model its process holds."""

    name, timing, holds_model, gpus_setting = "sample", "sample_s", True, "gpus_per_sampler"

    def needed(self, config: FillConfig) -> bool:
        return config.samples

    def key(self, unit: Unit) -> str:
        return records.sampling_key(unit.scene_uri, unit.config)

    def job(self, unit: Unit, stores: Stores) -> Job:
        seeds = unit.seeds.get(self, unit.config.sample.num_samples)
        config = replace(unit.config, sample=replace(unit.config.sample, num_samples=seeds))
        return Job(unit.scene_uri, config, stores, unit.stitched, unit.tuned)

    @staticmethod
    def model(config: FillConfig) -> tuple[str, bool, str]:
        """Which loaded model a config samples with (`tiny` names both tiny models: the kind tells them apart)."""
        return config.model, config.by_example, config.sample.precision

    @staticmethod
    def load(config: FillConfig) -> Sampler:
        """The model a config samples with: the base inpainting model, or the Paint-by-Example model."""
        return Sampler(resolve_model(config.model, example=config.by_example), config.device, config.sample.precision)

    def run(self, job: Job, runtime: Runtime) -> list[SampleRow]:
        scene = runtime.scene(job)
        folder = samples_folder(job.stores.samples, scene, job.tuned.adapter_key if job.tuned else None, job.config)
        return sample_scene(runtime.sampler, scene,
                            job.tuned.adapter_uri if job.tuned else None, folder, job.config,
                            runtime.show_progress, force=job.stores.force, stitched=job.stitched)

    def apply(self, unit: Unit, result: list[SampleRow]) -> None:
        wanted = set(records.seeds(unit.config))
        unit.rows = [row for row in result if row.seed in wanted]


class RankStage(Stage):
    """Ranking the samples by correspondence (CPU unless a learned matcher is given GPUs): it is what differs
    between variants that share images, so it is never shared."""

    name, timing, gpus_setting = "rank", "rank_s", "gpus_per_rank"

    def key(self, unit: Unit) -> str:
        return digest({"scene_uri": unit.scene_uri, "variant": unit.variant.name, "out": unit.variant.out_uri})

    def run(self, job: Job, runtime: Runtime) -> Ranked:
        return rank_samples(runtime.scene(job), list(job.rows), job.config)

    def apply(self, unit: Unit, result: Ranked) -> None:
        unit.rows, unit.selection = result.rows, result.selection


STITCH, TUNE, SAMPLE, RANK = StitchStage(), TuneStage(), SampleStage(), RankStage()
STAGES: tuple[Stage, ...] = (STITCH, TUNE, SAMPLE, RANK)
"""Every stage, in the order a unit goes through them."""


# --- what the stages do -------------------------------------------------------------------------------


def stitch_scene(scene: Scene, samples: str, config: FillConfig, force: bool = False) -> str:
    """Make (or reuse) the scene's stitch result in the samples store, stored by the scene's content and what
    stitching takes; returns its URI."""
    uri = storage.join(keyed(samples, scene.scene_id, stitch_key(scene.fingerprint, config)), STITCH_FILE)
    if force or not storage.exists(uri):
        storage.write_png(uri, stitch(scene, config.stitch, config.geometry).image)
    return uri


def stitch_rows(scene_id: str, uri: str, config: FillConfig) -> list[SampleRow]:
    """The stitch method's samples: its one result, under the config's first seed (its size is the
    target's, recorded when it is ranked)."""
    return [SampleRow(scene_id=scene_id, seed=seed, uri=uri, status="ok", run_key=run_key(config))
            for seed in records.seeds(config)]


def extra_view(scene: Scene, stitched: str | None, config: FillConfig) -> ExtraView | None:
    """The stitch result as a training view, when the tune config gives it a weight."""
    key = records.training_view(config)
    return None if key is None else ExtraView(read_image(stitched), config.tune.stitch_view_weight, key)


def tune_scene(scene: Scene, adapters: str, config: FillConfig, show_progress: bool = True,
               after_step=None, force: bool = False, stitched: str | None = None) -> tuple[str, AdapterInfo]:
    """Train (or reuse, or resume) the scene's adapter in the adapters store; returns its URI and info.
    A stored adapter is reused only when its weights match the digest it was saved with; one that does not
    (truncated, replaced, pickled, older format) is retrained. force discards a stored adapter and its
    checkpoint and trains from scratch. stitched is the scene's stitch result (an extra view, if asked for)."""
    key = adapter_key(scene.fingerprint, config.tune, config.seed, config.base_model, records.training_view(config))
    uri = keyed(adapters, scene.scene_id, key)  # what it is made of names it: a run changing only sampling reuses it
    if force:
        storage.remove(uri)
    elif storage.exists(storage.join(uri, ADAPTER_INFO)):
        try:
            return uri, verified_adapter(uri)[0]
        except AdapterError as exc:
            warnings.warn(f"retraining: {exc}", stacklevel=2)
            storage.remove(uri)
    info = tune(scene, resolve_model(config.base_model), config.tune, uri, key=key, seed=config.seed,
                device=config.device, base_model=config.base_model, show_progress=show_progress,
                after_step=after_step, view=extra_view(scene, stitched, config))
    return uri, info


def samples_folder(samples: str, scene: Scene, adapter_key: str | None, config: FillConfig) -> str:
    """Images are stored by what made their pixels (the adapter's key, or the scene's content for untuned
    methods, and the generation settings), one file per seed, so a run that changes only ranking, the number
    of seeds or the batch, or one resumed after a crash mid-scene, or another variant of a sweep, reuses the
    images already made."""
    source = adapter_key if config.tunes else scene.fingerprint
    return keyed(samples, scene.scene_id, image_key(source, config))


def condition(sampler: Sampler, scene: Scene, adapter: str | None, config: FillConfig,
              stitched: str | None) -> Condition:
    """Make the sampler ready for the config's method and say what it conditions on: realfill's adapter
    and its training prompt, sd-inpaint's prompt on the bare model, or Paint-by-Example's exemplar; and
    with init stitch, the stitch result to start from."""
    if sampler.by_example != config.by_example:
        raise SampleError(f"method {config.method} cannot sample with this sampler's model "
                          f"({'a Paint-by-Example' if sampler.by_example else 'an inpainting'} pipeline)")
    init = {} if config.init == "noise" else {"init": read_image(stitched), "strength": config.init_strength}
    if config.by_example:
        return Condition(exemplar=exemplar(scene, config.stitch, config.geometry), **init)
    sampler.use_adapter(adapter if config.tunes else None)
    prompt = sampler.adapter_info.config.prompt if config.tunes else config.prompt
    return Condition(prompt=prompt, **init)


def sample_scene(sampler: Sampler, scene: Scene, adapter: str | None, folder: str, config: FillConfig,
                 show_progress: bool = True, force: bool = False, stitched: str | None = None) -> list[SampleRow]:
    """Generate, composite and store in folder every seed of a scene not already stored there (all of them
    with force); returns one row per seed: ok, or failed with the reason (a seed whose image is not finite).
    adapter is realfill's (None for untuned methods); stitched the stitch result, for init stitch."""
    seeds = records.seeds(config)
    uris = {seed: storage.join(folder, seed_file(seed)) for seed in seeds}
    missing = [seed for seed in seeds if force or not storage.exists(uris[seed])]
    failures: dict[int, str] = {}
    if missing:
        given = condition(sampler, scene, adapter, config, stitched)
        for seed, generated in tqdm(sampler.generate(scene, config.sample, missing, given), total=len(missing),
                                    desc=f"sample {scene.scene_id}", disable=not show_progress, leave=False):
            if isinstance(generated, SampleFailure):
                failures[seed] = f"seed {seed}: {generated.reason}"
            else:
                storage.write_png(uris[seed], composite_sample(scene, generated, config.sample))
    height, width = scene.target.shape[:2]
    return [SampleRow(scene_id=scene.scene_id, seed=seed, uri=uris[seed], status="failed" if seed in failures
                      else "ok", error=failures.get(seed), run_key=run_key(config), width=width, height=height)
            for seed in seeds]


@dataclass(frozen=True)
class Ranked:
    """A unit's samples ranked, and what the ranking rests on."""

    rows: list[SampleRow]
    selection: Selection

    @property
    def best(self) -> SampleRow | None:
        """The best-ranked selected sample (rank 1 is always selected when anything is)."""
        selected = [row for row in self.rows if row.selected]
        return min(selected, key=lambda row: (row.rank, row.seed)) if selected else None

    @property
    def best_uri(self) -> str | None:
        return self.best.uri if self.best else None


def write_support(scene: Scene, row: SampleRow, score: Score, config: FillConfig) -> dict[str, float | str]:
    """A ranked sample's support map, written beside it; its samples row's support columns."""
    supported = support_map(scene.mask, score)
    uri = support_uri(row.uri, config)
    storage.write_png(uri, map_image(supported))
    return {"support": support_fraction(scene.mask, supported), "support_uri": uri}


def rank_samples(scene: Scene, rows: list[SampleRow], config: FillConfig) -> Ranked:
    """Score every good sample against the references (features of the scene computed once), rank them,
    and mark the top keep as selected; the rows are this config's (a sweep's variants share images).
    Failed samples keep no score and are never selected. Raises SampleError when no sample is good."""
    good = [row for row in rows if row.ok]
    if not good:
        raise SampleError(f"every sample failed; {rows[0].error if rows else 'no samples'}")
    height, width = scene.target.shape[:2]
    key = run_key(config)
    if scene.blank:  # nothing to check a sample against: variations, none scored, ranked or selected
        return Ranked([replace(row, selected=False, width=width, height=height, run_key=key) for row in rows],
                      NO_KNOWN_REGION)
    scores = score_images(scene, [row.uri for row in good], config.geometry, config.rank)
    basis = selection(scene, scores)
    ranks = rank_scores(scores)
    order = sorted(range(len(good)), key=lambda i: (ranks[i], good[i].seed))
    kept = set(order[: config.rank.keep_count(len(good))]) if basis == GEOMETRY else set()
    ranked = {row.seed: replace(row, matches=score.matches, score=score.score, rank=rank, selected=i in kept,
                                width=width, height=height, **write_support(scene, row, score, config))
              for i, (row, score, rank) in enumerate(zip(good, scores, ranks))}
    return Ranked([replace(ranked.get(row.seed, replace(row, selected=False)), run_key=key) for row in rows], basis)


def scene_row(scene_id: str, scene_uri: str, config: FillConfig, *, error: str | None = None,
              adapter: str | None = None, ranked: Ranked | None = None, timings: Timings | None = None) -> SceneRow:
    """The scenes table's row of one unit: its outcome, its best sample and what the selection rests on (as
    rank_samples decided it), its timings and its config."""
    timings = timings or Timings()
    return SceneRow(scene_id=scene_id, scene_uri=scene_uri, status="failed" if error else "ok", error=error,
                    run_key=run_key(config), method=config.method, adapter_uri=adapter,
                    selection=ranked.selection if ranked else None,
                    best_uri=ranked.best_uri if ranked else None,
                    best_support=ranked.best.support if ranked and ranked.best else None,
                    num_samples=len(ranked.rows) if ranked else 0,
                    tune_s=timings.tune_s, sample_s=timings.sample_s,
                    rank_s=timings.rank_s, config=json.dumps(config.to_dict(), sort_keys=True))

