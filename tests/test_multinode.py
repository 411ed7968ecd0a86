"""The pipeline on a real multi-node Ray: Ray's own harness (`ray.cluster_utils.Cluster`, several raylets
on this machine with logical GPUs) and `realfill run` / `realfill library` pointed at it with --address, as
on a cluster. The head has no CPU and no GPU (it only drives, as the shipped KubeRay head); GPU nodes join
and are taken away while the run goes. The test hooks of pipeline.stages make the moments exact: a call that
waits until N calls run at once, a call that waits where its node is to be lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from ray.cluster_utils import Cluster

from conftest import write_scene
from faults import HOLD_ONCE, faults
from realfill.data import manifest

FLAGS = ["--base_model", "tiny", "--device", "cpu", "--tune.resolution", "64", "--sample.resolution", "64",
         "--tune.train_steps", "3", "--tune.batch_size", "2", "--tune.checkpoint_every", "1",
         "--sample.num_samples", "3", "--sample.steps", "2", "--gpus_per_tune", "1", "--gpus_per_sampler", "1",
         "--quiet", "--no_report"]
DEADLINE_S = 300


@pytest.fixture
def cluster(tiny_model, monkeypatch):
    """A head with no CPU and no GPU; GPU nodes are added by each test. The workers see the test hooks set
    with monkeypatch before the first node is added (they inherit their raylet's environment)."""
    started: list[Cluster] = []

    def start() -> Cluster:
        started.append(Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "num_gpus": 0}))
        return started[0]

    yield start
    for harness in started:
        harness.shutdown()


def inject(monkeypatch, **hooks: str) -> None:
    """Faults (tests/faults.py) in the stage calls of the runs the test starts."""
    for name, value in faults(**hooks).items():
        monkeypatch.setenv(name, value)


def gpu_node(harness: Cluster):
    return harness.add_node(num_cpus=2, num_gpus=1)


def realfill(command: str, source: Path, out: Path, address: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "realfill.cli", command, str(source), "--out", str(out),
                             "--address", address, *FLAGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(condition, run: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if run.poll() is not None or time.monotonic() > deadline:
            run.kill()
            raise AssertionError(f"never saw {what}: {run.communicate()}")
        time.sleep(0.2)


def lose_node_of(harness: Cluster, marker: Path, run: subprocess.Popen) -> None:
    """Once a held call has written its node's id to marker: that node is lost (killed, not drained), and a
    new GPU node joins in its place."""
    wait_for(marker.exists, run, f"a call held at {marker.name}")
    node_id = marker.read_text()
    (node,) = [node for node in harness.list_all_nodes() if node.node_id == node_id]
    assert not node.head, "held calls run on GPU nodes, never on the head"
    harness.remove_node(node, allow_graceful=False)
    gpu_node(harness)


def scenes(root: Path, count: int) -> Path:
    for index in range(count):
        write_scene(root / f"s{index}", seed=index)
    return root


def files_of(out: Path) -> dict[str, int]:
    """Every output file but the run logs, with its modification time."""
    return {str(path): path.stat().st_mtime_ns for path in out.rglob("*")
            if path.is_file() and "logs" not in path.relative_to(out).parts}


def test_a_run_grows_onto_gpu_nodes_as_they_join(cluster, tmp_path, monkeypatch):
    """Started with no GPU anywhere: the run keeps GPU work pending, and as three GPU nodes join one after
    another it has three tune calls running at once (each waits until it has two others beside it). Sampling
    runs on CPUs here, so that only tuning asks for GPUs."""
    gathered = tmp_path / "gather"
    inject(monkeypatch, GATHER=f"tune:{gathered}:3")
    harness = cluster()
    run = realfill("run", scenes(tmp_path / "scenes", 3), tmp_path / "out", harness.address,
                   "--gpus_per_sampler", "0")
    for joined in range(1, 4):
        gpu_node(harness)
        wait_for(lambda: gathered.exists() and len(os.listdir(gathered)) >= joined, run,
                 f"{joined} tune calls running at once")
    stdout, stderr = run.communicate(timeout=DEADLINE_S)
    assert run.returncode == 0, stdout + stderr
    assert "done: 3" in stdout and "failed: 0" in stdout
    assert "GPUs: peak 3 in use at once, up to 3 present" in stdout, stdout


def test_nodes_lost_mid_tune_and_mid_sample_cost_only_their_work(cluster, tmp_path, monkeypatch):
    """A GPU node lost while it tunes, another while it samples: their calls run again on the nodes that
    joined in their place; every scene ends ok exactly once, every image is there, and the same command
    afterwards redoes nothing."""
    tuned, sampled = tmp_path / "held-tune", tmp_path / "held-sample"
    inject(monkeypatch, HOLD_ONCE=f"tune:{tuned},sample:{sampled}")
    harness = cluster()
    gpu_node(harness)
    gpu_node(harness)
    root, out = scenes(tmp_path / "scenes", 2), tmp_path / "out"
    run = realfill("run", root, out, harness.address)
    lose_node_of(harness, tuned, run)
    lose_node_of(harness, sampled, run)
    stdout, stderr = run.communicate(timeout=DEADLINE_S)
    assert run.returncode == 0, stdout + stderr
    assert "done: 2" in stdout and "failed: 0" in stdout
    plain = pd.read_parquet(out / "manifest" / "scenes")
    assert sorted(plain.scene_id) == ["s0", "s1"] and set(plain.status) == {"ok"}
    samples = pd.read_parquet(out / "manifest" / "samples")
    assert len(samples) == 6 and not samples.duplicated(["scene_id", "seed"]).any()
    assert all(Path(uri).is_file() for uri in samples.uri)
    before = files_of(out)
    monkeypatch.delenv(HOLD_ONCE)
    again = realfill("run", root, out, harness.address)
    stdout, stderr = again.communicate(timeout=DEADLINE_S)
    assert again.returncode == 0 and "already complete (skipped): 2" in stdout, stdout + stderr
    assert files_of(out) == before, "the resume redoes nothing"


def test_a_library_run_survives_a_node_lost_mid_picking(cluster, tmp_path, monkeypatch, scenes_root):
    """The node picking a request's references is lost: the picking runs again elsewhere, the request
    completes and is recorded once."""
    album = tmp_path / "library" / "walls"
    album.mkdir(parents=True)
    for name, source in (("graffiti.png", "target/gt.png"), ("other-view.jpg", "ref/00.jpg")):
        (album / name).write_bytes((scenes_root / "oxford_graffiti" / source).read_bytes())
    requests = tmp_path / "requests.csv"
    requests.write_text('target,box\nwalls/graffiti.png,"165,140,350,333"\n')
    picked = tmp_path / "held-pick"
    inject(monkeypatch, HOLD_ONCE=f"pick:{picked}")
    harness = cluster()
    gpu_node(harness)
    out = tmp_path / "filled"
    run = realfill("library", album.parent, out, harness.address, "--requests", str(requests))
    lose_node_of(harness, picked, run)
    stdout, stderr = run.communicate(timeout=DEADLINE_S)
    assert run.returncode == 0, stdout + stderr
    assert "requests: 1" in stdout and "done: 1" in stdout
    (request,) = pd.read_parquet(out / "requests.parquet").to_dict("records")
    assert request["status"] == "ok" and [Path(ref["uri"]).name for ref in request["refs"]] == ["other-view.jpg"]
    scenes = manifest.read_table(str(out), "scenes").to_pylist()
    assert [row["status"] for row in scenes] == ["ok"]
    assert os.path.exists(out / "scenes" / request["scene_id"])
