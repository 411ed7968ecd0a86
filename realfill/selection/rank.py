"""Seed selection by correspondence (RealFill, step 3), judged by the geometry the known pixels fix.

A faithful fill matches the references *where the target's known pixels say it must*, in the colours
they say it must have. Per scene, once (`index_scene`): features of every reference and, for each
reference, the correspondences between the target's known region and it, verified by a RANSAC
fundamental matrix. They fix (`fit_known`): the epipolar geometry, the known region's dominant plane
(a homography) and each known point's departure from that plane (depth, seen locally). A point is
predicted to land where the plane maps it, moved by the mean departure of its nearest known points.

How good such predictions are is measured on the known region itself (`calibrate`), not set by hand:
each known point is predicted with its neighbours nearer than a radius left out, at radii from 0 to a
quarter of the image (a fill point lies at some distance from every known point, and predictions
degrade with it), giving the spread of misses along the epipolar line per radius; the spread of the
known points' distances across their epipolar lines; and the spread of colour misses under an affine
RGB map fitted on the known points, beside that of wrongly paired points.

Per candidate (`score_candidate`): features inside the fill region, matched to each reference. Each
match's evidence (`evidence`) is the log-likelihood ratio of its miss across the line, along it (at
its distance from the known points) and in colour, under those spreads, against a wrong match, less
what chance gives the best of every test made (a-contrario: each fill keypoint against each reference,
at a false-alarm rate of FALSE_ALARMS). A match counts only when its neighbours with evidence
corroborate it (`corroborated`): true content moves together, while a lone match, or matches whose
arrangement is mirrored, is what chance and symmetric structure give. The score is the sum over matches
and references: a fill shifted, rotated, zoomed or re-coloured still matches, but not where and how the
known pixels say, and a fill of noise, of another place or a mirror image scores 0.

A reference whose known-region geometry cannot be fitted (too few verified matches) cannot tell a
true fill from a shifted copy, so it adds nothing to the score; plain verified match counts only
break ties (`rank_key`). When no candidate has any evidence, `selection` says "no evidence" and
nothing is selected.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from realfill.config import GeometryConfig, RankConfig
from realfill.data.records import Selection
from realfill.data.scene import Scene, SceneError, read_image
from realfill.geometry.known import (
    apply_homography,
    epipolar_distance,
    fundamental_inliers,
    homography,
    known_features,
)
from realfill.geometry.matchers import Features, Matcher, MatcherError, matcher

REACH_FRACTIONS = (0.0, 1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4)
"""Leave-out radii of the calibration, as fractions of the target's diagonal."""
MIN_RESIDUALS = 8
"""A calibration radius is used only when this many known points could be predicted at it."""
MIN_SPREAD_PX = 0.5
"""Spreads are at least this (detection pixels): keypoints are localised to about half a pixel."""
FALSE_ALARMS = 0.1
"""Expected number of matches of unrelated content (noise, another place) that pass the a-contrario bound, per
candidate: each match's evidence is what is left beyond log(tests / FALSE_ALARMS)."""
CORROBORATING = 4
"""A match is judged against this many of its nearest fellow matches with evidence."""
AGREEING_COS = 0.5
"""Two matches agree when the vector between them in the reference is within 60 degrees of the one the known
geometry predicts."""
COLOUR_SIGMA_PX = 2.0
"""Colours are compared on images blurred this much (at detection resolution), so a one-pixel
misalignment at an edge is not a colour miss."""

FOOTPRINT_PX = 16
"""The radius (detection pixels) of the patch a match vouches for: about what a SIFT descriptor, or a learned
matcher's 8-pixel cell with its neighbours, sees around its keypoint at the scales that matter."""
NO_FOOTPRINTS = np.zeros((0, 3), np.float32)

GEOMETRY, NO_EVIDENCE, NO_KNOWN_REGION = typing.get_args(Selection)
"""What a scene's selection rests on (the scene row's `selection`)."""
NO_EVIDENCE_TEXT = "no sample matched the references, so none is selected and there is no best"
SELECTION_TEXT = {NO_EVIDENCE: NO_EVIDENCE_TEXT,
                  NO_KNOWN_REGION: "the mask covers the whole target: with no known pixel to check against, "
                                   "every sample is a variation of the scene (scene composition), none selected"}
