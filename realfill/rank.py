"""Seed selection by correspondence (RealFill, step 3).

A faithful fill matches the references *where the known pixels say it should*. Per scene, once:
features of every reference, and the target<->reference geometry fixed by the target's known pixels
(RANSAC-verified matches between the known region and each reference). Per candidate: features inside
the fill region only, matched to each reference (ratio test), and each match weighed by how close it
lands to where the known geometry predicts (a local affine fit of the nearest known correspondences,
checked against the known epipolar geometry). A fill that is shifted or mirrored still matches the
references, but lands in the wrong place, and scores low.

`matches` is the plain count (fill matches that are inliers of a fundamental matrix fitted on them
alone); `score` is the geometry-aware sum used for ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from realfill.config import RankConfig
from realfill.scene import Scene, SceneError, read_image

KNOWN_MARGIN_PX = 8
"""Known-region features keep this far from the hole, so no descriptor sees hole pixels."""


@dataclass
class Features:
    points: np.ndarray
    """N x 2 float32 keypoint positions, in the image's original pixel coordinates."""
    descriptors: np.ndarray | None


@dataclass
class KnownGeometry:
    """What the target's known pixels fix about one reference."""

    target_points: np.ndarray
    """M x 2 verified known-region points in the target ..."""
    ref_points: np.ndarray
    """... and where they are in the reference."""
    fundamental: np.ndarray | None
    """Target -> reference fundamental matrix (None when it could not be estimated)."""


@dataclass
class SceneIndex:
    """Everything about a scene that every candidate is compared with: computed once per scene."""

    hole: np.ndarray
    refs: list[Features]
    known: list[KnownGeometry | None]


@dataclass
class Score:
    matches: int
    score: float


def _detector(config: RankConfig):
    if config.features == "sift":
        return cv2.SIFT_create(nfeatures=config.max_features)
    if config.features == "orb":
        return cv2.ORB_create(nfeatures=config.max_features)
    return cv2.AKAZE_create()


def _norm(config: RankConfig) -> int:
    return cv2.NORM_L2 if config.features == "sift" else cv2.NORM_HAMMING


def detect(image: np.ndarray, mask: np.ndarray | None, config: RankConfig) -> Features:
    """Keypoints and descriptors (optionally only where mask is true), at most max_side resolution."""
    scale = min(1.0, config.max_side / max(image.shape[:2]))
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    if scale < 1.0:
        size = (round(gray.shape[1] * scale), round(gray.shape[0] * scale))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        if mask is not None:
            mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    cv_mask = None if mask is None else mask.astype(np.uint8) * 255
    keypoints, descriptors = _detector(config).detectAndCompute(gray, cv_mask)
    points = np.array([kp.pt for kp in keypoints], np.float32).reshape(-1, 2) / scale
    return Features(points=points, descriptors=descriptors)


def match(query: Features, train: Features, config: RankConfig) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-test matches as two N x 2 arrays (query points, train points)."""
    empty = np.zeros((0, 2), np.float32)
    if query.descriptors is None or train.descriptors is None or len(query.points) < 1 or len(train.points) < 2:
        return empty, empty
    pairs = cv2.BFMatcher(_norm(config)).knnMatch(query.descriptors, train.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < config.ratio * p[1].distance]
    if not good:
        return empty, empty
    return (np.float32([query.points[m.queryIdx] for m in good]),
            np.float32([train.points[m.trainIdx] for m in good]))


def fundamental_inliers(a: np.ndarray, b: np.ndarray, config: RankConfig) -> tuple[np.ndarray | None, np.ndarray]:
    """RANSAC fundamental matrix and inlier flags; (None, all False) when degenerate."""
    none = np.zeros(len(a), bool)
    if len(a) < 8:
        return None, none
    try:
        matrix, flags = cv2.findFundamentalMat(a, b, cv2.FM_RANSAC, config.ransac_px, 0.999)
    except cv2.error:
        return None, none
    if matrix is None or flags is None or matrix.shape != (3, 3):
        return None, none
    return matrix, flags.ravel().astype(bool)


def known_region(hole: np.ndarray) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * KNOWN_MARGIN_PX + 1,) * 2)
    return cv2.dilate(hole.astype(np.uint8), kernel) == 0


def index_scene(scene: Scene, config: RankConfig) -> SceneIndex:
    """Reference features and the known-region geometry: everything a candidate is scored against."""
    refs = [detect(ref, None, config) for ref in scene.refs]
    target = detect(scene.target, known_region(scene.mask), config)
    known = []
    for ref in refs:
        target_points, ref_points = match(target, ref, config)
        fundamental, inliers = fundamental_inliers(target_points, ref_points, config)
        if inliers.sum() < config.neighbours:
            known.append(None)
            continue
        known.append(KnownGeometry(target_points[inliers], ref_points[inliers], fundamental))
    return SceneIndex(hole=scene.mask, refs=refs, known=known)


def predicted_positions(points: np.ndarray, known: KnownGeometry, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each target point should land in the reference, from a least-squares affine fit of its
    nearest known correspondences, and how far those neighbours are (the prediction's reach)."""
    distances = np.linalg.norm(points[:, None, :] - known.target_points[None, :, :], axis=2)
    nearest = np.argsort(distances, axis=1)[:, :neighbours]
    predictions = np.empty_like(points)
    for row, indices in enumerate(nearest):
        source = np.hstack([known.target_points[indices], np.ones((len(indices), 1), np.float32)])
        affine, *_ = np.linalg.lstsq(source, known.ref_points[indices], rcond=None)
        predictions[row] = np.append(points[row], 1.0) @ affine
    reach = np.take_along_axis(distances, nearest, axis=1).mean(axis=1)
    return predictions, reach


