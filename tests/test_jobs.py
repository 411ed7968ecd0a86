"""`ray job submit` for real: a Ray head on loopback, jobs submitted through its job server."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from realfill import manifest

ADDRESS = "http://127.0.0.1:8299"
TINY = "--base-model tiny --device cpu --resolution 64 --train-steps 2 --batch-size 2 --num-samples 4 " \
       "--sample-steps 2 --quiet"


@pytest.fixture(scope="module")
def head():
    """A local Ray head with its job server, started and stopped by this module."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    subprocess.run([*ray, "start", "--head", "--port", "6390", "--dashboard-host", "127.0.0.1", "--dashboard-port",
                    "8299", "--num-cpus", "2", "--include-dashboard", "true", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        yield env
    finally:
        subprocess.run([*ray, "stop"], env=env, capture_output=True)
        os.environ.pop("RAY_AUTH_MODE", None)


@pytest.fixture
def one_scene(scenes_root, tmp_path) -> Path:
    root = tmp_path / "scenes"
    root.mkdir()
    (root / "oxford_graffiti").symlink_to(scenes_root / "oxford_graffiti", target_is_directory=True)
    return root


REPO = Path(__file__).resolve().parents[1]


def test_fill_library_job_with_ray_job_submit(head, one_scene, tmp_path):
    """Submitted as the README says, shipping the working tree with cluster/runtime_env.yaml."""
    out = tmp_path / "filled"
    result = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", ADDRESS,
         "--runtime-env", "cluster/runtime_env.yaml", "--",
         sys.executable, "-m", "jobs.fill_library", str(one_scene), "--out", str(out), *TINY.split()],
        env=head, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert "succeeded" in result.stdout + result.stderr, result.stdout + result.stderr
    assert "done: 1" in result.stdout
    rows = manifest.read_table(str(out), "samples").to_pylist()
    assert len(rows) == 4 and all(Path(row["uri"]).is_file() for row in rows)
    scene = manifest.read_table(str(out), "scenes").to_pylist()[0]
    assert '"scheduler": "dpm"' in scene["config"], "the library job samples with the fast preset"


def test_realbench_sweep_job_with_the_submission_client(head, one_scene, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ADDRESS)
    out = tmp_path / "sweep"
    job = client.submit_job(entrypoint=(
        f"{sys.executable} -m jobs.realbench_sweep {one_scene} --out {out} --variant 'top1:--keep 1' "
        f"--variant 'all:--keep-fraction 1' {TINY}"))
    deadline = time.time() + 600
    while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs
    report = (out / "sweep.md").read_text()
    assert "## top1" in report and "## all" in report
    assert "| metric | all (4) | selected (1) |" in report and "| metric | all (4) | selected (4) |" in report
    assert len(list((out / "adapters").iterdir())) == 1, "the variants share one adapter store"
    assert logs.count("done: 1") == 2
