"""How a run is spread over a Ray cluster. The method's settings live in realfill.config."""

from __future__ import annotations

from dataclasses import dataclass

from realfill.config import check_types


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
    samplers: int | None = None
    """Sampler actors, each holding the base model; None = a quarter of the GPUs (tuning costs more than
    sampling, and GPUs held by samplers cannot tune), at least 1."""
    max_in_flight: int | None = None
    """Scenes between 'tune started' and 'recorded' at once; None = twice the GPUs (or CPUs), at least 2."""
    retries: int = 3
    """Times a task is retried, and an actor restarted, after its worker process dies."""
    force: bool = False
    """Redo every scene, even those already complete with this config, and retrain their adapters."""

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("gpus_per_tune", "gpus_per_sampler"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.samplers is not None and self.samplers < 1:
            raise ValueError("samplers must be >= 1")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
