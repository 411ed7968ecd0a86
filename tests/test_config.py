import re

import pytest

from realfill.cli import typed_fields
from realfill.config import (
    EvalConfig,
    FillConfig,
    GeometryConfig,
    LibraryConfig,
    RankConfig,
    SampleConfig,
    StitchConfig,
    TuneConfig,
    expand_grid,
)
from realfill.data.records import adapter_key, image_key, run_key, sampling_key, seeds, stitch_key, training_key


def config_with(fields: dict, base: FillConfig | None = None) -> FillConfig:
    """A config from fields, as a config file or a grid variant gives them (through the CLI's parser)."""
    return typed_fields(fields, "f", base)


def test_defaults_are_the_paper_recipe():
    tune, sample = TuneConfig(), SampleConfig()
    assert (tune.lora_rank, tune.lora_alpha, tune.lora_dropout) == (8, 16, 0.1)
    assert (tune.unet_lr, tune.text_lr, tune.weight_decay, tune.max_grad_norm) == (2e-4, 4e-5, 1e-2, 1.0)
    assert (tune.train_steps, tune.batch_size, tune.resolution) == (2000, 16, 512)
    assert round(tune.resolution * tune.resize_max_scale) == 576
    assert (sample.scheduler, sample.steps, sample.guidance_scale, sample.num_samples) == ("ddpm", 200, 1.0, 64)


