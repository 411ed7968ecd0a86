"""Scene composition (the paper's Fig. 9): a mask over the whole target is a blank canvas, which the generative
methods fill with variations of the scene learned from its references alone; stitch, which needs known pixels to
anchor a warp, refuses it in one line; selection says there was nothing to check against."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import write_scene
from realfill.cli import main
from realfill.data.scene import load_scene, read_image
from realfill.selection.rank import NO_KNOWN_REGION, SELECTION_TEXT

TINY = ["--base_model", "tiny", "--example_model", "tiny", "--device", "cpu", "--tune.resolution", "64",
        "--sample.resolution", "64", "--tune.train_steps", "2", "--tune.batch_size", "2", "--sample.num_samples", "3",
        "--sample.steps", "2", "--quiet"]


def test_a_blank_canvas_is_a_scene_with_no_known_pixel(tmp_path):
    scene = load_scene(str(write_scene(tmp_path / "canvas", blank=True)))
    assert scene.blank and scene.mask.all() and not scene.target.any()
    assert not load_scene(str(write_scene(tmp_path / "hole"))).blank


@pytest.mark.parametrize("method", ["realfill", "sd-inpaint", "paint-by-example"])
def test_the_generative_methods_compose_variations_of_a_blank_canvas(tmp_path, capsys, method, tiny_model):
    out = tmp_path / "out"
    assert main(["fill", str(write_scene(tmp_path / "canvas", blank=True)), "--out", str(out), "--method", method,
                 *TINY]) == 0
    printed = capsys.readouterr().out
    assert f"{NO_KNOWN_REGION}: {SELECTION_TEXT[NO_KNOWN_REGION]}" in printed
    (scene,) = pq.read_table(out / "manifest" / "scenes").to_pylist()
    assert scene["status"] == "ok" and scene["selection"] == NO_KNOWN_REGION and scene["best_uri"] is None
    samples = pq.read_table(out / "manifest" / "samples").to_pylist()
    assert len(samples) == 3 and all(row["status"] == "ok" and row["selected"] is False for row in samples)
    assert all(row["score"] is None and row["rank"] is None for row in samples), "nothing is claimed as evidence"
    images = [read_image(row["uri"]) for row in samples]
    assert all(image.shape == (64, 96, 3) for image in images)
    assert not np.array_equal(images[0], images[1]), "each seed is its own variation"
    page = (out / "report" / "scenes" / "canvas.html").read_text()
    assert "Scene composition" in page and "3 variations" in page
    assert "composed (blank canvas)" in (out / "report.html").read_text()


@pytest.mark.parametrize("flags", [["--method", "stitch"], ["--init", "stitch"]])
def test_stitch_refuses_a_blank_canvas_in_one_line(tmp_path, capsys, flags, tiny_model):
    canvas = write_scene(tmp_path / "canvas", blank=True)
    assert main(["fill", str(canvas), "--out", str(tmp_path / "out"), *flags, *TINY, "--no_report"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert f"{canvas / 'target' / 'mask.png'}: covers the whole target, and stitch needs known pixels" in error


def test_rank_says_a_blank_canvas_has_nothing_to_check_against(tmp_path, capsys):
    canvas = write_scene(tmp_path / "canvas", blank=True)
    assert main(["rank", str(canvas), str(canvas / "target" / "gt.png"), "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["selection"] == NO_KNOWN_REGION


def test_a_run_on_ray_composes_a_blank_canvas_beside_an_ordinary_scene(tmp_path, tiny_model):
    root = tmp_path / "scenes"
    write_scene(root / "canvas", blank=True)
    write_scene(root / "hole", seed=1)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "realfill.cli", "run", str(root), "--out", str(out), *TINY],
                            capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "done: 2" in result.stdout
    assert "blank canvases (scene composition, their samples are variations, none selected): canvas" in result.stdout
    assert "no evidence hole:" in result.stdout and "no evidence canvas" not in result.stdout
    scenes = {row["scene_id"]: row for row in pq.read_table(out / "manifest" / "scenes").to_pylist()}
    assert scenes["canvas"]["selection"] == NO_KNOWN_REGION and scenes["hole"]["selection"] == "no evidence"
    again = subprocess.run([sys.executable, "-m", "realfill.cli", "run", str(root), "--out", str(out), *TINY],
                           capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert "already complete (skipped): 2" in again.stdout, again.stdout + again.stderr
    assert "scene composition" in again.stdout and "no evidence canvas" not in again.stdout
