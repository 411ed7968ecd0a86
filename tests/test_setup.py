"""`make setup` installs the torch build that is asked for: the CPU build on Linux without an NVIDIA GPU, and
another build (TORCH=...) re-installed over the one there. Run with a stand-in python that records its calls."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIN = next(line.strip() for line in (REPO / "constraints.txt").read_text().splitlines() if line.startswith("torch=="))
CUDA = f"{PIN} --index-url https://download.pytorch.org/whl/cu128"
CPU = f"{PIN} --extra-index-url https://download.pytorch.org/whl/cpu"


@pytest.fixture
def venv(tmp_path):
    """A set-up venv (its .installed newer than the lock) whose python only logs what it is asked to do."""
    folder, bin_dir = tmp_path / "venv", tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (bin_dir / "python").chmod(0o755)
    (folder / ".installed").touch()
    return folder, log


def setup(venv, *args, path: str = "/usr/bin:/bin") -> list[str]:
    folder, log = venv
    log.unlink(missing_ok=True)
    result = subprocess.run(["make", "--no-print-directory", "setup", f"VENV={folder}", f"BIN={folder / 'bin'}", *args],
                            cwd=REPO, capture_output=True, text=True, env={**os.environ, "PATH": path}, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return log.read_text().splitlines() if log.exists() else []


def test_another_torch_build_is_installed_over_the_one_there(venv):
    folder, _ = venv
    (folder / ".torch").write_text(CPU + "\n")
    assert setup(venv, f"TORCH={CPU}") == [], "the same build: nothing to do"
    assert setup(venv, f"TORCH={CUDA}") == ["-m pip uninstall --quiet --yes torch", f"-m pip install --quiet {CUDA}"]
    assert (folder / ".torch").read_text().strip() == CUDA
    assert setup(venv, f"TORCH={CUDA}") == []


def test_a_venv_of_unknown_torch_gets_the_requested_one(venv):
    assert setup(venv, f"TORCH={CUDA}")[-1] == f"-m pip install --quiet {CUDA}"


def test_linux_without_an_nvidia_gpu_gets_the_cpu_build(venv, tmp_path):
    if os.uname().sysname != "Linux" or shutil.which("nvidia-smi", path="/usr/bin:/bin"):
        pytest.skip("needs Linux without nvidia-smi in /usr/bin or /bin")
    assert setup(venv)[-1] == f"-m pip install --quiet {CPU}"
    gpu = tmp_path / "gpu-bin"
    gpu.mkdir()
    (gpu / "nvidia-smi").write_text("#!/bin/sh\n")
    (gpu / "nvidia-smi").chmod(0o755)
    assert setup(venv, path=f"{gpu}:/usr/bin:/bin")[-1] == f"-m pip install --quiet {PIN}", "a GPU: PyPI's CUDA build"
