"""Photo libraries: albums of ordinary photos, a table of requests (what to do with which photo), references
picked automatically from the album, each request made into a RealBench scene, and the finished photos.

LIBRARY/<album>/*.{jpg,jpeg,png,webp}    photos (HEIC too with the heif extra), EXIF orientation applied
OUT/scenes/<scene_id>/                   each request as a scene (RealBench layout) + request.json
OUT/filled/<album>/<name>.<ext>          the best completion of each request, full size, the original's EXIF
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from realfill.config import LibraryConfig, RankConfig
from realfill.data import storage
from realfill.data.layout import SceneFiles, collision_key, storage_name
from realfill.data.records import digest
from realfill.data.runlog import describe
from realfill.data.scene import IMAGE_SUFFIXES, SceneError, read_image, read_mask
from realfill.selection.matchers import matcher
from realfill.selection.rank import fundamental_inliers, known_region

HEIC_SUFFIXES = (".heic", ".heif")
PHOTO_SUFFIXES = IMAGE_SUFFIXES + HEIC_SUFFIXES
THUMBNAIL_PX = 64
"""Side of the thumbnails the global descriptor is computed on."""
MATCH_PX = 1024
"""Long side photos are decoded at for matching (JPEG decodes at a reduced scale directly)."""
REQUEST_FILE = "request.json"
REPEAT_DISTANCE = 0.01
"""Descriptors closer than this (Bhattacharyya) are one photo repeated, or a burst: one shortlist place."""
KINDS = ("mask", "box", "outpaint", "aspect")
COLUMNS = ("target", "scene_id", "mask", "box", "outpaint", "aspect", "refs", "album")
EXIF_ORIENTATION, EXIF_IFD, GPS_IFD, DATE_TIME_ORIGINAL = 0x0112, 0x8769, 0x8825, 36867


class RequestsError(ValueError):
    """Problems in a requests table: every one of them, one line each naming its row."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem{'s' * (len(problems) > 1)}, nothing was run:\n"
                         + "\n".join(f"  {problem}" for problem in problems))


@dataclass(frozen=True)
class Photo:
    """A photo of the library and what its EXIF says of when and where it was taken."""

    uri: str
    album: str
    taken: datetime | None = None
    gps: tuple[float, float] | None = None
    """(latitude, longitude) in degrees."""

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri)


def open_photo(uri: str, data: bytes | None = None) -> Image.Image:
    """A photo's image (from data, when its bytes are already read), lazily decoded; HEIC needs the heif
    extra, and the error says so."""
    if uri.lower().endswith(HEIC_SUFFIXES):
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            raise SceneError(f"{uri}: HEIC photos need the heif extra (pip install 'realfill[heif]')") from None
        register_heif_opener()
    try:
        return Image.open(io.BytesIO(storage.read_bytes(uri) if data is None else data))
    except FileNotFoundError:
        raise SceneError(f"{uri}: file not found") from None
    except UnidentifiedImageError:
        raise SceneError(f"{uri}: not an image, or in a format that cannot be read "
                         f"(expected {', '.join(PHOTO_SUFFIXES)})") from None
    except OSError as exc:
        raise SceneError(f"{uri}: not a readable photo ({storage.reason(exc)})") from None


def _degrees(values, reference: str) -> float:
    degrees, minutes, seconds = (float(value) for value in values)
    sign = -1.0 if reference in ("S", "W") else 1.0
    return sign * (degrees + minutes / 60 + seconds / 3600)


def exif_place_and_time(image: Image.Image) -> tuple[datetime | None, tuple[float, float] | None]:
    """Capture time (DateTimeOriginal) and GPS position, when the photo's EXIF has them."""
    exif = image.getexif()
    taken = None
    text = exif.get_ifd(EXIF_IFD).get(DATE_TIME_ORIGINAL) or exif.get(0x0132)
    if isinstance(text, str):
        try:
            taken = datetime.strptime(text.strip(), "%Y:%m:%d %H:%M:%S")
        except ValueError:
            taken = None
    gps = exif.get_ifd(GPS_IFD)
    place = None
    if all(key in gps for key in (1, 2, 3, 4)):
        try:
            place = (_degrees(gps[2], gps[1]), _degrees(gps[4], gps[3]))
        except (TypeError, ValueError, ZeroDivisionError):
            place = None
    return taken, place


