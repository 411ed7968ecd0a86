"""The stitch method: geometry only, no model, no GPU, seconds per scene on one core.

Read top to bottom:
1. match the target's known pixels to each reference (`realfill.geometry`: matchers, `known_matches`);
2. fit planes, one after another on the matches the previous planes left (sequential RANSAC), so a scene
   with depth is covered by several homographies, and warp the reference through each (`plane_warps`);
3. compensate each warp's colour on the known pixels around the hole: one affine RGB map, then the
   remaining differences carried smoothly into the hole, so the seam vanishes (`compensate`);
4. judge every warp by how well it explains the known pixels nearest the hole, held out: its colour map is
   fitted on the band's outer part and its error measured on the inner ring; classical inpainting is judged
   the same way, by inpainting that ring it is not shown (`local_error`);
5. blend per pixel, each warp weighted by how close its local error is to the best one (`blend`); where no
   warp covers a pixel or fits better than inpainting, inpainting fills it.

A warp of the wrong plane, of parallax, or of another moment fails step 4 on the known pixels themselves,
and so is not used where it fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from realfill.config import GeometryConfig, StitchConfig
from realfill.data.layout import SceneFiles
from realfill.data.scene import Scene, SceneError
from realfill.geometry.known import known_matches, planes
from realfill.geometry.matchers import matcher

MIN_JUDGES = 100
"""Known pixels a warp must cover near the hole, in each of the band's two parts, to be judged at all."""


@dataclass
class Warp:
    """One reference warped into the target's frame through one plane."""

    image: np.ndarray
    """H x W x 3 float32, the target's size."""
    valid: np.ndarray
    """H x W bool: where the warped reference has pixels."""
    inliers: int
    """Matches that fixed the plane."""


@dataclass
class Stitched:
    """A stitch result and what made each fill pixel."""

    image: np.ndarray
    """H x W x 3 uint8: the target with its hole filled (known pixels byte-identical)."""
    warps: int
    """Warps that were judged."""
    from_warps: float
    """Share of the hole filled by warps (the rest is inpainting's)."""


def band(hole: np.ndarray, width: int) -> np.ndarray:
    """Known pixels within width of the hole."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return cv2.dilate(hole.astype(np.uint8), kernel).astype(bool) & ~hole


def spread(values: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution: a weighted Gaussian average of values, defined wherever weights reach."""
    weights = weights.astype(np.float32)
    reach = np.maximum(cv2.GaussianBlur(weights, (0, 0), sigma), 1e-6)
    if values.ndim == 3:  # one weight per pixel, for every channel
        weights, reach = weights[..., None], reach[..., None]
    return cv2.GaussianBlur(values * weights, (0, 0), sigma) / reach


def scene_planes(scene: Scene, config: StitchConfig, geometry: GeometryConfig,
                 max_planes: int) -> list[list[tuple[np.ndarray, int]]]:
    """Per reference, the planes (reference -> target homographies, with their inliers) that its matches to
    the target's known pixels fix."""
    matches = known_matches(matcher(geometry), scene.target, scene.mask, scene.refs)
    return [planes(target_points, ref_points, max_planes, config.min_inliers, config.ransac_px)
            for target_points, ref_points in matches]


def window(hole: np.ndarray, config: StitchConfig) -> tuple[slice, slice]:
    """The part of the target the fill depends on: the hole's box, grown by the judging band and the reach
    of the Gaussians that carry its verdicts (3 sigma), so a small hole in a large photo costs little."""
    rows, columns = np.nonzero(hole.any(axis=1))[0], np.nonzero(hole.any(axis=0))[0]
    if not len(rows):
        return slice(0, 0), slice(0, 0)
    margin = config.judge_px + config.inpaint_radius + int(np.ceil(3 * max(config.reach_px, config.correction_px)))
    return (slice(max(0, rows[0] - margin), rows[-1] + 1 + margin),
            slice(max(0, columns[0] - margin), columns[-1] + 1 + margin))


def plane_warps(scene: Scene, config: StitchConfig, geometry: GeometryConfig, crop: tuple[slice, slice]) -> list[Warp]:
    """Every reference warped through every plane its matches to the known pixels fix, into the crop of
    the target's frame."""
    offset = np.array([[1, 0, -crop[1].start], [0, 1, -crop[0].start], [0, 0, 1]], np.float64)
    height, width = scene.mask[crop].shape
    warps = []
    for ref, found in zip(scene.refs, scene_planes(scene, config, geometry, config.max_planes)):
        for matrix, inliers in found:
            matrix = offset @ matrix
            image = cv2.warpPerspective(ref, matrix, (width, height), flags=cv2.INTER_LINEAR)
            covered = cv2.warpPerspective(np.ones(ref.shape[:2], np.uint8), matrix, (width, height),
                                          flags=cv2.INTER_NEAREST)
            valid = cv2.erode(covered, np.ones((3, 3), np.uint8)) > 0  # no interpolated black edge
            warps.append(Warp(image.astype(np.float32), valid, inliers))
    return warps


