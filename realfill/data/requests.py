"""Requests: a table saying what to do with which photo of a library (fill a mask or a box, uncrop by a ratio or
to an aspect ratio), checked row by row, and each request made into a RealBench scene.

OUT/scenes/<scene_id>/                   each request as a scene (RealBench layout) + request.json
OUT/filled/<album>/<name>.<ext>          the best completion of each request, full size, the original's EXIF
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from realfill.data import storage
from realfill.data.layout import SceneFiles, collision_key, storage_name
from realfill.data.photos import HEIC_SUFFIXES, Photo, photo_size, read_photo
from realfill.data.runlog import first_line
from realfill.data.scene import IMAGE_SUFFIXES, SceneError, read_mask

REQUEST_FILE = "request.json"
KINDS = ("mask", "box", "outpaint", "aspect")
COLUMNS = ("target", "scene_id", "mask", "box", "outpaint", "aspect", "refs", "album")


class RequestsError(ValueError):
    """Problems in a requests table: every one of them, one line each naming its row."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem{'s' * (len(problems) > 1)}, nothing was run:\n"
                         + "\n".join(f"  {problem}" for problem in problems))


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
    listed: Photo | None = None
    """The target as the library's listing gave it (size, EXIF time and place); None for a photo outside it."""

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
    own = photos.get(target)
    if own is None and not storage.exists(target):  # a listed photo was there a moment ago
        raise ValueError(f"target {given['target']}: file not found")
    width, height = own.size if own and own.size else photo_size(target)  # its header was read at listing
    kinds = [kind for kind in KINDS if kind in given]
    if len(kinds) != 1:
        raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    request = Request(row=number, scene_id="", target=target, album="", kind=kind, given=dict(given),
                      listed=own)
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
            raise ValueError(f"{table}: not a readable CSV or Parquet table ({first_line(exc)})") from None
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