"""What a scene's last line says when nothing is selected, by what the selection rests on."""
WEAK_EVIDENCE = 3.0
"""A best score under this (nats) is weak evidence, shown as such rather than as a plain ok: about one match of
the best completion lands where the known pixels say, a chance of roughly one in twenty against it."""
NO_EVIDENCE_ANYWHERE = ("no scene has evidence: every sample's score is 0 (a random model, or references of "
                        "another place), so nothing is selected and no best is named")
"""What a run whose every scene lacks evidence says, in its last lines and at the top of its report."""


@dataclass
class Calibration:
    """How well the known region predicts itself, as the spreads of its residuals."""

    radii: np.ndarray
    """Leave-out radii (original pixels), ascending, each with enough residuals."""
    along: np.ndarray
    """Spread (sigma, reference pixels) of position misses along the epipolar line, per radius."""
    across: float
    """Spread of the known points' distances from their epipolar lines."""
    colour_map: np.ndarray
    """4 x 3 affine map from target RGB (with a 1) to reference RGB."""
    colour: float
    """Spread of the known points' colour misses under that map (per channel, 0-255)."""
    colour_null: float
    """The same for known points paired with the wrong reference point: what a colour miss of a
    wrong match looks like."""
    ref_area: float
    """Area of the reference in pixels: where a wrong match may land, uniformly."""


@dataclass
class Geometry:
    """What the target's known pixels fix about one reference."""

    target_points: np.ndarray
    """M x 2 verified known-region points in the target ..."""
    ref_points: np.ndarray
    """... and where they are in the reference."""
    fundamental: np.ndarray
    """Target -> reference fundamental matrix, fitted on the known region."""
    plane: np.ndarray
    """Target -> reference homography of the known region's dominant plane."""
    offsets: np.ndarray
    """Each known correspondence's departure from that plane (M x 2, reference pixels)."""

    def predict(self, points: np.ndarray, neighbours: int,
                min_distance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each point maps: through the plane, moved by the mean departure from it of its
        `neighbours` nearest known correspondences at least min_distance away (depth, seen locally).
        Also the distance to the nearest one used, and which points had any. min_distance > 0 leaves a
        known point itself out of its own prediction."""
        distances = np.linalg.norm(points[:, None, :] - self.target_points[None, :, :], axis=2)
        distances[distances < min_distance] = np.inf
        count = min(neighbours, len(self.target_points))
        nearest = np.argpartition(distances, count - 1, axis=1)[:, :count]
        near = np.take_along_axis(distances, nearest, axis=1)
        usable = np.isfinite(near)
        weights = usable / usable.sum(axis=1, keepdims=True).clip(1)
        offset = np.einsum("nk,nkj->nj", weights, self.offsets[nearest])
        valid = usable.any(axis=1)
        return apply_homography(self.plane, points) + offset, np.where(valid, near.min(axis=1), np.inf), valid


@dataclass
class KnownGeometry:
    """A reference's known-region geometry and how well it predicts itself."""

    geometry: Geometry
    calibration: Calibration


@dataclass
class SceneIndex:
    """Everything about a scene that every candidate is compared with: computed once per scene."""

    hole: np.ndarray
    matcher: Matcher
    refs: list[Features]
    ref_images: list[np.ndarray]
    """Blurred references, where fill matches read their colour."""
    known: list[KnownGeometry | None]


@dataclass
class Score:
    matches: int
    """Plain count: fill matches that are inliers of a fundamental matrix fitted on them alone."""
    score: float
    """Evidence (nats) that the fill's matches land where, and in the colours, the known region says."""
    confirmed: bool = False
    """Scored by the second matcher too (the contested top of a cascade): its matches and evidence are added."""
    footprints: np.ndarray = field(default_factory=lambda: NO_FOOTPRINTS, repr=False, compare=False)
    """K x 3 (x, y, radius; target pixels): the fill matches with evidence and the patch each one's descriptor
    saw, which the references vouch for (realfill.selection.support draws them into a map)."""


def blurred(image: np.ndarray, scale: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), COLOUR_SIGMA_PX / scale).astype(np.float32)


