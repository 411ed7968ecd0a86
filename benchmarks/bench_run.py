"""`realfill run` (one Ray job, stages pipelined, models loaded once per worker) vs a shell loop of
`realfill fill` (one process per scene), over the same scenes with the same config: wall-time ratio.

    REALFILL_SCENES=path/to/scenes python benchmarks/bench_run.py [N_SCENES]
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLAGS = ["--base_model", "tiny", "--device", "cpu", "--tune.resolution", "64", "--sample.resolution", "64",
         "--tune.train_steps", "20", "--tune.batch_size", "4", "--sample.num_samples", "8", "--sample.steps", "10",
         "--quiet"]


def timed(command: str) -> float:
    started = time.perf_counter()
    subprocess.run(["bash", "-c", f"set -e; {command}"], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    source = Path(os.environ["REALFILL_SCENES"])
    names = sorted(path.name for path in source.iterdir() if (path / "target").is_dir())[:count]
    flags = " ".join(map(shlex.quote, FLAGS))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "scenes"
        root.mkdir()
        for name in names:
            (root / name).symlink_to(source / name, target_is_directory=True)
        # build the cached tiny model once, outside both timings
        subprocess.run([sys.executable, "-c", "from realfill.method.models import tiny_model_path; tiny_model_path()"],
                       check=True)
        loop = timed(f"for scene in {root}/*; do realfill fill \"$scene\" --out {scratch}/loop {flags}; done")
        run = timed(f"realfill run {root} --out {scratch}/run {flags}")
    print(f"{len(names)} scenes, tiny model, CPU ({os.cpu_count()} cores), 20 train steps, 8 seeds x 10 steps")
    print(f"- shell loop of `realfill fill`: {loop:.1f}s")
    print(f"- `realfill run` (local Ray): {run:.1f}s")
    print(f"- speed-up: {loop / run:.2f}x")


if __name__ == "__main__":
    main()
