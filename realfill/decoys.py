"""Completions of known fidelity, built from a scene's ground truth, for measuring rankers.

Only `true` shows what was really there; every other decoy is a plausible-looking fake of a kind a
generator produces: wrong content, no detail, the right content in the wrong place, or a smooth guess.
"""

from __future__ import annotations

import cv2
import numpy as np

from realfill.scene import Scene

SHIFT_PX = 32
BLUR_SIGMA = 6.0


def _fill(scene: Scene, content: np.ndarray) -> np.ndarray:
    return np.where(scene.mask[..., None], content, scene.target).astype(np.uint8)


def make_decoys(scene: Scene, other: np.ndarray) -> dict[str, np.ndarray]:
    """Candidate completions keyed by name; `other` is any other photo (resized into the hole)."""
    if scene.gt is None:
        raise ValueError(f"{scene.uri}: decoys need target/gt.png")
    gt = scene.gt
    height, width = gt.shape[:2]
    shifted = np.roll(gt, SHIFT_PX, axis=1)
    shifted[:, :SHIFT_PX] = gt[:, :1]
    return {
        "true": _fill(scene, gt),
        "other_scene": _fill(scene, cv2.resize(other, (width, height), interpolation=cv2.INTER_AREA)),
        "blurred": _fill(scene, cv2.GaussianBlur(gt, (0, 0), BLUR_SIGMA)),
        "shifted": _fill(scene, shifted),
        "mirrored": _fill(scene, gt[:, ::-1]),
        "telea": cv2.inpaint(scene.target, scene.mask.astype(np.uint8) * 255, 5, cv2.INPAINT_TELEA),
    }
