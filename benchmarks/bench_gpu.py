"""The device check: the paper recipe on the full-size SD2-inpainting architecture (random weights built from the
vendored configs, so the real FLOPs and memory), at 512, batch 16, bf16 with gradient checkpointing.

- training steps/s and peak memory: realfill's `tune` against a minimal re-implementation of the diffusers
  RealFill example's training step (fp32 frozen weights under autocast, peft-wrapped models), same card, same
  settings, ratio in one run; the UNet step's share of the card's bf16 peak (MFU, from counted FLOPs);
- sampling seeds/s and peak memory at batch 8 and 16, DDPM 200 steps and DPM-Solver++ 25 steps;
- no NaN or inf in any loss, latent or image; the adapter loads into a plain diffusers pipeline and changes its
  output.

It prints one JSON summary (and writes it to --out); a measurement that fails is recorded there as its error
(traceback on stderr) while the others still run, and the exit status is then 1. `--smoke` runs the same code
at tiny sizes on a CPU (the test suite runs it so that it never rots); its figures mean nothing.

    python benchmarks/bench_gpu.py --out gpu.json        # one large GPU, under 8 minutes
    python benchmarks/bench_gpu.py --smoke               # CPU, seconds
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from realfill.config import SampleConfig, TuneConfig
from realfill.data.scene import Scene, load_scene
from realfill.example import write_example
from realfill.method.adapter import ADAPTER_WEIGHTS
from realfill.method.models import quiet_libraries
from realfill.method.sample import Condition, SampleFailure, Sampler
from realfill.method.tune import fresh_accelerator, make_batch, training_images, tune

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from replicas import SD2_INPAINTING, build_replica  # noqa: E402  (shared with the tests)

BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "H800": 989.4, "A100": 312.0, "A800": 312.0, "L40S": 362.1,
                    "L40": 181.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.2, "RTX 6000 Ada": 364.2}
"""Dense bf16 tensor-core peaks (vendor datasheets, no sparsity), by a name that the device name contains."""


@dataclass(frozen=True)
class Sizes:
    width: int
    """Replica width divisor (1: the real architecture)."""
    resolution: int
    batch: int
    warmup_steps: int
    timed_steps: int
    sample_batches: tuple[int, ...]
    schedules: tuple[tuple[str, int], ...]
    """(scheduler, steps) pairs timed for sampling."""


FULL = Sizes(width=1, resolution=512, batch=16, warmup_steps=3, timed_steps=10, sample_batches=(8, 16),
             schedules=(("ddpm", 200), ("dpm", 25)))
SMOKE = Sizes(width=16, resolution=64, batch=2, warmup_steps=1, timed_steps=2, sample_batches=(1, 2),
              schedules=(("ddpm", 3), ("dpm", 2)))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak memory allocated by torch since the last reset (None on a CPU, where torch keeps no such count)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def steps_per_second(stamps: list[float], warmup: int) -> float:
    timed = stamps[warmup:]
    return (len(timed) - 1) / (timed[-1] - timed[0])


def ours(scene: Scene, model: Path, config: TuneConfig, sizes: Sizes, device: torch.device, out: str) -> dict:
    """realfill's own tuning, as a user runs it (batches drawn on the fly, adapter written at the end)."""
    stamps: list[float] = []

    def stamp(step: int, loss: float) -> None:
        synchronize(device)
        stamps.append(time.perf_counter())

    reset_peak(device)
    info = tune(scene, model, config, out, key="bench", device=device.type, show_progress=False, after_step=stamp)
    return {"steps_per_s": steps_per_second(stamps, sizes.warmup_steps), "peak_memory_gib": peak_gib(device),
            "losses_finite": bool(np.isfinite(info.losses).all()), "adapter_dtype": info.weights.dtype}


def example_batches(scene: Scene, config: TuneConfig, count: int, tokenizer) -> list[dict]:
    """The example's batch format (images, masks, weightings, conditioning images, prompt ids), drawn as realfill
    draws them; made before timing, as the example's DataLoader worker makes them beside the training loop."""
    images, batches = training_images(scene, config), []
    for index in range(count):
        batch = make_batch(images, config, np.random.default_rng(index))
        batches.append({
            "images": batch.pixels, "masks": batch.mask, "weightings": 1.0 - batch.unknown,
            "conditioning_images": batch.pixels * (batch.mask < 0.5),
            "input_ids": tokenizer(batch.prompts, truncation=True, padding="max_length",
                                   max_length=tokenizer.model_max_length, return_tensors="pt").input_ids,
        })
    return batches


