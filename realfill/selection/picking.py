"""Reference picking for photo libraries: which photos of an album show the target's place. A shortlist by
EXIF (near in time or place) and a global colour descriptor, then verified correspondences with the target's
known pixels; near-duplicates of the target are skipped. A request becomes a scene with the picks."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from realfill.config import GeometryConfig, LibraryConfig
from realfill.data import storage
from realfill.data.photos import Photo, photo_size, read_photo
from realfill.data.records import Reference, digest
from realfill.data.requests import REQUEST_FILE, Request, request_target, write_scene
from realfill.data.runlog import describe
from realfill.data.scene import SceneError
from realfill.geometry.known import apply_homography, beyond_chance, fundamental_inliers, homography, known_region
from realfill.geometry.matchers import matcher

THUMBNAIL_PX = 64
"""Side of the thumbnails the global descriptor is computed on."""
MATCH_PX = 1024
"""Long side photos are decoded at for matching (JPEG decodes at a reduced scale directly)."""
COVERAGE_STEP_PX = 8
"""The fill region's coverage by the references is measured on a grid of this pitch."""
REPEAT_DISTANCE = 0.01
"""Descriptors closer than this (Bhattacharyya) are one photo repeated, or a burst: one shortlist place."""


def descriptor(image: np.ndarray) -> np.ndarray:
    """A global colour descriptor (HSV histogram of a thumbnail): cheap, and blind to viewpoint."""
    thumbnail = cv2.resize(image, (THUMBNAIL_PX, THUMBNAIL_PX), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(thumbnail, cv2.COLOR_RGB2HSV)
    histogram = cv2.calcHist([hsv], [0, 1, 2], None, [12, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    return (histogram / max(histogram.sum(), 1.0)).astype(np.float32)


def photo_descriptor(uri: str) -> np.ndarray | None:
    """A photo's descriptor, None when it cannot be read."""
    try:
        return descriptor(read_photo(uri, THUMBNAIL_PX * 2))
    except SceneError:
        return None


def photo_descriptors(uris: list[str]) -> list[np.ndarray | None]:
    """A chunk of photos' descriptors (one Ray task each, when the library runs on Ray)."""
    return [photo_descriptor(uri) for uri in uris]


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    latitude_a, longitude_a, latitude_b, longitude_b = map(np.radians, (*a, *b))
    haversine = (np.sin((latitude_b - latitude_a) / 2) ** 2
                 + np.cos(latitude_a) * np.cos(latitude_b) * np.sin((longitude_b - longitude_a) / 2) ** 2)
    return float(6371.0 * 2 * np.arcsin(np.sqrt(haversine)))


def near(target: Photo | None, photo: Photo, config: LibraryConfig) -> bool:
    """Taken near the target in time or in place, by their EXIF."""
    if target is None:
        return False
    if target.taken and photo.taken and abs((target.taken - photo.taken).total_seconds()) <= config.near_hours * 3600:
        return True
    return bool(target.gps and photo.gps and distance_km(target.gps, photo.gps) <= config.near_km)


def shortlist(target: Photo | None, target_descriptor: np.ndarray, pool: list[Photo],
              descriptors: dict[str, np.ndarray | None], config: LibraryConfig) -> list[Photo]:
    """The pool's photos worth verifying: near in time or place first, then by descriptor distance; a photo
    whose descriptor is one already shortlisted (a repeat, a burst shot) takes no place of its own."""
    def distance(a: np.ndarray | None, b: np.ndarray) -> float:
        return cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA) if a is not None else 2.0

    ranked = sorted(pool, key=lambda photo: (not near(target, photo, config),
                                             distance(descriptors.get(photo.uri), target_descriptor)))
    chosen: list[Photo] = []
    for photo in ranked:
        found = descriptors.get(photo.uri)
        if found is not None and any(distance(descriptors.get(other.uri), found) < REPEAT_DISTANCE
                                     for other in chosen):
            continue
        chosen.append(photo)
        if len(chosen) == config.shortlist:
            break
    return chosen


@dataclass
class Coverage:
    """How much of the fill region the picked references show, and at what detail, through the plane each one's
    verified correspondences with the known pixels fix: what a completion can be checked against at all."""

    seen: float
    """Fraction of the fill region inside at least one reference's frame."""
    detail: float
    """Median over the seen fill of the best reference's own pixels per target pixel (under 1: the reference shows
    that part enlarged, its detail is not there)."""

    def text(self) -> str:
        return f"the references see {self.seen:.0%} of the fill, at {self.detail:.2f} of their pixels per pixel"


class Sightlines:
    """Where each fill pixel (on a grid) lands in the references picked so far, and the best detail there."""

    def __init__(self, mask: np.ndarray):
        rows, columns = np.nonzero(mask[::COVERAGE_STEP_PX, ::COVERAGE_STEP_PX])
        self.points = np.stack([columns, rows], axis=1).astype(np.float64) * COVERAGE_STEP_PX + 0.5  # pixel centres
        self.detail = np.zeros(len(self.points))

    def add(self, target_points: np.ndarray, photo_points: np.ndarray, decoded: tuple[int, int],
            original: tuple[int, int], threshold: float) -> None:
        """One reference, its correspondences with the target in its decoded pixels (width, height `decoded`)."""
        if len(target_points) < 4 or not len(self.points):
            return
        plane = homography(target_points, photo_points, threshold)
        mapped = [apply_homography(plane, self.points + step) for step in ((0, 0), (1, 0), (0, 1))]
        jacobian = np.stack([mapped[1] - mapped[0], mapped[2] - mapped[0]], axis=2)
        detail = np.sqrt(np.abs(np.linalg.det(jacobian))) * original[0] / decoded[0]
        inside = np.all((mapped[0] >= 0) & (mapped[0] < decoded), axis=1) & np.isfinite(detail)
        self.detail = np.where(inside, np.maximum(self.detail, np.nan_to_num(detail)), self.detail)

    def coverage(self) -> Coverage:
        seen = self.detail > 0
        return Coverage(round(float(seen.mean()), 4) if len(seen) else 0.0,
                        round(float(np.median(self.detail[seen])), 4) if seen.any() else 0.0)


@dataclass
class Picking:
    """What picking found for one request."""

    picks: list[Reference]
    verified: int
    """Photos verified (the shortlist)."""
    duplicates: list[str]
    """Near-duplicates of the target that were skipped."""
    best_rejected: int = 0
    """Most matches beyond chance of a photo that had too few (an upper bound: see beyond_chance)."""
    coverage: Coverage | None = None
    """What the picks show of the fill region."""

    def reason(self, album: str, config: LibraryConfig) -> str:
        """Why no reference was usable."""
        return (f"no usable reference in album '{album}': {self.verified} photos verified, the best had at "
                f"most {self.best_rejected} verified matches with the known pixels beyond chance (need "
                f"{config.min_beyond_chance})"
                + (f"; {len(self.duplicates)} near-duplicates of the target skipped" if self.duplicates else ""))


def near_duplicate(target: np.ndarray, known: np.ndarray, photo: np.ndarray, target_points: np.ndarray,
                   photo_points: np.ndarray, config: LibraryConfig) -> bool:
    """Whether the photo, aligned to the target through one homography, is the target's own pixels: the same
    moment from the same place (a burst shot) or an edited copy. Real references show parallax or change."""
    matrix, _ = cv2.findHomography(photo_points, target_points, cv2.RANSAC, 3.0)
    if matrix is None:
        return False
    height, width = known.shape
    aligned = cv2.warpPerspective(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY), matrix, (width, height))
    covered = cv2.warpPerspective(np.ones(photo.shape[:2], np.uint8), matrix, (width, height)) > 0
    overlap = known & cv2.erode(covered.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    if overlap.sum() < 0.5 * known.sum():
        return False
    a = cv2.cvtColor(target, cv2.COLOR_RGB2GRAY)[overlap].astype(np.float64)
    b = aligned[overlap].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-9)) >= config.duplicate_ncc


