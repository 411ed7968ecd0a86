"""Where a completion is backed by the references: a per-pixel support map.

A score says how much of a fill the references confirm; the map says where. Ranking already finds, per
reference, the fill's matches that land where the known region's geometry says they must and in the colours it
says (realfill.selection.rank: positions predicted through the known region's plane and its local departures
from it, judged at each match's distance from the known points by spreads the known region measures on itself,
less what chance gives, and corroborated by their neighbours). Each such match vouches for the patch its
descriptor saw (`Score.footprints`). A fill pixel is *supported* where some reference's match vouches for it, and
*unsupported* where none does: no reference covers it, the known pixels cannot place what covers it, or what the
image shows there is not what the references show. The map costs nothing beyond ranking: it is drawn from what
scoring found.
"""

from __future__ import annotations

import cv2
import numpy as np

from realfill.selection.rank import Score


def support_map(hole: np.ndarray, score: Score) -> np.ndarray:
    """H x W bool: the fill pixels (hole) that a match with evidence vouches for."""
    drawn = np.zeros(hole.shape, np.uint8)
    for x, y, radius in score.footprints:
        cv2.circle(drawn, (round(float(x)), round(float(y))), max(1, round(float(radius))), 1, thickness=-1)
    return drawn.astype(bool) & hole


def support_fraction(hole: np.ndarray, supported: np.ndarray) -> float:
    """The share of the fill region that is supported (0 when there is no fill region)."""
    area = int(hole.sum())
    return round(float(supported.sum()) / area, 6) if area else 0.0


def map_image(supported: np.ndarray) -> np.ndarray:
    """The map as an 8-bit image: 255 supported, 0 unsupported or outside the fill region."""
    return supported.astype(np.uint8) * 255
