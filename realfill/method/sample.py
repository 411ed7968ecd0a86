"""Sampling many seeds from a tuned model and compositing them into the target (RealFill, step 2).

A Sampler holds the base pipeline once and swaps scene adapters in and out, so one process (or one
Ray actor) serves many scenes.
"""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from PIL import Image

from realfill.config import SampleConfig
from realfill.data.records import AdapterInfo
from realfill.data.scene import Scene
from realfill.devices import mixed_precision, pick_device, torch_dtype
from realfill.method.adapter import ADAPTER_WEIGHTS, under, verified_adapter
from realfill.method.masks import composite, composite_alpha

ADAPTER_NAME = "scene"


@dataclass
class Condition:
    """What a sampling method conditions on besides the target's known pixels."""

    prompt: str = ""
    """The text prompt (inpainting models)."""
    exemplar: np.ndarray | None = None
    """The exemplar image (Paint-by-Example)."""
    init: np.ndarray | None = None
    """A full image sampling starts from, noised to strength (None: pure noise)."""
    strength: float = 1.0


@dataclass(frozen=True)
class SampleFailure:
    """A seed whose image could not be made (non-finite values): recorded as a failed sample, never as ok."""

    reason: str


def sample_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(height, width) with the long side = resolution and the target's aspect, multiples of 8."""
    scale = resolution / max(height, width)
    return (max(8, round(height * scale / 8) * 8), max(8, round(width * scale / 8) * 8))