def list_library(root: str) -> list[Photo]:
    """Every photo of every album (a folder directly under root), with its EXIF time and place."""
    root = storage.normalize(root)
    try:
        albums = storage.list_dir(root)
    except FileNotFoundError:
        raise SceneError(f"{root}: library not found") from None
    photos = []
    for album in albums:
        folder = storage.join(root, album)
        if not storage.is_dir(folder):
            continue  # a file beside the albums
        for name in storage.list_dir(folder):
            if name.lower().endswith(PHOTO_SUFFIXES):
                uri = storage.join(folder, name)
                try:
                    taken, place = exif_place_and_time(open_photo(uri))
                except SceneError:
                    taken, place = None, None  # an unreadable photo fails when a request uses it
                photos.append(Photo(uri, album, taken, place))
    if not photos:
        raise SceneError(f"{root}: no photos (expected ROOT/<album>/*{', *'.join(PHOTO_SUFFIXES)})")
    return photos


def read_photo(uri: str, max_side: int | None = None, data: bytes | None = None) -> np.ndarray:
    """RGB uint8 with EXIF orientation applied; with max_side, decoded at about that size (JPEG's draft mode
    decodes at 1/2, 1/4 or 1/8 scale without reading the full image)."""
    if max_side is None and data is None and uri.lower().endswith(IMAGE_SUFFIXES):
        return read_image(uri)
    image = open_photo(uri, data)
    if max_side is not None:
        image.draft("RGB", (max_side, max_side))
    image = ImageOps.exif_transpose(image).convert("RGB")
    if max_side is not None:
        image.thumbnail((max_side, max_side))
    return np.asarray(image)


def photo_size(uri: str) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the header alone."""
    image = open_photo(uri)
    width, height = image.size
    return (height, width) if image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8) else (width, height)


# --- requests ---------------------------------------------------------------------------------------


@dataclass
class Request:
    """One row of the requests table, checked: what to fill in which photo, and where references come from."""

    row: int
    """1-based row of the table (the uncrop-everything requests are numbered in library order)."""
    scene_id: str
    target: str
    album: str
    kind: str
    """mask, box, outpaint or aspect."""
    mask: str | None = None
    box: tuple[int, int, int, int] | None = None
    """x0, y0, x1, y1 of the region to fill, in photo pixels."""
    margins: tuple[int, int, int, int] | None = None
    """Pixels added left, top, right and bottom (outpaint and aspect)."""
    refs: tuple[str, ...] = ()
    """Explicit references (none: picked from the pool)."""
    pool: tuple[str, ...] = ()
    """The photos references are picked from: the album's, less the target."""
    filled: str = ""
    """Where the finished photo goes, relative to OUT/filled."""
    given: dict[str, Any] = field(default_factory=dict)
    """The row as the table gave it."""

    @property
    def stored_id(self) -> str:
        """Its scene's id in the pipeline and the manifests: the scene folder's name under OUT/scenes. Every
        lookup of the request's outcome goes by it (scene_id may hold characters a folder name cannot)."""
        return storage_name(self.scene_id)


def read_table(uri: str) -> list[dict[str, Any]]:
    """A requests table (CSV, or Parquet by its suffix) as rows of non-empty strings."""
    data = storage.read_bytes(uri)
    if uri.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(io.BytesIO(data)).to_pylist()
    else:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    return [{key.strip(): str(value).strip() for key, value in row.items() if key and value not in (None, "")}
            for row in rows]


def outpaint_margins(width: int, height: int, text: str) -> tuple[int, int, int, int]:
    """A ratio >= 1 around the photo (the canvas is ratio times each side, the photo centred), or four
    per-side margins in pixels: left,top,right,bottom."""
    parts = [part.strip() for part in text.split(",")]
    if not all(re.fullmatch(r"\d+(\.\d*)?", part) for part in parts):
        raise ValueError(f"outpaint must be a ratio or left,top,right,bottom margins in pixels (got {text!r})")
    if len(parts) == 1:
        ratio = float(parts[0])
        if not ratio > 1:
            raise ValueError(f"outpaint ratio must be > 1 (got {text})")
        extra_w, extra_h = round(width * (ratio - 1)), round(height * (ratio - 1))
        return extra_w // 2, extra_h // 2, extra_w - extra_w // 2, extra_h - extra_h // 2
    if len(parts) != 4:
        raise ValueError(f"outpaint must be a ratio or left,top,right,bottom margins (got {text!r})")
    margins = tuple(round(float(part)) for part in parts)
    if min(margins) < 0 or not sum(margins):
        raise ValueError(f"outpaint margins must be >= 0 and not all 0 (got {text})")
    return margins


