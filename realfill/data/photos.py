"""Photo libraries' photos: albums of ordinary photos (LIBRARY/<album>/*.jpg; HEIC too with the heif extra),
read with their EXIF orientation applied, when and where they were taken, and the finished photos written
back in the original's format with its EXIF."""

from __future__ import annotations

import io
import posixpath
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from realfill.data import storage
from realfill.data.scene import IMAGE_SUFFIXES, SceneError, entries, read_image

HEIC_SUFFIXES = (".heic", ".heif")
PHOTO_SUFFIXES = IMAGE_SUFFIXES + HEIC_SUFFIXES
EXIF_ORIENTATION, EXIF_IFD, GPS_IFD, DATE_TIME_ORIGINAL = 0x0112, 0x8769, 0x8825, 36867


@dataclass(frozen=True)
class Photo:
    """A photo of the library and what its EXIF says of when and where it was taken."""

    uri: str
    album: str
    taken: datetime | None = None
    gps: tuple[float, float] | None = None
    """(latitude, longitude) in degrees."""
    size: tuple[int, int] | None = None
    """(width, height) as displayed, from the header read at listing (None: the photo could not be read)."""


HEADER_BLOCK = 64 << 10
"""Bytes fetched per read when only a photo's header is wanted (its size and EXIF come first in the file)."""


def decode(uri: str, source) -> Image.Image:
    """A photo's image from source() (a binary file), lazily decoded; HEIC needs the heif extra, and the error
    says so, as it names any photo that cannot be read."""
    if uri.lower().endswith(HEIC_SUFFIXES):
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            raise SceneError(f"{uri}: HEIC photos need the heif extra (pip install 'realfill[heif]')") from None
        register_heif_opener()
    try:
        return Image.open(source())
    except FileNotFoundError:
        raise SceneError(f"{uri}: file not found") from None
    except UnidentifiedImageError:
        raise SceneError(f"{uri}: not an image, or in a format that cannot be read "
                         f"(expected {', '.join(PHOTO_SUFFIXES)})") from None
    except OSError as exc:
        raise SceneError(f"{uri}: not a readable photo ({storage.reason(exc)})") from None


def open_photo(uri: str, data: bytes | None = None) -> Image.Image:
    """A photo's image, its bytes read whole (or data, when they are already read)."""
    return decode(uri, lambda: io.BytesIO(storage.read_bytes(uri) if data is None else data))


@contextmanager
def photo_header(uri: str):
    """A photo opened from storage lazily, for its size and EXIF: only the blocks its header lies in are read."""
    fs, path = storage.filesystem(uri)
    with ExitStack() as stack:
        yield decode(uri, lambda: stack.enter_context(fs.open(path, "rb", block_size=HEADER_BLOCK)))


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


def photo_of(uri: str, album: str) -> Photo:
    """A listed photo with its displayed size and its EXIF time and place, read from its header."""
    try:
        with photo_header(uri) as image:
            taken, place = exif_place_and_time(image)
            size = displayed_size(image)
    except SceneError:
        return Photo(uri, album)  # an unreadable photo fails when a request uses it
    return Photo(uri, album, taken, place, size)


def photos_of(listed: list[tuple[str, str]]) -> list[Photo]:
    """Listed (uri, album) pairs as photos, their headers read storage.IN_FLIGHT at a time: one chunk of a
    library's listing (a Ray task each, when the library runs on Ray)."""
    with ThreadPoolExecutor(storage.IN_FLIGHT) as pool:
        return list(pool.map(lambda pair: photo_of(*pair), listed))


LISTING_CHUNK = 500
"""Photos whose headers one call reads."""


def list_library(root: str, map_chunks: storage.ChunkMap = map) -> list[Photo]:
    """Every photo of every album (a folder directly under root), with its displayed size and EXIF time and place:
    one listing per album here, then each photo's header in chunks of LISTING_CHUNK through map_chunks."""
    root = storage.normalize(root)
    found = []
    for album in entries(root, "library not found"):
        folder = storage.join(root, album)
        if not storage.is_dir(folder):
            continue  # a file beside the albums
        found += [(storage.join(folder, name), album) for name in storage.list_dir(folder)
                  if name.lower().endswith(PHOTO_SUFFIXES)]
    if not found:
        raise SceneError(f"{root}: no photos (expected ROOT/<album>/*{', *'.join(PHOTO_SUFFIXES)})")
    return [photo for chunk in map_chunks(photos_of, storage.chunks(found, LISTING_CHUNK)) for photo in chunk]


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


def photo_size(uri: str, data: bytes | None = None) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the header alone (of data, when the bytes
    are already read, else read from storage)."""
    if data is not None:
        return displayed_size(open_photo(uri, data))
    with photo_header(uri) as image:
        return displayed_size(image)


def displayed_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    return (height, width) if image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8) else (width, height)


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
