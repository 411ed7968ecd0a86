"""A sweep: the same scenes under many variants of the config, as ONE pipeline run (so every GPU has work
until the last unit is done, and equal training or sampling is done once), then every variant evaluated
and compared in OUT/sweep.parquet and OUT/leaderboard.md.

The evaluation runs on the same Ray as the run, in actors that hold the metric backbones (pipeline.fanout).

Layout: OUT/adapters and OUT/samples are shared by every variant; each variant's manifests and metrics are
in OUT/variants/NAME/.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pyarrow as pa

from pipeline.config import PipelineConfig
from pipeline.driver import RunSummary, connect, hold_ray, run_variants
from pipeline.fanout import MetricPool
from realfill.config import EvalConfig, FillConfig
from realfill.data import manifest, storage
from realfill.data.layout import Output
from realfill.data.records import SceneRow, run_key
from realfill.evaluation.evaluate import LEADERBOARD_SCHEMA, evaluate_run, leaderboard, leaderboard_rows
from realfill.stages import Variant


def outcome_counts(variant: Variant) -> tuple[int, int]:
    """Scenes done and failed with the variant's config, from its manifest (skipped ones included)."""
    key = run_key(variant.config)
    rows = [row for row in manifest.rows_of(manifest.read_table(variant.out_uri, "scenes"), SceneRow)
            if row.run_key == key]
    done = {row.scene_id for row in rows if row.ok}
    return len(done), len({row.scene_id for row in rows if not row.ok} - done)


def run_sweep(scenes_root: str, out_uri: str, configs: dict[str, FillConfig], fields: dict[str, dict],
              pipeline: PipelineConfig, evaluation: EvalConfig,
              show_progress: bool = True) -> tuple[RunSummary, str]:
    """Run every (scene, variant) in one pipeline, evaluate each variant, write sweep.parquet and
    leaderboard.md; returns the run's summary and the leaderboard. fields are each variant's own settings
    (what the leaderboard says it changed)."""
    out_uri = storage.normalize(out_uri)
    output = Output(out_uri)
    variants = [Variant(name, output.variant(name).uri, config) for name, config in configs.items()]
    rows, unavailable = [], {}
    with hold_ray():
        summary = run_variants(scenes_root, variants, pipeline, show_progress, adapters=output.adapters,
                               samples=output.samples)
        connect(pipeline.address, pipeline.verbose)  # the run's Ray, or one for the evaluation alone
        with MetricPool(evaluation) as metrics:
            for variant in variants:
                table, missing, _ = evaluate_run(variant.out_uri, evaluation, show_progress=False, evaluation=metrics)
                unavailable.update(missing)
                rows += leaderboard_rows(variant.name, json.dumps(fields[variant.name], sort_keys=True), table,
                                         *outcome_counts(variant))
    manifest.write_arrow(output.sweep, pa.Table.from_pylist([asdict(row) for row in rows], LEADERBOARD_SCHEMA))
    board = leaderboard(rows, unavailable)
    storage.write_bytes(output.leaderboard, (board + "\n").encode())
    return summary, board
