"""Identities, and the records that carry them between stages. Every key is computed here, from exactly
what changes the output it names:

- an adapter: the scene's content, the tune config, the seed and the base model;
- an image: its adapter (for untuned methods, the scene and model), the sampling settings that change
  pixels (not how many seeds, not the batch they are generated in), what the method conditions on, and its
  seed; so raising `num_samples` makes only the new seeds;
- a stitch result: the scene's content, the stitch settings and the geometry section;
- a run: its complete config (what a resume compares).

The manifest rows are typed here too (`SampleRow`, `SceneRow`); their Parquet schemas are derived from them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import pyarrow as pa

from realfill.config import FillConfig, Method, SampleConfig, TuneConfig

KEY_LENGTH = 16
"""Hex digits of every key."""
ADAPTER_FORMAT = 2
"""Version of realfill_adapter.json; 2 records the weights' size, digest and dtype."""
NOT_IN_PIXELS = ("num_samples", "batch_size")
"""Sampling settings that do not change any image: how many seeds, and how many per forward pass."""
SCHEMA_VERSION = 7
"""Version of the manifest tables. 2: parts named by scene alone and compacted at the end of a run (the
columns are those of 1). 3: the scenes table's `selection` (older runs read it as null). 4: one file per table
(OUT/manifest/TABLE.parquet), records in OUT/manifest/_journal/ until folded in (the columns are those of 3).
5: the scenes table's `method` (older runs read it as null). 6: each table a folder of segments
(OUT/manifest/TABLE/segment-N.parquet), a scene's rows in one segment, rewritten in place (the columns of 5).
7: the samples table's `support` and `support_uri`, the scenes table's `best_support` (older runs read them as
null)."""


Status = Literal["ok", "failed"]
"""A sample's, a scene's or a request's outcome."""
Selection = Literal["geometry", "no evidence", "no known region"]
"""What a scene's selection rests on: matches landing where the known pixels say, nothing, or no known pixel to
check against at all (a blank canvas: its samples are variations of the scene, none ranked as more authentic)."""


def digest(payload: Any) -> str:
    """A short stable digest of JSON-able data (dataclasses as their fields)."""
    if dataclasses.is_dataclass(payload):
        payload = asdict(payload)
    text = json.dumps(payload, sort_keys=True, default=lambda value: asdict(value) if dataclasses.is_dataclass(value)
                      else list(value))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def support_uri(sample_uri: str, config: FillConfig) -> str:
    """Where a sample's support map goes: beside it, named by the settings that draw it, the matching and which
    samples a second matcher confirms (a sweep's variants share images, not necessarily these); how many are kept
    does not change it."""
    ranking = digest({"geometry": asdict(config.geometry), "confirm": config.rank.confirm,
                      "confirm_fraction": config.rank.confirm_fraction})
    return f"{sample_uri.rsplit('.', 1)[0]}.support-{ranking}.png"


def run_key(config: FillConfig) -> str:
    """A run's complete config: manifests and resume checks compare it."""
    return digest(config)


def _training(tune: TuneConfig, seed: int, base_model: str | None, view: str | None) -> dict[str, Any]:
    """What decides an adapter besides the scene's content (view: what made an extra training view)."""
    return {"tune": asdict(tune), "seed": seed, "base": base_model, **({"view": view} if view else {})}


def adapter_key(scene_fingerprint: str, tune: TuneConfig, seed: int, base_model: str | None,
                view: str | None = None) -> str:
    return digest({"scene": scene_fingerprint, **_training(tune, seed, base_model, view)})


def stitching(config: FillConfig) -> dict[str, Any]:
    """What decides a stitch result besides the scene: the stitch settings and the geometry it warps by."""
    return {"stitch": asdict(config.stitch), "geometry": asdict(config.geometry)}


def training_view(config: FillConfig) -> str | None:
    """What makes the stitch training view, when the tune config asks for one."""
    return digest(stitching(config)) if config.tune.stitch_view_weight > 0 else None


def training_key(scene_uri: str, config: FillConfig) -> str:
    """Which (scene, variant) pairs of one run share an adapter, known before the scene is read: the same
    scene folder and the same training inputs (the adapter key itself needs the scene's content)."""
    return digest({"scene_uri": scene_uri,
                   **_training(config.tune, config.seed, config.base_model, training_view(config))})


