"""Faults injected into stage calls, as a preempted worker or a lost node would cause them: a test names
this file in REALFILL_FAULTS (pipeline.stages loads it in every worker) and sets the hooks it wants."""

from __future__ import annotations

import os
import time
from pathlib import Path

import ray

from pipeline.stages import FAULTS

CRASH_ONCE = "REALFILL_TEST_CRASH_ONCE"
"""'STAGE:MARKER' makes the first STAGE call that finds no MARKER file create it and kill its own worker
process, as a preempted or OOM-killed worker would die."""
HOLD_ONCE = "REALFILL_TEST_HOLD_ONCE"
"""'STAGE:MARKER' makes the first STAGE call that finds no MARKER write its node's id there and wait (for its
node to be taken away by the test); its retry finds the MARKER and goes on."""
GATHER = "REALFILL_TEST_GATHER"
"""'STAGE:FOLDER:N' makes every STAGE call wait until N calls of it have started (at most WAIT_S): it can go
on only if the run had N of them running at once."""
WAIT_S = 300.0


def faults(**hooks: str) -> dict[str, str]:
    """The environment that injects the given hooks (CRASH_ONCE=..., by name) into a run's stage calls."""
    return {FAULTS: str(Path(__file__).resolve()), **{globals()[name]: spec for name, spec in hooks.items()}}


def hooks(name: str, stage: str) -> list[str]:
    """The arguments of a hook's specs (comma-separated 'STAGE:ARG[:ARG]') that name this stage."""
    return [spec.split(":", 1)[1] for spec in os.environ.get(name, "").split(",")
            if spec.partition(":")[0] == stage and ":" in spec]


def at_call(stage: str) -> None:
    """Run by every stage call (and tuning step) of a run with REALFILL_FAULTS set."""
    for marker in hooks(CRASH_ONCE, stage):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
    for marker in hooks(HOLD_ONCE, stage):
        if not os.path.exists(marker):
            with open(f"{marker}.tmp", "w") as handle:
                handle.write(ray.get_runtime_context().get_node_id())
            os.replace(f"{marker}.tmp", marker)
            time.sleep(WAIT_S)
    for spec in hooks(GATHER, stage):
        folder, _, count = spec.rpartition(":")
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, ray.get_runtime_context().get_task_id()), "w").close()  # once per call
        deadline = time.monotonic() + WAIT_S
        while len(os.listdir(folder)) < int(count) and time.monotonic() < deadline:
            time.sleep(0.1)
