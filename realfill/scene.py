"""Scenes in the RealBench layout, from any fsspec URI.

SCENE/ref/*.{jpg,jpeg,png,webp}   reference photos
SCENE/target/target.png           the photo to complete (its hole pixels are never used)
SCENE/target/mask.png             white = fill, black = keep
SCENE/target/gt.png               optional ground truth
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from realfill import storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class SceneError(ValueError):
    """Bad scene input. The message is one line that names the file and what is wrong with it."""


@dataclass
class Scene:
    scene_id: str
    uri: str
    target: np.ndarray
    """H x W x 3 uint8; pixels inside the mask are zero."""
    mask: np.ndarray
    """H x W bool; True = fill."""
    refs: list[np.ndarray]
    """Reference photos, H_i x W_i x 3 uint8, any size."""
    ref_uris: list[str]
    gt: np.ndarray | None = None
    """H x W x 3 uint8 ground truth, when the scene has one."""

    def fingerprint(self) -> str:
        """Digest of everything that training reads: target, mask and references."""
        digest = hashlib.sha256()
        for array in (self.target, self.mask, *self.refs):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]


def _to_uint8(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer images scaled (not clipped) to 8 bits."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        return Image.fromarray(np.clip(np.round(values * 255.0 / peak), 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8), "L")
    return image


def read_image(uri: str, mode: str = "RGB") -> np.ndarray:
    """Decode an image file with its EXIF orientation applied, as uint8 RGB (or L)."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise SceneError(f"{uri}: file not found") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image = _to_uint8(ImageOps.exif_transpose(image))
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
            return np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SceneError(f"{uri}: unreadable image ({reason})") from None


def read_mask(uri: str) -> np.ndarray:
    """White (bright) = fill. Accepts L, RGB and RGBA masks."""
    return read_image(uri, mode="L") > 127


def list_refs(scene_uri: str) -> list[str]:
    ref_dir = storage.join(scene_uri, "ref")
    try:
        names = storage.list_dir(ref_dir)
    except FileNotFoundError:
        raise SceneError(f"{ref_dir}: missing reference folder") from None
    refs = [storage.join(ref_dir, name) for name in names if name.lower().endswith(IMAGE_SUFFIXES)]
    if not refs:
        raise SceneError(f"{ref_dir}: no reference images (expected {', '.join(IMAGE_SUFFIXES)})")
    return refs


def scene_id_of(scene_uri: str) -> str:
    """A scene's id is its folder's name."""
    return posixpath.basename(str(scene_uri).rstrip("/").replace("\\", "/"))


def load_scene(uri: str) -> Scene:
    """Load and validate one scene; raise SceneError with one clear line on bad input."""
    uri = str(uri).rstrip("/")
    scene_id = scene_id_of(uri)
    target_uri = storage.join(uri, "target", "target.png")
    mask_uri = storage.join(uri, "target", "mask.png")
    gt_uri = storage.join(uri, "target", "gt.png")
    for required in (target_uri, mask_uri):
        if not storage.exists(required):
            raise SceneError(f"{required}: file not found")
    target = read_image(target_uri)
    mask = read_mask(mask_uri)
    if mask.shape != target.shape[:2]:
        raise SceneError(
            f"{mask_uri}: mask is {mask.shape[1]}x{mask.shape[0]} but the target is "
            f"{target.shape[1]}x{target.shape[0]}"
        )
    if not mask.any():
        raise SceneError(f"{mask_uri}: mask is empty (no white pixels), so there is nothing to fill")
    target = np.where(mask[..., None], 0, target).astype(np.uint8)
    ref_uris = list_refs(uri)
    refs = [read_image(ref_uri) for ref_uri in ref_uris]
    gt = None
    if storage.exists(gt_uri):
        gt = read_image(gt_uri)
        if gt.shape != target.shape:
            raise SceneError(f"{gt_uri}: ground truth is {gt.shape[1]}x{gt.shape[0]}, target is "
                             f"{target.shape[1]}x{target.shape[0]}")
    return Scene(scene_id=scene_id, uri=uri, target=target, mask=mask, refs=refs, ref_uris=ref_uris, gt=gt)


def list_scenes(root_uri: str) -> list[str]:
    """Scene folders directly under a scenes root: every folder that has a target/ or ref/ inside."""
    root_uri = str(root_uri).rstrip("/")
    try:
        names = storage.list_dir(root_uri)
    except FileNotFoundError:
        raise SceneError(f"{root_uri}: scenes root not found") from None
    scenes = []
    for name in names:
        candidate = storage.join(root_uri, name)
        if storage.exists(storage.join(candidate, "target")) or storage.exists(storage.join(candidate, "ref")):
            scenes.append(candidate)
    if not scenes:
        if {"target", "ref"} & set(names):
            raise SceneError(f"{root_uri}: this is one scene, not a scenes root; pass the folder that holds it "
                             f"(or use realfill fill for a single scene)")
        raise SceneError(f"{root_uri}: no scene folders (each needs target/ and ref/)")
    return scenes