def stitch_key(scene_fingerprint: str, config: FillConfig) -> str:
    """A stitch result: the scene's content and what stitching takes (it has no seed)."""
    return digest({"scene": scene_fingerprint, **stitching(config)})


def stitching_key(scene_uri: str, config: FillConfig) -> str:
    """Which (scene, variant) pairs of one run share a stitch result, known before the scene is read."""
    return digest({"scene_uri": scene_uri, **stitching(config)})


def _pixels(sample: SampleConfig) -> dict[str, Any]:
    return {name: value for name, value in asdict(sample).items() if name not in NOT_IN_PIXELS}


def _generation(config: FillConfig) -> dict[str, Any]:
    """What decides a sampled image besides its source (the adapter, or for untuned methods the scene) and
    its seed: the pixel-changing sampling settings, and what the method conditions on."""
    parts: dict[str, Any] = {"sample": _pixels(config.sample)}
    if not config.tunes:
        parts.update(method=config.method, model=config.model)
    if config.method == "sd-inpaint":
        parts["prompt"] = config.prompt
    if config.by_example:
        parts["exemplar"] = stitching(config)  # the exemplar is found by the stitch's matches
    if config.init == "stitch":
        parts["init"] = {**stitching(config), "strength": config.init_strength}
    return parts


def image_key(source: str, config: FillConfig) -> str:
    """The images of one source (an adapter's key, or an untuned method's scene fingerprint) made with one
    set of pixel-changing settings (a folder of seeds)."""
    return digest({"adapter": source, **_generation(config)})


def sampling_key(scene_uri: str, config: FillConfig) -> str:
    """Which (scene, variant) pairs of one run share a folder of images, known before the scene is read:
    the same training (see training_key; the scene alone for untuned methods) and the same generation."""
    source = training_key(scene_uri, config) if config.tunes else scene_uri
    return digest({"training": source, **_generation(config)})


def seeds(config: FillConfig) -> list[int]:
    """The seeds a config samples: sample i uses seed + i; stitch makes one image, whatever num_samples."""
    return [config.seed + index for index in range(config.sample.num_samples if config.samples else 1)]


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


def _arrow(annotation: Any) -> tuple[pa.DataType, bool]:
    """The Arrow type of a row field's annotation, and whether it may be null (`X | None`): a list of records
    is a list of structs."""
    arms = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    present = [arm for arm in arms if arm is not type(None)] or [annotation]
    if typing.get_origin(present[0]) is Literal:  # its values' type: every Literal here is of strings
        present = [type(typing.get_args(present[0])[0])]
    if typing.get_origin(present[0]) is list:
        return pa.list_(pa.struct(_columns(typing.get_args(present[0])[0]))), type(None) in arms
    arrow = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(),
             datetime: pa.timestamp("ms", tz="UTC")}
    return arrow[present[0]], type(None) in arms


def _columns(row_type: type) -> list[pa.Field]:
    hints = typing.get_type_hints(row_type)
    columns = []
    for item in dataclasses.fields(row_type):
        arrow, nullable = _arrow(hints[item.name])
        columns.append(pa.field(item.name, item.metadata.get("arrow", arrow), nullable=nullable))
    return columns


def arrow_schema(row_type: type, table: str) -> pa.Schema:
    """A table's Parquet schema, derived from its row dataclass (a field's metadata may narrow its Arrow type,
    e.g. to int32), stamped with the schema version and the table's name."""
    return pa.schema(_columns(row_type), metadata={"realfill.schema_version": str(SCHEMA_VERSION),
                                                   "realfill.table": table})


@functools.cache
def _record_lists(row_type: type) -> dict[str, type]:
    """A row type's fields that hold lists of records, with the record's type (read once per type: rows are many)."""
    hints = typing.get_type_hints(row_type)
    return {item.name: typing.get_args(hints[item.name])[0] for item in dataclasses.fields(row_type)
            if typing.get_origin(hints[item.name]) is list}


