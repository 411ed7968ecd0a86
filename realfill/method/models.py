"""Base models: where they come from (tiny, hub id, local folder, fsspec URI), and which device and
precision they run in."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch

from realfill.data import storage
from realfill.data.runlog import InputError

TINY = "tiny"
TINY_VERSION = "tiny-sd-inpaint-v1"
TINY_EXAMPLE_VERSION = "tiny-paint-by-example-v1"
HUB_FILES = [
    "model_index.json",
    "*/*.json",
    "*/*.txt",
    "*/diffusion_pytorch_model.safetensors",
    "*/model.safetensors",
]
"""What is fetched of a hub model, or copied of one at an fsspec URI: configs, tokenizer files and the fp32
safetensors weights, never pickles, fp16 variants or single-file checkpoints."""


class ModelError(InputError, RuntimeError):
    """The base model cannot be found or loaded; the message says how to provide it."""


def cache_dir() -> Path:
    """Where built and downloaded models live: $REALFILL_CACHE, else ~/.cache/realfill."""
    return Path(os.environ.get("REALFILL_CACHE", Path.home() / ".cache" / "realfill"))


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
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), norm_num_groups=8,
        layers_per_block=1, latent_channels=4, sample_size=64,
    )
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
        tokenizer = CLIPTokenizer(
            vocab=str(Path(scratch) / "vocab.json"), merges=str(Path(scratch) / "merges.txt"), model_max_length=77
        )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet, vae = _tiny_unet_and_vae()
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=32,
                intermediate_size=37,
                projection_dim=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"],
            )
        )
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1
    )
    pipeline = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
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
            image_size=32, patch_size=4,
        ), proj_size=32)
    pipeline = PaintByExamplePipeline(
        vae=vae, image_encoder=encoder, unet=unet, scheduler=PNDMScheduler(skip_prk_steps=True),
        safety_checker=None, feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        requires_safety_checker=False,
    )
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
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    if not storage.exists(storage.join(uri, "model_index.json")):
        raise ModelError(f"{uri}: not a diffusers model folder (no model_index.json)")
    copy = cache_dir() / "models" / f"uri-{key}"
    return publish(lambda scratch: storage.download_dir(uri, scratch, HUB_FILES), copy)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick connect to the hub, so an offline machine fails in seconds instead of minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def hub_snapshot(repo_id: str, allow_patterns: list[str]) -> Path:
    """A hub repo's files from the local Hugging Face cache, else downloaded; ModelError when neither works."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, local_files_only=True))
    except Exception:  # not cached (the hub client raises several types for this)
        pass
    if not hub_reachable():
        raise ModelError(f"'{repo_id}' is not in the local Hugging Face cache and the hub is unreachable")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as exc:  # gated, missing, network errors: one line is enough
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"'{repo_id}' could not be downloaded ({reason})") from None


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
