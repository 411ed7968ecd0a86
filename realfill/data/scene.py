"""Scenes in the RealBench layout, from any fsspec URI.

SCENE/ref/*.{jpg,jpeg,png,webp}   reference photos
SCENE/target/target.png           the photo to complete (its hole pixels are never used)
SCENE/target/mask.png             white = fill, black = keep (all white: a blank canvas, scene composition)
SCENE/target/gt.png               optional ground truth
"""

from __future__ import annotations

import functools
import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from realfill.data import storage
from realfill.data.layout import SceneFiles, collision_key, holds_scene_parts, scene_id_of
from realfill.data.runlog import InputError, first_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class SceneError(InputError, ValueError):
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

    @property
    def blank(self) -> bool:
        """A blank canvas: the mask covers the whole target, so there is no known pixel (the paper's scene
        composition: the generative methods make variations of the scene from its references alone)."""
        return bool(self.mask.all())

    @functools.cached_property
    def fingerprint(self) -> str:
        """Digest of everything that training reads: target, mask and references (hashed once per scene:
        the adapter and every image key derive from it)."""
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


EXIF_ORIENTATION = 0x0112
ORIENTATIONS = {1: "upright", 2: "mirrored", 3: "rotated 180", 4: "flipped", 5: "transposed",
                6: "rotated 90 clockwise", 7: "transversed", 8: "rotated 90 counter-clockwise"}
"""EXIF orientation values, as a viewer applies them."""