def epipolar_distance(a: np.ndarray, b: np.ndarray, fundamental: np.ndarray) -> np.ndarray:
    lines = cv2.computeCorrespondEpilines(a.reshape(-1, 1, 2), 1, fundamental).reshape(-1, 3)
    return np.abs(np.sum(lines[:, :2] * b, axis=1) + lines[:, 2]) / np.linalg.norm(lines[:, :2], axis=1).clip(1e-9)


def agreement(fill_points: np.ndarray, ref_points: np.ndarray, known: KnownGeometry, config: RankConfig) -> np.ndarray:
    """Weight in [0, 1] per fill match: 1 when it lands where the known geometry predicts, falling off
    with the miss (tolerance grows with how far the nearest known correspondences are), 0 off the
    known epipolar lines."""
    predictions, reach = predicted_positions(fill_points, known, min(config.neighbours, len(known.target_points)))
    tolerance = config.agree_px * (1.0 + reach / 128.0)
    miss = np.linalg.norm(ref_points - predictions, axis=1) / tolerance
    weights = np.exp(-0.5 * miss**2)
    if known.fundamental is not None:
        weights *= epipolar_distance(fill_points, ref_points, known.fundamental) < 2 * config.agree_px
    return weights


def score_candidate(index: SceneIndex, image: np.ndarray, config: RankConfig) -> Score:
    """Score one completion against the scene; degenerate inputs score 0, never raise."""
    if image.shape[:2] != index.hole.shape:
        raise ValueError(f"candidate is {image.shape[1]}x{image.shape[0]}, scene target is "
                         f"{index.hole.shape[1]}x{index.hole.shape[0]}")
    fill = detect(image, index.hole, config)
    matches, total = 0, 0.0
    for ref, known in zip(index.refs, index.known):
        fill_points, ref_points = match(fill, ref, config)
        _, inliers = fundamental_inliers(fill_points, ref_points, config)
        matches += int(inliers.sum())
        if known is None:
            total += float(inliers.sum())
        elif len(fill_points):
            total += float(agreement(fill_points, ref_points, known, config).sum())
    return Score(matches=matches, score=round(total, 6))


def score_images(scene: Scene, uris: list[str], config: RankConfig) -> list[Score]:
    """Score image files against one scene, its features computed once; a file that cannot be read,
    or is not the target's size, raises SceneError naming it."""
    index = index_scene(scene, config)
    scores = []
    for uri in uris:
        image = read_image(uri)
        try:
            scores.append(score_candidate(index, image, config))
        except ValueError as exc:
            raise SceneError(f"{uri}: {exc}") from None
    return scores


def rank_scores(scores: list[Score]) -> list[int]:
    """1 = best; ties share the better rank (competition ranking)."""
    values = np.array([s.score for s in scores])
    return [int((values > value).sum()) + 1 for value in values]
