import pytest

from realfill.config import FillConfig, SampleConfig, TuneConfig, config_key, field_docs


def test_defaults_are_the_paper_recipe():
    tune, sample = TuneConfig(), SampleConfig()
    assert (tune.lora_rank, tune.lora_alpha, tune.lora_dropout) == (8, 16, 0.1)
    assert (tune.unet_lr, tune.text_lr, tune.weight_decay, tune.max_grad_norm) == (2e-4, 4e-5, 1e-2, 1.0)
    assert (tune.train_steps, tune.batch_size, tune.resolution) == (2000, 16, 512)
    assert round(tune.resolution * tune.resize_max_scale) == 576
    assert (sample.scheduler, sample.steps, sample.guidance_scale, sample.num_samples) == ("ddpm", 200, 1.0, 64)


@pytest.mark.parametrize(
    "make",
    [
        lambda: TuneConfig(resolution=100),
        lambda: TuneConfig(batch_size=0),
        lambda: TuneConfig(mask_min_side=0.3),
        lambda: TuneConfig(mixed_precision="fp8"),
        lambda: SampleConfig(scheduler="euler"),
        lambda: SampleConfig(num_samples=0),
        lambda: FillConfig(device="tpu"),
    ],
)
def test_invalid_values_are_rejected(make):
    with pytest.raises(ValueError):
        make()


def test_config_key_tracks_every_field():
    assert config_key(FillConfig()) == config_key(FillConfig())
    assert config_key(FillConfig()) != config_key(FillConfig(sample=SampleConfig(steps=199)))


def test_every_field_is_documented():
    for cls in (TuneConfig, SampleConfig, FillConfig):
        assert set(field_docs(cls)) == set(cls.__dataclass_fields__), cls
