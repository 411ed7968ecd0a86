import json

import numpy as np
import pytest
from PIL import Image

from conftest import png_header, write_scene
from realfill.cli import main
from realfill.config import RankConfig
from realfill.decoys import make_decoys
from realfill.rank import index_scene, rank_scores, score_candidate
from realfill.scene import list_scenes, load_scene

CONFIG = RankConfig()


@pytest.fixture(scope="module")
def gt_scenes(scenes_root):
    scenes = [load_scene(uri) for uri in list_scenes(str(scenes_root))]
    with_gt = [scene for scene in scenes if scene.gt is not None]
    assert len(with_gt) == 8
    return with_gt


def test_true_fill_ranks_strictly_first_against_every_decoy(gt_scenes):
    misses = []
    for position, scene in enumerate(gt_scenes):
        other = gt_scenes[(position + 1) % len(gt_scenes)].gt
        index = index_scene(scene, CONFIG)
        decoys = make_decoys(scene, other)
        scores = {name: score_candidate(index, image, CONFIG).score for name, image in decoys.items()}
        best_decoy = max(score for name, score in scores.items() if name != "true")
        if not scores["true"] > best_decoy:
            misses.append(f"{scene.scene_id}: true {scores['true']:.2f} vs best decoy {best_decoy:.2f} {scores}")
    assert not misses, "\n".join(misses)


def test_shifted_fill_matches_but_scores_low(gt_scenes):
    """The point of using the known geometry: plain counting nearly ties a shifted fill, ours does not."""
    scene = next(s for s in gt_scenes if s.scene_id == "opensfm_berlin_dom")
    decoys = make_decoys(scene, gt_scenes[0].gt)
    index = index_scene(scene, CONFIG)
    true, shifted = (score_candidate(index, decoys[name], CONFIG) for name in ("true", "shifted"))
    assert shifted.matches > 0.5 * true.matches
    assert shifted.score < 0.2 * true.score


@pytest.mark.parametrize("features", ["orb", "akaze"])
def test_other_feature_types_run(gt_scenes, features):
    scene = gt_scenes[0]
    config = RankConfig(features=features)
    index = index_scene(scene, config)
    true = score_candidate(index, scene.gt, config)
    hole = score_candidate(index, scene.target, config)
    assert true.matches > 0 and true.score > hole.score


def test_degenerate_inputs_score_zero_without_raising(tmp_path):
    scene = load_scene(str(write_scene(tmp_path / "flat", refs=1)))
    flat_ref = scene.refs[0] * 0 + 128
    scene.refs = [flat_ref]  # a reference with no features at all
    index = index_scene(scene, CONFIG)
    assert index.known == [None]
    for candidate in (np.zeros_like(scene.target), np.full_like(scene.target, 255), scene.gt):
        result = score_candidate(index, candidate, CONFIG)
        assert (result.matches, result.score) == (0, 0.0)
    with pytest.raises(ValueError, match="candidate is"):
        score_candidate(index, np.zeros((10, 10, 3), np.uint8), CONFIG)


def test_rank_ties_share_the_better_rank():
    from realfill.rank import Score

    assert rank_scores([Score(1, 2.0), Score(5, 7.5), Score(1, 2.0), Score(0, 0.0)]) == [2, 1, 2, 4]


def test_rank_command_json_and_table(scenes_root, tmp_path, capsys):
    scene = scenes_root / "oxford_graffiti"
    loaded = load_scene(str(scene))
    blurred = tmp_path / "blurred.png"
    Image.fromarray(make_decoys(loaded, loaded.gt)["blurred"]).save(blurred)
    images = [str(blurred), str(scene / "target" / "gt.png")]
    assert main(["rank", str(scene), *images, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["rank"] for line in lines] == [1, 2]
    assert lines[0]["path"].endswith("gt.png") and lines[0]["matches"] > lines[1]["matches"]
    assert set(lines[0]) >= {"path", "matches", "score", "rank"}
    assert main(["rank", str(scene), *images]) == 0
    table = capsys.readouterr().out
    assert "rank" in table and "gt.png" in table


def test_rank_command_rejects_bad_input(scenes_root, tmp_path, capsys):
    scene = scenes_root / "oxford_graffiti"
    (tmp_path / "broken.png").write_bytes(b"nope")
    assert main(["rank", str(scene), str(tmp_path / "broken.png")]) != 0
    assert "broken.png: not an image" in capsys.readouterr().err
    (tmp_path / "bomb.png").write_bytes(png_header(30000, 30000))
    assert main(["rank", str(scene), str(tmp_path / "bomb.png")]) == 2
    error = capsys.readouterr().err
    assert "bomb.png: too large to decode safely" in error and "Traceback" not in error
    Image.new("RGB", (20, 20)).save(tmp_path / "small.png")
    assert main(["rank", str(scene), str(tmp_path / "small.png")]) != 0
    assert "small.png: candidate is 20x20" in capsys.readouterr().err
    assert main(["rank", str(tmp_path / "no-scene"), str(tmp_path / "small.png")]) != 0
    assert "target.png: file not found" in capsys.readouterr().err
