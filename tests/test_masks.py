import numpy as np

from realfill.config import TuneConfig
from realfill.method.masks import composite, composite_alpha, draw_mask, render_mask


def test_mask_recipe_statistics():
    config, resolution, draws = TuneConfig(), 512, 6000
    rng = np.random.default_rng(0)
    samples = [draw_mask(rng, resolution, config) for _ in range(draws)]
    counts = np.array([len(draw.boxes) for draw in samples])
    assert counts.min() == 1 and counts.max() == 29
    assert abs(counts.mean() - 15.0) < 0.4
    assert abs(np.mean([draw.full for draw in samples]) - 0.1) < 0.015
    assert abs(np.mean([draw.inverted for draw in samples]) - 0.5) < 0.025
    sides = np.array([side for draw in samples for _, _, h, w in draw.boxes for side in (h, w)]) / resolution
    assert sides.min() >= 0.03 - 1 / resolution and sides.max() < 0.25
    assert abs(sides.mean() - 0.14) < 0.005
    for draw in samples:
        for top, left, height, width in draw.boxes:
            assert 0 <= top and top + height <= resolution and 0 <= left and left + width <= resolution


def test_rendering_follows_the_draw():
    config = TuneConfig()
    rng = np.random.default_rng(1)
    for _ in range(200):
        draw = draw_mask(rng, 64, config)
        mask = render_mask(draw, 64)
        if draw.full:
            assert mask.min() == 1
            continue
        boxes = np.zeros((64, 64), np.float32)
        for top, left, height, width in draw.boxes:
            boxes[top : top + height, left : left + width] = 1
        np.testing.assert_array_equal(mask, 1 - boxes if draw.inverted else boxes)


def test_composite_alpha_is_exactly_zero_outside_the_band():
    hole = np.zeros((50, 80), bool)
    hole[20:30, 30:40] = True
    alpha = composite_alpha(hole, dilate_px=2, feather_px=4)
    assert (alpha[hole] == 1).all()
    band = alpha > 0
    rows, cols = np.nonzero(band)
    assert rows.min() >= 20 - 6 and rows.max() <= 29 + 6 and cols.min() >= 30 - 6 and cols.max() <= 39 + 6
    assert ((alpha > 0) & (alpha < 1)).any()
    target = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    generated = np.full_like(target, 128)
    out = composite(target, generated, alpha)
    np.testing.assert_array_equal(out[~band], target[~band])
    np.testing.assert_array_equal(out[hole], generated[hole])
