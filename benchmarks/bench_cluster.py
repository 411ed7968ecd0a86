"""A run on a cluster that grows: GPUs in use while GPU nodes join, measured from outside the run.

Ray's own multi-node harness (`ray.cluster_utils.Cluster`) starts a head with no CPU and no GPU (as the
shipped KubeRay head: it only drives), then `realfill run --gpus_per_tune 1 --gpus_per_sampler 1` on
synthetic scenes with the tiny model, and adds one GPU node (logical GPU, 2 CPUs) at the start and one
more every JOIN_S seconds, up to NODES. A second driver samples the GPUs held (cluster total minus
available) every 0.25 s: the peak, and the utilisation (GPU-seconds held over GPU-seconds present) while
the run goes. Run it on two checkouts to compare two versions of the driver:

    python benchmarks/bench_cluster.py [SCENES] [NODES]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

JOIN_S = 12.0
FLAGS = ["--base_model", "tiny", "--device", "cpu", "--tune.resolution", "64", "--sample.resolution", "64",
         "--tune.train_steps", "60", "--tune.batch_size", "2", "--tune.checkpoint_every", "0",
         "--sample.num_samples", "4", "--sample.steps", "4", "--gpus_per_tune", "1", "--gpus_per_sampler", "1",
         "--quiet", "--no_report"]


def write_scenes(root: Path, count: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import write_scene

    for index in range(count):
        write_scene(root / f"scene{index:02d}", seed=index)


def sample_gpus(address: str, stop: threading.Event, samples: list[tuple[float, float, float]]) -> None:
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    while not stop.is_set():
        total = ray.cluster_resources().get("GPU", 0.0)
        samples.append((time.time(), total, total - ray.available_resources().get("GPU", 0.0)))
        time.sleep(0.25)
    ray.shutdown()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    nodes = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    with tempfile.TemporaryDirectory() as scratch:
        os.environ.setdefault("REALFILL_CACHE", str(Path(scratch) / "cache"))
        subprocess.run([sys.executable, "-c", "from realfill.method.models import tiny_model_path; "
                        "tiny_model_path()"], check=True)
        root = Path(scratch) / "scenes"
        write_scenes(root, count)
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "num_gpus": 0})
        samples: list[tuple[float, float, float]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_gpus, args=(cluster.address, stop, samples))
        try:
            started = time.time()
            run = subprocess.Popen([sys.executable, "-m", "realfill.cli", "run", str(root), "--out",
                                    f"{scratch}/out", "--address", cluster.address, *FLAGS],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            sampler.start()
            joined = 0
            while run.poll() is None:
                if joined < nodes and time.time() - started >= joined * JOIN_S:
                    cluster.add_node(num_cpus=2, num_gpus=1)
                    joined += 1
                time.sleep(0.25)
            wall = time.time() - started
            output = run.stdout.read()
        finally:
            stop.set()
            if sampler.is_alive():
                sampler.join()
            cluster.shutdown()
    held = [(t, total, used) for t, total, used in samples if total > 0]
    peak = max((used for _, _, used in held), default=0.0)
    present = sum(total for _, total, _ in held)
    busy = sum(used for _, _, used in held)
    summary = [line for line in output.splitlines() if line.startswith(("done:", "GPU", "peak"))]
    print(f"{count} scenes, GPU nodes joining every {JOIN_S:.0f}s up to {nodes}; wall {wall:.0f}s; "
          f"exit {run.returncode}")
    print(f"- peak GPUs held: {peak:.0f} of {max((total for _, total, _ in held), default=0):.0f}")
    print(f"- GPU utilisation while present (held / present GPU-seconds): {busy / present:.0%}" if present else
          "- no GPU was ever present")
    print("\n".join(f"- run said: {line}" for line in summary))


if __name__ == "__main__":
    main()
