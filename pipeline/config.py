"""How a run is spread over a Ray cluster. The method's settings live in realfill.config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from realfill.config import check

if TYPE_CHECKING:
    from realfill.stages import Stage


@dataclass
class PipelineConfig:
    """Cluster-side settings of `realfill run`."""

    address: str | None = None
    """Ray cluster to run on: ray://HOST:10001 or HOST:6379, or 'auto' for the Ray cluster already running on
    this machine; unset: $RAY_ADDRESS (set inside `ray job submit`), else a private local Ray started for this
    run alone (it never joins another Ray on the machine)."""
    gpus_per_tune: float | None = None
    """GPUs per fine-tuning task; unset: 1 when the cluster has GPUs at the start, else 0 (on an autoscaling
    cluster that starts with no GPU node, give 1: GPU work is then kept pending so that nodes are launched)."""
    gpus_per_sampler: float | None = None
    """GPUs each sampler actor holds for its lifetime; unset: 1 when the cluster has GPUs at the start, else 0."""
    gpus_per_rank: float = 0.0
    """GPUs per ranking task: 0 ranks on CPUs (OpenCV features); a share such as 0.25 lets learned matchers
    (--geometry.features disk, aliked, xfeat, loftr) run on a GPU."""
    samplers: int | None = None
    """Sampler actors, each holding the base model: a fixed pool of this size. Unset: an elastic pool that
    follows the cluster's GPUs and the share of the GPU work waiting that is sampling."""
    max_in_flight: int | None = None
    """Scenes between 'started' and 'recorded' at once (with all their variants, in a sweep); unset: twice the
    cluster's GPUs (its CPUs without GPU work), and a few more while GPU nodes may join."""
    retries: int = 3
    """Times a task is retried, and an actor restarted, after its worker process dies."""
    force: bool = False
    """Redo every scene, even those already complete with this config, and retrain their adapters."""
    verbose: bool = False
    """Full tracebacks on stderr (they are always in the run's log, OUT/logs/), the workers' output on the
    driver, and a line per tune task every tenth of its steps with its loss."""

    def __post_init__(self) -> None:
        for name in ("gpus_per_tune", "gpus_per_sampler", "gpus_per_rank"):
            check(getattr(self, name) is None or getattr(self, name) >= 0, f"{name} must be >= 0")
        for name in ("samplers", "max_in_flight"):
            check(getattr(self, name) is None or getattr(self, name) >= 1, f"{name} must be >= 1")
        check(self.retries >= 0, "retries must be >= 0")


@dataclass
class Plan:
    """How the stages map onto the cluster's resources now: the GPUs per call are fixed at the start of the
    run, the capacities follow the cluster as nodes come and go."""

    gpus: int
    """GPUs the cluster has now."""
    gpus_per_tune: float
    gpus_per_sampler: float
    gpus_per_rank: float
    samplers: int
    """Sampler actors started with the run."""
    min_samplers: int
    """Sampler actors the pool keeps once sampling has started (a fixed pool: its size)."""
    max_samplers: int
    """Sampler actors the pool may grow to now (see samplers_wanted)."""
    max_in_flight: int

    def gpus_per_call(self, stage: Stage) -> float:
        """GPUs each call of the stage takes (the stage names its setting; 0 for a CPU stage)."""
        return getattr(self, stage.gpus_setting) if stage.gpus_setting else 0.0


PENDING_GPU_SCENES = 8
"""Scenes admitted beyond the GPUs present when the run's stages use GPUs: their tasks wait for a GPU, and
that pending demand is what makes an autoscaler launch GPU nodes (none are launched for work not submitted)."""


def plan(resources: dict[str, float], pipeline: PipelineConfig, start: Plan | None = None) -> Plan:
    """The scheduling policy, in one place. Re-planned from the cluster's resources every few seconds, so
    capacity follows GPU nodes as they join and leave; explicit settings always win.

    - GPUs per call: as given, else 1 when the cluster has GPUs at the start (`start` is None), else 0.
    - Scenes in flight: twice the GPUs present (or the CPUs, on a run without GPU work), at least 2; when the
      run's stages use GPUs, PENDING_GPU_SCENES more, whose waiting tasks ask the autoscaler for nodes.
    - Samplers: a fixed pool when --samplers is given; else the pool starts with a quarter of the GPUs
      present (none when there is no GPU yet: a sampler waiting for a GPU would take the first one that joins,
      before any scene needs it; one on a run without GPU work), keeps at least one once sampling starts,
      and may grow to every GPU present, following the share of the GPU work waiting that is sampling."""
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))

    def given_or(value, default):
        return value if value is not None else default

    gpus_per_tune = start.gpus_per_tune if start else given_or(pipeline.gpus_per_tune, min(gpus, 1))
    gpus_per_sampler = start.gpus_per_sampler if start else given_or(pipeline.gpus_per_sampler, min(gpus, 1))
    fixed = pipeline.samplers is not None
    samplers = pipeline.samplers if fixed else (gpus // 4 if gpus_per_sampler else 1)
    minimum = pipeline.samplers if fixed else 1
    uses_gpus = gpus_per_tune > 0 or gpus_per_sampler > 0
    in_flight = max(2, 2 * (gpus if uses_gpus else cpus)) + (PENDING_GPU_SCENES if uses_gpus else 0)
    return Plan(gpus=gpus, gpus_per_tune=gpus_per_tune, gpus_per_sampler=gpus_per_sampler,
                gpus_per_rank=pipeline.gpus_per_rank, samplers=samplers, min_samplers=minimum,
                max_samplers=minimum if fixed or not gpus_per_sampler else max(minimum, int(gpus // gpus_per_sampler)),
                max_in_flight=given_or(pipeline.max_in_flight, in_flight))


@dataclass
class Backlog:
    """GPU work in flight or waiting, in expected seconds, per stage: what the sampler pool balances."""

    tune_s: float
    sample_s: float


def samplers_wanted(plan: Plan, backlog: Backlog) -> int:
    """The sampler pool's target size: the share of the GPUs that sampling is of the GPU work in flight or
    waiting, within the plan's limits (a fixed pool is its size)."""
    total = backlog.tune_s + backlog.sample_s
    if plan.max_samplers == plan.min_samplers or not total:
        return plan.min_samplers
    return min(plan.max_samplers, max(plan.min_samplers, round(plan.max_samplers * backlog.sample_s / total)))