def exemplar(scene: Scene, config: StitchConfig, geometry: GeometryConfig) -> np.ndarray:
    """The reference that best matches the known pixels (most matches on one plane), cropped to where the
    hole lands in it, with as much context again around it; the first reference whole when none matches."""
    best = (0, 0, None)
    for index, found in enumerate(scene_planes(scene, config, geometry, max_planes=1)):
        if found and found[0][1] > best[1]:
            best = (index, found[0][1], found[0][0])
    index, _, matrix = best
    ref = scene.refs[index]
    if matrix is None:
        return ref
    rows, columns = np.nonzero(scene.mask)
    corners = np.float64([[columns.min(), rows.min()], [columns.max(), rows.max()],
                          [columns.min(), rows.max()], [columns.max(), rows.min()]]).reshape(-1, 1, 2)
    landed = cv2.perspectiveTransform(corners, np.linalg.inv(matrix)).reshape(-1, 2)
    (x0, y0), (x1, y1) = landed.min(axis=0), landed.max(axis=0)
    grow_x, grow_y = (x1 - x0) / 2, (y1 - y0) / 2
    height, width = ref.shape[:2]
    x0, x1 = int(np.clip(x0 - grow_x, 0, width - 1)), int(np.clip(x1 + grow_x, 1, width))
    y0, y1 = int(np.clip(y0 - grow_y, 0, height - 1)), int(np.clip(y1 + grow_y, 1, height))
    return ref[y0:y1, x0:x1] if x1 - x0 >= 16 and y1 - y0 >= 16 else ref


def compensate(warp: Warp, target: np.ndarray, judges: np.ndarray, config: StitchConfig) -> np.ndarray:
    """The warp in the target's colours: an affine RGB map fitted on the judging pixels, then what differs
    still there carried into the hole over correction_px."""
    height, width = judges.shape
    source = np.hstack([warp.image[judges], np.ones((int(judges.sum()), 1), np.float32)])
    colour_map, *_ = np.linalg.lstsq(source, target[judges], rcond=None)
    mapped = (np.hstack([warp.image.reshape(-1, 3), np.ones((height * width, 1), np.float32)]) @ colour_map)
    mapped = mapped.reshape(height, width, 3).astype(np.float32)
    residual = np.where(judges[..., None], target - mapped, 0).astype(np.float32)
    return mapped + spread(residual, judges, config.correction_px)


def local_error(prediction: np.ndarray, target: np.ndarray, judges: np.ndarray, reach: float) -> np.ndarray:
    """Mean absolute error of a prediction on the judging pixels, carried into the hole over reach."""
    error = np.abs(target - prediction).mean(axis=2) * judges
    return spread(error.astype(np.float32), judges, reach)


class Blend:
    """Per pixel, candidates weighted by exp(-(error - best error) / softness), the best alone when softness
    is 0; accumulated one candidate at a time (a running log-sum-exp), so memory does not grow with the
    number of warps. Infinite error (not covered) weighs nothing; the first candidate must be finite."""

    def __init__(self, softness: float):
        self.softness = softness
        self.best: np.ndarray | None = None
        self.numerator = self.denominator = self.winner = None
        self.count = 0

    def add(self, image: np.ndarray, error: np.ndarray) -> None:
        if self.best is None:
            self.best, self.numerator = error, image.copy()
            self.denominator, self.winner = np.ones_like(error), np.zeros(error.shape, np.int32)
        else:
            best = np.minimum(self.best, error)
            better = error < self.best
            if self.softness == 0:
                self.numerator[better] = image[better]
            else:
                kept, added = np.exp((best - self.best) / self.softness), np.exp((best - error) / self.softness)
                self.numerator = self.numerator * kept[..., None] + image * added[..., None]
                self.denominator = self.denominator * kept + added
            self.winner[better] = self.count
            self.best = best
        self.count += 1

    def result(self) -> np.ndarray:
        return self.numerator / self.denominator[..., None]


def inpaint(target: np.ndarray, hole: np.ndarray, radius: int) -> np.ndarray:
    return cv2.inpaint(target, hole.astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)


def stitch(scene: Scene, config: StitchConfig, geometry: GeometryConfig) -> Stitched:
    """The scene's hole filled from its references by geometry (see the module docstring). Matching sees
    the whole known region; everything per pixel happens in the window the fill depends on."""
    if scene.blank:
        raise SceneError(f"{SceneFiles(scene.uri).mask}: covers the whole target, and stitch needs known pixels to "
                         f"anchor its warps (a blank canvas is composed by realfill, sd-inpaint or paint-by-example, "
                         f"with --init noise)")
    crop = window(scene.mask, config)
    hole, known = scene.mask[crop], np.ascontiguousarray(scene.target[crop])
    target = known.astype(np.float32)
    judging = band(hole, config.judge_px)
    ring = band(hole, config.holdout_px)  # judged; the rest of the band fits
    held_out = inpaint(known, hole | ring, config.inpaint_radius).astype(np.float32)
    blended = Blend(config.softness)
    blended.add(inpaint(known, hole, config.inpaint_radius).astype(np.float32),
                local_error(held_out, target, ring, config.reach_px))
    for warp in plane_warps(scene, config, geometry, crop) if hole.any() else []:
        fitters, judges = judging & ~ring & warp.valid, ring & warp.valid
        if fitters.sum() < MIN_JUDGES or judges.sum() < MIN_JUDGES:
            continue
        error = local_error(compensate(warp, target, fitters, config), target, judges, config.reach_px)
        blended.add(compensate(warp, target, judging & warp.valid, config), np.where(warp.valid, error, np.inf))
    image = scene.target.copy()
    image[crop][hole] = np.clip(np.rint(blended.result()[hole]), 0, 255).astype(np.uint8)
    from_warps = float((blended.winner[hole] > 0).mean()) if hole.any() else 0.0
    return Stitched(image, blended.count - 1, from_warps)