def minimal_example(scene: Scene, model: Path, config: TuneConfig, sizes: Sizes, device: torch.device) -> dict:
    """The diffusers RealFill example's training step (examples/research_projects/realfill/train_realfill.py),
    reduced to the step: models loaded in fp32 and wrapped by peft's get_peft_model, only the VAE cast to bf16,
    the UNet and text encoder run under the Accelerator's autocast, the weighted MSE, clipping over every
    parameter. LoRA rank, alpha, targets, learning rates and batch are realfill's, so only the step differs."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPTextModel, CLIPTokenizer

    accelerator = fresh_accelerator(config.mixed_precision, device)
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae", use_safetensors=True)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", use_safetensors=True)
    lora = {"r": config.lora_rank, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout}
    unet = get_peft_model(unet, LoraConfig(target_modules=list(config.unet_lora_targets), **lora))
    text_encoder = get_peft_model(text_encoder, LoraConfig(target_modules=list(config.text_lora_targets), **lora))
    vae.requires_grad_(False)
    unet.enable_gradient_checkpointing()
    text_encoder.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW([{"params": unet.parameters(), "lr": config.unet_lr},
                                   {"params": text_encoder.parameters(), "lr": config.text_lr}],
                                  weight_decay=config.weight_decay)
    unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    weight_dtype = torch.bfloat16
    vae.to(accelerator.device, dtype=weight_dtype)
    batches = example_batches(scene, config, sizes.warmup_steps + sizes.timed_steps, tokenizer)
    unet.train()
    text_encoder.train()
    reset_peak(device)
    stamps, losses = [], []
    for batch in batches:
        batch = {key: value.to(accelerator.device) for key, value in batch.items()}
        latents = vae.encode(batch["images"].to(dtype=weight_dtype)).latent_dist.sample() * 0.18215
        conditionings = vae.encode(batch["conditioning_images"].to(dtype=weight_dtype)).latent_dist.sample() * 0.18215
        masks, size = batch["masks"].to(dtype=weight_dtype), latents.shape[2:]
        masks = F.interpolate(masks, size=size)
        weightings = F.interpolate(batch["weightings"].to(dtype=weight_dtype), size=size)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  device=latents.device).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        inputs = torch.cat([noisy_latents, masks, conditionings], dim=1)
        encoder_hidden_states = text_encoder(batch["input_ids"])[0]
        model_pred = unet(inputs, timesteps, encoder_hidden_states).sample
        loss = (weightings * F.mse_loss(model_pred.float(), noise.float(), reduction="none")).mean()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(itertools.chain(unet.parameters(), text_encoder.parameters()), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
        stamps.append(time.perf_counter())
    result = {"steps_per_s": steps_per_second(stamps, sizes.warmup_steps), "peak_memory_gib": peak_gib(device),
              "losses_finite": bool(np.isfinite(losses).all())}
    del unet, text_encoder, vae, optimizer
    return result


def unet_step_flops(model: Path, config: TuneConfig, device: torch.device) -> float:
    """FLOPs of one UNet forward and backward at the recipe's batch and resolution, counted by torch's
    FlopCounterMode: the frozen weights get no gradient (LoRA's own FLOPs are negligible) and no recomputation is
    counted (model FLOPs, as MFU is defined)."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", use_safetensors=True,
                                                dtype=torch.bfloat16).to(device).requires_grad_(False)
    side = config.resolution // 8
    inputs = torch.randn(config.batch_size, unet.config.in_channels, side, side, device=device, dtype=torch.bfloat16,
                         requires_grad=True)
    hidden = torch.randn(config.batch_size, 77, unet.config.cross_attention_dim, device=device, dtype=torch.bfloat16)
    timesteps = torch.randint(0, 1000, (config.batch_size,), device=device)
    with FlopCounterMode(display=False) as counter:
        unet(inputs, timesteps, hidden).sample.float().square().mean().backward()
    del unet
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def sampling(model: Path, adapter: str, scene: Scene, sizes: Sizes, device: torch.device) -> list[dict]:
    """Seeds/s, peak memory and failed (non-finite) images per batch size and schedule, with the adapter."""
    sampler = Sampler(model, device=device.type, precision="bf16")
    sampler.use_adapter(adapter)
    condition = Condition(prompt=sampler.adapter_info.config.prompt)
    warm = SampleConfig(resolution=sizes.resolution, steps=1, batch_size=max(sizes.sample_batches))
    list(sampler.generate(scene, warm, list(range(max(sizes.sample_batches))), condition))
    results = []
    for (scheduler, steps), batch in itertools.product(sizes.schedules, sizes.sample_batches):
        config = SampleConfig(resolution=sizes.resolution, steps=steps, scheduler=scheduler, batch_size=batch)
        reset_peak(device)
        synchronize(device)
        started = time.perf_counter()
        images = [image for _, image in sampler.generate(scene, config, list(range(batch)), condition)]
        synchronize(device)
        seconds = time.perf_counter() - started
        results.append({"scheduler": scheduler, "steps": steps, "batch": batch, "seeds_per_s": batch / seconds,
                        "peak_memory_gib": peak_gib(device),
                        "failed": sum(isinstance(image, SampleFailure) for image in images)})
    del sampler
    return results


