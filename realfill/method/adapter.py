"""The adapter format: a scene's LoRA in diffusers' format (what `pipeline.load_lora_weights` reads), beside a
JSON of how it was made with its weights' size and digest. Tuning writes it, sampling reads it; only
safetensors is ever loaded, and only after its digest is checked."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load

from realfill.data import storage
from realfill.data.records import AdapterInfo, WeightsRecord
from realfill.data.runlog import InputError

ADAPTER_WEIGHTS = "pytorch_lora_weights.safetensors"
ADAPTER_INFO = "realfill_adapter.json"


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The string metadata in a safetensors file's header (8-byte length, then JSON)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__", {})


def under(prefix: str, tensors: dict) -> dict:
    """The tensors whose names start with prefix, named without it (one model's part of a LoRA state)."""
    return {name.removeprefix(prefix): tensor for name, tensor in tensors.items() if name.startswith(prefix)}


class AdapterError(InputError, ValueError):
    """A stored adapter that cannot be used as it is (missing, truncated, replaced, pickled, too old)."""


def save_adapter(uri: str, unet, text_encoder, info: AdapterInfo) -> AdapterInfo:
    """Diffusers LoRA format (loadable by `pipeline.load_lora_weights`) plus a JSON of how it was made, with
    the weights' size and digest (checked before every reuse). The JSON is written last: an adapter without
    it is unfinished. Weights are kept in float32, the LoRA training precision, so loading them is exact."""
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict

    layers = {
        name: convert_state_dict_to_diffusers(get_peft_model_state_dict(module, save_embedding_layers=False))
        for name, module in (("unet", unet), ("text_encoder", text_encoder))
    }
    with tempfile.TemporaryDirectory() as scratch:
        StableDiffusionInpaintPipeline.save_lora_weights(
            scratch, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["text_encoder"],
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
            text_encoder_lora_adapter_metadata=text_encoder.peft_config["default"].to_dict())
        weights = (Path(scratch) / ADAPTER_WEIGHTS).read_bytes()
    dtypes = sorted({str(tensor.dtype).removeprefix("torch.") for tensor in load(weights).values()})
    info = replace(info, weights=WeightsRecord(file=ADAPTER_WEIGHTS, bytes=len(weights),
                                               sha256=hashlib.sha256(weights).hexdigest(), dtype=",".join(dtypes)))
    storage.write_bytes(storage.join(uri, ADAPTER_WEIGHTS), weights)
    storage.write_bytes(storage.join(uri, ADAPTER_INFO), info.to_json())
    return info


def read_adapter_info(uri: str) -> AdapterInfo:
    return AdapterInfo.from_json(storage.read_bytes(storage.join(uri, ADAPTER_INFO)))


def verified_adapter(uri: str) -> tuple[AdapterInfo, bytes]:
    """The adapter's info and its weights' bytes, checked against the size and digest it was saved with;
    AdapterError (one line naming the adapter) when they cannot be trusted. Only safetensors is accepted."""
    try:
        info = read_adapter_info(uri)
    except FileNotFoundError:
        raise AdapterError(f"{uri}: not a finished adapter (no {ADAPTER_INFO})") from None
    except ValueError as exc:
        raise AdapterError(f"{uri}: {ADAPTER_INFO}: {exc}") from None
    try:
        weights = storage.read_bytes(storage.join(uri, ADAPTER_WEIGHTS))
    except FileNotFoundError:
        pickled = [name for name in storage.list_dir(uri) if name.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        what = f"only pickle weights ({', '.join(pickled)})" if pickled else "no weights"
        raise AdapterError(f"{uri}: holds {what}, not {ADAPTER_WEIGHTS}; realfill loads safetensors only") from None
    record = info.weights
    if record is None or len(weights) != record.bytes or hashlib.sha256(weights).hexdigest() != record.sha256:
        raise AdapterError(f"{uri}: {ADAPTER_WEIGHTS} is {len(weights)} bytes with another digest than the "
                           f"{record.bytes if record else '(unrecorded)'} bytes it was saved with (truncated or "
                           f"replaced)")
    return info, weights
