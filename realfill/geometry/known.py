"""What correspondences between a target's known pixels and a reference fix: RANSAC-verified matches
(a fundamental matrix), planes (homographies), and the known region's features themselves, kept clear of
the hole. Stitch warps through these, ranking judges fills by them, picking verifies references with them."""

from __future__ import annotations

import cv2
import numpy as np

from realfill.geometry.matchers import Features, Matcher

KNOWN_MARGIN_PX = 8
"""Known-region features keep this far from the hole, so no descriptor sees hole pixels."""


def known_region(hole: np.ndarray) -> np.ndarray:
    """The known pixels at least KNOWN_MARGIN_PX from the hole."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * KNOWN_MARGIN_PX + 1,) * 2)
    return cv2.dilate(hole.astype(np.uint8), kernel) == 0


def known_features(matcher: Matcher, target: np.ndarray, hole: np.ndarray) -> Features:
    """The target's features in its known region."""
    return matcher.detect(target, known_region(hole))


def known_matches(matcher: Matcher, target: np.ndarray, hole: np.ndarray,
                  refs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per reference, its matches to the target's known pixels (target points, reference points)."""
    known = known_features(matcher, target, hole)
    return [matcher.match(known, matcher.detect(ref, None)) for ref in refs]


def fundamental_inliers(a: np.ndarray, b: np.ndarray, threshold: float) -> tuple[np.ndarray | None, np.ndarray]:
    """A RANSAC fundamental matrix and its inlier flags ((None, all False) when there is none)."""
    none = np.zeros(len(a), bool)
    if len(a) < 8:
        return None, none
    try:
        matrix, flags = cv2.findFundamentalMat(a, b, cv2.FM_RANSAC, threshold, 0.999)
    except cv2.error:
        return None, none
    if matrix is None or flags is None or matrix.shape != (3, 3):
        return None, none
    return matrix, flags.ravel().astype(bool)


def epipolar_distance(a: np.ndarray, b: np.ndarray, fundamental: np.ndarray) -> np.ndarray:
    """Distance of each b from the epipolar line of its a (pixels of the reference)."""
    lines = cv2.computeCorrespondEpilines(a.reshape(-1, 1, 2), 1, fundamental).reshape(-1, 3)
    return np.abs(np.sum(lines[:, :2] * b, axis=1) + lines[:, 2]) / np.linalg.norm(lines[:, :2], axis=1).clip(1e-9)


CHANCE_TRIALS = 8
"""Random re-pairings that measure what a fundamental matrix fits by chance."""


def beyond_chance(a: np.ndarray, b: np.ndarray, inliers: int, threshold: float, need: int) -> int:
    """How many of a photo's RANSAC fundamental-matrix inliers exceed the most that the same points reach paired
    at random (CHANCE_TRIALS re-pairings, seeded): what a photo of another place, matched by chance with this
    many points laid out like these, reaches. Seven degrees of freedom absorb a number of chance matches that
    grows with the matches tried (about 10 of 40, about 25 of 500), so no fixed count separates places from
    chance. Under need the answer is only an upper bound: the re-pairings stop as soon as the photo fails."""
    rng = np.random.default_rng(0)
    beyond = inliers
    for _ in range(CHANCE_TRIALS if inliers >= need else 0):
        beyond = min(beyond, inliers - int(fundamental_inliers(a, b[rng.permutation(len(b))], threshold)[1].sum()))
        if beyond < need:
            break
    return beyond


def homography(target_points: np.ndarray, ref_points: np.ndarray, threshold: float) -> np.ndarray:
    """The plane that best explains the known correspondences (a least-squares fit when RANSAC finds none)."""
    matrix, _ = cv2.findHomography(target_points, ref_points, cv2.RANSAC, threshold)
    if matrix is None:
        matrix, _ = cv2.findHomography(target_points, ref_points, 0)
    return matrix


def apply_homography(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(points.reshape(-1, 1, 2).astype(np.float64), matrix).reshape(-1, 2)


def planes(target_points: np.ndarray, ref_points: np.ndarray, max_planes: int, min_inliers: int,
           threshold: float) -> list[tuple[np.ndarray, int]]:
    """Homographies (reference -> target) fitted one after another, each on the matches the previous ones
    left, with how many matches each explains."""
    found = []
    left = np.arange(len(target_points))
    for _ in range(max_planes):
        if len(left) < min_inliers:
            break
        matrix, flags = cv2.findHomography(ref_points[left], target_points[left], cv2.USAC_MAGSAC,
                                           threshold, maxIters=2000, confidence=0.999)
        if matrix is None or flags is None:
            break
        inliers = flags.ravel().astype(bool)
        if inliers.sum() < min_inliers:
            break
        found.append((matrix, int(inliers.sum())))
        left = left[~inliers]
    return found