def aspect_margins(width: int, height: int, text: str) -> tuple[int, int, int, int]:
    """Margins that uncrop the photo to the aspect W:H, centred (wider: left and right; taller: top and bottom)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*:\s*(\d+(?:\.\d*)?)\s*", text)
    aspect_w, aspect_h = (float(found[1]), float(found[2])) if found else (0.0, 0.0)
    if not (aspect_w > 0 and aspect_h > 0):
        raise ValueError(f"aspect must be W:H with positive numbers, e.g. 16:9 (got {text!r})")
    goal = aspect_w / aspect_h
    if abs(width / height - goal) < 1e-3:
        raise ValueError(f"the photo is already {text} ({width}x{height})")
    if width / height < goal:
        extra = round(height * goal) - width
        return extra // 2, 0, extra - extra // 2, 0
    extra = round(width / goal) - height
    return 0, extra // 2, 0, extra - extra // 2


def parse_box(width: int, height: int, text: str) -> tuple[int, int, int, int]:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 4 or not all(re.fullmatch(r"-?\d+(\.\d*)?", part) for part in parts):
        raise ValueError(f"box must be x0,y0,x1,y1 in pixels (got {text!r})")
    values = tuple(int(round(float(part))) for part in parts)
    x0, y0, x1, y1 = values
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box {text} is not inside the {width}x{height} photo (need 0 <= x0 < x1 <= {width}, "
                         f"0 <= y0 < y1 <= {height})")
    if (x1 - x0) * (y1 - y0) == width * height:
        raise ValueError(f"box {text} covers the whole photo: no known pixel is left")
    return values


def resolve(root: str, path: str) -> str:
    """A table's path: a URI or absolute path as it is, else relative to the library."""
    return path if "://" in path or path.startswith("/") else storage.join(root, path)


def check_request(number: int, given: dict[str, str], root: str, photos: dict[str, Photo],
                  albums: dict[str, list[str]]) -> Request:
    """One row, checked; raises ValueError with what is wrong."""
    unknown = sorted(set(given) - set(COLUMNS))
    if unknown:
        raise ValueError(f"unknown column '{unknown[0]}' (known: {', '.join(COLUMNS)})")
    if "target" not in given:
        raise ValueError("no target")
    target = resolve(root, given["target"])
    if not storage.exists(target):
        raise ValueError(f"target {given['target']}: file not found")
    width, height = photo_size(target)
    kinds = [kind for kind in KINDS if kind in given]
    if len(kinds) != 1:
        raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    request = Request(row=number, scene_id="", target=target, album="", kind=kind, given=dict(given))
    if kind == "mask":
        request.mask = resolve(root, given["mask"])
        if not storage.exists(request.mask):
            raise ValueError(f"mask {given['mask']}: file not found")
        size = photo_size(request.mask)
        if size != (width, height):
            raise ValueError(f"mask {given['mask']} is {size[0]}x{size[1]}, the photo is {width}x{height}")
    elif kind == "box":
        request.box = parse_box(width, height, given["box"])
    elif kind == "outpaint":
        request.margins = outpaint_margins(width, height, given["outpaint"])
    else:
        request.margins = aspect_margins(width, height, given["aspect"])
    own = photos.get(target)
    request.album = given.get("album") or (own.album if own else "")
    if not request.album:
        raise ValueError(f"target {given['target']} is not in an album of the library: give album")
    if request.album not in albums:
        raise ValueError(f"album '{request.album}' is not in the library")
    request.refs = tuple(resolve(root, ref.strip()) for ref in given.get("refs", "").split(";") if ref.strip())
    for ref in request.refs:
        if not storage.exists(ref):
            raise ValueError(f"ref {ref}: file not found")
    request.pool = tuple(uri for uri in albums[request.album] if uri != target)
    stem = posixpath.splitext(posixpath.basename(target))[0]
    request.scene_id = given.get("scene_id") or f"{request.album}-{stem}"
    extension = posixpath.splitext(target)[1].lower()
    extension = ".jpg" if extension in HEIC_SUFFIXES else extension
    album = own.album if own else request.album
    request.filled = f"{album}/{given['scene_id'] if 'scene_id' in given else stem}{extension}"
    return request


