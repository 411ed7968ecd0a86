"""Masks: the random training masks of the recipe, and the feathered compositing mask."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from realfill.config import TuneConfig


@dataclass
class MaskDraw:
    """One draw of the random-mask recipe, kept as its parameters so tests can check the statistics."""

    boxes: list[tuple[int, int, int, int]]
    """(top, left, height, width) of each rectangle."""
    inverted: bool
    full: bool


def draw_mask(rng: np.random.Generator, resolution: int, config: TuneConfig) -> MaskDraw:
    """1..29 rectangles with sides in [0.03, 0.25) * res; p=0.5 inverted; p=0.1 everything."""
    count = int(rng.integers(config.mask_min_boxes, config.mask_max_boxes + 1))
    boxes = []
    for _ in range(count):
        height, width = (max(1, int(side * resolution))
                         for side in rng.uniform(config.mask_min_side, config.mask_max_side, size=2))
        top = int(rng.integers(0, resolution - height + 1))
        left = int(rng.integers(0, resolution - width + 1))
        boxes.append((top, left, height, width))
    inverted = bool(rng.random() < config.mask_invert_prob)
    full = bool(rng.random() < config.mask_full_prob)
    return MaskDraw(boxes=boxes, inverted=inverted, full=full)


def render_mask(draw: MaskDraw, resolution: int) -> np.ndarray:
    """The draw as a resolution x resolution float32 mask, 1 = masked (to be generated)."""
    if draw.full:
        return np.ones((resolution, resolution), np.float32)
    mask = np.zeros((resolution, resolution), np.float32)
    for top, left, height, width in draw.boxes:
        mask[top : top + height, left : left + width] = 1.0
    return 1.0 - mask if draw.inverted else mask


def composite_alpha(hole: np.ndarray, dilate_px: int, feather_px: int) -> np.ndarray:
    """Blend weight of the generated image: 1 on the hole grown by dilate_px, falling smoothly to
    exactly 0 over the next feather_px pixels, and exactly 0 beyond (so those pixels stay untouched)."""
    distance = cv2.distanceTransform((~hole).astype(np.uint8), cv2.DIST_L2, 5)
    if feather_px == 0:
        return (distance <= dilate_px).astype(np.float32)
    ramp = np.clip((dilate_px + feather_px - distance) / feather_px, 0.0, 1.0)
    return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)


def composite(target: np.ndarray, generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend generated into target; where alpha is 0 the target's bytes are copied unchanged."""
    weight = alpha[..., None]
    blended = np.rint(weight * generated.astype(np.float32) + (1.0 - weight) * target.astype(np.float32))
    out = np.clip(blended, 0, 255).astype(np.uint8)
    return np.where(weight > 0, out, target)
