import numpy as np
import pytest

from conftest import write_scene
from realfill.config import SampleConfig
from realfill.sample import Sampler, composite_sample, sample_size
from realfill.scene import load_scene


@pytest.fixture(scope="module")
def sampler(tiny_model):
    return Sampler(tiny_model, device="cpu")


def test_sample_size_keeps_aspect_in_multiples_of_eight():
    assert sample_size(512, 512, 512) == (512, 512)
    assert sample_size(480, 640, 512) == (384, 512)
    assert sample_size(1000, 300, 64) == (64, 16)
    assert sample_size(30, 1000, 64) == (8, 64)


@pytest.mark.parametrize("scheduler", ["ddpm", "dpm"])
def test_a_seed_gives_the_same_image_alone_and_in_a_batch(tmp_path, sampler, scheduler):
    scene = load_scene(str(write_scene(tmp_path / "scene")))
    alone = dict(sampler.generate(scene, SampleConfig(resolution=64, steps=3, batch_size=1, scheduler=scheduler),
                                  [7], "a photo of sks"))
    batched = dict(sampler.generate(scene, SampleConfig(resolution=64, steps=3, batch_size=4, scheduler=scheduler),
                                    [5, 6, 7, 8], "a photo of sks"))
    assert alone[7].shape == (40, 64, 3)  # 96x64 target, long side 64
    difference = np.abs(alone[7].astype(int) - batched[7].astype(int))
    assert difference.max() <= 1, "a seed's image must not depend on its batch (up to float rounding)"
    assert np.abs(batched[5].astype(int) - batched[7].astype(int)).mean() > 5, "different seeds differ"


@pytest.mark.parametrize("size", [(96, 96), (150, 70), (60, 130)])
def test_compositing_keeps_known_pixels_byte_identical(tmp_path, sampler, size):
    scene_dir = write_scene(tmp_path / "scene", size=size)
    scene = load_scene(str(scene_dir))
    config = SampleConfig(resolution=64, steps=2, batch_size=2)
    for _, generated in sampler.generate(scene, config, [0, 1], "a photo of sks"):
        out = composite_sample(scene, generated, config)
        assert out.shape == scene.target.shape and out.dtype == np.uint8
        from realfill.masks import composite_alpha

        untouched = composite_alpha(scene.mask, config.dilate_px, config.feather_px) == 0
        assert untouched.mean() > 0.5
        np.testing.assert_array_equal(out[untouched], scene.gt[untouched])
        assert (out[scene.mask] != 0).any(), "the hole is filled"
