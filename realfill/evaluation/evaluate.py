"""`realfill eval`: metrics of a run's samples against the scenes' ground truth."""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass
from typing import Literal

import pyarrow as pa
from tqdm.auto import tqdm

from realfill.config import EvalConfig, FillConfig
from realfill.data import manifest
from realfill.data.layout import Output
from realfill.data.records import arrow_schema
from realfill.data.scene import load_scene, read_image
from realfill.evaluation.metrics import LOWER_IS_BETTER, METRICS, PAPER_REALFILL, Evaluator, Metrics

Group = Literal["all", "selected"]
"""Every sample, and the samples that selection kept."""
GROUPS: tuple[Group, ...] = typing.get_args(Group)

@dataclass(kw_only=True)
class SampleOf:
    scene_id: str
    seed: int
    uri: str
    selected: bool | None = None
    """Kept by the run's selection."""


@dataclass(kw_only=True)
class MetricRow(Metrics, SampleOf):
    """One evaluated sample: a row of OUT/metrics.parquet."""


@dataclass(kw_only=True)
class GroupOf:
    variant: str
    group: Group
    samples: int
    """Samples of the group that were evaluated."""
    scenes_done: int
    scenes_failed: int
    fields: str
    """The variant's own settings (what it changed), as the grid or --variant gave them: JSON."""


@dataclass(kw_only=True)
class LeaderboardRow(Metrics, GroupOf):
    """One variant's means over one group of samples: a row of OUT/sweep.parquet."""


METRICS_SCHEMA = arrow_schema(MetricRow, "metrics")
LEADERBOARD_SCHEMA = arrow_schema(LeaderboardRow, "sweep")
"""OUT/sweep.parquet: one row per variant and group (all seeds, selected seeds)."""


def evaluate_run(
    out_uri: str, config: EvalConfig, show_progress: bool = True, evaluator: Evaluator | None = None
) -> tuple[pa.Table, dict[str, str], list[str]]:
    """Metrics for every finished sample of the run whose scene has a gt.png; written to OUT/metrics.parquet.
    Returns the table, the unavailable metrics with their reasons, and the scenes without ground truth.
    An evaluator (its backbones loaded) may be passed in, to evaluate several runs with one."""
    if not manifest.exists(out_uri):
        raise ValueError(f"{out_uri}: no manifest here; is this the --out of a realfill fill or run?")
    sample_table, scene_table = manifest.read_tables(out_uri)
    samples = [row for row in sample_table.to_pylist() if row["status"] == "ok"]
    scene_uris = {row["scene_id"]: row["scene_uri"] for row in scene_table.to_pylist()}
    evaluator = evaluator or Evaluator(config)
    scenes, without_gt, rows = {}, [], []
    for sample in tqdm(samples, desc="eval", disable=not show_progress, leave=False):
        scene_id = sample["scene_id"]
        if scene_id not in scenes:
            scenes[scene_id] = load_scene(scene_uris[scene_id], FillConfig().max_megapixels)
            if scenes[scene_id].gt is None:
                without_gt.append(scene_id)
        scene = scenes[scene_id]
        if scene.gt is None:
            continue
        values = evaluator(scene.gt, read_image(sample["uri"]), scene.mask)
        rows.append(MetricRow(scene_id=scene_id, seed=sample["seed"], uri=sample["uri"],
                              selected=sample.get("selected"), **asdict(values)))
    table = pa.Table.from_pylist([asdict(row) for row in rows], schema=METRICS_SCHEMA)
    manifest.write_arrow(Output(out_uri).metrics, table)
    return table, evaluator.unavailable, without_gt


def _mean(values: list) -> float | None:
    present = [value for value in values if value is not None and not math.isnan(value)]
    return sum(present) / len(present) if present else None


def means_of(rows: list[MetricRow]) -> dict[str, dict[str, float | None]]:
    """Mean of each metric over all samples and over the selected ones: {group: {metric: mean}}, plus the
    count of samples of each group under 'samples'."""
    groups = {"all": rows, "selected": [row for row in rows if row.selected]}
    return {group: {"samples": len(members), **{name: _mean([getattr(row, name) for row in members])
                                                for name in METRICS}}
            for group, members in groups.items()}


def _cell(name: str, value: float | None, unavailable: dict[str, str]) -> str:
    if name in unavailable:
        return "unavailable"
    return "–" if value is None else f"{value:.{2 if name == 'psnr' else 3}f}"


def _arrow_of(name: str) -> str:
    return f"{name} {'↓' if name in LOWER_IS_BETTER else '↑'}"


def markdown_summary(table: pa.Table, unavailable: dict[str, str]) -> str:
    """Means per metric over all samples and over the selected ones, beside the paper's RealFill row."""
    summary = means_of(manifest.rows_of(table, MetricRow))
    lines = [f"| metric | all ({summary['all']['samples']}) | selected ({summary['selected']['samples']}) | "
             f"paper RealFill |", "|---|---|---|---|"]
    for name in METRICS:
        cells = [_cell(name, summary[group][name], unavailable) for group in GROUPS]
        lines.append(f"| {_arrow_of(name)} | {cells[0]} | {cells[1]} | {PAPER_REALFILL[name]} |")
    return "\n".join(lines + _notes(unavailable))


def _notes(unavailable: dict[str, str]) -> list[str]:
    notes = [f"- {name}: unavailable: {reason}" for name, reason in unavailable.items()]
    return [""] + notes if notes else []


def leaderboard_rows(variant: str, fields: str, table: pa.Table, done: int, failed: int) -> list[LeaderboardRow]:
    summary = means_of(manifest.rows_of(table, MetricRow))
    return [LeaderboardRow(variant=variant, group=group, scenes_done=done, scenes_failed=failed, fields=fields,
                           **summary[group]) for group in GROUPS]


def leaderboard(rows: list[LeaderboardRow], unavailable: dict[str, str]) -> str:
    """Variants × metrics, each cell 'all seeds / selected seeds', with the paper's RealFill row last."""
    by_variant: dict[str, dict[str, LeaderboardRow]] = {}
    for row in rows:
        by_variant.setdefault(row.variant, {})[row.group] = row
    header = "| variant | scenes ok / failed | samples (all / selected) | " + " | ".join(map(_arrow_of, METRICS)) + " |"
    lines = [header, "|" + "---|" * (3 + len(METRICS))]
    for variant, groups in by_variant.items():
        cells = [" / ".join(_cell(name, getattr(groups[group], name), unavailable) for group in GROUPS)
                 for name in METRICS]
        counts = f"{groups['all'].samples} / {groups['selected'].samples}"
        lines.append(f"| {variant} | {groups['all'].scenes_done} / {groups['all'].scenes_failed} | {counts} | "
                     + " | ".join(cells) + " |")
    lines.append("| paper RealFill | | | " + " | ".join(str(PAPER_REALFILL[name]) for name in METRICS) + " |")
    fields = [f"- {variant}: `{groups['all'].fields}`" for variant, groups in by_variant.items()]
    return "\n".join(lines + ["", "Cells: mean over all seeds / over the selected seeds.", "", *fields]
                     + _notes(unavailable))
