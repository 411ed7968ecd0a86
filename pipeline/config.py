"""How a run is spread over a Ray cluster. The method's settings live in realfill.config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PipelineConfig:
    """Cluster-side settings of `realfill run`."""

    address: str | None = None
    """Ray address; None = $RAY_ADDRESS, else a local Ray started for this run."""
    gpus_per_tune: float | None = None
    """GPUs per fine-tuning task; None = 1 when the cluster has GPUs, else 0."""
    samplers: int | None = None
    """Sampler actors (each holds the base model, with a GPU when there are GPUs); None = one per GPU, or 1."""
    max_in_flight: int | None = None
    """Scenes between 'tune started' and 'recorded' at once; None = twice the GPUs (or CPUs), at least 2."""
    retries: int = 3
    """Times a task is retried, and an actor restarted, after its worker process dies."""
    force: bool = False
    """Redo every scene, even those already complete with this config, and retrain their adapters."""

    def __post_init__(self) -> None:
        if self.gpus_per_tune is not None and self.gpus_per_tune < 0:
            raise ValueError("gpus_per_tune must be >= 0")
        if self.samplers is not None and self.samplers < 1:
            raise ValueError("samplers must be >= 1")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