def read_requests(root: str, photos: list[Photo], table: str | None = None, outpaint: str | None = None,
                  aspect: str | None = None) -> list[Request]:
    """Every request, checked before anything runs: the table's rows, or an uncrop request (outpaint or
    aspect) for every photo of the library. Raises RequestsError listing every problem with its row."""
    root = storage.normalize(root)
    by_uri = {photo.uri: photo for photo in photos}
    albums: dict[str, list[str]] = {}
    for photo in photos:
        albums.setdefault(photo.album, []).append(photo.uri)
    if table is not None:
        if outpaint or aspect:
            raise ValueError("--outpaint and --aspect make requests for every photo; with --requests, give them "
                             "per row (outpaint, aspect columns)")
        try:
            rows = read_table(table)
        except FileNotFoundError:
            raise ValueError(f"{table}: file not found") from None
        except Exception as exc:  # a table that cannot be parsed at all (csv, pyarrow and unicode errors)
            raise ValueError(f"{table}: not a readable CSV or Parquet table ({str(exc).splitlines()[0]})") from None
        source = table
    elif bool(outpaint) != bool(aspect):
        kind, value = ("outpaint", outpaint) if outpaint else ("aspect", aspect)
        rows = [{"target": photo.uri, kind: value} for photo in photos]
        source = f"--{kind} {value}"
    else:
        raise ValueError("give --requests FILE, or one of --outpaint RATIO and --aspect W:H")
    requests, problems, seen, outputs = [], [], {}, {}
    for number, given in enumerate(rows, start=1):
        try:
            request = check_request(number, given, root, by_uri, albums)
        except (ValueError, SceneError) as exc:
            problems.append(f"row {number}: {exc}")
            continue
        key = collision_key(request.scene_id)
        if key in seen:
            problems.append(f"row {number}: scene_id '{request.scene_id}' is also row {seen[key]}'s")
            continue
        if request.filled in outputs:
            problems.append(f"row {number}: writes filled/{request.filled} as row {outputs[request.filled]} does; "
                            f"give one of them a scene_id")
            continue
        seen[key], outputs[request.filled] = number, number
        requests.append(request)
    if problems:
        raise RequestsError(source, problems)
    if not requests:
        raise RequestsError(source, ["no requests"])
    return requests


# --- a request's target and mask ------------------------------------------------------------------------


def request_target(request: Request) -> tuple[np.ndarray, np.ndarray]:
    """The request's target image (the photo on its uncropped canvas) and its mask (True = fill)."""
    photo = read_photo(request.target)
    height, width = photo.shape[:2]
    if request.kind == "mask":
        mask = read_mask(request.mask)
        if not mask.any():
            raise SceneError(f"{request.mask}: mask is empty (no white pixels), so there is nothing to fill")
        return photo, mask
    if request.kind == "box":
        x0, y0, x1, y1 = request.box
        mask = np.zeros((height, width), bool)
        mask[y0:y1, x0:x1] = True
        return photo, mask
    left, top, right, bottom = request.margins
    canvas = np.zeros((height + top + bottom, width + left + right, 3), np.uint8)
    canvas[top : top + height, left : left + width] = photo
    mask = np.ones(canvas.shape[:2], bool)
    mask[top : top + height, left : left + width] = False
    return canvas, mask


# --- picking references ---------------------------------------------------------------------------------


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
class Pick:
    """A reference of a request, and why: its verified correspondences with the known pixels (None for a
    reference the table gave)."""

    uri: str
    matches: int | None


