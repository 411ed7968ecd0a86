"""What a scene costs with the real model: parameters, disk (model cache, adapter) and FLOPs per training step and
per sampled seed, counted on the full-size SD2-inpainting architecture on torch's meta device (no weights, no
GPU, seconds), and the time per scene they imply on named GPUs at an assumed model-FLOPs utilisation (an
estimate: `benchmarks/bench_gpu.py` measures it on a card).

    python benchmarks/scene_cost.py [--mfu 0.35]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from realfill.config import SampleConfig, TuneConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from replicas import SD2_INPAINTING, build_component, layout_files  # noqa: E402  (shared with the tests)

GPUS = {"H100/H200": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}
"""Dense bf16 peaks in TFLOP/s (vendor datasheets)."""


def flops(run) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mfu", type=float, default=0.35, help="assumed share of the bf16 peak reached")
    args = parser.parse_args(argv)
    tune, sample = TuneConfig(), SampleConfig()
    configs = layout_files(SD2_INPAINTING)
    with torch.device("meta"):
        unet, text_encoder, vae = (build_component(name, configs[f"{name}/config.json"])
                                   for name in ("unet", "text_encoder", "vae"))
        weights = {name: sum(p.numel() for p in module.parameters())
                   for name, module in (("unet", unet), ("text_encoder", text_encoder), ("vae", vae))}
        from realfill.method.tune import Models, add_lora, lora_parameters

        add_lora(Models(None, text_encoder, vae, unet, None), tune)
        lora = sum(p.numel() for module in (unet, text_encoder) for p in lora_parameters(module))
        batch, side = tune.batch_size, tune.resolution // 8
        noisy = torch.randn(batch, 9, side, side, requires_grad=True)
        hidden = torch.randn(batch, 77, unet.config.cross_attention_dim)
        timesteps = torch.randint(0, 1000, (batch,))
        ids = torch.zeros(batch, 77, dtype=torch.long)
        pixels = torch.randn(batch, 3, tune.resolution, tune.resolution)
        unet_forward = flops(lambda: unet(noisy, timesteps, hidden))
        unet_step = flops(lambda: unet(noisy, timesteps, hidden).sample.float().square().mean().backward())
        text_step = flops(lambda: text_encoder(ids)[0].float().square().mean().backward())
        with torch.no_grad():
            encode = 2 * flops(lambda: vae.encode(pixels))  # the images and the masked images
            latent = torch.randn(1, 4, sample.resolution // 8, sample.resolution // 8)
            one = torch.randn(1, 9, sample.resolution // 8, sample.resolution // 8)
            seed_step = flops(lambda: unet(one, timesteps[:1], hidden[:1]))
            decode = flops(lambda: vae.decode(latent))
    step = unet_step + unet_forward + text_step + encode  # + the forward recomputed under checkpointing
    train = tune.train_steps * step
    ddpm = sample.num_samples * (sample.steps * seed_step + decode)
    dpm = sample.num_samples * (25 * seed_step + decode)
    summary = {
        "parameters_m": {name: round(count / 1e6, 1) for name, count in weights.items()},
        "model_cache_gb": round(4 * sum(weights.values()) / 1e9, 2),
        "adapter_mb": round(4 * lora / 1e6, 1),
        "training_step_tflops": {"unet_forward": unet_forward / 1e12, "unet_forward_backward": unet_step / 1e12,
                                 "text_encoder": text_step / 1e12, "vae_encode": encode / 1e12,
                                 "total_with_recompute": step / 1e12},
        "sampling_tflops_per_seed": {"unet_step": seed_step / 1e12, "vae_decode": decode / 1e12},
        "per_scene_pflops": {"tune": train / 1e15, "sample_ddpm_200": ddpm / 1e15, "sample_dpm_25": dpm / 1e15},
        "recipe": {"train_steps": tune.train_steps, "batch": tune.batch_size, "resolution": tune.resolution,
                   "num_samples": sample.num_samples},
        "assumed_mfu": args.mfu,
        "estimated_minutes": {gpu: {name: work / (peak * 1e12 * args.mfu) / 60
                                    for name, work in (("tune", train), ("sample_ddpm_200", ddpm),
                                                       ("sample_dpm_25", dpm))}
                              for gpu, peak in GPUS.items()},
    }
    summary = json.loads(json.dumps(summary), parse_float=lambda text: round(float(text), 2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
