"""Base models: where they come from (tiny, hub id, local folder, fsspec URI), and which device and
precision they run in."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from realfill.data import storage
from realfill.data.hub import ModelError, cache_dir, hub_snapshot

TINY = "tiny"
TINY_VERSION = "tiny-sd-inpaint-v1"
TINY_EXAMPLE_VERSION = "tiny-paint-by-example-v1"
HUB_FILES = ["model_index.json", "*/*.json", "*/*.txt", "*/diffusion_pytorch_model.safetensors", "*/model.safetensors"]
"""What is fetched of a hub model, or copied of one at an fsspec URI: configs, tokenizer files and the fp32
safetensors weights, never pickles, fp16 variants or single-file checkpoints."""


def quiet_libraries() -> None:
    """Our own progress bars say what is happening; the libraries' loading chatter is noise here."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# --- the tiny model ---------------------------------------------------------------------------


def byte_level_vocabulary() -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocabulary with no merges: every byte is a token, as in CLIP's alphabet."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    tokens = alphabet + [char + "</w>" for char in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, []


def _tiny_unet_and_vae():
    """The tiny models' 9-channel inpainting UNet (cross-attention width 32) and VAE with the real 8x
    downsampling, drawn from torch's current random state."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=9, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), norm_num_groups=8,
        layers_per_block=1, latent_channels=4, sample_size=64)
    return unet, vae


def build_tiny_model(directory: str | Path) -> Path:
    """Write a tiny random-weight SD inpainting pipeline (9-channel UNet, VAE with the real 8x
    downsampling, CLIP text encoder and tokenizer), deterministic for a given library version."""
    from diffusers import DDPMScheduler, StableDiffusionInpaintPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    directory = Path(directory)
    vocab, merges = byte_level_vocabulary()
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "vocab.json").write_text(json.dumps(vocab))
        (Path(scratch) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges))
        tokenizer = CLIPTokenizer(vocab=str(Path(scratch) / "vocab.json"), merges=str(Path(scratch) / "merges.txt"),
                                  model_max_length=77)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet, vae = _tiny_unet_and_vae()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              steps_offset=1)
    pipeline = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                              scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)
    pipeline.save_pretrained(directory, safe_serialization=True)
    return directory


def build_tiny_example_model(directory: str | Path) -> Path:
    """Write a tiny random-weight Paint-by-Example pipeline (9-channel UNet conditioned on a CLIP image
    encoder's embedding of the exemplar, the tiny model's VAE), deterministic for a given library version."""
    from diffusers import PaintByExamplePipeline, PNDMScheduler
    from diffusers.pipelines.deprecated.paint_by_example import PaintByExampleImageEncoder
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet, vae = _tiny_unet_and_vae()
        encoder = PaintByExampleImageEncoder(CLIPVisionConfig(
            hidden_size=32, projection_dim=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5,
            image_size=32, patch_size=4), proj_size=32)
    pipeline = PaintByExamplePipeline(
        vae=vae, image_encoder=encoder, unet=unet, scheduler=PNDMScheduler(skip_prk_steps=True),
        safety_checker=None, feature_extractor=CLIPImageProcessor(crop_size=32, size=32), requires_safety_checker=False)
    pipeline.save_pretrained(directory, safe_serialization=True)
    return directory


def publish(build, destination: Path) -> Path:
    """Build into a scratch folder beside destination, then rename: concurrent workers never see half a model."""
    if (destination / "model_index.json").exists():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=destination.parent))
    try:
        build(scratch)
        try:
            scratch.rename(destination)
        except OSError:
            if not (destination / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return destination


def tiny_model_path(example: bool = False) -> Path:
    if example:
        return publish(build_tiny_example_model, cache_dir() / "models" / TINY_EXAMPLE_VERSION)
    return publish(build_tiny_model, cache_dir() / "models" / TINY_VERSION)


def _from_uri(uri: str) -> Path:
    """A local copy of a model folder at an fsspec URI, cached by what its files are (their paths, sizes and
    modification times or ETags), so a model replaced at the same URI is copied again."""
    files = storage.files_under(uri, HUB_FILES)
    if "model_index.json" not in files:
        raise ModelError(f"{uri}: not a diffusers model folder (no model_index.json)")
    identity = hashlib.sha256(json.dumps([uri, sorted(files.items())]).encode()).hexdigest()[:16]

    def copy(scratch: Path) -> None:
        storage.download_files(uri, sorted(files), scratch)
        if storage.files_under(uri, HUB_FILES) != files:
            raise ModelError(f"{uri}: the model changed while it was being copied; run again once it is written")

    return publish(copy, cache_dir() / "models" / f"uri-{identity}")


def _from_hub(repo_id: str, flag: str) -> Path:
    try:
        return hub_snapshot(repo_id, HUB_FILES)
    except ModelError as exc:
        folder = repo_id.rsplit("/", 1)[-1]
        raise ModelError(
            f"model {exc}. On a machine with internet run `{download_command(repo_id, folder)}`, copy "
            f"{folder}/ over and pass --{flag} {folder} (or an s3:// or gs:// URI to a copy of it); "
            f"`--{flag} tiny` runs without any weights."
        ) from None


def download_command(repo_id: str, folder: str) -> str:
    """The huggingface_hub command that fetches what realfill loads of a hub model (safetensors only)."""
    includes = " ".join(f"--include '{pattern}'" for pattern in HUB_FILES)
    return f"hf download {repo_id} {includes} --local-dir {folder}"


def resolve_model(name: str, example: bool = False) -> Path:
    """A local diffusers folder for tiny, a local path, an fsspec URI or a hub id: the inpainting base model,
    or with example the Paint-by-Example model (whose tiny is a tiny Paint-by-Example pipeline)."""
    if name == TINY:
        return tiny_model_path(example)
    if "://" in name and not name.startswith("file://"):
        return _from_uri(name)
    local = Path(name.removeprefix("file://")).expanduser()
    if local.exists():
        if not (local / "model_index.json").exists():
            raise ModelError(f"{local}: not a diffusers model folder (no model_index.json)")
        return local
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelError(f"{name}: no such model folder, and not a hub id of the form owner/name")
    return _from_hub(name, "example_model" if example else "base_model")
