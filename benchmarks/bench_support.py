"""Support maps, honest on their own terms: measured on ground truth, each set of scenes on its own.

    REALFILL_SCENES=path/to/scenes REALFILL_SCENES_EXTRA=path/to/scenes-extra \\
        python benchmarks/bench_support.py [--features sift xfeat] [--sets scenes extra]

Per set and matcher:
- error against the ground truth on supported pixels versus unsupported ones, for stitch, Telea and the truth's
  fakes (shifted, rotated): mean absolute error of the images blurred by 2 px (a pixel of misalignment at an edge
  is not an error), and the share of pixels within 16 grey levels (right);
- the truth's support against its fakes' (shifted, rotated, mirrored, another scene, noise): per family the mean
  support, in how many scenes the truth is better supported than every fake of the family, and per family the
  smallest magnitude from which the truth is better supported in every scene where it has any support (where
  the scene has geometry the ranker can use);
- the most support any fill of another scene, mirror image or noise gets;
- cost per image: drawing the map from what scoring found, beside scoring itself (the rank stage's own work).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from realfill.config import GeometryConfig, StitchConfig
from realfill.data.scene import list_scenes, load_scene
from realfill.method.stitch import stitch
from realfill.selection.rank import index_scene, score_candidate
from realfill.selection.support import support_fraction, support_map

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from decoys import battery, smallest_beaten  # noqa: E402  (shared with the tests)

SETS = {"scenes": "REALFILL_SCENES", "extra": "REALFILL_SCENES_EXTRA"}
FAMILIES = ("shift", "rotation", "mirror", "other scene", "noise")
"""The fakes whose support is compared with the truth's."""
PLACED = ("shift", "rotation")
"""Fakes of the right content out of place: their pixels are pooled with stitch's and Telea's for the error."""
UNRELATED = ("other scene", "mirror", "noise")
RIGHT = 16
"""A pixel is right when its blurred error is within this many grey levels."""


@dataclass
class Pixels:
    """Blurred absolute errors of supported and unsupported fill pixels, pooled over scenes."""

    supported: list[np.ndarray] = field(default_factory=list)
    unsupported: list[np.ndarray] = field(default_factory=list)

    def add(self, error: np.ndarray, supported: np.ndarray, hole: np.ndarray) -> None:
        self.supported.append(error[supported & hole])
        self.unsupported.append(error[~supported & hole])

    @staticmethod
    def text(errors: list[np.ndarray]) -> str:
        values = np.concatenate(errors) if errors else np.zeros(0)
        if not len(values):
            return "none | – | –"
        return f"{len(values):,} | {values.mean():.1f} | {(values <= RIGHT).mean():.0%}"


@dataclass
class Measured:
    pixels: dict[str, Pixels] = field(default_factory=dict)
    truth: list[float] = field(default_factory=list)
    fakes: dict[str, list[tuple[int, float, float, float]]] = field(default_factory=dict)
    """Per family: (scene number, magnitude, the fake's support, the truth's support), every fake of every scene."""
    map_seconds: list[float] = field(default_factory=list)
    score_seconds: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Fake:
    """What smallest_beaten reads of a fake."""

    family: str
    magnitude: float


def blurred_error(image: np.ndarray, gt: np.ndarray) -> np.ndarray:
    def blur(x):
        return cv2.GaussianBlur(x.astype(np.float32), (0, 0), 2.0)
    return np.abs(blur(image) - blur(gt)).mean(axis=2)


def measure(scenes: list, features: str) -> Measured:
    geometry, measured = GeometryConfig(features=features), Measured()
    for number, scene in enumerate(scenes):
        index = index_scene(scene, geometry)
        others = [scenes[(number + 1) % len(scenes)].gt]
        fakes = [fake for fake in battery(scene, others) if fake.family in FAMILIES or fake.label == "inpainting telea"]
        made = stitch(scene, StitchConfig(), geometry).image

        def support(image: np.ndarray) -> np.ndarray:
            started = time.process_time()
            score = score_candidate(index, image, geometry)
            scored = time.process_time()
            supported = support_map(scene.mask, score)
            measured.score_seconds.append(scored - started)
            measured.map_seconds.append(time.process_time() - scored)
            return supported

        truth = support_fraction(scene.mask, support(scene.gt))
        measured.truth.append(truth)
        candidates = [("stitch", None, made)] + [(fake.label if fake.family == "inpainting" else fake.family, fake,
                                                  fake.image) for fake in fakes]
        for label, fake, image in candidates:
            supported = support(image)
            if fake is None or fake.family in (*PLACED, "inpainting"):
                measured.pixels.setdefault(label, Pixels()).add(blurred_error(image, scene.gt), supported, scene.mask)
            if fake is not None and fake.family in FAMILIES:
                measured.fakes.setdefault(fake.family, []).append(
                    (number, fake.magnitude, support_fraction(scene.mask, supported), truth))
        print(f"  {scene.scene_id}: truth {truth:.2f}", file=sys.stderr, flush=True)
    return measured


def report(name: str, features: str, scenes: list, measured: Measured) -> None:
    print(f"\n### {name} ({len(scenes)} scenes with a ground truth), {features}\n")
    print("| fill | supported pixels | MAE | right | unsupported pixels | MAE | right |")
    print("|---|---|---|---|---|---|---|")
    for label, pixels in measured.pixels.items():
        print(f"| {label} | {Pixels.text(pixels.supported)} | {Pixels.text(pixels.unsupported)} |")
    with_support = sum(value > 0 for value in measured.truth)
    print(f"\nTruth's support: mean {np.mean(measured.truth):.2f}, above 0 in {with_support} of {len(scenes)} "
          f"scenes.\n")
    print("| family | fakes | mean support (truth's) | scenes where the truth is better supported than every fake "
          "of the family | smallest magnitude always below the truth |")
    print("|---|---|---|---|---|")
    for family in FAMILIES:
        rows = measured.fakes.get(family, [])
        beaten = sum(all(truth > fake for scene, _, fake, truth in rows if scene == number)
                     for number in range(len(scenes)))
        outcomes = [(Fake(family, magnitude), fake < truth) for _, magnitude, fake, truth in rows if truth > 0]
        threshold = smallest_beaten(outcomes).get(family) if outcomes else None
        print(f"| {family} | {len(rows)} | {np.mean([fake for *_, fake, _ in rows]):.2f} "
              f"({np.mean([truth for *_, truth in rows]):.2f}) | {beaten} of {len(scenes)} | "
              f"{'–' if threshold is None else threshold} |")
    unrelated = [fake for family in UNRELATED for *_, fake, _ in measured.fakes.get(family, [])]
    print(f"\nMost support of an unrelated fill (another scene, a mirror image, noise): {max(unrelated):.3f}.")
    print(f"Cost per 512 x 512 image on one core: the map {1000 * np.mean(measured.map_seconds):.1f} ms from what "
          f"scoring found; scoring itself (the rank stage's work) {np.mean(measured.score_seconds):.2f} s.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", nargs="+", default=["sift"])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    args = parser.parse_args()
    cv2.setNumThreads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name in args.sets:
        root = os.environ.get(SETS[name])
        if not root:
            print(f"\n{name}: {SETS[name]} is not set, skipped")
            continue
        scenes = [scene for scene in map(load_scene, list_scenes(root)) if scene.gt is not None]
        for features in args.features:
            report(name, features, scenes, measure(scenes, features))


if __name__ == "__main__":
    main()