def resize_inputs(scene: Scene, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Target and hole at generation size; the hole keeps every pixel the native hole touches."""
    height, width = size
    target = cv2.resize(scene.target, (width, height), interpolation=cv2.INTER_AREA)
    hole = cv2.resize(scene.mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA) > 0
    return target, hole


def lora_layout(info: AdapterInfo) -> tuple:
    """What must match for an adapter's weights to be copied into another's tensors."""
    config = info.config
    return config.lora_rank, config.lora_alpha, config.unet_lora_targets, config.text_lora_targets


def make_scheduler(kind: str, base_config):
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    if kind == "dpm":
        return DPMSolverMultistepScheduler.from_config(base_config, algorithm_type="dpmsolver++")
    return DDPMScheduler.from_config(base_config)


def load_example_pipeline(path: Path, dtype: torch.dtype):
    """A Paint-by-Example pipeline from its components: its image encoder lives in a deprecated module that
    diffusers' from_pretrained cannot resolve by the name model_index.json gives it."""
    from diffusers import AutoencoderKL, DDPMScheduler, PaintByExamplePipeline, UNet2DConditionModel
    from diffusers.pipelines.deprecated.paint_by_example import PaintByExampleImageEncoder
    from transformers import AutoImageProcessor

    return PaintByExamplePipeline(
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae", use_safetensors=True, torch_dtype=dtype),
        image_encoder=PaintByExampleImageEncoder.from_pretrained(path / "image_encoder", use_safetensors=True,
                                                                 dtype=dtype),
        unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", use_safetensors=True, torch_dtype=dtype),
        scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler"), safety_checker=None,
        feature_extractor=AutoImageProcessor.from_pretrained(path / "feature_extractor"), requires_safety_checker=False)


class Sampler:
    """A diffusion pipeline, loaded once: the inpainting base model, with at most one scene adapter active,
    or a Paint-by-Example model (its model_index.json says which)."""

    def __init__(self, base_path: str | Path, device: str = "auto", precision: str = "auto"):
        from diffusers import StableDiffusionInpaintPipeline

        self.device = pick_device(device)
        self.dtype = torch_dtype(mixed_precision(self.device, precision))
        base_path = Path(base_path)
        kind = json.loads((base_path / "model_index.json").read_text()).get("_class_name")
        self.by_example = kind == "PaintByExamplePipeline"
        """Conditioned on an exemplar image instead of a prompt (and without masked-image latents)."""
        if self.by_example:
            self.pipeline = load_example_pipeline(base_path, self.dtype).to(self.device)
        else:
            self.pipeline = StableDiffusionInpaintPipeline.from_pretrained(  # the feature extractor only feeds
                base_path, dtype=self.dtype, use_safetensors=True, safety_checker=None,  # the safety checker
                feature_extractor=None, requires_safety_checker=False).to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.base_scheduler_config = self.pipeline.scheduler.config
        self._vae_fp32: torch.nn.Module | None = None
        self.adapter_uri: str | None = None
        self.adapter_info: AdapterInfo | None = None
        """The active adapter's realfill_adapter.json (its config holds the prompt it was trained with)."""

    def use_adapter(self, adapter_uri: str | None) -> None:
        """Make a scene's LoRA adapter the active one (None = the bare base model).

        An adapter with the same layout as the active one (rank, alpha, target modules: every scene of a
        run) is copied into the existing LoRA weights in place, so a sampler serving thousands of scenes
        allocates nothing per scene; any other adapter is loaded after unloading the previous one."""
        if adapter_uri == self.adapter_uri:
            return
        if adapter_uri is None:
            self._unload()
            return
        info, weights = verified_adapter(adapter_uri)
        same_layout = self.adapter_info is not None and lora_layout(info) == lora_layout(self.adapter_info)
        if not same_layout or not self._copy_in_place(weights):
            self._unload()
            with tempfile.TemporaryDirectory() as scratch:
                (Path(scratch) / ADAPTER_WEIGHTS).write_bytes(weights)
                self.pipeline.load_lora_weights(scratch, weight_name=ADAPTER_WEIGHTS, use_safetensors=True,
                                                adapter_name=ADAPTER_NAME)
        # freshly injected LoRA dropout layers start in training mode: sampling must be deterministic
        self.pipeline.unet.eval()
        self.pipeline.text_encoder.eval()
        self.adapter_uri, self.adapter_info = adapter_uri, info

    def _unload(self) -> None:
        if self.adapter_uri is not None:
            self.pipeline.unload_lora_weights()
        self.adapter_uri = self.adapter_info = None

    def _copy_in_place(self, weights: bytes) -> bool:
        """Load LoRA weights into the active adapter's tensors, as diffusers' training examples restore
        a checkpoint; False when the state does not fit exactly (the caller then reloads).
        The file is parsed from bytes: safetensors' mmap loader keeps ~5 KB per call (BENCHMARKS.md)."""
        from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
        from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft
        from peft import set_peft_model_state_dict
        from safetensors.torch import load

        tensors = load(weights)
        state, _ = self.pipeline.lora_state_dict(tensors)
        unet = convert_unet_state_dict_to_peft(under("unet.", state))
        text = convert_state_dict_to_peft(convert_state_dict_to_diffusers(under("text_encoder.", state)))
        try:
            for module, module_state in ((self.pipeline.unet, unet), (self.pipeline.text_encoder, text)):
                result = set_peft_model_state_dict(module, module_state, adapter_name=ADAPTER_NAME)
                if result.unexpected_keys or any("lora" in key for key in result.missing_keys):
                    return False
        except RuntimeError:  # a shape mismatch
            return False
        return True

    @torch.no_grad()
    def conditioning_latents(self, target: np.ndarray, hole: np.ndarray) -> torch.Tensor:
        """VAE latents of the known pixels (hole zeroed), as in training: deterministic, once per scene."""
        pixels = torch.from_numpy(target).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        keep = torch.from_numpy(~hole)[None, None].float()
        pixels = (pixels * keep).to(self.device, self.dtype)
        vae = self.pipeline.vae
        return vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[np.ndarray | SampleFailure]:
        """VAE decode, checked: an image with NaN or inf (a half-precision VAE overflowing) is decoded again in
        float32; one that is still not finite, or whose latents are not, fails alone with the reason."""
        vae = self.pipeline.vae
        scaled = latents / vae.config.scaling_factor
        images = vae.decode(scaled.to(vae.dtype)).sample
        results: list[np.ndarray | SampleFailure] = []
        for latent, image in zip(scaled, images):
            if not torch.isfinite(latent).all():
                results.append(SampleFailure("the denoised latents hold NaN or inf (the model overflowed)"))
                continue
            if not torch.isfinite(image).all() and image.dtype != torch.float32:
                image = self.vae_fp32().decode(latent[None].float()).sample[0]
            if not torch.isfinite(image).all():
                results.append(SampleFailure("the decoded image holds NaN or inf, in float32 too"))
                continue
            pixels = (image / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()
            results.append(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8))
        return results

    def vae_fp32(self) -> torch.nn.Module:
        """A float32 copy of the VAE, made the first time a half-precision decode overflows."""
        if self._vae_fp32 is None:
            self._vae_fp32 = copy.deepcopy(self.pipeline.vae).float()
        return self._vae_fp32

    @torch.no_grad()
    def generate(self, scene: Scene, config: SampleConfig, seeds: list[int], condition: Condition,
                 ) -> Iterator[tuple[int, np.ndarray | SampleFailure]]:
        """Yield (seed, raw generated image at generation size, or why there is none) for each seed, batch
        by batch. Each seed has its own CPU generator, so its image does not depend on the batch it was in."""
        size = sample_size(*scene.target.shape[:2], config.resolution)
        target, hole = resize_inputs(scene, size)
        self.pipeline.scheduler = make_scheduler(config.scheduler, self.base_scheduler_config)
        image, mask = Image.fromarray(target), Image.fromarray(hole.astype(np.uint8) * 255)
        known = None if self.by_example else self.conditioning_latents(target, hole)
        start_from = {} if condition.init is None else {  # the init image, noised to strength
            "image": Image.fromarray(cv2.resize(condition.init, (size[1], size[0]), interpolation=cv2.INTER_AREA)),
            "strength": condition.strength}
        for start in range(0, len(seeds), config.batch_size):
            chunk = seeds[start : start + config.batch_size]
            common = dict(height=size[0], width=size[1], num_inference_steps=config.steps,
                          guidance_scale=config.guidance_scale, output_type="latent",
                          generator=[torch.Generator("cpu").manual_seed(seed) for seed in chunk])
            if self.by_example:
                exemplar = Image.fromarray(condition.exemplar)
                output = self.pipeline(example_image=[exemplar] * len(chunk), image=[image] * len(chunk),
                                       mask_image=[mask] * len(chunk), **common)
            else:
                output = self.pipeline(prompt=[condition.prompt] * len(chunk), mask_image=mask,
                                       masked_image_latents=known, **{"image": image, **common, **start_from})
            yield from zip(chunk, self.decode(output.images))


def composite_sample(scene: Scene, generated: np.ndarray, config: SampleConfig) -> np.ndarray:
    """The generated image resized to the target's native size and blended in with a feathered mask;
    pixels outside the feather band keep the target's exact bytes."""
    height, width = scene.target.shape[:2]
    native = cv2.resize(generated, (width, height), interpolation=cv2.INTER_CUBIC)
    alpha = composite_alpha(scene.mask, config.dilate_px, config.feather_px)
    return composite(scene.target, native, alpha)
