"""The device check (benchmarks/bench_gpu.py) in its smoke mode: the code that a GPU machine runs, at tiny sizes on a
CPU, so that it never rots between GPU runs."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_device_check_runs_end_to_end_in_smoke_mode(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["smoke"] and summary["recipe"]["precision"] == "bf16" and summary["recipe"]["gradient_checkpointing"]
    for way in ("ours", "diffusers_example"):
        assert summary[way]["steps_per_s"] > 0 and summary[way]["losses_finite"]
    assert summary["ours"]["adapter_dtype"] == "float32"
    assert summary["ours_vs_example"]["steps_per_s_ratio"] > 0 and summary["unet_step_tflops"] > 0
    assert summary["mfu"] is None, "a CPU has no bf16 peak to compare with"
    assert [(row["scheduler"], row["batch"]) for row in summary["sampling"]] == [
        ("ddpm", 1), ("ddpm", 2), ("dpm", 1), ("dpm", 2)]
    assert all(row["seeds_per_s"] > 0 and row["failed"] == 0 for row in summary["sampling"])
    assert summary["adapter"] == {"loads": True, "changes_output": True, "finite": True}
    assert summary["no_nan"] is True
    assert json.loads(result.stdout) == summary, "one JSON summary on stdout"
