"""Cluster definitions: they parse, and what they run exists and accepts its arguments."""

import shlex
from pathlib import Path

import yaml

from realfill.cli import make_parser

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_kuberay_manifests_are_gpu_ray_clusters():
    cluster, job = load("kuberay/raycluster.yaml"), load("kuberay/rayjob.yaml")
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        worker = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"


def test_rayjob_entrypoint_is_a_valid_realfill_run():
    words = shlex.split(load("kuberay/rayjob.yaml")["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "jobs.fill_library"]
    args = make_parser().parse_args(["run", *words[3:], "--fast"])
    assert args.gpus_per_tune == 1 and args.gpus_per_sampler == 1 and args.out.startswith("s3://")


def test_cluster_launcher_and_runtime_env():
    launcher = load("aws.yaml")
    assert launcher["head_node_type"] in launcher["available_node_types"]
    assert launcher["provider"]["type"] == "aws"
    runtime_env = load("runtime_env.yaml")
    assert runtime_env["working_dir"] == "." and ".venv" in runtime_env["excludes"]


def test_dockerfile_copies_what_exists():
    repo = CLUSTER.parent
    for line in (CLUSTER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (repo / source).exists(), source
