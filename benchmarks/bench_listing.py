"""Listing a photo library and checking its requests (EXIF time and place, displayed sizes) on an object store:
bytes read and seconds per photo, at albums of 1,000 and 10,000 distinct photos, reading each photo's header
lazily (what `realfill library` does) against reading each photo whole for the same facts. The store is
in memory and counts the bytes read of each file (tests/synthetic.py: BytesReadFileSystem), so the figures
are storage traffic; the seconds are the driver's own work per photo (with no network latency, a header read
costs more of it than one whole read: an open, then reads of a few small pieces).

    python benchmarks/bench_listing.py [--photos 1000 10000] [--side 640]
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from unittest.mock import patch

import cv2
import fsspec
import numpy as np
from PIL import Image

from realfill.data import photos
from realfill.data.photos import list_library, open_photo
from realfill.data.requests import read_requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import BytesReadFileSystem  # noqa: E402  (shared with the tests)

ROOT = "bytesread://bench-listing"
PHOTOS_PER_ALBUM = 500


def make_album(count: int, side: int) -> int:
    """count distinct JPEGs (random blobs, EXIF with a time and a place) in albums of PHOTOS_PER_ALBUM;
    returns their total size in bytes."""
    store = fsspec.filesystem("bytesread")
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2024:06:01 12:30:00"
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 21.0, 0.0)})
    base = cv2.GaussianBlur(rng.integers(0, 255, (side * 3 // 4, side, 3), dtype=np.uint8), (0, 0), 3)
    total = 0
    for index in range(count):
        image = np.roll(base, index, axis=1) ^ np.uint8(index % 251)  # distinct content per photo
        with store.open(f"{ROOT}/album{index // PHOTOS_PER_ALBUM:03d}/photo{index:05d}.jpg", "wb") as handle:
            Image.fromarray(image).save(handle, "JPEG", quality=90, exif=exif.tobytes())
            total += handle.tell()
    return total


def listing_and_checks() -> int:
    """What `realfill library --outpaint 1.25` reads before any task: the listing and every request's check."""
    return len(read_requests(ROOT, list_library(ROOT), outpaint="1.25"))


@contextmanager
def read_whole(uri: str):
    """The same header facts from the photo's bytes read whole (how photos were opened before)."""
    yield open_photo(uri)


def measure(way) -> tuple[float, int, int]:
    BytesReadFileSystem.read.clear()
    started = time.perf_counter()
    count = way()
    return time.perf_counter() - started, sum(BytesReadFileSystem.read.values()), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--side", type=int, default=640, help="photo width in pixels")
    args = parser.parse_args()
    fsspec.register_implementation("bytesread", BytesReadFileSystem, clobber=True)
    print("| photos | mean file | headers: bytes read per photo | s per photo | whole: bytes read per photo | "
          "s per photo | bytes ratio |")
    print("|---|---|---|---|---|---|---|")
    for count in args.photos:
        BytesReadFileSystem.store.clear()
        total = make_album(count, args.side)
        header_s, header_bytes, listed = measure(listing_and_checks)
        with patch.object(photos, "photo_header", read_whole):
            whole_s, whole_bytes, _ = measure(listing_and_checks)
        assert listed == count
        print(f"| {count:,} | {total / count / 1024:.1f} KiB | {header_bytes / count / 1024:.2f} KiB | "
              f"{header_s / count * 1000:.2f} ms | {whole_bytes / count / 1024:.1f} KiB | "
              f"{whole_s / count * 1000:.2f} ms | {whole_bytes / header_bytes:.0f}x |")
    BytesReadFileSystem.store.clear()


if __name__ == "__main__":
    main()
