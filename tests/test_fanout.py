"""Work after a run on Ray: the report's scene pages as tasks over chunks, the metrics in actors. Each writes what
the same work done in this process writes."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from pipeline.fanout import MetricPool, ray_map
from realfill.cli import main
from realfill.config import EvalConfig, ReportConfig
from realfill.data import manifest, photos
from realfill.data.photos import list_library
from realfill.evaluation.evaluate import InProcess, evaluate_run
from realfill.evaluation.report import write_report
from synthetic import synthetic_run

SCENES = 23
"""Scenes of the synthetic run: in chunks of two index pages of 4 scenes, three chunks, the last short; scene 19
has no evidence."""
CHUNKED = ReportConfig(per_page=4, chunk_pages=2)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never another Ray here
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A run of SCENES scenes, two of them with a ground truth (their target photo)."""
    out = tmp_path_factory.mktemp("fanout") / "run"
    synthetic_run(str(out), SCENES)
    for scene in ("scene-0000", "scene-0001"):
        target = out / "inputs" / scene / "target"
        shutil.copy(target / "target.png", target / "gt.png")
    return out


def report_files(out: Path) -> dict[str, bytes | None]:
    """Every file of the report: its pages with their text, its pictures by name."""
    files = [out / "report.html", *(out / "report").rglob("*")]
    return {str(path.relative_to(out)): path.read_bytes() if path.suffix == ".html" else None
            for path in files if path.is_file()}


def test_a_report_made_by_ray_tasks_over_chunks_is_the_one_made_here(local_ray, synthetic, tmp_path):
    """The report with its scenes in chunks of two index pages on Ray tasks writes the same pages (previous / next
    links across chunks included) and the same pictures as the whole report in one chunk in this process; made
    again on Ray, every thumbnail is reused and nothing changes."""
    out = tmp_path / "run"
    shutil.copytree(synthetic, out, symlinks=True)
    here = write_report(str(out), replace(CHUNKED, chunk_pages=100))
    expected = report_files(out)
    shutil.rmtree(out / "report")
    (out / "report.html").unlink()
    on_ray = write_report(str(out), CHUNKED, map_chunks=ray_map)
    assert report_files(out) == expected
    assert (on_ray.scenes, on_ray.pages, on_ray.thumbnails_made) == (here.scenes, here.pages, here.thumbnails_made)
    assert here.thumbnails_made > SCENES and "scene-0008.html" in str(expected[
        "report/scenes/scene-0007.html"]), "scene 7 (last of the first chunk) links to the next chunk's first"
    again = write_report(str(out), CHUNKED, map_chunks=ray_map)
    assert (again.thumbnails_made, again.thumbnails_reused) == (0, here.thumbnails_made)
    assert report_files(out) == expected


def test_a_library_listed_by_ray_tasks_over_chunks_is_the_one_listed_here(local_ray, tmp_path, monkeypatch):
    """Seven photos in two albums, listed in chunks of two on Ray tasks: the same photos, sizes and EXIF, in the
    same order, as one chunk here; a photo that cannot be read is listed without them."""
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2024:06:01 12:30:00"
    for index in range(7):
        album = tmp_path / "library" / ("city" if index < 4 else "home")
        album.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(rng.integers(0, 255, (20 + index, 30, 3), dtype=np.uint8))
        image.save(album / f"photo{index}.jpg", exif=exif.tobytes() if index % 2 else b"")
    (tmp_path / "library" / "home" / "broken.jpg").write_bytes(b"not a photo")
    here = list_library(str(tmp_path / "library"))
    monkeypatch.setattr(photos, "LISTING_CHUNK", 2)
    assert list_library(str(tmp_path / "library"), map_chunks=ray_map) == here
    by_name = {Path(photo.uri).name: photo for photo in here}
    assert by_name["photo3.jpg"].size == (30, 23) and by_name["photo3.jpg"].taken.year == 2024
    assert by_name["photo2.jpg"].taken is None and by_name["broken.jpg"].size is None and len(here) == 8


def test_metric_actors_measure_what_this_process_measures(local_ray, synthetic, tiny_backbones):
    """Two actors holding the backbones, a scene a call, give the metrics the evaluator gives here, in the same
    rows; the scenes without ground truth are named the same."""
    config = EvalConfig(dino_model=str(tiny_backbones / "dino"), clip_model=str(tiny_backbones / "clip"), device="cpu")
    here, unavailable, without_gt = evaluate_run(str(synthetic), config, show_progress=False,
                                                 evaluation=InProcess(config))
    with MetricPool(config, actors=2) as pool:
        assert len(pool.actors) == 2
        on_ray, unavailable_on_ray, without_gt_on_ray = evaluate_run(str(synthetic), config, show_progress=False,
                                                                     evaluation=pool)
    assert here.num_rows == 8 and set(here.column("scene_id").to_pylist()) == {"scene-0000", "scene-0001"}
    assert here.column("uri").to_pylist() == on_ray.column("uri").to_pylist()
    for name in ("psnr", "ssim", "dino", "clip"):
        assert on_ray.column(name).to_pylist() == pytest.approx(here.column(name).to_pylist(), abs=1e-5), name
    assert all(value is not None for value in here.column("dino").to_pylist())
    assert unavailable_on_ray == unavailable and without_gt_on_ray == without_gt and len(without_gt) == SCENES - 2


def test_eval_with_an_address_evaluates_on_the_cluster(local_ray, synthetic, tiny_backbones, tmp_path, capsys):
    """`realfill eval --address` on the Ray the run was on: metrics.parquet is written, the report shows them."""
    out = tmp_path / "run"
    shutil.copytree(synthetic, out, symlinks=True)
    address = ray.get_runtime_context().gcs_address
    backbones = ["--eval.dino_model", str(tiny_backbones / "dino"), "--eval.clip_model", str(tiny_backbones / "clip")]
    assert main(["eval", str(out), "--quiet", "--address", address, "--eval.device", "cpu", *backbones]) == 0
    metrics = manifest.read_arrow(str(out / "metrics.parquet"))
    assert metrics.num_rows == 8 and "dino" in capsys.readouterr().out
    assert ray.is_initialized(), "a Ray the command did not start is left up"
    assert list((out / "report" / "plots").glob("metric-vs-rank-*.png")), "the report shows the metrics"