def adapter_in_plain_diffusers(model: Path, adapter: str, scene: Scene, sizes: Sizes, device: torch.device) -> dict:
    """The adapter as a diffusers user loads it: `load_lora_weights` on a plain inpainting pipeline."""
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    pipeline = StableDiffusionInpaintPipeline.from_pretrained(
        model, dtype=torch.bfloat16, use_safetensors=True, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False).to(device)
    pipeline.set_progress_bar_config(disable=True)
    image = Image.fromarray(scene.target).resize((sizes.resolution, sizes.resolution))
    mask = Image.fromarray(scene.mask.astype(np.uint8) * 255).resize((sizes.resolution, sizes.resolution))

    def latents() -> torch.Tensor:
        return pipeline(prompt="a photo of sks", image=image, mask_image=mask, height=sizes.resolution,
                        width=sizes.resolution, num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(0),
                        output_type="latent").images.float()

    before = latents()
    pipeline.load_lora_weights(adapter, weight_name=ADAPTER_WEIGHTS)
    after = latents()
    return {"loads": True, "changes_output": bool((after - before).abs().max() > 0),
            "finite": bool(torch.isfinite(before).all() and torch.isfinite(after).all())}


def measured(summary: dict, name: str, work) -> dict | list:
    """One measurement, timed into the summary's phase_s. A failure (an out-of-memory on a smaller card, say) is
    recorded as its one-line error, with the traceback on stderr, so a one-shot device run still returns every
    other figure."""
    began = time.perf_counter()
    try:
        result = work()
    except Exception as exc:  # any failure of one measurement: the others still run
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"}
    summary["phase_s"][name] = time.perf_counter() - began
    return result


def failed(result) -> bool:
    return isinstance(result, dict) and "error" in result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on a CPU: checks the code, not the card")
    parser.add_argument("--out", type=Path, help="also write the JSON summary here")
    parser.add_argument("--peak_tflops", type=float, help="the card's dense bf16 peak, if its name is not known")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible to torch (use --smoke to check the code on a CPU)")
    quiet_libraries()
    started = time.perf_counter()
    config = TuneConfig(resolution=sizes.resolution, batch_size=sizes.batch, mixed_precision="bf16",
                        gradient_checkpointing="on", checkpoint_every=0,
                        train_steps=sizes.warmup_steps + sizes.timed_steps)
    summary: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "smoke": args.smoke, "torch": torch.__version__,
                     "recipe": {"resolution": sizes.resolution, "batch": sizes.batch, "precision": "bf16",
                                "gradient_checkpointing": True, "replica_width": sizes.width}, "phase_s": {}}
    with tempfile.TemporaryDirectory() as scratch:
        model = build_replica(SD2_INPAINTING, Path(scratch) / "model", width=sizes.width, variants=False)
        scene = load_scene(write_example(f"{scratch}/scene"))
        adapter = f"{scratch}/adapter"
        summary["phase_s"]["build"] = time.perf_counter() - started
        mine = summary["ours"] = measured(summary, "ours", lambda: ours(scene, model, config, sizes, device, adapter))
        theirs = summary["diffusers_example"] = measured(
            summary, "example", lambda: minimal_example(scene, model, config, sizes, device))
        if not failed(mine) and not failed(theirs):
            summary["ours_vs_example"] = {
                "steps_per_s_ratio": mine["steps_per_s"] / theirs["steps_per_s"],
                "peak_memory_ratio": (mine["peak_memory_gib"] / theirs["peak_memory_gib"]
                                      if device.type == "cuda" else None)}
        flops, peak = measured(summary, "flops", lambda: unet_step_flops(model, config, device)), \
            peak_tflops(device, args.peak_tflops)
        if not failed(flops):
            summary["unet_step_tflops"] = flops / 1e12
            summary["mfu"] = flops * mine["steps_per_s"] / (peak * 1e12) if peak and not failed(mine) else None
        summary["peak_bf16_tflops"] = peak
        skipped = {"error": "skipped: realfill's tuning made no adapter"}
        summary["sampling"] = skipped if failed(mine) else measured(
            summary, "sampling", lambda: sampling(model, adapter, scene, sizes, device))
        summary["adapter"] = skipped if failed(mine) else measured(
            summary, "adapter", lambda: adapter_in_plain_diffusers(model, adapter, scene, sizes, device))
    checks = [result["losses_finite"] for result in (mine, theirs) if not failed(result)]
    checks += [] if failed(summary["adapter"]) else [summary["adapter"]["finite"]]
    checks += [] if failed(summary["sampling"]) else [not any(row["failed"] for row in summary["sampling"])]
    summary["no_nan"] = all(checks) if checks else None
    summary["errors"] = sorted(name for name in ("ours", "diffusers_example", "sampling", "adapter")
                               if failed(summary[name])) + ([] if not failed(flops) else ["flops"])
    summary["total_s"] = time.perf_counter() - started
    summary = json.loads(json.dumps(summary), parse_float=lambda text: round(float(text), 4))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return summary


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
