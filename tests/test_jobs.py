"""`ray job submit` for real: a Ray head on loopback, jobs submitted through its job server."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_scene
from realfill.data import manifest
from realfill.data.layout import Output

ADDRESS = "http://127.0.0.1:8299"
TINY = ("--base_model tiny --device cpu --tune.resolution 64 --sample.resolution 64 --tune.train_steps 2 "
        "--tune.batch_size 2 --sample.num_samples 4 --sample.steps 2 --quiet")


def stop_processes_under(folder: str) -> None:
    """Stop the Ray processes started with this temp folder (each names it in its command line), and no other
    Ray on the machine: a bare `ray stop` would stop every Ray there, other people's too."""
    import psutil

    ours = [process for process in psutil.process_iter(["cmdline"])
            if any(folder in part for part in process.info["cmdline"] or [])]
    for process in ours:
        process.terminate()
    _, alive = psutil.wait_procs(ours, timeout=5)
    for process in alive:
        process.kill()


@pytest.fixture(scope="module")
def head():
    """A local Ray head with its job server, started and stopped by this module (and only it)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    temp = tempfile.mkdtemp(prefix="rf-head-", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    subprocess.run([*ray, "start", "--head", "--port", "6390", "--dashboard-host", "127.0.0.1", "--dashboard-port",
                    "8299", "--num-cpus", "2", "--include-dashboard", "true", "--disable-usage-stats",
                    "--temp-dir", temp, "--resources", '{"realfill_test_head": 1}'],
                   check=True, env=env, capture_output=True)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        yield env
    finally:
        stop_processes_under(temp)
        os.environ.pop("RAY_AUTH_MODE", None)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def one_scene(scenes_root, tmp_path) -> Path:
    root = tmp_path / "scenes"
    root.mkdir()
    (root / "oxford_graffiti").symlink_to(scenes_root / "oxford_graffiti", target_is_directory=True)
    return root


REPO = Path(__file__).resolve().parents[1]


def test_fill_library_job_with_ray_job_submit(head, scenes_root, tmp_path):
    """Submitted as the README says, shipping the working tree with cluster/runtime_env.yaml: an album of
    graffiti's photo and reference, a box to fill, the tiny model."""
    album = tmp_path / "library" / "walls"
    album.mkdir(parents=True)
    from realfill.data.scene import read_image

    for name, source in (("graffiti.png", "target/gt.png"), ("other-view.jpg", "ref/00.jpg")):
        (album / name).write_bytes((scenes_root / "oxford_graffiti" / source).read_bytes())
    assert read_image(str(album / "graffiti.png")).shape == (512, 512, 3)
    requests = tmp_path / "requests.csv"
    requests.write_text('target,box\nwalls/graffiti.png,"165,140,350,333"\n')
    out = tmp_path / "filled"
    result = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", ADDRESS,
         "--runtime-env", "cluster/runtime_env.yaml", "--",
         sys.executable, "-m", "jobs.fill_library", str(album.parent), "--out", str(out), "--requests", str(requests),
         *TINY.split()],
        env=head, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert "succeeded" in result.stdout + result.stderr, result.stdout + result.stderr
    assert "done: 1" in result.stdout and "requests: 1" in result.stdout
    rows = manifest.read_table(str(out), "samples").to_pylist()
    assert len(rows) == 4 and all(Path(row["uri"]).is_file() for row in rows)
    scene = manifest.read_table(str(out), "scenes").to_pylist()[0]
    assert '"scheduler": "dpm"' in scene["config"], "the library job samples with the fast preset"
    (request,) = pd.read_parquet(out / "requests.parquet").to_dict("records")
    assert request["status"] == "ok"
    assert [Path(ref["uri"]).name for ref in request["refs"]] == ["other-view.jpg"], "the album's other view"
    assert pd.isna(request["filled_uri"]), "a random model's noise is no evidence: nothing is delivered"


