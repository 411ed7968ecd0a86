"""The stages of one scene as plain functions: tune, sample, record. `realfill fill` chains them on
one machine; the Ray pipeline wraps the same functions as tasks and actors."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import replace

from tqdm.auto import tqdm

from realfill import manifest, records, storage
from realfill.config import FillConfig, SampleConfig
from realfill.models import resolve_base_model
from realfill.rank import GEOMETRY, NO_EVIDENCE, rank_scores, score_images, selection
from realfill.records import AdapterInfo, SampleRow, SceneRow, adapter_key, image_key, run_key
from realfill.sample import SampleFailure, Sampler, composite_sample
from realfill.scene import Scene, SceneError, load_scene, scene_id_of, storage_name
from realfill.tune import ADAPTER_INFO, AdapterError, tune, verified_adapter


class SampleError(RuntimeError):
    """No sample of a scene could be made; the message says why."""


def default_adapters(out_uri: str) -> str:
    """Where a run keeps its adapters unless told to share a store with other runs."""
    return storage.join(out_uri, "adapters")


def default_samples(out_uri: str) -> str:
    """Where a run keeps its images unless told to share a store with other runs."""
    return storage.join(out_uri, "samples")


def adapter_uri(adapters: str, scene: Scene, config: FillConfig) -> str:
    """Adapters are stored by what they were made from (scene content, tune config, seed, base model),
    so any run that changes only sampling or ranking finds and reuses them."""
    key = adapter_key(scene.fingerprint, config.tune, config.seed, config.base_model)
    return storage.join(adapters, f"{storage_name(scene.scene_id)}-{key}")


def tune_scene(scene: Scene, adapters: str, config: FillConfig, show_progress: bool = True,
               after_step=None, force: bool = False) -> tuple[str, AdapterInfo]:
    """Train (or reuse, or resume) the scene's adapter in the adapters store; returns its URI and info.
    A stored adapter is reused only when its weights match the digest it was saved with; one that does not
    (truncated, replaced, pickled, older format) is retrained. force discards a stored adapter and its
    checkpoint and trains from scratch."""
    uri = adapter_uri(adapters, scene, config)
    if force:
        storage.remove(uri)
    elif storage.exists(storage.join(uri, ADAPTER_INFO)):
        try:
            return uri, verified_adapter(uri)[0]
        except AdapterError as exc:
            warnings.warn(f"retraining: {exc}", stacklevel=2)
            storage.remove(uri)
    info = tune(scene, resolve_base_model(config.base_model), config.tune, uri, seed=config.seed,
                device=config.device, base_model=config.base_model, show_progress=show_progress,
                after_step=after_step)
    return uri, info


def samples_folder(samples: str, scene_id: str, adapter: str, config: SampleConfig) -> str:
    """Images are stored by what made their pixels (the adapter's key and the pixel-changing sampling
    settings), one file per seed, so a run that changes only ranking, the number of seeds or the batch, or
    one resumed after a crash mid-scene, or another variant of a sweep, reuses the images already made."""
    return storage.join(samples, f"{storage_name(scene_id)}-{image_key(adapter, config)}")


def sample_scene(sampler: Sampler, scene: Scene, adapter: str, folder: str, config: FillConfig,
                 show_progress: bool = True, force: bool = False) -> list[SampleRow]:
    """Generate, composite and store in folder every seed of a scene not already stored there (all of them
    with force); returns one row per seed: ok, or failed with the reason (a seed whose image is not finite)."""
    seeds = records.seeds(config)
    uris = {seed: storage.join(folder, records.seed_file(seed)) for seed in seeds}
    missing = [seed for seed in seeds if force or not storage.exists(uris[seed])]
    failures: dict[int, str] = {}
    if missing:
        sampler.use_adapter(adapter)
        prompt = sampler.adapter_info.config.prompt
        for seed, generated in tqdm(sampler.generate(scene, config.sample, missing, prompt), total=len(missing),
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
    ranked = {row.seed: replace(row, matches=score.matches, score=score.score, rank=rank, selected=i in kept)
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
    adapters = storage.normalize(adapters) if adapters else default_adapters(out_uri)
    scene_id = scene_id_of(scene_uri)
    samples: list[SampleRow] = []
    try:
        scene = load_scene(scene_uri, config.max_megapixels)
        started = time.perf_counter()
        adapter, info = tune_scene(scene, adapters, config, show_progress)
        tuned = time.perf_counter()
        sampler = sampler or Sampler(resolve_base_model(config.base_model), config.device)
        folder = samples_folder(default_samples(out_uri), scene_id, info.key, config.sample)
        samples = sample_scene(sampler, scene, adapter, folder, config, show_progress)
        sampled = time.perf_counter()
        samples = rank_samples(scene, samples, config)
        row = scene_row(scene_id, scene_uri, config, adapter=adapter, samples=samples, tune_s=tuned - started,
                        sample_s=sampled - tuned, rank_s=time.perf_counter() - sampled)
    except Exception as exc:  # recorded per scene, so one bad scene never stops the others
        samples = []
        row = scene_row(scene_id, scene_uri, config, error=describe(exc))
    manifest.write_scene(out_uri, samples, row)
    manifest.compact(out_uri)
    return row


def describe(exc: BaseException) -> str:
    """One line: the message alone for our own input errors, the type too for anything else."""
    from realfill.environment import BrokenEnvironment
    from realfill.matchers import MatcherError
    from realfill.models import ModelError

    message = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, (SceneError, ModelError, BrokenEnvironment, AdapterError, SampleError, MatcherError)):
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