def pick_references(target: np.ndarray, mask: np.ndarray, candidates: list[str], config: LibraryConfig,
                    geometry: GeometryConfig) -> Picking:
    """Up to max_refs candidates that really show the target's place: most verified correspondences with its
    known pixels beyond what the same points reach paired at random (at least min_beyond_chance), near-duplicates
    skipped."""
    features = matcher(geometry)
    known = known_region(mask)
    target_features = features.detect(target, known)
    found, duplicates, rejected, contents = [], [], 0, set()
    sights = {}
    for uri in candidates:
        try:
            data = storage.read_bytes(uri)
        except OSError:
            continue
        content = hashlib.sha256(data).hexdigest()
        if content in contents:
            continue  # the same file again, under another name
        contents.add(content)
        try:
            photo = read_photo(uri, MATCH_PX, data)
        except SceneError:
            continue
        target_points, photo_points = features.match(target_features, features.detect(photo, None))
        _, inliers = fundamental_inliers(target_points, photo_points, geometry.ransac_px)
        count = int(inliers.sum())
        beyond = beyond_chance(target_points, photo_points, count, geometry.ransac_px, config.min_beyond_chance)
        if beyond < config.min_beyond_chance:
            rejected = max(rejected, beyond)
            continue
        if near_duplicate(target, known, photo, target_points[inliers], photo_points[inliers], config):
            duplicates.append(uri)
            continue
        found.append(Reference(uri, count))
        sights[uri] = (target_points[inliers], photo_points[inliers], photo.shape[1::-1], photo_size(uri, data))
    found.sort(key=lambda pick: (-pick.matches, pick.uri))
    picks = found[: config.max_refs]
    sightlines = Sightlines(mask)
    for pick in picks:
        sightlines.add(*sights[pick.uri], geometry.ransac_px)
    return Picking(picks, len(candidates), duplicates, rejected, sightlines.coverage())


