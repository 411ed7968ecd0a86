"""Every default of the RealFill recipe, in one place.

The CLI, the Ray jobs and the manifests read these dataclasses; nothing else restates a default. Values from
flags, config files and sweep grids are typed by the CLI's parser (jsonargparse, from these annotations); each
dataclass checks how its fields relate.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import reprlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

DEFAULT_BASE_MODEL = "stabilityai/stable-diffusion-2-inpainting"
Device = Literal["auto", "cpu", "cuda"]
Scheduler = Literal["ddpm", "dpm"]
Features = Literal["sift", "orb", "akaze", "disk", "aliked", "xfeat", "loftr"]
LpipsNet = Literal["alex", "vgg", "squeeze"]
Precision = Literal["auto", "no", "fp16", "bf16"]
Switch = Literal["auto", "on", "off"]
Method = Literal["realfill", "stitch", "sd-inpaint", "paint-by-example"]
Init = Literal["noise", "stitch"]
DEFAULT_EXAMPLE_MODEL = "Fantasy-Studio/Paint-by-Example"


def shown(value: Any) -> str:
    """How a wrong value is quoted in an error: bounded, however large the value."""
    quoted = reprlib.Repr()
    quoted.maxstring = quoted.maxother = 60
    quoted.maxlist = quoted.maxtuple = quoted.maxdict = quoted.maxset = 4
    quoted.maxlevel = 2
    return quoted.repr(value)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class TuneConfig:
    """LoRA fine-tuning of the inpainting model on one scene (paper recipe by default)."""

    resolution: int = 512
    """Side of the square training crops, in pixels."""
    train_steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 16
    """Independent draws (with replacement) from refs + target per step."""
    resize_max_scale: float = 576 / 512
    """Augmentation: the short side is resized uniformly to [resolution, resolution * this], then cropped."""
    lora_rank: int = 8
    """LoRA rank r."""
    lora_alpha: int = 16
    """LoRA alpha (scale = alpha / r)."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA branch."""
    unet_lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """UNet modules that get LoRA layers."""
    text_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    """Text-encoder modules that get LoRA layers."""
    unet_lr: float = 2e-4
    """AdamW learning rate of the UNet LoRA (constant schedule)."""
    text_lr: float = 4e-5
    """AdamW learning rate of the text-encoder LoRA (constant schedule)."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    prompt: str = "a photo of sks"
    """Training (and sampling) prompt."""
    prompt_dropout: float = 0.1
    """Probability that a draw's prompt is replaced by the empty prompt."""
    mask_min_boxes: int = 1
    """Random masks: fewest rectangles."""
    mask_max_boxes: int = 29
    """Random masks: most rectangles."""
    mask_min_side: float = 0.03
    """Random masks: smallest rectangle side, as a fraction of the resolution."""
    mask_max_side: float = 0.25
    """Random masks: rectangle sides are drawn from [min_side, max_side) * resolution."""
    mask_invert_prob: float = 0.5
    """Random masks: probability of inverting the rectangles (fill everything but them)."""
    mask_full_prob: float = 0.1
    """Random masks: probability of masking the whole image."""
    mixed_precision: Precision = "auto"
    """auto (bf16 where the GPU supports it, else fp16; fp32 on CPU), no, fp16 (CUDA only) or bf16 (CUDA or
    CPU): the frozen weights in that precision under autocast, the LoRA weights and the saved adapter in fp32."""
    gradient_checkpointing: Switch = "auto"
    """auto (on with CUDA, off on CPU), on or off."""
    checkpoint_every: int = 250
    """Save a resumable checkpoint every this many steps (0 = never)."""
    stitch_view_weight: float = 0.0
    """With --init stitch: the stitch result joins the training views, its hole pixels weighted by this in
    the loss (0 = not a training view; the target's own hole always weighs 0)."""

    def __post_init__(self) -> None:
        for name in ("unet_lora_targets", "text_lora_targets"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        check(self.resolution >= 8 and self.resolution % 8 == 0, "resolution must be a positive multiple of 8")
        check(self.train_steps >= 1, "train_steps must be >= 1")
        check(self.batch_size >= 1, "batch_size must be >= 1")
        check(self.resize_max_scale >= 1.0, "resize_max_scale must be >= 1")
        check(self.lora_rank >= 1 and self.lora_alpha > 0, "lora_rank and lora_alpha must be positive")
        check(0 <= self.lora_dropout < 1, "lora_dropout must be in [0, 1)")
        check(self.unet_lr > 0 and self.text_lr >= 0, "learning rates must be positive")
        check(1 <= self.mask_min_boxes <= self.mask_max_boxes, "need 1 <= mask_min_boxes <= mask_max_boxes")
        check(0 < self.mask_min_side < self.mask_max_side <= 1, "need 0 < mask_min_side < mask_max_side <= 1")
        for name in ("prompt_dropout", "mask_invert_prob", "mask_full_prob"):
            check(0 <= getattr(self, name) <= 1, f"{name} must be a probability")
        check(self.checkpoint_every >= 0, "checkpoint_every must be >= 0")
        check(0 <= self.stitch_view_weight <= 1, "stitch_view_weight must be in [0, 1]")


FAST_SAMPLING = {"sample.scheduler": "dpm", "sample.steps": 25}
"""The fast preset: DPM-Solver++ in 25 steps instead of DDPM in 200 (config fields, as a file names them)."""


@dataclass
class SampleConfig:
    """Sampling many seeds from the tuned model and compositing them into the target."""

    resolution: int = 512
    """Long side of the generated image; the short side follows the target's aspect (multiples of 8)."""
    num_samples: int = 64
    """Seeds per scene."""
    steps: int = 200
    """Denoising steps."""
    scheduler: Scheduler = "ddpm"
    """ddpm (paper) or dpm (DPM-Solver++, the fast preset)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance scale (1.0 = none, as in the paper)."""
    batch_size: int = 8
    """Seeds generated per forward pass."""
    precision: Precision = "auto"
    """The pipeline's weights: auto (bf16 where the GPU supports it, else fp16; fp32 on CPU), no (fp32), fp16
    (CUDA only) or bf16 (CUDA or CPU). A half-precision image that overflows is decoded again in fp32."""
    dilate_px: int = 4
    """Compositing: the fill region is grown by this many native pixels ..."""
    feather_px: int = 6
    """... and then blended into the known pixels over this many more."""

    def __post_init__(self) -> None:
        check(self.resolution >= 8 and self.resolution % 8 == 0, "resolution must be a positive multiple of 8")
        check(self.num_samples >= 1, "num_samples must be >= 1")
        check(self.steps >= 1, "steps must be >= 1")
        check(self.guidance_scale >= 1.0, "guidance_scale must be >= 1")
        check(self.batch_size >= 1, "batch_size must be >= 1")
        check(self.dilate_px >= 0 and self.feather_px >= 0, "dilate_px and feather_px must be >= 0")


@dataclass(frozen=True)
class GeometryConfig:
    """How the target's known region is matched to other photos, and the fits those matches are verified by:
    one matcher and one set of fits, shared by stitch, ranking and reference picking."""

    features: Features = "sift"
    """sift, orb or akaze (OpenCV, no extra); disk or aliked (+LightGlue), xfeat (+LighterGlue) or loftr
    (the matchers extra; learned models run on CUDA when there is a GPU)."""
    weights: str | None = None
    """LoFTR weights: a safetensors file, local or any fsspec URI (the other learned matchers use the
    weights shipped in their packages)."""
    max_features: int | None = None
    """Most keypoints kept per image; unset: 4000 for OpenCV features, 1024 for learned ones (whose
    matching costs grow with the square of the count)."""
    max_side: int = 1024
    """Images are downscaled so their long side is at most this before feature detection."""
    ratio: float = 0.8
    """Lowe's ratio test for OpenCV features: best match distance / second best must be below this."""
    ransac_px: float = 3.0
    """RANSAC threshold of the fundamental-matrix fits that verify matches (ranking, picking), in pixels at
    detection resolution."""
    neighbours: int = 12
    """Known-region correspondences used to predict where a fill point must land in a reference (ranking)."""

    def __post_init__(self) -> None:
        check((self.max_features is None or self.max_features >= 8) and self.max_side >= 64,
               "max_features >= 8 and max_side >= 64")
        check(0 < self.ratio <= 1, "ratio must be in (0, 1]")
        check(self.ransac_px > 0, "ransac_px must be positive")
        check((self.features == "loftr") == (self.weights is not None),
               "features loftr needs weights (a safetensors file), and only loftr takes weights")
        check(self.neighbours >= 3, "neighbours must be >= 3")

    def keypoints(self) -> int:
        if self.max_features is not None:
            return self.max_features
        return 4000 if self.features in ("sift", "orb", "akaze") else 1024


@dataclass
class RankConfig:
    """Seed selection: how the samples are ranked by their geometric evidence, and how many are kept."""

    keep: int | None = None
    """Keep the top this many samples (overrides keep_fraction)."""
    keep_fraction: float = 0.25
    """Keep this fraction of samples, at least one (paper: top 25%)."""
    confirm: Features | None = "xfeat"
    """A second matcher (disk, aliked or xfeat: the matchers extra, which `make setup` and the cluster image
    install) that scores the contested top again and adds its evidence, a cascade at a fraction of its own cost;
    null: the geometry's matcher alone (nothing beyond the core install)."""
    confirm_fraction: float = 0.05
    """The contested top the second matcher scores: this fraction of the samples, at least 2, by the first
    matcher's evidence (both matchers' evidence and matches are added for them)."""

    def __post_init__(self) -> None:
        check(self.keep is None or self.keep >= 1, "keep must be >= 1")
        check(0 < self.keep_fraction <= 1, "keep_fraction must be in (0, 1]")
        check(self.confirm in (None, "disk", "aliked", "xfeat"), "confirm must be disk, aliked or xfeat")
        check(0 < self.confirm_fraction <= 1, "confirm_fraction must be in (0, 1]")

    def confirm_count(self, total: int) -> int:
        return min(total, max(2, math.ceil(total * self.confirm_fraction)))

    def keep_count(self, total: int) -> int:
        if self.keep is not None:
            return min(self.keep, total)
        return max(1, min(total, round(total * self.keep_fraction)))


@dataclass
class StitchConfig:
    """The stitch method: references warped through the geometry of the target's known pixels, each warp
    judged by those pixels, blended, and classical inpainting wherever no warp fits better."""

    max_planes: int = 4
    """Planes fitted per reference, one after another on the matches the previous ones left (RANSAC): a
    scene with depth is several planes."""
    min_inliers: int = 12
    """Matches a plane needs to be used."""
    ransac_px: float = 3.0
    """RANSAC threshold of the plane fits, in target pixels."""
    judge_px: int = 48
    """Known pixels within this distance of the hole judge every warp (and the inpainting fallback)."""
    holdout_px: int = 16
    """Judging is held out: a warp's colour is fitted on the judging band beyond this distance of the hole and
    its error measured within it (Telea inpaints that inner ring to be judged the same way), so a warp is never
    judged on the pixels it was fitted to. The fill itself is then compensated on the whole band."""
    reach_px: float = 24.0
    """How far into the hole a known pixel's verdict carries (Gaussian sigma)."""
    correction_px: float = 8.0
    """Colour: after one affine RGB map per warp, the known pixels' remaining differences are carried into
    the hole over this sigma, so the seam vanishes."""
    softness: float = 1.0
    """Blend: warps whose local error (mean absolute, grey levels) is this much above the best one weigh
    1/e of it; 0 picks the best alone."""
    inpaint_radius: int = 3
    """Radius of the OpenCV Telea inpainting that fills what no warp covers or fits."""

    def __post_init__(self) -> None:
        check(self.max_planes >= 1 and self.min_inliers >= 4, "need max_planes >= 1 and min_inliers >= 4")
        check(self.ransac_px > 0 and self.reach_px > 0 and self.correction_px > 0,
               "ransac_px, reach_px and correction_px must be positive")
        check(self.judge_px >= 4, "judge_px must be >= 4")
        check(1 <= self.holdout_px < self.judge_px, "holdout_px must be >= 1 and below judge_px")
        check(self.softness >= 0, "softness must be >= 0")
        check(self.inpaint_radius >= 1, "inpaint_radius must be >= 1")


@dataclass
class FillConfig:
    """One complete run: the method, its models, where it runs, and the stage configs."""

    method: Method = "realfill"
    """realfill (LoRA fine-tuning on the scene, the paper), stitch (geometry only: no model, no GPU),
    sd-inpaint (the base model with --prompt, no fine-tuning) or paint-by-example (--example_model with
    the best-matching reference as exemplar)."""
    base_model: str = DEFAULT_BASE_MODEL
    """The inpainting model of realfill and sd-inpaint: tiny, a hub id, a local diffusers folder, or an
    fsspec URI to one."""
    example_model: str = DEFAULT_EXAMPLE_MODEL
    """The Paint-by-Example model, given as base_model is (tiny builds a tiny random-weight one)."""
    prompt: str = "a photo"
    """sd-inpaint's text prompt (realfill samples with the prompt its adapter was trained on)."""
    init: Init = "noise"
    """Where sampling starts: pure noise (the paper), or the stitch result noised to init_strength."""
    init_strength: float = 0.7
    """With init stitch: how much noise is added to the stitch result (1 = pure noise, 0 = none)."""
    device: Device = "auto"
    """auto (CUDA when available), cpu or cuda."""
    seed: int = 0
    """Seeds training; sample i uses seed + i."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """Fine-tuning settings."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Sampling and compositing settings."""
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    """Matching the known region to the references (stitch, ranking, reference picking)."""
    rank: RankConfig = field(default_factory=RankConfig)
    """Seed selection settings."""
    stitch: StitchConfig = field(default_factory=StitchConfig)
    """The stitch method's settings (also --init stitch's)."""
    max_megapixels: float = 64.0
    """Scene images (target, mask, references) larger than this are refused before they are decoded: memory
    grows with the pixel count (a 100-megapixel target needs several GB)."""

    def __post_init__(self) -> None:
        if isinstance(self.tune, dict):
            self.tune = TuneConfig(**self.tune)
        if isinstance(self.sample, dict):
            self.sample = SampleConfig(**self.sample)
        if isinstance(self.geometry, dict):
            self.geometry = GeometryConfig(**self.geometry)
        if isinstance(self.rank, dict):
            self.rank = RankConfig(**self.rank)
        if isinstance(self.stitch, dict):
            self.stitch = StitchConfig(**self.stitch)
        check(bool(self.base_model) and bool(self.example_model), "base_model and example_model must not be empty")
        check(0 < self.init_strength <= 1, "init_strength must be in (0, 1]")
        check(self.init == "noise" or self.method in ("realfill", "sd-inpaint"),
               f"init stitch starts realfill or sd-inpaint from the stitch result, not method {self.method}")
        check(self.tune.stitch_view_weight == 0 or self.init == "stitch",
               "tune.stitch_view_weight needs init stitch (the stitch result is the extra training view)")
        check(self.seed >= 0, "seed must be >= 0")
        check(self.device != "cpu" or "fp16" not in (self.tune.mixed_precision, self.sample.precision),
               "fp16 needs a CUDA GPU, and device is cpu: use bf16 (which CPUs run) or no")
        check(self.max_megapixels > 0, "max_megapixels must be positive")

    @property
    def tunes(self) -> bool:
        """Whether the method fine-tunes an adapter on the scene."""
        return self.method == "realfill"

    @property
    def samples(self) -> bool:
        """Whether the method samples a diffusion model (stitch makes its one image from geometry)."""
        return self.method != "stitch"

    @property
    def stitches(self) -> bool:
        """Whether a stitch result is made: the method itself, or the start of sampling."""
        return self.method == "stitch" or self.init == "stitch"

    @property
    def by_example(self) -> bool:
        """Whether the method samples a Paint-by-Example model (conditioned on an exemplar, not a prompt)."""
        return self.method == "paint-by-example"

    @property
    def model(self) -> str:
        """The diffusion model the sampler loads."""
        return self.example_model if self.by_example else self.base_model

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EvalConfig:
    """Where the learned metrics' backbones come from (local folder or hub id; safetensors only)."""

    dino_model: str = "facebook/dino-vitb16"
    """DINO ViT for whole-image similarity (transformers format)."""
    clip_model: str = "openai/clip-vit-base-patch32"
    """CLIP vision tower for whole-image similarity (transformers format)."""
    lpips_weights: str | None = None
    """A safetensors file holding the full state dict of lpips.LPIPS(net=lpips_net); needs the lpips extra."""
    lpips_net: LpipsNet = "alex"
    """LPIPS backbone: alex, vgg or squeeze."""
    device: Device = "auto"
    """auto, cpu or cuda."""


@dataclass
class LibraryConfig:
    """Photo libraries: which photos of an album become a request's references."""

    max_refs: int = 5
    """Most references picked per request."""
    min_beyond_chance: int = 13
    """Verified correspondences (RANSAC inliers of a fundamental matrix) with the target's known pixels that a
    photo needs to be a reference, beyond the most the same points reach when paired at random (chance): a
    photo of another place reaches chance, and on two sets of real albums at most 11 beyond it."""
    shortlist: int = 24
    """Photos of the pool verified per request: those taken near in time or place first (EXIF), then the
    nearest by a global colour descriptor, so an album of thousands costs as much as one of dozens."""
    near_hours: float = 6.0
    """Taken within this many hours of the target: near in time."""
    near_km: float = 1.0
    """Taken within this many kilometres of the target: near in place."""
    duplicate_ncc: float = 0.97
    """A photo that, aligned to the target through its matches, correlates at least this much with the target's
    known pixels is a near-duplicate (a burst shot, an edited copy) and is not used."""

    min_support: float = 0.0
    """A finished photo is delivered only when at least this share of its fill is supported (the references vouch
    for it: realfill.selection.support); 0 delivers every photo whose completion was selected."""

    def __post_init__(self) -> None:
        check(0 <= self.min_support <= 1, "min_support must be in [0, 1]")
        check(self.max_refs >= 1 and self.min_beyond_chance >= 1, "need max_refs >= 1 and min_beyond_chance >= 1")
        check(self.shortlist >= self.max_refs, "shortlist must be >= max_refs")
        check(self.near_hours >= 0 and self.near_km >= 0, "near_hours and near_km must be >= 0")
        check(0 < self.duplicate_ncc <= 1, "duplicate_ncc must be in (0, 1]")

    def picking(self) -> dict[str, Any]:
        """The settings that decide a request's references (what is delivered, min_support, does not)."""
        return {name: value for name, value in asdict(self).items() if name != "min_support"}


@dataclass
class ReportConfig:
    """The run report (OUT/report.html): what it shows, and how large it grows."""

    top: int = 8
    """Completions shown per scene, best first (every sample is still listed with its score)."""
    thumb_px: int = 320
    """Longest side of the thumbnails, in pixels."""
    per_page: int = 50
    """Scenes per index page: a report of 1,000 scenes opens as fast as one of 50."""
    workers: int = 8
    """Threads that read images and write thumbnails (storage and image decoding wait, the GIL does not)."""
    chunk_pages: int = 2
    """Index pages whose scenes one call makes (thumbnails, contact sheets, scene pages, the pages' score plots):
    one Ray task each when the run is on Ray, the driver writing only the index pages."""

    def __post_init__(self) -> None:
        check(min(self.top, self.per_page, self.workers, self.chunk_pages) >= 1,
              "top, per_page, workers and chunk_pages must be >= 1")
        check(32 <= self.thumb_px <= 2048, "thumb_px must be in [32, 2048]")


MAX_CONFIG_BYTES = 1 << 20
"""A config file is at most this large (configs are a few hundred bytes)."""
MAX_CONFIG_VALUES = 100_000
"""... and holds at most this many values once YAML's aliases are expanded (each alias of an anchor repeats
all that the anchor holds: nine levels of nine aliases are 387 million values)."""


def expanded_size(node: yaml.Node, sizes: dict[int, int | None]) -> int:
    """How many values a YAML node holds with its aliases expanded, counting each shared node once per use
    but computing it once (sizes: by node id; None while a node is being counted, so a cycle is caught)."""
    if id(node) in sizes:
        if sizes[id(node)] is None:
            raise ValueError("an anchor contains an alias of itself (a recursive value)")
        return sizes[id(node)]
    sizes[id(node)] = None
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(expanded_size(key, sizes) + expanded_size(value, sizes) for key, value in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(expanded_size(item, sizes) for item in node.value)
    else:
        size = 1
    sizes[id(node)] = size
    return size


def load_yaml(text: str) -> Any:
    """Safe YAML, refused when its aliases expand it past MAX_CONFIG_VALUES (checked on the node graph, before
    anything is expanded)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = expanded_size(node, {})
        check(size <= MAX_CONFIG_VALUES, f"expands to {size:,} values (YAML anchors and aliases), more than the "
                                          f"{MAX_CONFIG_VALUES:,} a config may hold")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file of config fields (JSON is YAML, so one parser reads both), bounded in size and in
    what its aliases expand to."""
    try:
        size = Path(path).stat().st_size
        check(size <= MAX_CONFIG_BYTES, f"{size:,} bytes, more than a config file may be ({MAX_CONFIG_BYTES:,})")
        data = load_yaml(Path(path).read_text())
    except RecursionError:
        raise ValueError(f"{path}: cannot read config (nested too deeply)") from None
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read config ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: config must be a mapping of field names to values")
    return data


MAX_VARIANTS = 1000
"""Most variants of one sweep (every combination of a grid's values is one)."""


def expand_grid(data: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """The variants of a grid file, by name: `grid:` (field -> list of values; every combination is a
    variant, named after its values) and `variants:` (name -> fields), each applied over `base:` fields."""
    unknown = sorted(set(data) - {"base", "grid", "variants"})
    if unknown:
        raise ValueError(f"{source}: unknown key '{unknown[0]}' (known: base, grid, variants)")
    base, grid, named = data.get("base") or {}, data.get("grid") or {}, data.get("variants") or {}
    for key, value in (("base", base), ("grid", grid), ("variants", named)):
        check(isinstance(value, dict), f"{source}: '{key}' must be a mapping (got {shown(value)})")
    for field_name, options in grid.items():
        check(isinstance(options, list) and options, f"{source}: grid '{field_name}' must be a non-empty list")
    combinations = math.prod(len(options) for options in grid.values()) if grid else 0
    check(combinations <= MAX_VARIANTS, f"{source}: the grid makes {combinations:,} variants, more than the "
                                         f"{MAX_VARIANTS:,} a sweep may run (split it, or list variants:)")
    variants = {}
    for combination in itertools.product(*grid.values()) if grid else []:
        point = dict(zip(grid, combination))
        name = ",".join(f"{key.rpartition('.')[2]}={value}" for key, value in point.items())
        variants[name] = {**base, **point}
    for name, fields in named.items():
        check(isinstance(fields, dict | None), f"{source}: variant '{name}' must be a mapping of fields")
        variants[str(name)] = {**base, **(fields or {})}
    check(bool(variants), f"{source}: no variants (give grid: and/or variants:)")
    return variants
