"""The real models' layouts (vendored configs, replicas with random weights) load through the paths users take,
read only the fp32 safetensors, and lose none of the real configs' keys."""

import dataclasses
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from replicas import (
    LEGACY_PREFIXES,
    PAINT_BY_EXAMPLE,
    SD2_INPAINTING,
    WEIGHT_FILES,
    layout_files,
    narrowed,
    replica_path,
)

WIDTHS = {SD2_INPAINTING: 16, PAINT_BY_EXAMPLE: 8}
"""The narrowest replica of each (its attention heads must still divide its widths)."""
METADATA = {"_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype",
            "feature_extractor_type", "name_or_path", "special_tokens_map_file", "tokenizer_class"}
"""Keys that say where a file came from, not how the model computes."""
UNUSED_AT = {"dropout": 0.0, "do_lower_case": True, "errors": "replace"}
"""Keys today's libraries drop, accepted only at the value they behave as: CLIP never applied dropout, and its
fast tokenizer always lowercases and decodes invalid bytes as replacement characters."""
PNDM_ONLY = {"skip_prk_steps", "set_alpha_to_one"}
"""The hub's PNDM sampler's own settings: realfill trains with DDPM and samples with DDPM or DPM-Solver++."""


@pytest.fixture(scope="module")
def replicas(model_cache):
    return {name: replica_path(name, width) for name, width in WIDTHS.items()}


@pytest.fixture
def pickle_opens():
    """Every pickle, fp16 variant or single-file checkpoint that Python opens while the test runs."""
    opened, active = [], [True]

    def hook(event, args):
        if active[0] and event == "open" and isinstance(args[0], str) and args[0].endswith((".bin", ".ckpt")):
            opened.append(args[0])

    sys.addaudithook(hook)  # audit hooks cannot be removed: this one stops recording after the test
    yield opened
    active[0] = False


def same(loaded, declared) -> bool:
    if isinstance(declared, list):
        return list(loaded) == declared
    if isinstance(declared, int) and dataclasses.is_dataclass(loaded):  # crop_size 224 -> height 224, width 224
        return all(value == declared for value in vars(loaded).values() if value is not None)
    return loaded == declared or str(loaded) == str(declared)


def unsupported(declared: dict, loaded: dict, supported: set[str], own: set[str] = frozenset()) -> list[str]:
    """The keys of a real config file that the loaded object does not hold at the file's value."""
    problems = []
    for key, value in declared.items():
        if key in METADATA or (key.startswith("_") and key != "_name_or_path") or key in own:
            continue
        if key in UNUSED_AT:
            if value != UNUSED_AT[key]:
                problems.append(f"{key}={value} (dropped by the library)")
        elif key not in supported:
            problems.append(f"{key} (unsupported)")
        elif not same(loaded[key], value):
            problems.append(f"{key}: file {value}, loaded {loaded[key]}")
    return problems


def transformers_fields(config) -> dict:
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}


def assert_weights_are_the_fp32_safetensors(folder, component, module):
    """Every tensor of the loaded module is the fp32 safetensors file's (under its stored name), so no other file
    (fp16 variant, pickle) was read and nothing was left at its random init."""
    stored = load_file(folder / component / [f for f in WEIGHT_FILES_OF[component] if f.endswith(".safetensors")
                                             and ".fp16." not in f][0])
    now, then = LEGACY_PREFIXES.get(component, ("", ""))
    for name, tensor in module.state_dict().items():
        key = then + name[len(now):] if then and name.startswith(now) else name
        assert key in stored, f"{component}.{name} is in no stored tensor"
        assert torch.equal(tensor.float(), stored[key].float()), f"{component}.{name} is not the fp32 safetensors'"


WEIGHT_FILES_OF = {component: files for layout in WEIGHT_FILES.values() for component, files in layout.items()}


def test_a_replica_has_the_hub_folders_layout_and_the_real_configs(replicas):
    for name, folder in replicas.items():
        for relative, config in layout_files(name).items():
            assert (folder / relative).is_file(), relative
        for component, files in WEIGHT_FILES[name].items():
            assert all((folder / component / file).is_file() for file in files), (component, files)
    unet = layout_files(SD2_INPAINTING)["unet/config.json"]
    assert unet["in_channels"] == 9 and unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert narrowed(unet, 16)["block_out_channels"] == [20, 40, 80, 80] and narrowed(unet, 16)["in_channels"] == 9


