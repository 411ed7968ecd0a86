"""Failures are one line for people and a full record for whoever debugs: the run's log under OUT holds the
traceback of every failure that is not one of our own input errors (a worker's included), and --verbose
shows it on stderr too."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_scene

FLAGS = ["--device", "cpu", "--tune.resolution", "64", "--sample.resolution", "64", "--tune.train_steps", "2",
         "--tune.batch_size", "2", "--sample.num_samples", "2", "--sample.steps", "2", "--quiet", "--no_report"]


@pytest.fixture(scope="module")
def corrupt_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with its UNet weights cut short: loading it fails deep inside diffusers."""
    folder = tmp_path_factory.mktemp("corrupt") / "model"
    shutil.copytree(tiny_model, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    return folder


def realfill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "realfill.cli", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TERM": "xterm"})


def named_log(stdout: str) -> Path:
    (line,) = [line for line in stdout.splitlines() if line.startswith("run log: ")]
    return Path(line.removeprefix("run log: "))


def test_a_fill_that_fails_on_a_bug_logs_its_traceback_and_says_one_line(corrupt_model, tmp_path, capsys):
    from realfill.cli import main

    scene = write_scene(tmp_path / "scene")
    assert main(["fill", str(scene), "--out", str(tmp_path / "out"), "--base_model", str(corrupt_model), *FLAGS]) == 1
    said = capsys.readouterr()
    assert said.err.strip().splitlines()[-1] == (
        f"realfill: scene failed: OSError: Unable to load weights from checkpoint file for "
        f"'{corrupt_model}/unet/diffusion_pytorch_model.safetensors' at "
        f"'{corrupt_model}/unet/diffusion_pytorch_model.safetensors'."), said.err
    assert "Traceback" not in said.err
    log = named_log(said.out)
    assert log.parent == tmp_path / "out" / "logs" and log.is_file()
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "invalid header length" in text, \
        "the cause the one line leaves out is in the log"
    assert main(["fill", str(scene), "--out", str(tmp_path / "verbose"), "--base_model", str(corrupt_model),
                 "--verbose", *FLAGS]) == 1
    verbose = capsys.readouterr().err
    assert "Traceback (most recent call last)" in verbose and "invalid header length" in verbose


def test_a_run_logs_each_workers_traceback_and_input_errors_as_lines(corrupt_model, tmp_path):
    """On Ray: a scene with a bad input (one line in the log, no traceback) and one whose tune task hits the
    corrupt model (the worker's traceback in the log); progress is plain lines that end at the totals."""
    root = tmp_path / "scenes"
    write_scene(root / "good")
    (write_scene(root / "broken") / "target" / "mask.png").unlink()
    result = realfill("run", str(root), "--out", str(tmp_path / "out"), "--base_model", str(corrupt_model),
                      *[flag for flag in FLAGS if flag != "--quiet"])
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed: 2" in result.stdout and "failed broken: " in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not re.search(r"[\r\x1b]", result.stderr), "no cursor or colour escapes when output is not a terminal"
    progress = [line for line in result.stderr.splitlines() if line.startswith("progress: ")]
    assert progress[0] == "progress: tune 0/2, sample 0/2, rank 0/2", "only the stages realfill uses"
    assert progress[-1] == "progress: tune 2/2, sample 2/2, rank 2/2 (failed 2)"
    text = named_log(result.stdout).read_text()
    (bad_input,) = [line for line in text.splitlines() if "tune of broken failed" in line]
    assert "mask.png: file not found" in bad_input and "WARNING" in bad_input
    failure = text[text.index("tune of good failed"):]
    assert "Traceback (most recent call last)" in failure and "invalid header length" in failure
    assert "stage_task" in failure and "in tune_scene" in failure, "the worker's own frames are in the log"