def from_values(row_type: type, values: dict[str, Any]):
    """A row dataclass from a table row's values (a list of structs becomes a list of its records)."""
    lists = {name: [record(**value) for value in values[name]] for name, record in _record_lists(row_type).items()
             if values.get(name) is not None}
    return row_type(**{**values, **lists})


INT32 = {"arrow": pa.int32()}


class Outcome:
    """A row whose status says how it ended."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(kw_only=True)
class SampleRow(Outcome):
    """One sample of a scene: a row of the samples table."""

    scene_id: str
    seed: int
    uri: str
    """The composited image."""
    status: Status
    """ok, or failed (then error says why, and the image was never written)."""
    error: str | None = None
    run_key: str
    """Digest of the config of the run that recorded it."""
    width: int | None = field(default=None, metadata=INT32)
    height: int | None = field(default=None, metadata=INT32)
    matches: int | None = field(default=None, metadata=INT32)
    """Fill-region matches that are RANSAC inliers (a plain count)."""
    score: float | None = None
    """Geometry-aware ranking score."""
    rank: int | None = field(default=None, metadata=INT32)
    """1 = best."""
    selected: bool | None = None
    """Kept by keep / keep_fraction."""
    support: float | None = None
    """The share of the fill region the references vouch for (realfill.selection.support), 0 to 1."""
    support_uri: str | None = None
    """Its support map: the target's size, 255 where the references vouch for the fill, 0 elsewhere."""
    created_at: datetime | None = None


@dataclass(kw_only=True)
class SceneRow(Outcome):
    """The outcome of one scene under one config: a row of the scenes table."""

    scene_id: str
    scene_uri: str
    status: Status
    error: str | None = None
    run_key: str
    method: Method | None = None
    """The config's method (null in runs recorded before schema version 5)."""
    adapter_uri: str | None = None
    best_uri: str | None = None
    """The top-ranked sample; None when the ranking has no evidence to rest on (see selection)."""
    best_support: float | None = None
    """The best sample's support (its samples row's)."""
    selection: Selection | None = None
    """What the ranking rests on: "geometry" (matches landing where the known pixels say), "no evidence"
    (none did: no sample is selected and there is no best; plain match counts, which noise has too, only order
    the ties), or "no known region" (a blank canvas: the samples are variations, none selected)."""
    num_samples: int | None = field(default=None, metadata=INT32)
    tune_s: float | None = None
    """Fine-tuning seconds (None for methods that do not tune)."""
    sample_s: float | None = None
    """Seconds making the images: sampling, and stitching (the stitch method's image, or init stitch's start)."""
    rank_s: float | None = None
    config: str | None = None
    """The run's full config, as JSON."""
    created_at: datetime | None = None


@dataclass
class Reference:
    """A reference of a request, and why: its verified correspondences with the target's known pixels (None
    for a reference the requests table gave)."""

    uri: str
    matches: int | None


@dataclass(kw_only=True)
class RequestRow(Outcome):
    """One request of a photo-library run: a row of OUT/requests.parquet."""

    scene_id: str
    row: int = field(metadata=INT32)
    """The request's row in its table (1-based)."""
    target: str
    album: str
    """The pool references were picked from."""
    kind: str
    """mask, box, outpaint or aspect."""
    request: str
    """The row as the table gave it, as JSON."""
    refs: list[Reference]
    """The references, and the verified correspondences with the known pixels that picked each."""
    status: Status
    """ok (its scene completed), or failed (error says why: bad input, no usable reference, a failed stage)."""
    error: str | None = None
    scene_uri: str | None = None
    filled_uri: str | None = None
    """The finished photo; none when the run found no evidence to select a completion, or its support is under
    --min_support."""
    support: float | None = None
    """The share of the best completion's fill that the references vouch for; none without a best completion."""
    fill_seen: float | None = None
    """Fraction of the fill region the picked references show (through the plane their correspondences with the
    known pixels fix); none when the requests table gave the references."""
    fill_detail: float | None = None
    """Median, over the fill they show, of the references' own pixels per target pixel (under 1: enlarged)."""
    pick_s: float | None = None


ROWS = {"samples": SampleRow, "scenes": SceneRow}
"""Each manifest table and the row type it holds."""