@dataclass
class Picking:
    """What picking found for one request."""

    picks: list[Pick]
    verified: int
    """Photos verified (the shortlist)."""
    duplicates: list[str]
    """Near-duplicates of the target that were skipped."""
    best_rejected: int = 0
    """Most matches of a photo that had too few."""

    def reason(self, album: str, config: LibraryConfig) -> str:
        """Why no reference was usable."""
        return (f"no usable reference in album '{album}': {self.verified} photos verified, the best had "
                f"{self.best_rejected} verified matches with the known pixels (need {config.min_matches})"
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


def picking_matcher(rank: RankConfig) -> RankConfig:
    """The matcher settings picking uses: the run's features (and LoFTR weights), the rest at their defaults,
    so that these two fields are all of the rank section that a request's key needs."""
    return RankConfig(features=rank.features, weights=rank.weights)


def pick_references(target: np.ndarray, mask: np.ndarray, candidates: list[str], config: LibraryConfig,
                    rank: RankConfig) -> Picking:
    """Up to max_refs candidates that really show the target's place: most verified correspondences with its
    known pixels (at least min_matches), near-duplicates skipped."""
    settings = picking_matcher(rank)
    features = matcher(settings)
    known = known_region(mask)
    target_features = features.detect(target, known)
    found, duplicates, rejected, contents = [], [], 0, set()
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
        _, inliers = fundamental_inliers(target_points, photo_points, settings.ransac_px)
        count = int(inliers.sum())
        if count < config.min_matches:
            rejected = max(rejected, count)
            continue
        if near_duplicate(target, known, photo, target_points[inliers], photo_points[inliers], config):
            duplicates.append(uri)
            continue
        found.append(Pick(uri, count))
    found.sort(key=lambda pick: (-pick.matches, pick.uri))
    return Picking(found[: config.max_refs], len(candidates), duplicates, rejected)


# --- scenes and finished photos -------------------------------------------------------------------------


def request_key(request: Request, config: LibraryConfig, rank: RankConfig) -> str:
    """What a request's scene is made from: the target's and mask's bytes, the fill, the explicit references,
    the pool (by name) and the picking settings. A re-run with the same key reuses the scene and its picks."""
    def content(uri: str | None) -> str | None:
        return None if uri is None else hashlib.sha256(storage.read_bytes(uri)).hexdigest()

    return digest({"target": content(request.target), "mask": content(request.mask), "box": request.box,
                   "margins": request.margins, "refs": request.refs, "pool": list(request.pool),
                   "library": asdict(config), "matcher": asdict(picking_matcher(rank))})


def write_scene(scene_uri: str, target: np.ndarray, mask: np.ndarray, refs: list[str], record: dict) -> None:
    """A request as a RealBench scene: target/target.png, target/mask.png, ref/NN.ext, and request.json."""
    files = SceneFiles(scene_uri)
    storage.write_png(files.target, np.where(mask[..., None], 0, target))
    storage.write_png(files.mask, mask.astype(np.uint8) * 255)
    for index, ref in enumerate(refs):
        extension = posixpath.splitext(ref)[1].lower()
        name = f"{index:02d}{extension}"
        if extension in IMAGE_SUFFIXES:
            storage.write_bytes(files.ref(name), storage.read_bytes(ref))  # EXIF kept
        else:
            storage.write_png(files.ref(f"{index:02d}.png"), read_photo(ref))
    storage.write_bytes(storage.join(scene_uri, REQUEST_FILE), json.dumps(record, indent=2).encode())


def save_filled(best_uri: str, original: str, destination: str) -> None:
    """The best completion in the original's format, with its EXIF (orientation now upright, since the pixels
    are; the size is the completion's)."""
    image = Image.fromarray(read_image(best_uri))
    exif = open_photo(original).getexif()
    exif[EXIF_ORIENTATION] = 1
    buffer = io.BytesIO()
    extension = posixpath.splitext(destination)[1].lower()
    kind = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[extension]
    options = {"quality": 95} if kind in ("JPEG", "WEBP") else {}
    image.save(buffer, kind, exif=exif.tobytes(), **options)
    storage.write_bytes(destination, buffer.getvalue())


@dataclass
class Prepared:
    """A request made into a scene (or why it could not be): what the picking stage hands on."""

    request: Request
    scene_uri: str | None
    picks: list[Pick]
    error: str | None = None
    seconds: float = 0.0


def prepare_scene(request: Request, scenes_root: str, photos: dict[str, Photo],
                  descriptors: dict[str, np.ndarray | None], config: LibraryConfig, rank: RankConfig) -> Prepared:
    """Make the request's scene under scenes_root, picking its references unless the table gave them; a scene
    already there with the same key is reused as it is. Bad input, or no usable reference, is the error."""
    started = time.perf_counter()
    scene_uri = storage.join(scenes_root, request.stored_id)
    record_uri = storage.join(scene_uri, REQUEST_FILE)
    try:
        key = request_key(request, config, rank)
        if storage.exists(record_uri):
            record = json.loads(storage.read_bytes(record_uri))
            if record.get("key") == key:
                picks = [Pick(**pick) for pick in record["picks"]]
                return Prepared(request, scene_uri, picks, seconds=time.perf_counter() - started)
        target, mask = request_target(request)
        if request.refs:
            picks = [Pick(uri, None) for uri in request.refs]
        else:
            own = descriptors.get(request.target)
            pool = [photos[uri] for uri in request.pool if uri in photos]
            candidates = shortlist(photos.get(request.target), own if own is not None else descriptor(target), pool,
                                   descriptors, config)
            picking = pick_references(target, mask, [photo.uri for photo in candidates], config, rank)
            if not picking.picks:
                return Prepared(request, None, [], error=picking.reason(request.album, config),
                                seconds=time.perf_counter() - started)
            picks = picking.picks
        storage.remove(scene_uri)  # an older scene of this id: none of its references may linger
        write_scene(scene_uri, target, mask, [pick.uri for pick in picks],
                    {"key": key, "row": request.row, "request": request.given,
                     "picks": [asdict(pick) for pick in picks]})
    except Exception as exc:  # recorded for this request alone, so one bad photo never stops the others
        return Prepared(request, None, [], error=describe(exc), seconds=time.perf_counter() - started)
    return Prepared(request, scene_uri, picks, seconds=time.perf_counter() - started)
