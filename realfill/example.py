"""A bundled example scene, drawn in code: a synthetic textured wall seen from four viewpoints.

The target is one view with a hole, the references are three other views (perspective and light
change), and the untouched target is kept as gt.png, so every command runs on it with no downloads.
"""

from __future__ import annotations

import cv2
import numpy as np

from realfill.data import storage
from realfill.data.layout import SceneFiles


def draw_world(rng: np.random.Generator, height: int = 720, width: int = 960) -> np.ndarray:
    """A colourful, corner-rich planar scene: gradient, shapes and lettering."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    world = np.stack([60 + 80 * rows / height, 90 + 60 * cols / width, 140 - 60 * rows / height], -1)
    world = world.astype(np.uint8).copy()
    for _ in range(90):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if kind == 0:
            w, h = (int(v) for v in rng.integers(20, 140, 2))
            cv2.rectangle(world, (x, y), (x + w, y + h), colour, -1)
        elif kind == 1:
            cv2.circle(world, (x, y), int(rng.integers(10, 70)), colour, -1)
        else:
            points = (rng.normal(0, 50, (5, 2)) + (x, y)).astype(np.int32)
            cv2.fillPoly(world, [points], colour)
    for index in range(12):
        origin = (int(rng.integers(0, width - 200)), int(rng.integers(30, height)))
        cv2.putText(world, f"REALFILL {index}", origin, cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 3)
    return world


def view(world: np.ndarray, rng: np.random.Generator, size: tuple[int, int], jitter: float, gain: float) -> np.ndarray:
    """The world's central region seen through a random homography, with a brightness change."""
    height, width = world.shape[:2]
    out_w, out_h = size
    margin_x, margin_y = width * 0.2, height * 0.2
    corners = np.float32([[margin_x, margin_y], [width - margin_x, margin_y],
                          [width - margin_x, height - margin_y], [margin_x, height - margin_y]])
    corners += rng.uniform(-jitter, jitter, corners.shape).astype(np.float32)
    homography = cv2.getPerspectiveTransform(corners, np.float32([[0, 0], [out_w, 0], [out_w, out_h], [0, out_h]]))
    image = cv2.warpPerspective(world, homography, (out_w, out_h), flags=cv2.INTER_AREA)
    return np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def write_example(uri: str, seed: int = 7, outpaint: bool = False) -> str:
    """Write an example scene (RealBench layout) to a folder or fsspec URI; returns the URI.
    The hole is a box inside the frame, or with outpaint the border around a kept centre."""
    rng = np.random.default_rng(seed)
    world = draw_world(rng)
    gt = view(world, rng, (320, 256), jitter=0.0, gain=1.0)
    mask = np.zeros(gt.shape[:2], np.uint8)
    if outpaint:
        mask[:] = 255
        mask[48:208, 64:256] = 0
    else:
        mask[80:176, 110:230] = 255
    target = np.where(mask[..., None] > 0, 0, gt).astype(np.uint8)
    files = SceneFiles(uri)
    storage.write_png(files.target, target)
    storage.write_png(files.mask, mask)
    storage.write_png(files.gt, gt)
    for index, gain in enumerate((0.85, 1.0, 1.15)):
        ref = view(world, rng, (360, 270), jitter=60.0, gain=gain)
        storage.write_bytes(files.ref(f"{index:02d}.jpg"),
                            cv2.imencode(".jpg", cv2.cvtColor(ref, cv2.COLOR_RGB2BGR))[1].tobytes())
    return uri


def write_examples(root: str) -> list[str]:
    """A scenes root with two example scenes: one hole to fill, one border to outpaint."""
    return [write_example(storage.join(root, "wall"), seed=7),
            write_example(storage.join(root, "wall-outpaint"), seed=11, outpaint=True)]
