"""A battery of plausible fakes, built from a scene's ground truth, for measuring selection.

Only the true fill shows what was really there. Every fake is a kind of completion a generator
produces: the right content slightly out of place (shifted, rotated, zoomed, locally warped, blocks
swapped, mirrored), the right content in the wrong colours or exposure, no detail (blurred, classical
inpainting), another place altogether, or noise (what a model with random weights paints). Each fake
has a family and a magnitude, so a report can say per family the smallest perturbation that still
ranks below the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from realfill.data.scene import Scene

SHIFT_PX = (4, 8, 16, 32, 64)
DIRECTIONS = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1))
ROTATION_DEG = (1, 2, 3, 5, 7, 10)
ZOOMS = (0.85, 0.9, 0.95, 1.05, 1.1, 1.2)
WARP_PX = (2, 4, 8, 16)
BLOCK_PX = (16, 32, 64, 128)
EXPOSURE = (0.8, 0.9, 0.95, 1.05, 1.1, 1.25)
COLOUR_SHIFT = (0.05, 0.1, 0.2)
BLUR_SIGMA = (1, 2, 4, 8)
NOISE_SIGMA = (0, 2)
"""Noise fills: pixel noise, and the same blurred this much (blobs, as a random model's samples have)."""


@dataclass(frozen=True)
class Fake:
    family: str
    magnitude: float
    """How far from the truth, in the family's unit (pixels, degrees, |1 - factor|, sigma); 0 when
    the family has no scale (another scene, classical inpainting, a mirror image)."""
    label: str
    image: np.ndarray


UNITS = {"shift": "px", "rotation": "°", "zoom": "", "warp": "px", "blocks": "px", "exposure": "",
         "colour": "", "blur": "σ px", "mirror": "", "other scene": "", "inpainting": "", "noise": ""}
"""Families and the unit of their magnitude."""
SCALE_FREE = ("mirror", "other scene", "inpainting", "noise")
"""Families whose fakes have no size (magnitude 0)."""


def _fill(scene: Scene, content: np.ndarray) -> np.ndarray:
    return np.where(scene.mask[..., None], content, scene.target).astype(np.uint8)


def hole_centre(scene: Scene) -> tuple[float, float]:
    """The hole's deepest point (farthest from the known pixels): its centroid may lie outside it (a
    ring of border to outpaint, an L-shaped hole)."""
    depth = cv2.distanceTransform(scene.mask.astype(np.uint8), cv2.DIST_L2, 5)
    row, column = np.unravel_index(np.argmax(depth), depth.shape)
    return float(column), float(row)


def _affine(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _warp(image: np.ndarray, amplitude: float, wavelength: float) -> np.ndarray:
    """A smooth local warp: every pixel moved by up to `amplitude` pixels, in waves across the hole."""
    height, width = image.shape[:2]
    columns, rows = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    phase = np.float32(2 * np.pi / wavelength)
    map_x = columns + amplitude * np.sin(rows * phase)
    map_y = rows + amplitude * np.sin(columns * phase)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _swap_blocks(image: np.ndarray, centre: tuple[float, float], side: int) -> np.ndarray:
    """Two side-by-side square blocks at the hole's centre, exchanged."""
    height, width = image.shape[:2]
    side = min(side, width // 2, height)
    x0 = int(np.clip(centre[0] - side, 0, width - 2 * side))
    y0 = int(np.clip(centre[1] - side / 2, 0, height - side))
    swapped = image.copy()
    left, right = image[y0:y0 + side, x0:x0 + side], image[y0:y0 + side, x0 + side:x0 + 2 * side]
    swapped[y0:y0 + side, x0:x0 + side], swapped[y0:y0 + side, x0 + side:x0 + 2 * side] = right, left
    return swapped


def battery(scene: Scene, others: list[np.ndarray]) -> list[Fake]:
    """Every fake of the scene's true fill; `others` are photos of other places (resized into the hole)."""
    if scene.gt is None:
        raise ValueError(f"{scene.uri}: fakes need target/gt.png")
    gt = scene.gt
    height, width = gt.shape[:2]
    centre = hole_centre(scene)
    rows, columns = np.nonzero(scene.mask)
    wavelength = max(16.0, min(np.ptp(rows), np.ptp(columns)) / 2)
    fakes = []

    def add(family: str, magnitude: float, label: str, content: np.ndarray) -> None:
        fakes.append(Fake(family, round(float(magnitude), 6), label, _fill(scene, content)))

    for size in SHIFT_PX:
        for dx, dy in DIRECTIONS:
            step = size / np.hypot(dx, dy)
            add("shift", size, f"shift {size}px ({dx:+d},{dy:+d})", _affine(gt, np.float32([[1, 0, dx * step],
                                                                                          [0, 1, dy * step]])))
    for degrees in ROTATION_DEG:
        for sign in (1, -1):
            add("rotation", degrees, f"rotation {sign * degrees:+d}°",
                _affine(gt, cv2.getRotationMatrix2D(centre, sign * degrees, 1.0)))
    for zoom in ZOOMS:
        add("zoom", abs(1 - zoom), f"zoom {zoom:g}", _affine(gt, cv2.getRotationMatrix2D(centre, 0, zoom)))
    for amplitude in WARP_PX:
        add("warp", amplitude, f"warp {amplitude}px", _warp(gt, amplitude, wavelength))
    for side in BLOCK_PX:
        add("blocks", side, f"blocks {side}px swapped", _swap_blocks(gt, centre, side))
    for gain in EXPOSURE:
        add("exposure", abs(1 - gain), f"exposure x{gain:g}", np.clip(gt * np.float32(gain), 0, 255))
    for amount in COLOUR_SHIFT:
        tint = np.float32([1 + amount, 1, 1 - amount])
        add("colour", amount, f"colour R+{amount:g} B-{amount:g}", np.clip(gt * tint, 0, 255))
    for sigma in BLUR_SIGMA:
        add("blur", sigma, f"blur σ{sigma}", cv2.GaussianBlur(gt, (0, 0), sigma))
    add("mirror", 0, "mirrored", gt[:, ::-1])
    for number, other in enumerate(others):
        add("other scene", 0, f"other scene {number}", cv2.resize(other, (width, height), interpolation=cv2.INTER_AREA))
    hole = scene.mask.astype(np.uint8) * 255
    for name, method in (("telea", cv2.INPAINT_TELEA), ("navier-stokes", cv2.INPAINT_NS)):
        add("inpainting", 0, f"inpainting {name}", cv2.inpaint(scene.target, hole, 5, method))
    noise = np.random.default_rng(0).integers(0, 256, gt.shape, dtype=np.uint8)
    for sigma in NOISE_SIGMA:
        blobs = cv2.GaussianBlur(noise, (0, 0), sigma) if sigma else noise
        add("noise", 0, f"noise σ{sigma}", cv2.normalize(blobs, None, 0, 255, cv2.NORM_MINMAX))
    return fakes


def smallest_beaten(outcomes: list[tuple[Fake, bool]]) -> dict[str, float | None]:
    """Per family, the smallest magnitude from which on every fake (all scenes, all directions) ranks
    below the truth: None when even the largest does not; for scale-free families, 0 when all do."""
    result = {}
    for family in UNITS:
        mine = [(fake.magnitude, beaten) for fake, beaten in outcomes if fake.family == family]
        if not mine:
            continue
        threshold = None
        for magnitude in sorted({m for m, _ in mine}, reverse=True):
            if not all(beaten for m, beaten in mine if m == magnitude):
                break
            threshold = magnitude
        result[family] = threshold
    return result
