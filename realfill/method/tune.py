"""LoRA fine-tuning of an inpainting model on one scene (RealFill, step 1).

Read top to bottom: load the models, add LoRA, then per step draw a batch (`make_batch`),
compute the weighted epsilon loss (`training_loss`), step the optimizer, and checkpoint.
Every step's randomness is derived from (seed, step), so a resumed run continues exactly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load, save
from tqdm.auto import tqdm

from realfill.config import TuneConfig
from realfill.data import storage
from realfill.data.records import AdapterInfo
from realfill.data.scene import Scene
from realfill.devices import mixed_precision, pick_device, torch_dtype
from realfill.method.adapter import safetensors_metadata, save_adapter, under
from realfill.method.masks import draw_mask, render_mask

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class Batch:
    pixels: torch.Tensor
    """B x 3 x R x R images in [-1, 1]."""
    mask: torch.Tensor
    """B x 1 x R x R conditioning mask, 1 = to generate (random mask, plus the target's hole)."""
    unknown: torch.Tensor
    """B x 1 x R x R, 1 where the pixel is unknown (the target's hole): its loss weight is hole_weight."""
    hole_weight: torch.Tensor
    """B: loss weight of each draw's unknown pixels (0 for the target, the view's weight for a stitch view)."""
    prompts: list[str]


@dataclass
class Models:
    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    noise_scheduler: object


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def augment(image: np.ndarray, unknown: np.ndarray, resolution: int, max_scale: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Joint random resize (short side to [res, res * max_scale]) and random crop to res x res."""
    height, width = image.shape[:2]
    short = rng.uniform(resolution, resolution * max_scale)
    scale = short / min(height, width)
    new_h, new_w = max(resolution, round(height * scale)), max(resolution, round(width * scale))
    image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    unknown = cv2.resize(unknown.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    top = int(rng.integers(0, new_h - resolution + 1))
    left = int(rng.integers(0, new_w - resolution + 1))
    window = (slice(top, top + resolution), slice(left, left + resolution))
    return image[window], unknown[window].astype(bool)


@dataclass
class TrainingImage:
    image: np.ndarray
    unknown: np.ndarray
    """True where the pixel is unknown (the target's hole); all False for references."""
    hole_weight: float = 0.0
    """Loss weight of the unknown pixels."""


@dataclass
class ExtraView:
    """A full image of the target (its hole filled, e.g. by stitch) trained on as one more view."""

    image: np.ndarray
    weight: float
    """Loss weight of its hole pixels (its known pixels are the target's and weigh 1)."""
    key: str
    """What made it: part of the adapter's key."""


def training_images(scene: Scene, config: TuneConfig, view: ExtraView | None = None) -> list[TrainingImage]:
    """The references, the target and the extra view if any, each downscaled once so that its short side
    is the largest the augmentation asks for: every draw then resizes a small image, not a 12-megapixel photo."""
    largest = int(np.ceil(config.resolution * config.resize_max_scale))
    pairs = [(ref, np.zeros(ref.shape[:2], bool), 0.0) for ref in scene.refs] + [(scene.target, scene.mask, 0.0)]
    if view is not None:
        pairs.append((view.image, scene.mask, view.weight))
    prepared = []
    for image, unknown, weight in pairs:
        scale = largest / min(image.shape[:2])
        if scale < 1:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            unknown = cv2.resize(unknown.astype(np.uint8), size, interpolation=cv2.INTER_AREA) > 0
        prepared.append(TrainingImage(image, unknown, weight))
    return prepared


def make_batch(images: list[TrainingImage], config: TuneConfig, rng: np.random.Generator) -> Batch:
    """batch_size independent draws, with replacement, from the references and the target."""
    pixels, masks, unknown_masks, hole_weights, prompts = [], [], [], [], []
    for _ in range(config.batch_size):
        drawn = images[int(rng.integers(len(images)))]
        image, unknown = augment(drawn.image, drawn.unknown, config.resolution, config.resize_max_scale, rng)
        mask = np.maximum(render_mask(draw_mask(rng, config.resolution, config), config.resolution), unknown)
        pixels.append(image.astype(np.float32) / 127.5 - 1.0)
        masks.append(mask)
        unknown_masks.append(unknown.astype(np.float32))
        hole_weights.append(drawn.hole_weight)
        prompts.append("" if rng.random() < config.prompt_dropout else config.prompt)
    return Batch(pixels=torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous(),
                 mask=torch.from_numpy(np.stack(masks))[:, None],
                 unknown=torch.from_numpy(np.stack(unknown_masks))[:, None],
                 hole_weight=torch.tensor(hole_weights, dtype=torch.float32), prompts=prompts)


def load_models(base_path: str | Path) -> Models:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return Models(tokenizer=CLIPTokenizer.from_pretrained(base_path, subfolder="tokenizer"),
                  text_encoder=CLIPTextModel.from_pretrained(base_path, subfolder="text_encoder", use_safetensors=True),
                  vae=AutoencoderKL.from_pretrained(base_path, subfolder="vae", use_safetensors=True),
                  unet=UNet2DConditionModel.from_pretrained(base_path, subfolder="unet", use_safetensors=True),
                  noise_scheduler=DDPMScheduler.from_pretrained(base_path, subfolder="scheduler"))


def add_lora(models: Models, config: TuneConfig) -> None:
    from peft import LoraConfig

    for module, targets in ((models.unet, config.unet_lora_targets), (models.text_encoder, config.text_lora_targets)):
        module.requires_grad_(False)
        module.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                      lora_dropout=config.lora_dropout, init_lora_weights="gaussian",
                                      target_modules=list(targets)))
    models.vae.requires_grad_(False)


def lora_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [parameter for parameter in module.parameters() if parameter.requires_grad]


def encode_prompts(models: Models, prompts: list[str], device: torch.device) -> torch.Tensor:
    ids = models.tokenizer(prompts, padding="max_length", max_length=models.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt").input_ids
    return models.text_encoder(ids.to(device))[0]


def unknown_latent_weight(unknown: torch.Tensor, latent_size: tuple[int, int],
                          hole_weight: torch.Tensor) -> torch.Tensor:
    """Loss weight per latent: hole_weight (per draw) on any latent that sees an unknown pixel (plus a
    one-latent margin, since the VAE's receptive field spreads past its own 8x8 cell), 1 elsewhere."""
    touched = F.max_pool2d(F.adaptive_max_pool2d(unknown, latent_size), kernel_size=3, stride=1, padding=1)
    return 1.0 - touched * (1.0 - hole_weight.to(touched)[:, None, None, None])


def training_loss(models: Models, batch: Batch, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Weighted epsilon (or v) MSE of the inpainting UNet on one batch."""
    pixels = batch.pixels.to(device, dtype)
    mask = batch.mask.to(device, dtype)
    scaling = models.vae.config.scaling_factor
    with torch.no_grad():
        latents = models.vae.encode(pixels).latent_dist.sample() * scaling
        conditioning = models.vae.encode(pixels * (1.0 - mask)).latent_dist.mode() * scaling
    latent_size = tuple(latents.shape[-2:])
    mask_latent = F.interpolate(mask, size=latent_size)
    weight = unknown_latent_weight(batch.unknown.to(device, torch.float32), latent_size, batch.hole_weight)

    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, models.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              device=device).long()
    noisy = models.noise_scheduler.add_noise(latents, noise, timesteps)
    hidden = encode_prompts(models, batch.prompts, device)
    prediction = models.unet(torch.cat([noisy, mask_latent, conditioning], dim=1), timesteps, hidden).sample
    if models.noise_scheduler.config.prediction_type == "v_prediction":
        goal = models.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        goal = noise
    squared = (prediction.float() - goal.float()) ** 2 * weight
    return squared.sum() / (weight.sum() * squared.shape[1]).clamp_min(1.0)


# --- checkpoints: LoRA weights, AdamW moments and progress in ONE safetensors file ----------------
# One file written atomically (storage.write_bytes: a temporary name and a move, or one PUT), so a kill at any
# moment leaves either the previous checkpoint or the new one, never weights of one step with the
# progress of another.


def _lora_state(models: Models) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    state = {}
    for prefix, module in (("unet.", models.unet), ("text_encoder.", models.text_encoder)):
        for name, tensor in get_peft_model_state_dict(module, save_embedding_layers=False).items():
            state[prefix + name] = tensor.detach().float().cpu().contiguous()
    return state


def _restore_lora(models: Models, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    for prefix, module in (("unet.", models.unet), ("text_encoder.", models.text_encoder)):
        set_peft_model_state_dict(module, under(prefix, state))


def _optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"{index}.{name}": value.detach().cpu().contiguous()
            for index, entries in optimizer.state_dict()["state"].items() for name, value in entries.items()}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def save_checkpoint(uri: str, models: Models, optimizer, progress: dict) -> None:
    tensors = {f"lora.{name}": tensor for name, tensor in _lora_state(models).items()}
    tensors.update({f"optimizer.{name}": tensor for name, tensor in _optimizer_state(optimizer).items()})
    storage.write_bytes(uri, save(tensors, metadata={"progress": json.dumps(progress)}))


def load_checkpoint(uri: str, key: str, models: Models, optimizer) -> dict | None:
    """The saved progress if a checkpoint of this very run exists (same config key), else None."""
    try:
        data = storage.read_bytes(uri)
        progress = json.loads(safetensors_metadata(data)["progress"])
        tensors = load(data)
    except (FileNotFoundError, KeyError, ValueError, SafetensorError):  # none, or not one of ours: start over
        return None
    if progress.get("key") != key:
        return None
    _restore_lora(models, under("lora.", tensors))
    _restore_optimizer(optimizer, under("optimizer.", tensors))
    return progress


def fresh_accelerator(precision: str, device: torch.device):
    """An Accelerator for one tuning run. Accelerate keeps its state per process and refuses a second
    precision or device; a process tunes many scenes (a Ray worker serves every task sent to it, and a sweep's
    variants may differ in precision), so each run starts from a reset state."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=precision, cpu=device.type == "cpu")


def tune(scene: Scene, base_path: str | Path, config: TuneConfig, out_uri: str, *, key: str, seed: int = 0,
         device: str = "auto", base_model: str | None = None, show_progress: bool = True,
         after_step: Callable[[int, float], None] | None = None, view: ExtraView | None = None) -> AdapterInfo:
    """Fine-tune LoRA on one scene and write the adapter to out_uri; resumes from out_uri/checkpoint when it was
    made by a run of the same key (the adapter's identity, records.adapter_key: its caller names the adapter by it).

    after_step(step, loss) runs after each optimizer step (progress reporting, fault injection in tests).
    Returns the adapter info that is also written next to the weights.
    """
    started = time.perf_counter()
    torch_device = pick_device(device)
    precision = mixed_precision(torch_device, config.mixed_precision)
    accelerator = fresh_accelerator(precision, torch_device)
    weight_dtype = torch_dtype(precision)

    models = load_models(base_path)
    torch.manual_seed(seed)  # the LoRA A matrices start random: seed them too
    add_lora(models, config)
    for module in (models.vae, models.unet, models.text_encoder):
        module.to(accelerator.device)
        if weight_dtype != torch.float32:  # frozen weights in half precision, LoRA weights stay fp32
            module.to(dtype=weight_dtype)
    for module in (models.unet, models.text_encoder):
        for parameter in lora_parameters(module):
            parameter.data = parameter.data.float()
    checkpointing = config.gradient_checkpointing == "on" or (config.gradient_checkpointing == "auto"
                                                               and torch_device.type == "cuda")
    if checkpointing:
        models.unet.enable_gradient_checkpointing()
        models.text_encoder.gradient_checkpointing_enable()

    unet_params, text_params = lora_parameters(models.unet), lora_parameters(models.text_encoder)
    optimizer = torch.optim.AdamW([{"params": unet_params, "lr": config.unet_lr},
                                   {"params": text_params, "lr": config.text_lr}], weight_decay=config.weight_decay)
    models.unet, models.text_encoder, optimizer = accelerator.prepare(models.unet, models.text_encoder, optimizer)
    models.unet.train()
    models.text_encoder.train()

    checkpoint_uri = storage.join(out_uri, CHECKPOINT)
    progress = load_checkpoint(checkpoint_uri, key, models, optimizer) or {"key": key, "step": 0, "losses": []}
    load_seconds = time.perf_counter() - started

    images = training_images(scene, config, view)
    bar = tqdm(total=config.train_steps, initial=progress["step"], desc=f"tune {scene.scene_id}",
               disable=not show_progress, leave=False)
    train_started = time.perf_counter()
    for step in range(progress["step"], config.train_steps):
        torch.manual_seed(step_seed(seed, step))
        batch = make_batch(images, config, np.random.default_rng([seed, step]))
        with accelerator.autocast():
            loss = training_loss(models, batch, accelerator.device, weight_dtype)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet_params + text_params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        progress["losses"].append(float(loss.detach()))
        progress["step"] = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{progress['losses'][-1]:.4f}")
        if config.checkpoint_every and progress["step"] % config.checkpoint_every == 0:
            save_checkpoint(checkpoint_uri, models, optimizer, progress)
        if after_step is not None:
            after_step(progress["step"], progress["losses"][-1])
    bar.close()

    models.unet = accelerator.unwrap_model(models.unet)
    models.text_encoder = accelerator.unwrap_model(models.text_encoder)
    timings = {"load_s": load_seconds, "train_s": time.perf_counter() - train_started,
               "total_s": time.perf_counter() - started}
    info = AdapterInfo(scene_id=scene.scene_id, scene_fingerprint=scene.fingerprint, base_model=base_model, seed=seed,
                       key=key, config=config, device=str(torch_device), mixed_precision=precision,
                       gradient_checkpointing=checkpointing, losses=progress["losses"],
                       timings={name: round(seconds, 3) for name, seconds in timings.items()})
    info = save_adapter(out_uri, models.unet, models.text_encoder, info)
    storage.remove(checkpoint_uri)  # the adapter is complete: resuming is no longer needed
    return info