def test_realfill_loads_the_sd2_layout_from_its_fp32_safetensors_alone(replicas, pickle_opens):
    from realfill.method.sample import Sampler
    from realfill.method.tune import load_models

    folder = replicas[SD2_INPAINTING]
    models = load_models(folder)
    sampler = Sampler(folder, device="cpu")
    for component in ("unet", "vae", "text_encoder"):
        assert_weights_are_the_fp32_safetensors(folder, component, getattr(models, component))
        assert_weights_are_the_fp32_safetensors(folder, component, getattr(sampler.pipeline, component))
    assert pickle_opens == []
    assert sampler.pipeline.feature_extractor is None, "the feature extractor only feeds the safety checker"


def test_realfill_loads_the_paint_by_example_layout_from_its_fp32_safetensors_alone(replicas, pickle_opens):
    from realfill.method.sample import Sampler

    folder = replicas[PAINT_BY_EXAMPLE]
    sampler = Sampler(folder, device="cpu")
    assert sampler.by_example
    for component in ("unet", "vae", "image_encoder"):
        assert_weights_are_the_fp32_safetensors(folder, component, getattr(sampler.pipeline, component))
    assert pickle_opens == []


def test_every_key_of_the_real_configs_reaches_the_loaded_models(replicas):
    """A key the real files have that the loaded models ignore (a library release that drops or renames it, a
    refreshed config with a new one) fails here, naming the file and the key."""
    from transformers import CLIPTextConfig, CLIPVisionConfig

    from realfill.method.sample import Sampler, make_scheduler
    from realfill.method.tune import load_models

    sd2, pbe = replicas[SD2_INPAINTING], replicas[PAINT_BY_EXAMPLE]
    models, sampler, example = load_models(sd2), Sampler(sd2, device="cpu"), Sampler(pbe, device="cpu")
    schedulers = [models.noise_scheduler] + [make_scheduler(kind, config) for kind in ("ddpm", "dpm")
                                             for config in (sampler.base_scheduler_config,
                                                            example.base_scheduler_config)]
    processor = example.pipeline.feature_extractor
    tokenizer = models.tokenizer
    loaded = {
        (SD2_INPAINTING, "unet/config.json"): [models.unet.config, sampler.pipeline.unet.config],
        (SD2_INPAINTING, "vae/config.json"): [models.vae.config, sampler.pipeline.vae.config],
        (PAINT_BY_EXAMPLE, "unet/config.json"): [example.pipeline.unet.config],
        (PAINT_BY_EXAMPLE, "vae/config.json"): [example.pipeline.vae.config],
    }
    problems = []
    for (name, file), configs in loaded.items():
        for config in configs:
            declared = narrowed(layout_files(name)[file], WIDTHS[name])
            problems += [f"{name}/{file}: {p}" for p in unsupported(declared, config, set(config))]
    for name in (SD2_INPAINTING, PAINT_BY_EXAMPLE):
        declared = layout_files(name)["scheduler/scheduler_config.json"]
        for scheduler in schedulers:
            problems += [f"{name}/scheduler ({type(scheduler).__name__}): {p}" for p in
                         unsupported(declared, scheduler.config, set(scheduler.config), PNDM_ONLY)]
    for name, file, config, config_class in (
            (SD2_INPAINTING, "text_encoder/config.json", models.text_encoder.config, CLIPTextConfig),
            (SD2_INPAINTING, "text_encoder/config.json", sampler.pipeline.text_encoder.config, CLIPTextConfig),
            (PAINT_BY_EXAMPLE, "image_encoder/config.json", example.pipeline.image_encoder.config, CLIPVisionConfig)):
        declared = narrowed(layout_files(name)[file], WIDTHS[name])
        fields = {field.name for field in dataclasses.fields(config_class)}
        values = {key: getattr(config, key, None) for key in declared}
        problems += [f"{name}/{file}: {p}" for p in unsupported(declared, values, fields)]
    declared = layout_files(PAINT_BY_EXAMPLE)["feature_extractor/preprocessor_config.json"]
    problems += [f"{PAINT_BY_EXAMPLE}/feature_extractor: {p}" for p in
                 unsupported(declared, vars(processor), set(vars(processor)))]
    declared = layout_files(SD2_INPAINTING)["tokenizer/tokenizer_config.json"]
    values = {key: (getattr(tokenizer, key) if hasattr(tokenizer, key) else None) for key in declared}
    values.update({key: value for key, value in declared.items()  # an added token's text is what it sets
                   if isinstance(value, dict) and str(values[key]) == value["content"]})
    problems += [f"{SD2_INPAINTING}/tokenizer: {p}" for p in
                 unsupported(declared, values, {key for key in declared if hasattr(tokenizer, key)})]
    assert problems == [], "\n".join(problems)
    assert tokenizer("A Photo").input_ids == tokenizer("a photo").input_ids, "do_lower_case holds"
    assert unsupported({"new_key": 1, "dropout": 0.1}, {}, set()) == ["new_key (unsupported)",
                                                                     "dropout=0.1 (dropped by the library)"]


