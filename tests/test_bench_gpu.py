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
    assert summary["no_nan"] is True and summary["errors"] == []
    assert json.loads(result.stdout) == summary, "one JSON summary on stdout"


def test_a_failing_measurement_is_recorded_and_the_others_still_come_back(monkeypatch, capsys):
    """A device run is one shot: an out-of-memory in one measurement must not lose the others."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_gpu

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(bench_gpu, "ours", out_of_memory)
    monkeypatch.setattr(bench_gpu, "minimal_example", out_of_memory)
    summary = bench_gpu.main(["--smoke"])
    assert summary["ours"] == {"error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert summary["sampling"] == summary["adapter"] == {"error": "skipped: realfill's tuning made no adapter"}
    assert summary["unet_step_tflops"] > 0, "the measurements that do not need the failed ones still ran"
    assert summary["errors"] == ["adapter", "diffusers_example", "ours", "sampling"] and summary["no_nan"] is None
    assert "Traceback" in capsys.readouterr().err