def colours_at(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear RGB at sub-pixel points of a (blurred) image."""
    if not len(points):
        return np.zeros((0, 3), np.float32)
    maps = points.astype(np.float32).reshape(-1, 1, 2)
    sampled = cv2.remap(image, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return sampled.reshape(-1, 3)


def spread_1d(values: np.ndarray, floor: float) -> float:
    """Robust sigma of zero-centred 1-D residuals (median absolute value of a normal: 0.6745 sigma)."""
    return max(float(np.median(np.abs(values))) / 0.6745, floor)


def spread_3d(vectors: np.ndarray, floor: float) -> float:
    """Robust per-axis sigma of isotropic 3-D residual vectors (median norm: 1.5382 sigma)."""
    return max(float(np.median(np.linalg.norm(vectors, axis=1))) / 1.5382, floor)


def log_normal(values: np.ndarray, sigma: float, dimensions: int = 1) -> np.ndarray:
    """Log density of an isotropic zero-mean normal at residuals of the given size."""
    return -0.5 * dimensions * np.log(2 * np.pi * sigma**2) - values**2 / (2 * sigma**2)


def along_line(points: np.ndarray, misses: np.ndarray, fundamental: np.ndarray) -> np.ndarray:
    """Component of each miss (reference pixels) along the epipolar line of its target point."""
    lines = cv2.computeCorrespondEpilines(points.reshape(-1, 1, 2), 1, fundamental).reshape(-1, 3)
    direction = np.stack([-lines[:, 1], lines[:, 0]], axis=1)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True).clip(1e-9)
    return np.sum(misses * direction, axis=1)


def calibrate(geometry: Geometry, target_colours: np.ndarray, ref_colours: np.ndarray, diagonal: float,
              ref_area: float, floor: float, neighbours: int) -> Calibration | None:
    """The known region's residual spreads (see the module docstring); None when too few."""
    radii, along = [], []
    for fraction in REACH_FRACTIONS:
        radius = fraction * diagonal
        predicted, _, valid = geometry.predict(geometry.target_points, neighbours, max(radius, 1e-3))
        if valid.sum() < MIN_RESIDUALS:
            break
        misses = geometry.ref_points[valid] - predicted[valid]
        radii.append(radius)
        along.append(spread_1d(along_line(geometry.target_points[valid], misses, geometry.fundamental), floor))
    if not radii:
        return None
    across = spread_1d(epipolar_distance(geometry.target_points, geometry.ref_points, geometry.fundamental), floor)
    source = np.hstack([target_colours, np.ones((len(target_colours), 1), np.float32)])
    colour_map, *_ = np.linalg.lstsq(source, ref_colours, rcond=None)
    mapped = source @ colour_map
    colour = spread_3d(mapped - ref_colours, 1.0)
    colour_null = max(spread_3d(mapped - np.roll(ref_colours, len(ref_colours) // 2, axis=0), 1.0), colour)
    return Calibration(np.array(radii), np.array(along), across, colour_map, colour, colour_null, ref_area)


def fit_known(target_points: np.ndarray, ref_points: np.ndarray, threshold: float, neighbours: int,
              target_image: np.ndarray, ref_image: np.ndarray, diagonal: float, floor: float) -> KnownGeometry | None:
    """The geometry the known region fixes for one reference: epipolar geometry (RANSAC-verified
    correspondences), the dominant plane and each point's departure from it, and their calibration.
    None when too few correspondences are verified to fit it."""
    fundamental, inliers = fundamental_inliers(target_points, ref_points, threshold)
    if inliers.sum() <= neighbours:
        return None
    target_points, ref_points = target_points[inliers], ref_points[inliers]
    plane = homography(target_points, ref_points, threshold)
    if plane is None:
        return None
    geometry = Geometry(target_points, ref_points, fundamental, plane,
                        ref_points - apply_homography(plane, target_points))
    calibration = calibrate(geometry, colours_at(target_image, target_points), colours_at(ref_image, ref_points),
                            diagonal, float(ref_image.shape[0] * ref_image.shape[1]), floor, neighbours)
    return None if calibration is None else KnownGeometry(geometry, calibration)


def index_scene(scene: Scene, config: GeometryConfig) -> SceneIndex:
    """Reference features and the known-region geometry: everything a candidate is scored against."""
    features = matcher(config)
    refs = [features.detect(ref, None) for ref in scene.refs]
    ref_images = [blurred(ref, found.scale) for ref, found in zip(scene.refs, refs)]
    target = known_features(features, scene.target, scene.mask)
    target_image = blurred(scene.target, target.scale)
    diagonal = float(np.hypot(*scene.mask.shape))
    known = [fit_known(*features.match(target, ref), config.ransac_px / target.scale, config.neighbours,
                       target_image, ref_image, diagonal, MIN_SPREAD_PX / target.scale)
             for ref, ref_image in zip(refs, ref_images)]
    return SceneIndex(scene.mask, features, refs, ref_images, known)


def corroborated(fill_points: np.ndarray, ref_points: np.ndarray, predicted: np.ndarray,
                 evident: np.ndarray) -> np.ndarray:
    """Which matches with evidence are corroborated: from most of their CORROBORATING nearest fellow matches
    with evidence, the vector to them in the reference agrees with the one the known geometry predicts. A true
    fill's matches move together; a mirrored fill's neighbours lie the wrong way round, and a lone match has no
    one to agree with."""
    found = np.flatnonzero(evident)
    agreed = np.zeros(len(fill_points), bool)
    if len(found) < 2:
        return agreed
    distances = np.linalg.norm(fill_points[found, None] - fill_points[None, found], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = found[np.argsort(distances, axis=1)[:, :min(CORROBORATING, len(found) - 1)]]
    expected = predicted[nearest] - predicted[found, None]
    seen = ref_points[nearest] - ref_points[found, None]
    cosine = np.sum(expected * seen, axis=2) / (np.linalg.norm(expected, axis=2)
                                                * np.linalg.norm(seen, axis=2)).clip(1e-9)
    agreed[found] = np.mean(cosine > AGREEING_COS, axis=1) > 0.5
    return agreed


def evidence(fill_points: np.ndarray, ref_points: np.ndarray, fill_colours: np.ndarray,
             ref_colours: np.ndarray, known: KnownGeometry, neighbours: int, tests: int) -> np.ndarray:
    """Evidence per fill match, in nats, at least 0: the log-likelihood ratio of where it lands and
    what colour it has, under the known region's own residual spreads (across the epipolar line, along
    it at the match's distance from the known points, and in colour) against a wrong match (anywhere
    in the reference, any colour a wrong pairing has), beyond what chance gives the best of `tests` wrong
    ones: of T wrong matches, FALSE_ALARMS are expected to reach a ratio of T / FALSE_ALARMS (a-contrario), so
    its log is subtracted; then only corroborated matches keep theirs."""
    geometry, calibration = known.geometry, known.calibration
    predicted, reach, _ = geometry.predict(fill_points, neighbours, 0.0)
    level = np.clip(np.searchsorted(calibration.radii, reach, side="right") - 1, 0, len(calibration.radii) - 1)
    along = along_line(fill_points, ref_points - predicted, geometry.fundamental)
    across = epipolar_distance(fill_points, ref_points, geometry.fundamental)
    source = np.hstack([fill_colours, np.ones((len(fill_colours), 1), np.float32)])
    colour = np.linalg.norm(source @ calibration.colour_map - ref_colours, axis=1)
    ratio = (np.log(calibration.ref_area) + log_normal(across, calibration.across)
             + log_normal(along, calibration.along[level])
             + log_normal(colour, calibration.colour, 3) - log_normal(colour, calibration.colour_null, 3))
    weights = np.maximum(ratio - np.log(tests / FALSE_ALARMS), 0.0)
    return np.where(corroborated(fill_points, ref_points, predicted, weights > 0), weights, 0.0)


def score_candidate(index: SceneIndex, image: np.ndarray, config: GeometryConfig) -> Score:
    """Score one completion against the scene; degenerate inputs score 0, never raise."""
    if image.shape[:2] != index.hole.shape:
        raise ValueError(f"candidate is {image.shape[1]}x{image.shape[0]}, scene target is "
                         f"{index.hole.shape[1]}x{index.hole.shape[0]}")
    fill = index.matcher.detect(image, index.hole)
    fill_image = None
    tests = max(1, len(fill.points)) * sum(known is not None for known in index.known)
    matches, total, vouched = 0, 0.0, [NO_FOOTPRINTS]
    for ref, ref_image, known in zip(index.refs, index.ref_images, index.known):
        fill_points, ref_points = index.matcher.match(fill, ref)
        matches += int(fundamental_inliers(fill_points, ref_points, config.ransac_px / fill.scale)[1].sum())
        if known is None or not len(fill_points):
            continue
        if fill_image is None:
            fill_image = blurred(image, fill.scale)
        weights = evidence(fill_points, ref_points, colours_at(fill_image, fill_points),
                            colours_at(ref_image, ref_points), known, config.neighbours, tests)
        total += float(weights.sum())
        evident = fill_points[weights > 0]
        vouched.append(np.hstack([evident, np.full((len(evident), 1), FOOTPRINT_PX / fill.scale)]).astype(np.float32))
    return Score(matches=matches, score=round(total, 6), footprints=np.concatenate(vouched))


def score_file(index: SceneIndex, uri: str, config: GeometryConfig) -> Score:
    image = read_image(uri)
    try:
        return score_candidate(index, image, config)
    except ValueError as exc:
        raise SceneError(f"{uri}: {exc}") from None


def score_images(scene: Scene, uris: list[str], config: GeometryConfig, rank: RankConfig | None = None) -> list[Score]:
    """Score image files against one scene, its features computed once; a file that cannot be read,
    or is not the target's size, raises SceneError naming it. With a second matcher (`rank.confirm`), the
    contested top is scored again by it: a cascade, which costs the first matcher's work for every sample and
    the second's only for the few that compete for first place."""
    index = index_scene(scene, config)
    scores = [score_file(index, uri, config) for uri in uris]
    if rank is None or rank.confirm in (None, config.features):
        return scores
    second = replace(config, features=rank.confirm, max_features=None, weights=None)
    try:
        confirming = index_scene(scene, second)
    except MatcherError as exc:  # name the flag that asked for it, and the way without it
        raise MatcherError(str(exc).replace(f"--geometry.features {rank.confirm}", f"--rank.confirm {rank.confirm}")
                           + f"; or --rank.confirm null to rank by {config.features} alone") from None
    return confirm_top(scores, rank.confirm_count(len(scores)), lambda i: score_file(confirming, uris[i], second))


def confirm_top(scores: list[Score], count: int, rescore: Callable[[int], Score]) -> list[Score]:
    """The scores with the contested top `count` (by rank_key) scored again (`rescore(i)`: the second
    matcher's score of candidate i) and confirmed: both matchers' matches and evidence added."""
    contested = sorted(range(len(scores)), key=lambda i: rank_key(scores[i]), reverse=True)[:count]
    confirmed = list(scores)
    for i in contested:
        more = rescore(i)
        confirmed[i] = Score(scores[i].matches + more.matches, round(scores[i].score + more.score, 6), confirmed=True,
                             footprints=np.concatenate([scores[i].footprints, more.footprints]))
    return confirmed


def rank_key(score: Score) -> tuple[float, int]:
    """Geometry evidence first; plain verified matches only break its ties. A second matcher only adds to the
    contested top, so a confirmed candidate never falls below one it led, and ties with nothing added stay ties."""
    return score.score, score.matches


def rank_scores(scores: list[Score]) -> list[int]:
    """1 = best; ties share the better rank (competition ranking)."""
    keys = [rank_key(score) for score in scores]
    return [sum(other > key for other in keys) + 1 for key in keys]


def selection(scene: Scene, scores: list[Score]) -> Selection:
    """What the ranking of a scene's candidates rests on: geometry, nothing, or no known region at all (a blank
    canvas, where nothing is claimed as geometry evidence). Plain verified counts are no evidence of
    authenticity: a fill of noise has some (eight matches always fit a fundamental matrix)."""
    if scene.blank:
        return NO_KNOWN_REGION
    return GEOMETRY if any(score.score > 0 for score in scores) else NO_EVIDENCE