def test_a_replica_fills_a_scene_from_its_folder_and_from_an_s3_copy(tmp_path, replicas, s3, example_scene):
    """`--base_model FOLDER` and `--base_model s3://...` as a user passes them: the copy holds only what realfill
    loads (no pickle, fp16 variant or single-file checkpoint is downloaded), and both fill the scene alike."""
    from realfill.cli import main
    from realfill.data import manifest
    from realfill.method.models import resolve_model

    folder = replicas[SD2_INPAINTING]
    s3.put(str(folder), "realfill-test/models/sd2-inpainting", recursive=True)
    flags = ["--device", "cpu", "--tune.resolution", "64", "--sample.resolution", "64", "--tune.train_steps", "1",
             "--tune.batch_size", "1", "--sample.num_samples", "1", "--sample.steps", "2", "--quiet", "--no_report"]
    images = []
    for name, model in (("folder", str(folder)), ("s3", "s3://realfill-test/models/sd2-inpainting")):
        out = tmp_path / name
        assert main(["fill", example_scene, "--out", str(out), "--base_model", model, *flags]) == 0
        (row,) = manifest.read_table(str(out), "samples").to_pylist()
        assert row["status"] == "ok"
        images.append(np.asarray(Image.open(row["uri"])))
    np.testing.assert_array_equal(images[0], images[1])
    copy = resolve_model("s3://realfill-test/models/sd2-inpainting")
    copied = sorted(path.relative_to(copy).as_posix() for path in copy.rglob("*") if path.is_file())
    assert not [path for path in copied if path.endswith((".bin", ".ckpt")) or ".fp16." in path or "/" not in path
                and path != "model_index.json"], copied
    assert "unet/diffusion_pytorch_model.safetensors" in copied and "tokenizer/vocab.json" in copied


def test_paint_by_example_fills_a_scene_from_a_replica_folder(tmp_path, replicas, example_scene):
    from realfill.cli import main
    from realfill.data import manifest

    out = tmp_path / "pbe"
    assert main(["fill", example_scene, "--out", str(out), "--method", "paint-by-example", "--example_model",
                 str(replicas[PAINT_BY_EXAMPLE]), "--device", "cpu", "--sample.resolution", "64",
                 "--sample.num_samples", "1", "--sample.steps", "2", "--quiet", "--no_report"]) == 0
    (row,) = manifest.read_table(str(out), "samples").to_pylist()
    assert row["status"] == "ok" and np.asarray(Image.open(row["uri"])).ndim == 3


def test_refresh_takes_every_config_of_a_hub_snapshot_and_no_vocabulary(tmp_path, replicas, monkeypatch):
    """`--refresh REVISION` replaces the vendored files with a snapshot's JSON files (here: a replica standing
    in for the hub's snapshot at that revision)."""
    import huggingface_hub

    import replicas as module

    asked = []

    def snapshot_download(repo_id, revision, allow_patterns, ignore_patterns):
        asked.append((repo_id, revision))
        return str(replicas[{v: k for k, v in module.HUB_IDS.items()}[repo_id]])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    module.refresh("0123abc", layouts=tmp_path)
    assert asked == [(repo, "0123abc") for repo in module.HUB_IDS.values()]
    for name in module.HUB_IDS:
        written = sorted(path.relative_to(tmp_path / name).as_posix() for path in (tmp_path / name).rglob("*"))
        assert [path for path in written if path.endswith(".json")] == sorted(layout_files(name)), name
        assert not [path for path in written if path.endswith((".safetensors", ".bin", ".txt"))], name