def request_key(request: Request, config: LibraryConfig, geometry: GeometryConfig) -> str:
    """What a request's scene is made from: the target's and mask's bytes, the fill, the explicit references,
    the pool (by name) and the picking settings. A re-run with the same key reuses the scene and its picks."""
    def content(uri: str | None) -> str | None:
        return None if uri is None else hashlib.sha256(storage.read_bytes(uri)).hexdigest()

    return digest({"target": content(request.target), "mask": content(request.mask), "box": request.box,
                   "margins": request.margins, "refs": request.refs, "pool": list(request.pool),
                   "library": config.picking(), "geometry": asdict(geometry)})


@dataclass
class Prepared:
    """A request made into a scene (or why it could not be): what the picking stage hands on."""

    request: Request
    scene_uri: str | None
    picks: list[Reference]
    error: str | None = None
    seconds: float = 0.0
    coverage: Coverage | None = None
    """What the picked references show of the fill (None when the requests table gave them)."""


def prepare_scene(request: Request, scenes_root: str, photos: dict[str, Photo],
                  descriptors: dict[str, np.ndarray | None], config: LibraryConfig,
                  geometry: GeometryConfig) -> Prepared:
    """Make the request's scene under scenes_root, picking its references unless the table gave them; a scene
    already there with the same key is reused as it is. Bad input, or no usable reference, is the error."""
    started = time.perf_counter()
    scene_uri = storage.join(scenes_root, request.stored_id)
    record_uri = storage.join(scene_uri, REQUEST_FILE)
    try:
        key = request_key(request, config, geometry)
        if storage.exists(record_uri):
            record = json.loads(storage.read_bytes(record_uri))
            if record.get("key") == key:
                picks = [Reference(**pick) for pick in record["picks"]]
                coverage = Coverage(**record["coverage"]) if record.get("coverage") else None
                return Prepared(request, scene_uri, picks, seconds=time.perf_counter() - started, coverage=coverage)
        target, mask = request_target(request)
        coverage = None
        if request.refs:
            picks = [Reference(uri, None) for uri in request.refs]
        else:
            own = descriptors.get(request.target)
            pool = [photos[uri] for uri in request.pool if uri in photos]
            candidates = shortlist(photos.get(request.target), own if own is not None else descriptor(target), pool,
                                   descriptors, config)
            picking = pick_references(target, mask, [photo.uri for photo in candidates], config, geometry)
            if not picking.picks:
                return Prepared(request, None, [], error=picking.reason(request.album, config),
                                seconds=time.perf_counter() - started)
            picks, coverage = picking.picks, picking.coverage
        storage.remove(scene_uri)  # an older scene of this id: none of its references may linger
        write_scene(scene_uri, target, mask, [pick.uri for pick in picks],
                    {"key": key, "row": request.row, "request": request.given,
                     "picks": [asdict(pick) for pick in picks], "coverage": coverage and asdict(coverage)})
    except Exception as exc:  # recorded for this request alone, so one bad photo never stops the others
        return Prepared(request, None, [], error=describe(exc), seconds=time.perf_counter() - started)
    return Prepared(request, scene_uri, picks, seconds=time.perf_counter() - started, coverage=coverage)
