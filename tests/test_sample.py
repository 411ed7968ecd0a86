import numpy as np
import pytest

from conftest import write_scene
from realfill.config import SampleConfig
from realfill.data.scene import load_scene
from realfill.method.sample import Condition, Sampler, composite_sample, sample_size


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
                                  [7], Condition("a photo of sks")))
    batched = dict(sampler.generate(scene, SampleConfig(resolution=64, steps=3, batch_size=4, scheduler=scheduler),
                                    [5, 6, 7, 8], Condition("a photo of sks")))
    assert alone[7].shape == (40, 64, 3)  # 96x64 target, long side 64
    difference = np.abs(alone[7].astype(int) - batched[7].astype(int))
    assert difference.max() <= 1, "a seed's image must not depend on its batch (up to float rounding)"
    assert np.abs(batched[5].astype(int) - batched[7].astype(int)).mean() > 5, "different seeds differ"


@pytest.mark.parametrize("size", [(96, 96), (150, 70), (60, 130)])
def test_compositing_keeps_known_pixels_byte_identical(tmp_path, sampler, size):
    scene_dir = write_scene(tmp_path / "scene", size=size)
    scene = load_scene(str(scene_dir))
    config = SampleConfig(resolution=64, steps=2, batch_size=2)
    for _, generated in sampler.generate(scene, config, [0, 1], Condition("a photo of sks")):
        out = composite_sample(scene, generated, config)
        assert out.shape == scene.target.shape and out.dtype == np.uint8
        from realfill.method.masks import composite_alpha

        untouched = composite_alpha(scene.mask, config.dilate_px, config.feather_px) == 0
        assert untouched.mean() > 0.5
        np.testing.assert_array_equal(out[untouched], scene.gt[untouched])
        assert (out[scene.mask] != 0).any(), "the hole is filled"


def test_bf16_sampling_runs_on_a_cpu_with_an_adapter(tmp_path, tiny_model, sampler):
    """An explicit bf16 is honoured on a CPU: every weight, the scene adapter's included, is bf16, and the
    images are finite and close to fp32's but not the same pixels."""
    import torch
    from test_tune import perturbed_adapter

    perturbed_adapter(tiny_model, str(tmp_path / "adapter"), seed=0)
    scene = load_scene(str(write_scene(tmp_path / "scene")))
    config, images = SampleConfig(resolution=64, steps=3, batch_size=2), {}
    for precision in ("no", "bf16"):
        each = Sampler(tiny_model, device="cpu", precision=precision)
        each.use_adapter(str(tmp_path / "adapter"))
        dtypes = {p.dtype for part in (each.pipeline.unet, each.pipeline.vae, each.pipeline.text_encoder)
                  for p in part.parameters()}
        assert dtypes == {torch.bfloat16 if precision == "bf16" else torch.float32}
        images[precision] = dict(each.generate(scene, config, [0, 1], Condition("a photo of sks")))
    for seed in (0, 1):
        half, full = images["bf16"][seed].astype(int), images["no"][seed].astype(int)
        assert half.shape == full.shape and 0 < np.abs(half - full).mean() < 10


def test_a_half_precision_overflow_is_decoded_again_in_float32(tiny_model):
    """An fp16 VAE whose activations pass 65504 gives inf/NaN; the sampler decodes that image again in fp32."""
    import torch

    overflowing = Sampler(tiny_model, device="cpu")
    vae = overflowing.pipeline.vae
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e5)  # activations of ~1e5: fine in fp32, inf in fp16
        vae.decoder.conv_in.bias.mul_(1e5)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * vae.config.scaling_factor
    reference = overflowing.decode(latents)
    assert all(isinstance(image, np.ndarray) for image in reference)
    vae.to(torch.float16)
    with torch.no_grad():
        assert not torch.isfinite(vae.decode(latents.half() / vae.config.scaling_factor).sample).all()
    retried = overflowing.decode(latents)
    for got, want in zip(retried, reference):
        assert isinstance(got, np.ndarray) and np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_a_broken_model_fails_its_samples_not_the_others(tmp_path, tiny_model):
    """NaN that float32 cannot fix: those samples are recorded failed with the reason, never composited."""
    import torch

    from conftest import tiny_config
    from realfill.method.sample import SampleFailure
    from realfill.stages import SampleError, rank_samples, sample_scene, tune_scene

    broken = Sampler(tiny_model, device="cpu")
    with torch.no_grad():
        broken.pipeline.vae.decoder.conv_out.bias[0] = float("nan")
    latents = torch.zeros(1, 4, 8, 8)
    assert broken.decode(latents) == [SampleFailure("the decoded image holds NaN or inf, in float32 too")]
    assert broken.decode(latents * float("inf")) == [
        SampleFailure("the denoised latents hold NaN or inf (the model overflowed)")]

    scene = load_scene(str(write_scene(tmp_path / "scene")))
    config = tiny_config()
    adapter, _ = tune_scene(scene, str(tmp_path / "adapters"), config, show_progress=False)
    failed = sample_scene(broken, scene, adapter, str(tmp_path / "out"), config, show_progress=False)
    assert [row.status for row in failed] == ["failed"] * 3
    with pytest.raises(SampleError, match="every sample failed; seed 0: the decoded image holds NaN"):
        rank_samples(scene, failed, config)
    assert not list((tmp_path / "out").rglob("*.png")), "no black or NaN image is written"

    real_decode, calls = broken.decode, []

    def first_image_overflows(latents):
        calls.append(len(latents))
        images = real_decode(latents)
        return [SampleFailure("overflow")] + images[1:] if len(calls) == 1 else images

    broken.decode = first_image_overflows
    with torch.no_grad():
        broken.pipeline.vae.decoder.conv_out.bias[0] = 0.0
    rows = rank_samples(scene, sample_scene(broken, scene, adapter, str(tmp_path / "out"), config,
                                            show_progress=False), config).rows
    assert [row.status for row in rows] == ["failed", "ok", "ok"]
    assert rows[0].error == "seed 0: overflow" and rows[0].rank is None and not rows[0].selected
    assert sorted(row.rank for row in rows[1:]) in ([1, 2], [1, 1])
