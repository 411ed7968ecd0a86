"""Where torch runs and in which precision: chosen from what the machine has, refused in one line when a
setting asks for what it cannot do."""

from __future__ import annotations

import torch

from realfill.data.hub import ModelError


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but no CUDA GPU is visible to torch")
    return torch.device(requested)


def mixed_precision(device: torch.device, requested: str = "auto") -> str:
    """The precision to run in: with auto, bf16 on a CUDA GPU that has it, else fp16, and fp32 ('no') on CPU;
    an explicit request is honoured (CPUs autocast bf16, so CI runs the half-precision path too) or refused
    with one line when the device cannot run it."""
    if requested == "auto":
        if device.type != "cuda":
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and device.type != "cuda":
        raise ModelError(f"fp16 mixed precision needs a CUDA GPU (this runs on {device.type}): use bf16, which "
                         f"CPUs run, or no")
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ModelError(f"bf16 was asked for, but {torch.cuda.get_device_name(device)} has no bf16: use fp16 "
                         f"or auto")
    return requested


def torch_dtype(precision: str) -> torch.dtype:
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
