"""Reference picking in a photo library: precision (share of picked references from the right scene) and
recall (share of the scene's references picked) on a library made of the photos of REALFILL_SCENES (each
scene's photos in albums shared with other scenes, plus a near-duplicate of a target), and seconds per
target, for an album of about 50 photos and one of about 500 (the photos repeated under new names):
the shortlist (EXIF proximity, then a global descriptor) against verifying every photo of the album.

    REALFILL_SCENES=path/to/scenes [REALFILL_SCENES_EXTRA=path/to/scenes-extra] python benchmarks/bench_library.py

With REALFILL_SCENES_EXTRA, the second set's scenes join the same albums (tests/synthetic.py: EXTRA_ALBUMS), and
its targets are requests too.
"""

from __future__ import annotations

import csv
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import cv2

from realfill.config import GeometryConfig, LibraryConfig
from realfill.data.photos import list_library
from realfill.data.requests import read_requests
from realfill.selection.picking import photo_descriptor, prepare_scene

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import library_from_scenes, mask_of  # noqa: E402  (made-up inputs, shared with the tests)


def original(uri: str) -> str:
    """A photo's name without the repeat's suffix: repeats of one photo are one reference to find."""
    return re.sub(r"-\d+(\.jpg)$", r"\1", uri)


def measure(roots: list[str], root: Path, truth: dict[str, set[str]], config: LibraryConfig,
            targets: int | None) -> dict:
    photos = list_library(str(root))
    table = root.parent / "requests.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["target", "mask"])
        for target in list(truth)[:targets]:
            writer.writerow([target, mask_of(roots, target)])
    requests = read_requests(str(root), photos, str(table))
    started = time.perf_counter()
    descriptors = {photo.uri: photo_descriptor(photo.uri) for photo in photos}
    describe_s = (time.perf_counter() - started) / len(photos)
    right = wrong = recalled = missed = 0
    seconds = []
    with tempfile.TemporaryDirectory() as scenes:
        for request in requests:
            started = time.perf_counter()
            prepared = prepare_scene(request, scenes, {p.uri: p for p in photos}, descriptors, config, GeometryConfig())
            seconds.append(time.perf_counter() - started)
            picked = {pick.uri for pick in prepared.picks}
            right, wrong = right + len(picked & truth[request.target]), wrong + len(picked - truth[request.target])
            found = {original(uri) for uri in picked & truth[request.target]}
            recalled += len(found)
            missed += len({original(uri) for uri in truth[request.target]} - found)
    album = max(sum(photo.album == name for photo in photos) for name in {photo.album for photo in photos})
    return {"album": album, "wrong": wrong, "precision": right / (right + wrong) if right + wrong else 1.0,
            "recall": recalled / (recalled + missed), "pick_s": sum(seconds) / len(seconds),
            "describe_s": describe_s, "targets": len(requests)}


def main() -> None:
    cv2.setNumThreads(1)
    scenes_root, extra_root = os.environ["REALFILL_SCENES"], os.environ.get("REALFILL_SCENES_EXTRA")
    roots = [scenes_root] + ([extra_root] if extra_root else [])
    print("| largest album | picking | targets | precision (wrong picks) | recall | s per target | "
          "descriptor s per photo |")
    print("|---|---|---|---|---|---|---|")
    for copies, targets in ((4, None), (45, 3)):
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch) / "library"
            truth = library_from_scenes(scenes_root, str(root), copies, extra_root)
            for name, config in (("shortlist of 24", LibraryConfig()), ("every photo", LibraryConfig(shortlist=10**6))):
                found = measure(roots, root, truth, config, targets)
                print(f"| {found['album']} photos | {name} | {found['targets']} | {found['precision']:.0%} "
                      f"({found['wrong']}) | {found['recall']:.0%} | {found['pick_s']:.2f} | "
                      f"{found['describe_s']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
