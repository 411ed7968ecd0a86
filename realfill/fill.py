"""`realfill fill`: one scene through the plan's stages in this process, recorded in the manifest."""

from __future__ import annotations

from realfill.config import FillConfig
from realfill.data import manifest, storage
from realfill.data.layout import Output
from realfill.data.records import SceneRow
from realfill.data.runlog import log_failure
from realfill.method.sample import Sampler
from realfill.plan import plan_run
from realfill.stages import SAMPLE, STAGES, Runtime, Stores, Variant, run_timed


def fill_scene(scene_uri: str, out_uri: str, config: FillConfig, sampler: Sampler | None = None,
               show_progress: bool = True, adapters: str | None = None) -> SceneRow:
    """Complete one scene end to end, record it in the manifest and compact it; returns its scene row.
    Bad input or a failing stage is recorded in the row (status failed, error), never raised.
    adapters is the adapter store (default OUT/adapters)."""
    scene_uri, out_uri = storage.normalize(scene_uri), storage.normalize(out_uri)
    output = Output(out_uri)
    stores = Stores(storage.normalize(adapters) if adapters else output.adapters, output.samples)
    (unit,) = plan_run([scene_uri], [Variant("", out_uri, config)]).units
    runtime = Runtime(show_progress=show_progress, sampler=sampler)
    try:
        for stage in STAGES:
            if stage in unit.keys:
                if stage is SAMPLE and runtime.sampler is None:
                    runtime.sampler = SAMPLE.load(config)
                stage.into(unit, run_timed(stage, stage.job(unit, stores), runtime))
        row = unit.scene_row()
    except Exception as exc:  # recorded per scene, so one bad scene never stops the others
        row = unit.scene_row(error=log_failure(unit.scene_id, exc))
    manifest.write_scene(out_uri, [] if row.status == "failed" else unit.rows, row)
    manifest.compact(out_uri)
    return row
