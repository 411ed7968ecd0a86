"""Identities, and the records that carry them between stages. Every key is computed here, from exactly
what changes the output it names:

- an adapter: the scene's content, the tune config, the seed and the base model;
- an image: its adapter, the sampling settings that change pixels (not how many seeds, not the batch they
  are generated in) and its seed; so raising `num_samples` makes only the new seeds;
- a run: its complete config (what a resume compares).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from realfill.config import FillConfig, SampleConfig, TuneConfig

KEY_LENGTH = 16
"""Hex digits of every key."""
ADAPTER_FORMAT = 2
"""Version of realfill_adapter.json; 2 records the weights' size, digest and dtype."""
NOT_IN_PIXELS = ("num_samples", "batch_size")
"""Sampling settings that do not change any image: how many seeds, and how many per forward pass."""


def digest(payload: Any) -> str:
    """A short stable digest of JSON-able data (dataclasses as their fields)."""
    if dataclasses.is_dataclass(payload):
        payload = asdict(payload)
    text = json.dumps(payload, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def run_key(config: FillConfig) -> str:
    """A run's complete config: manifests and resume checks compare it."""
    return digest(config)


def adapter_key(scene_fingerprint: str, tune: TuneConfig, seed: int, base_model: str | None) -> str:
    return digest({"scene": scene_fingerprint, "tune": asdict(tune), "seed": seed, "base": base_model})


def image_key(adapter: str, sample: SampleConfig) -> str:
    """The images of one adapter made with one set of pixel-changing sampling settings (a folder of seeds)."""
    pixels = {name: value for name, value in asdict(sample).items() if name not in NOT_IN_PIXELS}
    return digest({"adapter": adapter, "sample": pixels})


@dataclass
class WeightsRecord:
    """What an adapter's weights file must be for the adapter to be trusted."""

    file: str
    bytes: int
    sha256: str
    dtype: str


@dataclass
class AdapterInfo:
    """realfill_adapter.json: how an adapter was made, and the record of its weights."""

    scene_id: str
    scene_fingerprint: str
    base_model: str | None
    seed: int
    key: str
    config: TuneConfig
    device: str
    mixed_precision: str
    gradient_checkpointing: bool
    losses: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    weights: WeightsRecord | None = None
    format: int = ADAPTER_FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> AdapterInfo:
        """Raises ValueError when the text is not an adapter record of this format."""
        values = json.loads(data)
        if not isinstance(values, dict) or values.get("format") != ADAPTER_FORMAT:
            found = values.get("format") if isinstance(values, dict) else None
            raise ValueError(f"adapter format {found} (this realfill reads {ADAPTER_FORMAT})")
        try:
            values["config"] = TuneConfig(**values["config"])
            values["weights"] = WeightsRecord(**values["weights"]) if values.get("weights") else None
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an adapter record ({exc})") from None
