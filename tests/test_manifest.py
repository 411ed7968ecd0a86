"""Manifests: one scene's record never costs another's, and a failure never replaces good rows."""

import pyarrow.dataset as ds

from realfill import manifest

KEY_A, KEY_B = "0123456789abcdef", "fedcba9876543210"


def rows(scene_id: str, run_key: str, status: str = "ok") -> tuple[list[dict], dict]:
    samples = [] if status != "ok" else [
        {"scene_id": scene_id, "seed": seed, "uri": f"/x/{seed}.png", "status": "ok", "error": None,
         "run_key": run_key, "width": 8, "height": 8, "matches": 1, "score": 1.0, "rank": 1, "selected": True}
        for seed in range(2)]
    scene = {"scene_id": scene_id, "scene_uri": f"/scenes/{scene_id}", "status": status,
             "error": None if status == "ok" else "boom", "run_key": run_key, "adapter_uri": None, "best_uri": None,
             "num_samples": len(samples), "tune_s": None, "sample_s": None, "rank_s": None, "config": "{}"}
    return samples, scene


def test_any_scene_id_gets_a_visible_bounded_part(tmp_path):
    out = str(tmp_path)
    ids = ["a" * 250, ".hidden", "_under", "x\\dup", "dup", "été"]
    for scene_id in ids:
        manifest.write_scene(out, *rows(scene_id, KEY_A))
    for table in ("samples", "scenes"):
        names = [path.name for path in (tmp_path / "manifest" / table).iterdir()]
        assert len(names) == len(ids) and all(len(name) < 120 and name[0] not in "._" for name in names)
    scenes = ds.dataset(tmp_path / "manifest" / "scenes", format="parquet").to_table().column("scene_id").to_pylist()
    assert sorted(scenes) == sorted(ids), "every id is visible to pyarrow.dataset, none replaces another"
    assert set(manifest.completed_scenes(out, KEY_A)) == set(ids)


def test_a_failure_never_replaces_good_rows(tmp_path):
    out = str(tmp_path)
    manifest.write_scene(out, *rows("s", KEY_A))
    manifest.write_scene(out, *rows("s", KEY_B, status="failed"))  # another config fails
    manifest.write_scene(out, *rows("s", KEY_A, status="failed"))  # the same config fails on a re-run
    scenes = manifest.read_table(out, "scenes").to_pylist()
    assert sorted((row["run_key"], row["status"]) for row in scenes) == [(KEY_A, "failed"), (KEY_A, "ok")]
    assert manifest.read_table(out, "samples").num_rows == 2 and set(manifest.completed_scenes(out, KEY_A)) == {"s"}
    manifest.write_scene(out, *rows("s", KEY_B))  # a good result of the new config replaces everything
    scenes = manifest.read_table(out, "scenes").to_pylist()
    assert [(row["run_key"], row["status"]) for row in scenes] == [(KEY_B, "ok")]
    assert set(manifest.read_table(out, "samples").column("run_key").to_pylist()) == {KEY_B}