def read_image(uri: str, mode: str = "RGB", max_megapixels: float | None = None,
               draft: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file with its EXIF orientation applied, as uint8 RGB (or L). Images above
    max_megapixels are refused from their header, before any pixel is decoded. draft: the size wanted, at
    least (a JPEG is then decoded at the smallest scale that still covers it: what thumbnails need)."""
    return read_oriented(uri, mode, max_megapixels, draft)[0]


def read_oriented(uri: str, mode: str = "RGB", max_megapixels: float | None = None,
                  draft: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """read_image's pixels, and the EXIF orientation it applied (1: none)."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise SceneError(f"{uri}: file not found") from None
    except IsADirectoryError:
        raise SceneError(f"{uri}: is a folder, not an image file") from None
    except OSError as exc:
        raise SceneError(f"{uri}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if not data:
        raise SceneError(f"{uri}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():  # Pillow warns of large images; the limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        with image:
            width, height = image.size
            if max_megapixels is not None and width * height > max_megapixels * 1e6:
                raise SceneError(f"{uri}: {width}x{height} is {width * height / 1e6:.3g} megapixels, above the "
                                 f"limit of {max_megapixels:g} (--max_megapixels)")
            if draft is not None:
                image.draft(mode, draft)
            image.load()
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            image = _to_uint8(ImageOps.exif_transpose(image))
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
            return np.asarray(image.convert(mode)), orientation if orientation in ORIENTATIONS else 1
    except SceneError:
        raise
    except UnidentifiedImageError:
        raise SceneError(f"{uri}: not an image, or in a format that cannot be read "
                         f"(expected {', '.join(IMAGE_SUFFIXES)})") from None
    except Image.DecompressionBombError as exc:
        raise SceneError(f"{uri}: too large to decode safely ({str(exc).split(',')[0]})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise SceneError(f"{uri}: unreadable image ({first_line(exc)})") from None


def read_mask(uri: str, max_megapixels: float | None = None) -> np.ndarray:
    """White (bright) = fill. Accepts L, RGB and RGBA masks."""
    return read_image(uri, mode="L", max_megapixels=max_megapixels) > 127


def stored_size(image: np.ndarray, orientation: int) -> tuple[int, int]:
    """(width, height) of an image as its file stores it, before its EXIF orientation was applied."""
    height, width = image.shape[:2]
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def check_aligned(uri: str, image: np.ndarray, orientation: int, target_uri: str, target: np.ndarray,
                  target_orientation: int, what: str) -> None:
    """An image that must cover the target pixel for pixel (its mask, its ground truth), each with its own
    EXIF orientation applied. When the two orientations differ and the files are the same size as stored,
    which way the image is meant cannot be told (a square one would be silently misaligned): an error."""
    height, width = target.shape[:2]
    if orientation != target_orientation and stored_size(image, orientation) == stored_size(target,
                                                                                               target_orientation):
        stored = "x".join(map(str, stored_size(target, target_orientation)))
        raise SceneError(f"{uri}: its EXIF orientation is {ORIENTATIONS[orientation]}, the target's "
                         f"({target_uri}) is {ORIENTATIONS[target_orientation]}, and both files are {stored} as "
                         f"stored, so which way the {what} is meant cannot be told; save both with the same "
                         f"orientation (or both upright)")
    if image.shape[:2] != target.shape[:2]:
        shown = " (EXIF orientation applied)" if orientation != 1 or target_orientation != 1 else ""
        raise SceneError(f"{uri}: {what} is {image.shape[1]}x{image.shape[0]} but the target is "
                         f"{width}x{height}{shown}")


def entries(folder: str, missing: str) -> list[str]:
    """A folder's entry names, sorted; SceneError naming the folder and saying `missing` when it is not there."""
    try:
        return storage.list_dir(folder)
    except FileNotFoundError:
        raise SceneError(f"{folder}: {missing}") from None


def list_refs(scene_uri: str) -> list[str]:
    ref_dir = SceneFiles(scene_uri).refs
    names = entries(ref_dir, "missing reference folder")
    refs = [storage.join(ref_dir, name) for name in names if name.lower().endswith(IMAGE_SUFFIXES)]
    if not refs:
        raise SceneError(f"{ref_dir}: no reference images (expected {', '.join(IMAGE_SUFFIXES)})")
    return refs


def printable(name: str) -> str:
    """A name as one line of text: control characters escaped (a scene id is a folder's name, and may hold
    any character that one can, a newline included)."""
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode() for char in name)


def check_unique(scene_uris: list[str]) -> None:
    """Scene ids must identify scenes: two folders whose outputs would share names (the same id from two roots,
    or ids that differ only in case, on a case-insensitive store) are an error naming both, before any work."""
    seen: dict[str, str] = {}
    for uri in scene_uris:
        key = collision_key(scene_id_of(uri))
        if key in seen:
            raise SceneError(f"{uri}: its scene id '{scene_id_of(uri)}' collides with {seen[key]} "
                             f"('{scene_id_of(seen[key])}'); rename one of the two folders")
        seen[key] = uri


def load_scene(uri: str, max_megapixels: float | None = None) -> Scene:
    """Load and validate one scene; raise SceneError with one clear line on bad input. Images larger than
    max_megapixels are refused before they are decoded."""
    uri = str(uri).rstrip("/")
    scene_id = scene_id_of(uri)
    files = SceneFiles(uri)
    target_uri, mask_uri, gt_uri = files.target, files.mask, files.gt
    for required in (target_uri, mask_uri):
        if not storage.exists(required):
            raise SceneError(f"{required}: file not found")
    target, target_orientation = read_oriented(target_uri, max_megapixels=max_megapixels)
    mask, mask_orientation = read_oriented(mask_uri, "L", max_megapixels=max_megapixels)
    check_aligned(mask_uri, mask, mask_orientation, target_uri, target, target_orientation, "mask")
    mask = mask > 127
    if not mask.any():
        raise SceneError(f"{mask_uri}: mask is empty (no white pixels), so there is nothing to fill")
    target = np.where(mask[..., None], 0, target).astype(np.uint8)
    ref_uris = list_refs(uri)
    refs = [read_image(ref_uri, max_megapixels=max_megapixels) for ref_uri in ref_uris]
    gt = None
    if storage.exists(gt_uri):
        gt, gt_orientation = read_oriented(gt_uri, max_megapixels=max_megapixels)
        check_aligned(gt_uri, gt, gt_orientation, target_uri, target, target_orientation, "ground truth")
    return Scene(scene_id=scene_id, uri=uri, target=target, mask=mask, refs=refs, ref_uris=ref_uris, gt=gt)


def list_scenes(root_uri: str) -> list[str]:
    """Scene folders directly under a scenes root: every folder that has a target/ or ref/ inside."""
    root_uri = str(root_uri).rstrip("/")
    names = entries(root_uri, "scenes root not found")
    scenes = []
    for name in names:
        candidate = storage.join(root_uri, name)
        if SceneFiles(candidate).is_scene():
            scenes.append(candidate)
    if not scenes:
        if holds_scene_parts(names):
            raise SceneError(f"{root_uri}: this is one scene, not a scenes root; pass the folder that holds it "
                             f"(or use realfill fill for a single scene)")
        raise SceneError(f"{root_uri}: no scene folders (each needs target/ and ref/)")
    check_unique(scenes)
    return scenes
