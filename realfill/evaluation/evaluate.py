"""`realfill eval`: metrics of a run's samples against the scenes' ground truth."""

from __future__ import annotations

import math
import typing
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import pyarrow as pa
from tqdm.auto import tqdm

from realfill.config import EvalConfig, FillConfig
from realfill.data import manifest
from realfill.data.layout import Output
from realfill.data.records import SampleRow, SceneRow, arrow_schema
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


EVAL_BATCH = 8
"""Samples of a scene read and measured together: the backbones see batches, memory holds this many images."""


@dataclass
class SceneSamples:
    """One scene's finished samples, measured together against its ground truth: the unit of evaluation work."""

    scene_id: str
    scene_uri: str
    samples: list[SampleOf]


@dataclass
class SceneMetrics:
    """A scene's evaluated samples (none when the scene has no gt.png)."""

    scene_id: str
    has_gt: bool
    rows: list[MetricRow]


def evaluate_scene(work: SceneSamples, evaluator: Evaluator) -> SceneMetrics:
    """Every sample of one scene against its ground truth, EVAL_BATCH at a time."""
    scene = load_scene(work.scene_uri, FillConfig().max_megapixels)
    if scene.gt is None:
        return SceneMetrics(work.scene_id, False, [])
    rows = []
    for start in range(0, len(work.samples), EVAL_BATCH):
        batch = work.samples[start : start + EVAL_BATCH]
        values = evaluator(scene.gt, [read_image(sample.uri) for sample in batch], scene.mask)
        rows += [MetricRow(**asdict(sample), **asdict(metrics)) for sample, metrics in zip(batch, values)]
    return SceneMetrics(work.scene_id, True, rows)


class Evaluation(Protocol):
    """Where scenes are evaluated: here (InProcess), or in actors on a Ray cluster (pipeline.fanout.MetricPool)."""

    unavailable: dict[str, str]
    """The learned metrics that cannot run, with the reason."""

    def map(self, works: list[SceneSamples]) -> Iterable[SceneMetrics]:
        """Each work's metrics, in the order of works."""


class InProcess:
    """Scenes evaluated one after another in this process, with one Evaluator."""

    def __init__(self, config: EvalConfig):
        self.evaluator = Evaluator(config)
        self.unavailable = self.evaluator.unavailable

    def map(self, works: list[SceneSamples]) -> Iterable[SceneMetrics]:
        return (evaluate_scene(work, self.evaluator) for work in works)


def evaluation_work(out_uri: str) -> list[SceneSamples]:
    """The run's finished samples, by scene."""
    sample_table, scene_table = manifest.read_tables(out_uri)
    scene_uris = {row.scene_id: row.scene_uri for row in manifest.rows_of(scene_table, SceneRow)}
    works: dict[str, SceneSamples] = {}
    for row in manifest.rows_of(sample_table, SampleRow):
        if row.ok:
            works.setdefault(row.scene_id, SceneSamples(row.scene_id, scene_uris[row.scene_id], [])).samples.append(
                SampleOf(scene_id=row.scene_id, seed=row.seed, uri=row.uri, selected=row.selected))
    return list(works.values())


def evaluate_run(out_uri: str, config: EvalConfig, show_progress: bool = True,
                 evaluation: Evaluation | None = None) -> tuple[pa.Table, dict[str, str], list[str]]:
    """Metrics for every finished sample of the run whose scene has a gt.png; written to OUT/metrics.parquet.
    Returns the table, the unavailable metrics with their reasons, and the scenes without ground truth. The
    scenes are evaluated by evaluation (default: here), which may serve several runs with its backbones loaded."""
    if not manifest.exists(out_uri):
        raise ValueError(f"{out_uri}: no manifest here; is this the --out of a realfill fill or run?")
    works = evaluation_work(out_uri)
    evaluation = evaluation or InProcess(config)
    without_gt, rows = [], []
    progress = tqdm(total=sum(len(work.samples) for work in works), desc="eval", disable=not show_progress,
                    leave=False)
    for work, done in zip(works, evaluation.map(works)):  # in the order of works
        if not done.has_gt:
            without_gt.append(done.scene_id)
        rows += done.rows
        progress.update(len(work.samples))
    progress.close()
    table = pa.Table.from_pylist([asdict(row) for row in rows], schema=METRICS_SCHEMA)
    manifest.write_arrow(Output(out_uri).metrics, table)
    return table, evaluation.unavailable, without_gt


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
