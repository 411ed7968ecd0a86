"""Random-weight replicas of the real base models' folders, built from their vendored configs (layouts/).

A replica has the hub folder's layout and file names (fp32 and fp16 safetensors, a pickle beside each, the
single-file checkpoint, extra components) and the real configs with every width divided by `width`; at width 1
it is the real architecture, with the real FLOPs. Tensors carry the names the real files have (transformers
4's `text_model.` prefixes), and every file that realfill must not read (fp16 variants, pickles, the single-file
checkpoint) holds other weights than the fp32 safetensors: a loader that read one would load other weights.
Tests load replicas as users load the real models; `benchmarks/bench_gpu.py` times the full-size one.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from realfill.data.hub import cache_dir
from realfill.method.models import byte_level_vocabulary, publish

LAYOUTS = Path(__file__).parent / "layouts"
SD2_INPAINTING = "stable-diffusion-2-inpainting"
PAINT_BY_EXAMPLE = "paint-by-example"
HUB_IDS = {SD2_INPAINTING: "stabilityai/stable-diffusion-2-inpainting",
           PAINT_BY_EXAMPLE: "Fantasy-Studio/Paint-by-Example"}
REPLICA_VERSION = 1
"""Part of a cached replica's folder name: bump it when what a replica holds changes."""

DIFFUSERS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                   "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")
TRANSFORMERS_FILES = ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.fp16.bin")
WEIGHT_FILES = {
    SD2_INPAINTING: {"unet": DIFFUSERS_FILES, "vae": DIFFUSERS_FILES, "text_encoder": TRANSFORMERS_FILES,
                     "": ("512-inpainting-ema.safetensors", "512-inpainting-ema.ckpt")},
    PAINT_BY_EXAMPLE: {"unet": DIFFUSERS_FILES[::2], "vae": DIFFUSERS_FILES[::2],
                       "image_encoder": TRANSFORMERS_FILES[::2], "safety_checker": TRANSFORMERS_FILES[::2]},
}
"""The weight files of each hub folder, by component ('' = the folder itself)."""
WIDTH_KEYS = ("block_out_channels", "cross_attention_dim", "hidden_size", "intermediate_size", "projection_dim",
              "norm_num_groups")
"""Config keys that are widths: a replica divides them (attention heads, depth and sizes stay)."""
LEGACY_PREFIXES = {"text_encoder": ("", "text_model."), "image_encoder": ("model.", "model.vision_model."),
                   "safety_checker": ("vision_model.", "vision_model.vision_model.")}
"""How transformers 4 (which wrote the real files) named these components' tensors: (prefix now, then)."""


def layout_files(name: str) -> dict[str, dict]:
    """Every vendored config of a layout, by its path in the folder (e.g. 'unet/config.json')."""
    root = LAYOUTS / name
    return {path.relative_to(root).as_posix(): json.loads(path.read_text()) for path in sorted(root.rglob("*.json"))}


def narrowed(config: dict, width: int) -> dict:
    """The config with every width divided by width (nested text and vision configs too)."""
    def narrow(key: str, value):
        if isinstance(value, dict):
            return narrowed(value, width)
        if key in WIDTH_KEYS and value is not None:
            return [item // width for item in value] if isinstance(value, list) else value // width
        return value

    return {key: narrow(key, value) for key, value in config.items()}


def build_component(component: str, config: dict) -> torch.nn.Module:
    """One component of a model folder with random weights, from its config (on the current default device)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.pipelines.deprecated.paint_by_example import PaintByExampleImageEncoder
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig

    builders = {
        "unet": lambda: UNet2DConditionModel.from_config(config),
        "vae": lambda: AutoencoderKL.from_config(config),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig.from_dict(config)),
        "image_encoder": lambda: PaintByExampleImageEncoder(CLIPVisionConfig.from_dict(config)),
        "safety_checker": lambda: StableDiffusionSafetyChecker(CLIPConfig.from_dict(config)),
    }
    return builders[component]()


def _stored_state(component: str, module: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The module's tensors under the names the real files give them."""
    now, then = LEGACY_PREFIXES.get(component, ("", ""))
    state = {}
    for key, tensor in module.state_dict().items():
        if then and key.startswith(now):
            key = then + key[len(now):]
        state[key] = tensor.detach().to(dtype).contiguous()
    if component == "text_encoder":  # transformers 4 stored this buffer; today's loaders must skip it
        state["text_model.embeddings.position_ids"] = torch.arange(module.config.max_position_embeddings)[None]
    return state


def _write_tokenizer(folder: Path) -> None:
    """The byte-level stand-in for CLIP's vocabulary and merges (data the layout does not vendor)."""
    vocab, merges = byte_level_vocabulary()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges))


def _write_stand_in(path: Path) -> None:
    """A file realfill must never read (a pickle, the single-file checkpoint): a small tensor is enough."""
    stand_in = {"stand_in": torch.zeros(8)}
    save_file(stand_in, path) if path.suffix == ".safetensors" else torch.save(stand_in, path)


def build_replica(name: str, directory: str | Path, width: int = 8, seed: int = 0, variants: bool = True) -> Path:
    """Write a replica of a layout to directory: its configs narrowed by width, random weights from seed; without
    variants, only the files realfill reads (no fp16 variants, pickles or single-file checkpoint)."""
    directory, configs = Path(directory), layout_files(name)
    for relative, config in configs.items():
        destination = directory / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(json.dumps(narrowed(config, width), indent=2) + "\n")
    if (directory / "tokenizer").is_dir():
        _write_tokenizer(directory / "tokenizer")
    for component, files in WEIGHT_FILES[name].items():
        if not component:  # the single-file checkpoint: never read by diffusers' folder loaders
            for file in files if variants else ():
                _write_stand_in(directory / file)
            continue
        config = narrowed(configs[f"{component}/config.json"], width)
        for index, file in enumerate(files if variants else files[:1]):
            if file.endswith(".bin"):
                _write_stand_in(directory / component / file)
                continue
            with torch.random.fork_rng():
                torch.manual_seed(seed * 1009 + index)  # every file its own weights
                module = build_component(component, config)
            dtype = torch.float16 if ".fp16." in file else torch.float32
            save_file(_stored_state(component, module, dtype), directory / component / file, metadata={"format": "pt"})
    return directory


def replica_path(name: str, width: int = 8) -> Path:
    """A replica in the model cache, built once."""
    return publish(lambda scratch: build_replica(name, scratch, width),
                    cache_dir() / "models" / f"replica-{name}-w{width}-v{REPLICA_VERSION}")


def refresh(revision: str, layouts: Path = LAYOUTS) -> None:
    """Replace the vendored configs with the hub's files at revision (needs hub access): every JSON file but the
    tokenizer's vocabulary, which is data."""
    from huggingface_hub import snapshot_download

    for name, repo_id in HUB_IDS.items():
        snapshot = Path(snapshot_download(repo_id, revision=revision, allow_patterns=["*.json"],
                                          ignore_patterns=["*/vocab.json"]))
        shutil.rmtree(layouts / name, ignore_errors=True)
        for file in snapshot.rglob("*.json"):
            if file.name == "vocab.json":
                continue
            destination = layouts / name / file.relative_to(snapshot)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, destination)
        print(f"{repo_id}: configs at {snapshot.name} written to {layouts / name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refresh", metavar="REVISION", required=True,
                        help="replace the vendored configs with the hub's at this revision (a commit or main)")
    refresh(parser.parse_args().refresh)
