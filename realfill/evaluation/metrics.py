"""RealBench metrics, as the paper reports them: PSNR, SSIM and LPIPS inside the fill region;
DreamSim, DINO and CLIP similarity on the whole image.

PSNR and SSIM come from scikit-image; the learned metrics from their own packages and transformers,
with weights from a configured local path or hub id (safetensors only). A learned metric whose
weights cannot be had is reported unavailable with the reason, never skipped silently or guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from realfill.config import EvalConfig
from realfill.data.hub import ModelError, hub_snapshot
from realfill.data.runlog import first_line
from realfill.devices import pick_device

TRANSFORMERS_FILES = ["*.json", "*.txt", "*.safetensors"]



@dataclass(kw_only=True)
class Metrics:
    """The six metrics of one image (None: not measured, or unavailable here)."""

    psnr: float | None = None
    """Inside the fill region (dB)."""
    ssim: float | None = None
    """Inside the fill region."""
    lpips: float | None = None
    """On the fill region's bounding box (lower is better)."""
    dreamsim: float | None = None
    """Whole image (lower is better)."""
    dino: float | None = None
    """Whole image, cosine similarity of DINO's CLS tokens."""
    clip: float | None = None
    """Whole image, cosine similarity of CLIP image embeddings."""


METRICS = tuple(item.name for item in fields(Metrics))
PAPER_REALFILL = {"psnr": 14.78, "ssim": 0.424, "lpips": 0.431, "dreamsim": 0.077, "dino": 0.948, "clip": 0.962}
"""RealFill's row of the paper's Table 1, for orientation."""
LOWER_IS_BETTER = {"lpips", "dreamsim"}
DREAMSIM_UNAVAILABLE = ("the dreamsim package publishes only pickled weights (torch.load), and realfill loads "
                        "safetensors only")


class MetricUnavailable(RuntimeError):
    """A learned metric cannot run here; the message says why and how to enable it."""


def psnr_in_region(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(gt[mask], pred[mask], data_range=255))


SSIM_WINDOW = 7


def ssim_in_region(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    """Mean of scikit-image's SSIM map over the fill region, leaving out the border that scikit-image's
    own mean leaves out (so a full mask gives exactly its score)."""
    from skimage.metrics import structural_similarity

    _, similarity = structural_similarity(gt, pred, channel_axis=2, data_range=255, full=True,
                                          win_size=SSIM_WINDOW)
    pad = (SSIM_WINDOW - 1) // 2
    inside = np.zeros_like(mask)
    inside[pad:-pad, pad:-pad] = True
    region = mask & inside if (mask & inside).any() else mask
    return float(similarity[region].mean())


def region_box(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.nonzero(mask)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


class EmbeddingSimilarity:
    """Cosine similarity of whole-image embeddings: DINO's CLS token, or CLIP's projected image embedding."""

    def __init__(self, kind: str, source: str, device: torch.device):
        from transformers import AutoImageProcessor, AutoModel, CLIPVisionModelWithProjection

        model_class = CLIPVisionModelWithProjection if kind == "clip" else AutoModel
        try:
            folder = Path(source) if Path(source).is_dir() else hub_snapshot(source, TRANSFORMERS_FILES)
            self.processor = AutoImageProcessor.from_pretrained(folder)
            self.model = model_class.from_pretrained(folder, use_safetensors=True).to(device).eval()
        except (ModelError, OSError, ValueError) as exc:
            raise MetricUnavailable(f"{kind} backbone: {first_line(exc)}; pass --eval.{kind}_model FOLDER") from None
        self.kind, self.device = kind, device

    @torch.no_grad()
    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        inputs = self.processor(images=[np.ascontiguousarray(image) for image in images], return_tensors="pt")
        inputs = inputs.to(self.device)
        outputs = self.model(**inputs)
        vectors = outputs.image_embeds if self.kind == "clip" else outputs.last_hidden_state[:, 0]
        return torch.nn.functional.normalize(vectors.float(), dim=-1)

    def __call__(self, gt: np.ndarray, preds: list[np.ndarray]) -> list[float]:
        """Each prediction's similarity to gt, in one forward pass over [gt, *preds]."""
        vectors = self.embed([gt, *preds])
        return (vectors[1:] @ vectors[0]).tolist()


class LpipsDistance:
    """LPIPS (lpips package) on the fill region's bounding box, with weights from a safetensors file."""

    def __init__(self, weights: str | None, net: str, device: torch.device):
        try:
            import lpips
        except ImportError:
            raise MetricUnavailable("the lpips package is not installed (pip install 'realfill[lpips]', "
                                    "which brings torchvision)") from None
        if not weights:
            raise MetricUnavailable("no LPIPS weights configured: pass --eval.lpips_weights FILE.safetensors "
                                    "(the full state dict of lpips.LPIPS)")
        from safetensors.torch import load_file

        self.model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
        try:
            self.model.load_state_dict(load_file(weights))
        except (OSError, RuntimeError) as exc:
            raise MetricUnavailable(f"{weights}: not LPIPS-{net} weights ({first_line(exc)})") from None
        self.model.to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, gt: np.ndarray, preds: list[np.ndarray], mask: np.ndarray) -> list[float]:
        """Each prediction's distance to gt on the fill region's box, in one batch."""
        box = region_box(mask)

        def tensor(images: list[np.ndarray]) -> torch.Tensor:
            crops = torch.from_numpy(np.stack([image[box] for image in images])).permute(0, 3, 1, 2).float()
            return (crops / 127.5 - 1.0).to(self.device)

        predicted = tensor(preds)
        return self.model(tensor([gt]).expand_as(predicted), predicted).flatten().tolist()


class Evaluator:
    """All six metrics; learned ones that cannot load are listed in `unavailable` with their reason."""

    def __init__(self, config: EvalConfig):
        device = pick_device(config.device)
        self.unavailable: dict[str, str] = {"dreamsim": DREAMSIM_UNAVAILABLE}
        self.lpips = self._try("lpips", lambda: LpipsDistance(config.lpips_weights, config.lpips_net, device))
        self.dino = self._try("dino", lambda: EmbeddingSimilarity("dino", config.dino_model, device))
        self.clip = self._try("clip", lambda: EmbeddingSimilarity("clip", config.clip_model, device))

    def _try(self, name: str, build):
        try:
            return build()
        except MetricUnavailable as exc:
            self.unavailable[name] = str(exc)
            return None

    def __call__(self, gt: np.ndarray, preds: list[np.ndarray], mask: np.ndarray) -> list[Metrics]:
        """The metrics of each prediction of one scene: the learned ones batched, gt embedded once."""
        unmeasured = [None] * len(preds)
        lpips = self.lpips(gt, preds, mask) if self.lpips else unmeasured
        dino = self.dino(gt, preds) if self.dino else unmeasured
        clip = self.clip(gt, preds) if self.clip else unmeasured
        return [Metrics(psnr=psnr_in_region(gt, pred, mask), ssim=ssim_in_region(gt, pred, mask), lpips=lpips[index],
                        dino=dino[index], clip=clip[index]) for index, pred in enumerate(preds)]
