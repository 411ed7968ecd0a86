"""Support maps: the fill pixels that the ranker's matches with evidence vouch for. On both sets of real scenes
the truth is better supported than its fakes out of place, and a fill from another scene, a mirror image or
noise has an (all but) empty map; where a fake has support, its supported pixels are more often right."""

import cv2
import numpy as np
import pytest

from decoys import battery
from realfill.config import GeometryConfig
from realfill.selection.rank import Score, confirm_top, index_scene, score_candidate
from realfill.selection.support import map_image, support_fraction, support_map

CONFIG = GeometryConfig()
PLACED = ("shift 32px (+1,+0)", "rotation +10°", "rotation -5°")
"""The truth's content out of place, far enough that the known geometry tells it apart."""
UNRELATED = ("mirrored", "other scene 0", "noise σ2")


def test_a_map_is_the_matches_footprints_inside_the_fill_region():
    hole = np.zeros((40, 60), bool)
    hole[10:30, 20:50] = True
    score = Score(3, 1.0, footprints=np.float32([[25, 15, 4], [2, 2, 5]]))
    supported = support_map(hole, score)
    rows, columns = np.nonzero(supported)
    assert supported[15, 25] and supported[15, 29] and supported[11, 25] and not supported[15, 30]
    assert (rows.min(), columns.max()) == (11, 29), "a disc of radius 4 around (25, 15)"
    assert not supported[~hole].any(), "the footprint outside the fill region draws nothing"
    assert support_fraction(hole, supported) == pytest.approx(supported.sum() / hole.sum(), abs=1e-6)
    assert set(np.unique(map_image(supported))) == {0, 255}
    assert support_fraction(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 0.0


def test_confirming_adds_the_second_matchers_footprints():
    first = [Score(5, 2.0, footprints=np.float32([[1, 1, 8]])), Score(1, 0.0)]
    (confirmed, other) = confirm_top(first, 1, lambda i: Score(2, 1.0, footprints=np.float32([[9, 9, 4]])))
    assert confirmed.confirmed and confirmed.footprints.tolist() == [[1, 1, 8], [9, 9, 4]]
    assert other.footprints.shape == (0, 3)


def blurred(image: np.ndarray) -> np.ndarray:
    """Compared blurred by 2 px, as benchmarks/bench_support.py does: a pixel of misalignment at an edge is not an
    error."""
    return cv2.GaussianBlur(image.astype(np.float32), (0, 0), 2.0)


@pytest.fixture(scope="module")
def supports(both_sets):
    """Per scene with a ground truth: the support of the truth and of its fakes, and the pixels of each fake out
    of place (supported, right) inside the fill region."""
    measured = []
    for number, scene in enumerate(both_sets):
        index = index_scene(scene, CONFIG)
        fakes = {fake.label: fake.image for fake in battery(scene, [both_sets[(number + 1) % len(both_sets)].gt])
                 if fake.label in PLACED + UNRELATED}
        row = {"truth": support_fraction(scene.mask, support_map(scene.mask, score_candidate(index, scene.gt, CONFIG)))}
        pixels = []
        for label, image in fakes.items():
            supported = support_map(scene.mask, score_candidate(index, image, CONFIG))
            row[label] = support_fraction(scene.mask, supported)
            if label in PLACED:
                right = np.abs(blurred(image) - blurred(scene.gt)).mean(axis=2) <= 16
                pixels.append((supported[scene.mask], right[scene.mask]))
        measured.append((scene.scene_id, row, pixels))
    return measured


def test_the_truth_is_better_supported_than_its_fakes_and_unrelated_fills_are_not(supports):
    """BENCHMARKS.md, "Support maps", has the figures of both sets; these are their bounds."""
    for scene_id, row, _ in supports:
        assert max(row[label] for label in UNRELATED) <= 0.01, (scene_id, row)
        for label in PLACED:
            assert row["truth"] > row[label] or row["truth"] == row[label] == 0, (scene_id, label, row)


def test_supported_pixels_are_more_often_right(supports):
    """Pooled over the scenes of a set, the supported pixels of the truth's content out of place are right (within
    16 grey levels of the truth, blurred) more often than its unsupported ones, where any is supported."""
    supported = np.concatenate([vouched for _, _, pixels in supports for vouched, _ in pixels])
    right = np.concatenate([right for _, _, pixels in supports for _, right in pixels])
    if not supported.any():
        pytest.skip("no fake of this set has a supported pixel (the truth's support is the other test's)")
    assert right[supported].mean() > right[~supported].mean() + 0.05