def test_realbench_sweep_job_runs_every_variant_in_one_pipeline(head, one_scene, tmp_path, tiny_backbones):
    """A grid and a named variant that share training (one adapter) and, but for the seed count, sampling
    (one folder of images, as many as the largest variant asks for); eval flags reach every variant."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  rank.keep: [1, 4]\nvariants:\n  few: {sample.num_samples: 2}\n")
    client = JobSubmissionClient(ADDRESS)
    out = tmp_path / "sweep"
    job = client.submit_job(entrypoint=(
        f"{sys.executable} -m jobs.realbench_sweep {one_scene} --out {out} --grid {grid} "
        f"--variant 'dpm:--sample.scheduler dpm' --eval.dino_model {tiny_backbones / 'dino'} {TINY}"))
    deadline = time.time() + 600
    while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs
    assert "done: 4" in logs and logs.count("done:") == 1, "one pipeline run for every variant"
    assert len(list((out / "adapters").iterdir())) == 1, "equal training, trained once"
    folders = sorted(path for path in (out / "samples").iterdir())
    assert len(folders) == 2, "keep=1, keep=4 and few share their images; dpm makes its own"
    assert sorted(len(list(folder.glob("seed-*[0-9].png"))) for folder in folders) == [4, 4]
    assert all(len(list(folder.glob("seed-*.support-*.png"))) >= 4 for folder in folders), "each image's map"
    board = (out / "leaderboard.md").read_text()
    for name in ("keep=1", "keep=4", "few", "dpm", "paper RealFill"):
        assert f"| {name} |" in board, board
    table = pd.read_parquet(out / "sweep.parquet")
    assert sorted(table["variant"].unique()) == ["dpm", "few", "keep=1", "keep=4"]
    selected = table[table["group"] == "selected"].set_index("variant")["samples"].to_dict()
    assert selected == {"keep=1": 0, "keep=4": 0, "few": 0, "dpm": 0}, "a random model's noise matches nothing"
    for variant in ("keep=1", "keep=4", "few", "dpm"):
        scenes = manifest.read_table(Output(str(out)).variant(variant).uri, "scenes").to_pylist()
        assert [row["selection"] for row in scenes] == ["no evidence"], "each variant ranks its own samples"
    assert table[table["group"] == "all"].set_index("variant")["samples"].to_dict()["few"] == 2
    assert table[table["group"] == "all"]["dino"].notna().all(), "--eval.dino_model reached the evaluation"
    few = manifest.read_table(str(out / "variants" / "few"), "samples").to_pylist()
    assert sorted(row["seed"] for row in few) == [0, 1]


def test_a_run_without_an_address_is_local_and_auto_joins_the_machines_cluster(head, tmp_path):
    """With a Ray cluster running on the machine (the module's head): no --address and no RAY_ADDRESS starts a
    private Ray that does not join it; --address auto joins it. The run's log says which cluster it ran on."""
    write_scene(tmp_path / "scenes" / "one")
    env = {name: value for name, value in head.items() if name != "RAY_ADDRESS"}
    for address, joins in ((None, False), ("auto", True)):
        out = tmp_path / f"out-{address}"
        result = subprocess.run([sys.executable, "-m", "realfill.cli", "run", str(tmp_path / "scenes"), "--out",
                                 str(out), "--method", "stitch", "--quiet", "--no_report",
                                 *(["--address", address] if address else [])],
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0 and "done: 1" in result.stdout, result.stdout + result.stderr
        (log,) = (out / "logs").glob("run-*.log")
        (line,) = [line for line in log.read_text().splitlines() if " ray: " in line]
        assert ("realfill_test_head" in line) is joins, line
    help_text = subprocess.run([sys.executable, "-m", "realfill.cli", "run", "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    assert "'auto'" in " ".join(help_text.split()) and "never joins another" in " ".join(help_text.split())


def test_the_bundled_grid_file_expands():
    from realfill.cli import typed_fields
    from realfill.config import expand_grid, read_config_file
    from realfill.data.records import training_key

    grid = REPO / "jobs" / "realbench_grid.yaml"
    variants = expand_grid(read_config_file(grid), str(grid))
    assert len(variants) == 6 and {"paper", "fast"} <= set(variants)
    configs = {name: typed_fields(fields, name) for name, fields in variants.items()}
    assert configs["fast"].sample.scheduler == "dpm" and configs["steps=50,keep_fraction=1.0"].sample.steps == 50
    assert len({training_key("scene", config) for config in configs.values()}) == 1, "they share their training"
