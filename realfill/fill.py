"""The stages of one scene as plain functions: tune, sample, record. `realfill fill` chains them on
one machine; the Ray pipeline wraps the same functions as tasks and actors."""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import replace

from tqdm.auto import tqdm

from realfill.config import FillConfig
from realfill.data import manifest, records, storage
from realfill.data.layout import STITCH_FILE, Output, keyed, scene_id_of, seed_file
from realfill.data.records import AdapterInfo, SampleRow, SceneRow, adapter_key, image_key, run_key, stitch_key
from realfill.data.runlog import InputError, log_failure
from realfill.data.scene import Scene, load_scene, read_image
from realfill.method.models import resolve_model
from realfill.method.sample import Condition, SampleFailure, Sampler, composite_sample
from realfill.method.stitch import exemplar, stitch
from realfill.method.tune import ADAPTER_INFO, AdapterError, ExtraView, tune, verified_adapter
from realfill.selection.rank import GEOMETRY, NO_EVIDENCE, rank_scores, score_images, selection

LOG = logging.getLogger(__name__)


class SampleError(InputError, RuntimeError):
    """No sample of a scene could be made; the message says why."""


def adapter_uri(adapters: str, scene: Scene, config: FillConfig) -> str:
    """Adapters are stored by what they were made from (scene content, tune config, seed, base model, the
    extra view's settings), so any run that changes only sampling or ranking finds and reuses them."""
    key = adapter_key(scene.fingerprint, config.tune, config.seed, config.base_model, records.training_view(config))
    return keyed(adapters, scene.scene_id, key)


def stitch_uri(samples: str, scene: Scene, config: FillConfig) -> str:
    """A stitch result is stored by the scene's content and the stitch settings."""
    return storage.join(keyed(samples, scene.scene_id, stitch_key(scene.fingerprint, config)), STITCH_FILE)


def stitch_scene(scene: Scene, samples: str, config: FillConfig, force: bool = False) -> str:
    """Make (or reuse) the scene's stitch result in the samples store; returns its URI."""
    uri = stitch_uri(samples, scene, config)
    if force or not storage.exists(uri):
        storage.write_png(uri, stitch(scene, config.stitch).image)
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
    uri = adapter_uri(adapters, scene, config)
    if force:
        storage.remove(uri)
    elif storage.exists(storage.join(uri, ADAPTER_INFO)):
        try:
            return uri, verified_adapter(uri)[0]
        except AdapterError as exc:
            warnings.warn(f"retraining: {exc}", stacklevel=2)
            storage.remove(uri)
    info = tune(scene, resolve_model(config.base_model), config.tune, uri, seed=config.seed,
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


def sampler_for(config: FillConfig) -> Sampler:
    """The sampler of a config's method: the base inpainting model, or the Paint-by-Example model."""
    return Sampler(resolve_model(config.model, example=config.by_example), config.device, config.sample.precision)


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
        return Condition(exemplar=exemplar(scene, config.stitch), **init)
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


def rank_samples(scene: Scene, rows: list[SampleRow], config: FillConfig) -> list[SampleRow]:
    """Score every good sample against the references (features of the scene computed once), rank them,
    and mark the top keep as selected; the rows are this config's (a sweep's variants share images).
    Failed samples keep no score and are never selected. Raises SampleError when no sample is good."""
    good = [row for row in rows if row.ok]
    if not good:
        raise SampleError(f"every sample failed; {rows[0].error if rows else 'no samples'}")
    scores = score_images(scene, [row.uri for row in good], config.rank)
    ranks = rank_scores(scores)
    order = sorted(range(len(good)), key=lambda i: (ranks[i], good[i].seed))
    kept = set() if selection(scores) == NO_EVIDENCE else set(order[: config.rank.keep_count(len(good))])
    height, width = scene.target.shape[:2]
    ranked = {row.seed: replace(row, matches=score.matches, score=score.score, rank=rank, selected=i in kept,
                                width=width, height=height)
              for i, (row, score, rank) in enumerate(zip(good, scores, ranks))}
    key = run_key(config)
    return [replace(ranked.get(row.seed, replace(row, selected=False)), run_key=key) for row in rows]


def rows_selection(rows: list[SampleRow]) -> str | None:
    """What rank_samples decided, read back from its rows: it selects nothing exactly when there is no
    evidence (None for a scene with no ranked samples)."""
    if not any(row.rank is not None for row in rows):
        return None
    return GEOMETRY if any(row.selected for row in rows) else NO_EVIDENCE


def best_uri(rows: list[SampleRow]) -> str | None:
    """The best-ranked selected sample (rank 1 is always selected when anything is)."""
    selected = [row for row in rows if row.selected]
    return min(selected, key=lambda row: (row.rank, row.seed)).uri if selected else None


def scene_row(scene_id: str, scene_uri: str, config: FillConfig, *, error: str | None = None,
              adapter: str | None = None, samples: list[SampleRow] = (), tune_s: float | None = None,
              sample_s: float | None = None, rank_s: float | None = None) -> SceneRow:
    return SceneRow(scene_id=scene_id, scene_uri=scene_uri, status="failed" if error else "ok", error=error,
                    run_key=run_key(config), adapter_uri=adapter, best_uri=best_uri(samples),
                    selection=rows_selection(samples),
                    num_samples=len(samples), tune_s=tune_s, sample_s=sample_s, rank_s=rank_s,
                    config=json.dumps(config.to_dict(), sort_keys=True))


def fill_scene(scene_uri: str, out_uri: str, config: FillConfig, sampler: Sampler | None = None,
               show_progress: bool = True, adapters: str | None = None) -> SceneRow:
    """Complete one scene end to end, record it in the manifest and compact it; returns its scene row.
    Bad input or a failing stage is recorded in the row (status failed, error), never raised.
    adapters is the adapter store (default OUT/adapters)."""
    scene_uri, out_uri = storage.normalize(scene_uri), storage.normalize(out_uri)
    output = Output(out_uri)
    adapters = storage.normalize(adapters) if adapters else output.adapters
    scene_id = scene_id_of(scene_uri)
    samples: list[SampleRow] = []
    try:
        scene = load_scene(scene_uri, config.max_megapixels)
        started = time.perf_counter()
        stitched = stitch_scene(scene, output.samples, config) if config.stitches else None
        stitch_s = time.perf_counter() - started
        adapter, info = tune_scene(scene, adapters, config, show_progress, stitched=stitched) if config.tunes \
            else (None, None)
        tuned = time.perf_counter()
        if config.samples:
            sampler = sampler or sampler_for(config)
            folder = samples_folder(output.samples, scene, info.key if info else None, config)
            samples = sample_scene(sampler, scene, adapter, folder, config, show_progress, stitched=stitched)
        else:
            samples = stitch_rows(scene_id, stitched, config)
        sampled = time.perf_counter()
        samples = rank_samples(scene, samples, config)
        row = scene_row(scene_id, scene_uri, config, adapter=adapter, samples=samples,
                        tune_s=tuned - started - stitch_s if config.tunes else None,
                        sample_s=stitch_s + sampled - tuned, rank_s=time.perf_counter() - sampled)
    except Exception as exc:  # recorded per scene, so one bad scene never stops the others
        samples = []
        row = scene_row(scene_id, scene_uri, config, error=log_failure(scene_id, exc))
    manifest.write_scene(out_uri, samples, row)
    manifest.compact(out_uri)
    return row