@pytest.mark.parametrize(
    "make,words",
    [
        (lambda: TuneConfig(resolution=100), "resolution must be a positive multiple of 8"),
        (lambda: TuneConfig(batch_size=0), "batch_size must be >= 1"),
        (lambda: TuneConfig(mask_min_side=0.3), "need 0 < mask_min_side < mask_max_side <= 1"),
        (lambda: config_with({"tune.mixed_precision": "fp8"}), "mixed_precision must be one of auto, no, fp16, bf16"),
        (lambda: config_with({"sample": {"scheduler": "euler"}}), "scheduler must be one of ddpm, dpm (got 'euler')"),
        (lambda: SampleConfig(num_samples=0), "num_samples must be >= 1"),
        (lambda: config_with({"device": "tpu"}), "device must be one of auto, cpu, cuda (got 'tpu')"),
        (lambda: config_with({"method": "dall-e"}), "method must be one of realfill, stitch, sd-inpaint"),
        (lambda: FillConfig(method="paint-by-example", init="stitch"), "not method paint-by-example"),
        (lambda: FillConfig(method="stitch", init="stitch"), "not method stitch"),
        (lambda: FillConfig(init="stitch", init_strength=0.0), "init_strength must be in (0, 1]"),
        (lambda: FillConfig(tune=TuneConfig(stitch_view_weight=0.5)), "tune.stitch_view_weight needs init stitch"),
        (lambda: config_with({"geometry.features": "loftr"}), "features loftr needs weights"),
        (lambda: config_with({"geometry": {"ransac_px": 0}}), "ransac_px must be positive"),
        (lambda: StitchConfig(softness=-1.0), "softness must be >= 0"),
        (lambda: LibraryConfig(max_refs=0), "need max_refs >= 1 and min_beyond_chance >= 1"),
        (lambda: LibraryConfig(max_refs=5, shortlist=3), "shortlist must be >= max_refs"),
        (lambda: LibraryConfig(duplicate_ncc=1.5), "duplicate_ncc must be in (0, 1]"),
    ],
)
def test_invalid_values_are_rejected(make, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        make()


def test_run_key_tracks_every_field_and_image_key_only_pixels():
    assert run_key(FillConfig()) == run_key(FillConfig())
    assert run_key(FillConfig()) != run_key(FillConfig(sample=SampleConfig(steps=199)))
    assert run_key(FillConfig()) != run_key(FillConfig(sample=SampleConfig(num_samples=8)))
    base = image_key("adapter", FillConfig())
    assert base == image_key("adapter", config_with({"sample.num_samples": 8, "sample.batch_size": 1})), \
        "seed count and batch: same pixels"
    assert base != image_key("adapter", config_with({"sample.steps": 199}))
    assert base != image_key("other", FillConfig())


def test_image_keys_follow_what_each_method_conditions_on():
    def key(**fields):
        return image_key("source", config_with(fields))

    realfill = key()
    assert key(stitch={"softness": 2.0}, rank={"keep": 3}) == realfill, "realfill from noise: no stitch, no ranking"
    assert key(prompt="a wall") == realfill, "realfill samples with its adapter's prompt"
    sd = key(method="sd-inpaint")
    assert sd != realfill and key(method="sd-inpaint", prompt="a wall") != sd
    assert key(method="sd-inpaint", base_model="other/model") != sd
    example = key(method="paint-by-example")
    assert example != sd and key(method="paint-by-example", example_model="tiny") != example
    assert key(method="paint-by-example", stitch={"max_planes": 1}) != example, "the exemplar comes from the stitch"
    started = key(init="stitch")
    assert started != realfill and key(init="stitch", init_strength=0.5) != started
    assert key(init="stitch", stitch={"softness": 2.0}) != started
    # the Ray pipeline's sharing keys agree with the stored keys on what they separate
    first, second = config_with({"method": "sd-inpaint"}), config_with({})
    assert sampling_key("scene", first) != sampling_key("scene", second)


def test_stitch_view_and_stitch_keys():
    config = config_with({"init": "stitch"})
    viewed = config_with({"tune.stitch_view_weight": 0.5}, config)
    assert training_key("scene", config) == training_key("scene", FillConfig()), "init alone does not change training"
    assert training_key("scene", viewed) != training_key("scene", config)
    assert adapter_key("f", config.tune, 0, "m") != adapter_key("f", config.tune, 0, "m", view="stitch")
    assert stitch_key("f", config) != stitch_key("f", config_with({"stitch.max_planes": 2}, config))
    assert stitch_key("f", config) == stitch_key("f", config_with({"sample.steps": 3, "seed": 4}, config))
    assert seeds(config_with({"method": "stitch", "sample.num_samples": 8, "seed": 3})) == [3], \
        "stitch makes one image"


def test_every_field_is_documented():
    """The docstring under each field is its flag's help (read by jsonargparse through docstring-parser)."""
    import docstring_parser

    from pipeline.config import PipelineConfig

    for cls in (TuneConfig, SampleConfig, GeometryConfig, RankConfig, StitchConfig, FillConfig, EvalConfig,
                LibraryConfig, PipelineConfig):
        documented = {param.arg_name for param in docstring_parser.parse_from_object(cls).params if param.description}
        assert documented == set(cls.__dataclass_fields__), cls


@pytest.mark.parametrize("text,words", [
    ('tune.train_steps: "two"', "train_steps must be an integer (got 'two')"),
    ("tune: {train_steps: 2.5}", "train_steps must be an integer (got 2.5)"),
    ("tune.train_steps: true", "train_steps must be an integer (got True)"),
    ("train_steps: 3", "unknown field 'train_steps'"),
    ("seed: -5", "seed must be >= 0"),
    ("tune: [1, 2]", "'tune' must be a mapping of field names to values (got [1, 2])"),
    ("tune: {lora_rnk: 4}", "unknown field 'tune.lora_rnk'"),
    ("sample: {scheduler: euler}", "scheduler must be one of ddpm, dpm (got 'euler')"),
    ("rank: {keep: 1.5}", "keep must be an integer or null (got 1.5)"),
    ("rank: {confirm: loftr}", "confirm must be disk, aliked or xfeat"),
    ("fast: 'yes'", "fast must be true or false (got 'yes')"),
    ("- a list", "config must be a mapping"),
])
def test_config_file_errors_name_the_file_and_the_field(tmp_path, text, words):
    from realfill.cli import parse

    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        parse(["fill", "scene", "--out", "o", "--config", str(path)])
    assert str(caught.value).startswith(f"{path}: ") and words in str(caught.value)


def test_bad_values_stop_a_run_before_ray_starts(tmp_path):
    """`realfill run` with a bad config exits 2 with one line, without starting Ray (it would take seconds)."""
    import subprocess
    import sys

    (tmp_path / "run.yaml").write_text("tune.train_steps: 2.5\n")
    result = subprocess.run([sys.executable, "-m", "realfill.cli", "run", str(tmp_path), "--out", str(tmp_path / "o"),
                             "--config", str(tmp_path / "run.yaml")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"realfill: {tmp_path / 'run.yaml'}: train_steps must be an integer (got 2.5)"]
    assert "ray" not in result.stderr.lower() and not (tmp_path / "o").exists()


def test_numbers_and_lists_are_taken_in_their_natural_spelling():
    tune = config_with({"tune.unet_lr": 1, "tune.unet_lora_targets": ["to_q"]}).tune
    assert tune.unet_lr == 1.0 and isinstance(tune.unet_lr, float) and tune.unet_lora_targets == ("to_q",)
    with pytest.raises(ValueError, match=re.escape("f: unet_lora_targets must be a list of str (got ['to_q', 3])")):
        config_with({"tune": {"unet_lora_targets": ["to_q", 3]}})


def test_fields_are_named_by_their_path_and_unknown_ones_are_refused():
    config = config_with({"seed": 3, "sample.steps": 7, "rank": {"keep": 2}, "fast": True})
    assert (config.seed, config.sample.steps, config.sample.scheduler, config.rank.keep) == (3, 7, "dpm", 2)
    for fields, words in (({"sample.stepz": 1}, "unknown field 'sample.stepz'"),
                          ({"tune": {"steps": 1}}, "unknown field 'tune.steps'"),
                          ({"sample": 3}, "'sample' must be a mapping"),
                          ({"sample.steps": "two"}, "steps must be an integer (got 'two')"),
                          ({"fast": "yes"}, "fast must be true or false")):
        with pytest.raises(ValueError, match=re.escape(words)):
            config_with(fields)


def test_grid_expands_to_every_combination_plus_named_variants():
    from realfill.config import expand_grid

    variants = expand_grid({"base": {"seed": 1}, "grid": {"sample.steps": [1, 2], "rank.keep": [3, 4]},
                            "variants": {"plain": None}}, "g.yaml")
    assert variants == {"steps=1,keep=3": {"seed": 1, "sample.steps": 1, "rank.keep": 3},
                        "steps=1,keep=4": {"seed": 1, "sample.steps": 1, "rank.keep": 4},
                        "steps=2,keep=3": {"seed": 1, "sample.steps": 2, "rank.keep": 3},
                        "steps=2,keep=4": {"seed": 1, "sample.steps": 2, "rank.keep": 4}, "plain": {"seed": 1}}
    for data, words in (({"grid": {"seed": 1}}, "g.yaml: grid 'seed' must be a non-empty list"),
                        ({"gird": {}}, "g.yaml: unknown key 'gird'"), ({}, "g.yaml: no variants")):
        with pytest.raises(ValueError, match=re.escape(words)):
            expand_grid(data, "g.yaml")


def billion_laughs(levels: int) -> str:
    """A config whose anchors expand 9-fold per level (a few hundred bytes, millions of values)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{level}: &l{level} [{','.join([f'*l{level - 1}'] * 9)}]" for level in range(1, levels)]
    return "\n".join(lines) + f"\nseed: *l{levels - 1}\n"


@pytest.mark.parametrize("text,words", [
    (billion_laughs(7), "expands to 11,434,292 values (YAML anchors and aliases), more than the 100,000"),
    (billion_laughs(9), "expands to 926,177,115 values"),
    ("seed: &a [1, *a]", "an anchor contains an alias of itself"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
])
def test_config_bombs_are_refused_in_one_short_line(tmp_path, text, words):
    from realfill.cli import parse

    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        parse(["fill", "scene", "--out", "o", "--config", str(path)])
    assert str(caught.value).startswith(f"{path}: cannot read config (") and words in str(caught.value)
    assert len(str(caught.value)) < 300 and "\n" not in str(caught.value)


def test_a_large_wrong_value_is_quoted_within_bounds(tmp_path):
    from realfill.cli import parse

    path = tmp_path / "run.yaml"
    path.write_text("seed: [" + ", ".join(["12345678"] * 50_000) + "]\n")
    with pytest.raises(ValueError) as caught:
        parse(["fill", "scene", "--out", "o", "--config", str(path)])
    assert str(caught.value) == f"{path}: seed must be an integer (got [12345678, 12345678, 12345678, 12345678, ...])"


def test_a_grid_that_makes_too_many_variants_is_refused(tmp_path):
    grid = {"grid": {f"tune.{name}": list(range(2, 12)) for name in ("lora_rank", "train_steps", "batch_size")}}
    grid["grid"]["seed"] = list(range(10))
    with pytest.raises(ValueError, match=r"^g.yaml: the grid makes 10,000 variants, more than the 1,000"):
        expand_grid(grid, "g.yaml")
