"""How a run is spread over a Ray cluster. The method's settings live in realfill.config."""

from __future__ import annotations

from dataclasses import dataclass

from realfill.config import FillConfig, check_types


@dataclass
class PipelineConfig:
    """Cluster-side settings of `realfill run`."""

    address: str | None = None
    """Ray address; None = $RAY_ADDRESS, else a local Ray started for this run."""
    gpus_per_tune: float | None = None
    """GPUs per fine-tuning task; None = 1 when the cluster has GPUs now, else 0 (on an autoscaling
    cluster that starts with no GPU node, give 1)."""
    gpus_per_sampler: float | None = None
    """GPUs each sampler actor holds for its lifetime; None = 1 when the cluster has GPUs now, else 0."""
    gpus_per_rank: float = 0.0
    """GPUs per ranking task: 0 ranks on CPUs (OpenCV features); a share such as 0.25 lets learned matchers
    (--rank.features disk, aliked, xfeat, loftr) run on a GPU."""
    samplers: int | None = None
    """Sampler actors, each holding the base model: a fixed pool of this size. None = an elastic pool that
    starts with a quarter of the GPUs (tuning costs more than sampling, and GPUs held by samplers cannot
    tune), at least 1, and follows the share of the GPU work waiting that is sampling (samplers_wanted)."""
    max_in_flight: int | None = None
    """Scenes between 'tune started' and 'recorded' at once (with all their variants, in a sweep); None = twice
    the GPUs (or CPUs), at least 2."""
    retries: int = 3
    """Times a task is retried, and an actor restarted, after its worker process dies."""
    force: bool = False
    """Redo every scene, even those already complete with this config, and retrain their adapters."""

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("gpus_per_tune", "gpus_per_sampler", "gpus_per_rank"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.samplers is not None and self.samplers < 1:
            raise ValueError("samplers must be >= 1")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")


@dataclass(frozen=True)
class Variant:
    """One config of a run, and the output its manifests go to: a plain run has one, a sweep several
    (whose adapters and images are shared wherever their settings agree)."""

    name: str
    """How the summary names its scenes ('' for a plain run's only variant)."""
    out_uri: str
    """Where its manifests (and its lease) are."""
    config: FillConfig


@dataclass
class Plan:
    """How the stages map onto the cluster's resources."""

    gpus: int
    """GPUs the cluster has now."""
    gpus_per_tune: float
    gpus_per_sampler: float
    samplers: int
    """Sampler actors started with the run."""
    max_samplers: int
    """Sampler actors the pool may grow to (see samplers_wanted)."""
    max_in_flight: int


def plan(resources: dict[str, float], pipeline: PipelineConfig) -> Plan:
    """Defaults from what the cluster has now; explicit settings always win (an explicit sampler count
    is also the pool's size for the whole run)."""
    gpus = int(resources.get("GPU", 0))

    def given_or(value, default):
        return value if value is not None else default

    gpus_per_sampler = given_or(pipeline.gpus_per_sampler, min(gpus, 1))
    samplers = given_or(pipeline.samplers, max(1, gpus // 4))
    growable = pipeline.samplers is None and gpus_per_sampler > 0
    return Plan(
        gpus=gpus,
        gpus_per_tune=given_or(pipeline.gpus_per_tune, min(gpus, 1)),
        gpus_per_sampler=gpus_per_sampler,
        samplers=samplers,
        max_samplers=max(samplers, int(gpus // gpus_per_sampler)) if growable else samplers,
        max_in_flight=given_or(pipeline.max_in_flight, max(2, 2 * (gpus or int(resources.get("CPU", 1))))),
    )


@dataclass
class Backlog:
    """GPU work in flight or waiting, in expected seconds, per stage: what the sampler pool balances."""

    tune_s: float
    sample_s: float


def samplers_wanted(plan: Plan, backlog: Backlog) -> int:
    """The sampler pool's target size: the share of the GPUs that sampling is of the GPU work in flight or
    waiting, within the plan's limits (a fixed pool is its size)."""
    total = backlog.tune_s + backlog.sample_s
    if plan.max_samplers == plan.samplers or not total:
        return plan.samplers
    return min(plan.max_samplers, max(plan.samplers, round(plan.max_samplers * backlog.sample_s / total)))
