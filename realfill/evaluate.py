"""`realfill eval`: metrics of a run's samples against the scenes' ground truth."""

from __future__ import annotations

import io
import math

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from realfill import manifest, storage
from realfill.config import EvalConfig, FillConfig
from realfill.metrics import LOWER_IS_BETTER, METRICS, PAPER_REALFILL, Evaluator
from realfill.scene import load_scene, read_image

METRICS_SCHEMA = pa.schema(
    [pa.field("scene_id", pa.string()), pa.field("seed", pa.int64()), pa.field("uri", pa.string()),
     pa.field("selected", pa.bool_())] + [pa.field(name, pa.float64()) for name in METRICS]
)


def evaluate_run(
    out_uri: str, config: EvalConfig, show_progress: bool = True
) -> tuple[pa.Table, dict[str, str], list[str]]:
    """Metrics for every finished sample of the run whose scene has a gt.png; written to OUT/metrics.parquet.
    Returns the table, the unavailable metrics with their reasons, and the scenes without ground truth."""
    if not storage.exists(manifest.table_uri(out_uri, "scenes")):
        raise ValueError(f"{out_uri}: no manifest/scenes here; is this the --out of a realfill fill or run?")
    samples = [row for row in manifest.read_table(out_uri, "samples").to_pylist() if row["status"] == "ok"]
    scene_uris = {row["scene_id"]: row["scene_uri"] for row in manifest.read_table(out_uri, "scenes").to_pylist()}
    evaluator = Evaluator(config)
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
        rows.append({"scene_id": scene_id, "seed": sample["seed"], "uri": sample["uri"],
                     "selected": sample.get("selected"), **values})
    table = pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(storage.join(out_uri, "metrics.parquet"), buffer.getvalue())
    return table, evaluator.unavailable, without_gt


def _mean(values: list) -> float | None:
    present = [value for value in values if value is not None and not math.isnan(value)]
    return sum(present) / len(present) if present else None


def markdown_summary(table: pa.Table, unavailable: dict[str, str]) -> str:
    """Means per metric over all samples and over the selected ones, beside the paper's RealFill row."""
    rows = table.to_pylist()
    selected = [row for row in rows if row["selected"]]
    lines = [f"| metric | all ({len(rows)}) | selected ({len(selected)}) | paper RealFill |", "|---|---|---|---|"]
    for name in METRICS:
        arrow = "↓" if name in LOWER_IS_BETTER else "↑"
        if name in unavailable:
            cells = ["unavailable", "unavailable"]
        else:
            digits = 2 if name == "psnr" else 3
            cells = [("–" if (m := _mean([r[name] for r in group])) is None else f"{m:.{digits}f}")
                     for group in (rows, selected)]
        lines.append(f"| {name} {arrow} | {cells[0]} | {cells[1]} | {PAPER_REALFILL[name]} |")
    notes = [f"- {name}: unavailable: {reason}" for name, reason in unavailable.items()]
    return "\n".join(lines + ([""] + notes if notes else []))
