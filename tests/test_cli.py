import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import write_scene
from realfill.cli import fill_config, main, parse
from realfill.data import manifest, storage
from realfill.data.scene import load_scene
from realfill.method.masks import composite_alpha
from realfill.selection.rank import NO_EVIDENCE_ANYWHERE, NO_EVIDENCE_TEXT

TINY_FLAGS = ["--base_model", "tiny", "--device", "cpu", "--tune.resolution", "64", "--sample.resolution", "64",
              "--tune.train_steps", "2", "--tune.batch_size", "2", "--sample.num_samples", "3", "--sample.steps", "2",
              "--quiet"]


def test_fill_end_to_end_on_real_scenes(tmp_path, scenes_root):
    out = tmp_path / "out"
    for name in ("realfill_flowerwoman", "opensfm_berlin_dom"):  # RGBA with white hole; RGB with black hole
        assert main(["fill", str(scenes_root / name), "--out", str(out), *TINY_FLAGS]) == 0

    samples = pq.read_table(out / "manifest" / "samples").to_pylist()
    scenes = pq.read_table(out / "manifest" / "scenes").to_pylist()
    assert sorted(row["scene_id"] for row in scenes) == ["opensfm_berlin_dom", "realfill_flowerwoman"]
    assert all(row["status"] == "ok" and row["error"] is None and row["num_samples"] == 3 for row in scenes)
    assert len(samples) == 6 and {row["seed"] for row in samples} == {0, 1, 2}
    for row in samples:
        scene = load_scene(str(scenes_root / row["scene_id"]))
        image = np.asarray(Image.open(row["uri"]))
        assert image.shape == scene.target.shape == (512, 512, 3)
        untouched = composite_alpha(scene.mask, 4, 6) == 0
        np.testing.assert_array_equal(image[untouched], scene.target[untouched])
    adapter = scenes[0]["adapter_uri"]
    assert (tmp_path / "out" / "adapters").exists() and adapter.startswith(str(out))
    for scene in scenes:
        own = sorted((row for row in samples if row["scene_id"] == scene["scene_id"]), key=lambda r: r["rank"])
        assert [row["rank"] for row in own][0] == 1 and all(row["matches"] >= 0 for row in own)
        assert own[0]["score"] >= own[-1]["score"]
        # a random-weight model paints noise: the row says whether anything matched the references
        if any(row["score"] > 0 for row in own):
            assert scene["selection"] == "geometry"
            assert sum(row["selected"] for row in own) == 1  # top 25% of 3, at least one
            assert own[0]["selected"] and scene["best_uri"] == own[0]["uri"]
        else:
            assert scene["selection"] == "no evidence" and scene["best_uri"] is None
            assert not any(row["selected"] for row in own)


def test_eval_reports_all_and_selected_beside_the_paper(tmp_path, scenes_root, tiny_backbones, capsys):
    out = str(tmp_path / "out")
    assert main(["fill", str(scenes_root / "oxford_graffiti"), "--out", out, *TINY_FLAGS, "--rank.keep", "2"]) == 0
    capsys.readouterr()
    assert main(["eval", out, "--eval.dino_model", str(tiny_backbones / "dino"), "--eval.clip_model",
                 str(tiny_backbones / "clip"), "--quiet"]) == 0
    report = capsys.readouterr().out
    # a random-weight model paints noise, which matches nothing: no sample is selected
    assert "| metric | all (3) | selected (0) | paper RealFill |" in report
    assert "| psnr ↑ |" in report and "14.78" in report and "dreamsim: unavailable" in report
    metrics = ds.dataset(tmp_path / "out" / "metrics.parquet", format="parquet").to_table().to_pylist()
    assert len(metrics) == 3 and sum(row["selected"] for row in metrics) == 0
    assert all(0 < row["psnr"] < 60 and -1 <= row["ssim"] <= 1 and row["dino"] is not None for row in metrics)


def test_bad_scene_exits_non_zero_with_one_line(tmp_path, capsys):
    scene = write_scene(tmp_path / "broken")
    Image.new("L", (96, 64), 0).save(scene / "target" / "mask.png")
    assert main(["fill", str(scene), "--out", str(tmp_path / "out"), *TINY_FLAGS]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "mask.png" in error and "empty" in error
    rows = manifest.read_table(str(tmp_path / "out"), "scenes").to_pylist()
    assert rows[0]["status"] == "failed" and "mask.png" in rows[0]["error"]


def test_eval_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_config_file_then_flags(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("tune.train_steps: 7\nsample.resolution: 128\nfast: true\ntune:\n  lora_rank: 4\n"
                           "sample:\n  steps: 30\n")
    config = fill_config(parse(["fill", "scene", "--out", "o", "--config", str(config_file),
                                "--tune.resolution", "64", "--sample.resolution", "64"])[1])
    assert config.tune.train_steps == 7 and config.tune.lora_rank == 4
    assert config.tune.resolution == config.sample.resolution == 64, "explicit flags win over the file"
    assert (config.sample.scheduler, config.sample.steps) == ("dpm", 30), "the file wins over the preset"
    config_file.write_text('{"tune.train_stepz": 7}')
    with pytest.raises(ValueError, match="tune.train_stepz"):
        parse(["fill", "s", "--out", "o", "--config", str(config_file)])


def test_fill_writes_to_a_memory_uri(tmp_path):
    scene = write_scene(tmp_path / "scene", refs=1)
    assert main(["fill", str(scene), "--out", "memory://runs/one", *TINY_FLAGS, "--no_report"]) == 0
    samples = manifest.read_table("memory://runs/one", "samples")
    assert samples.num_rows == 3 and all(uri.startswith("memory://") for uri in samples.column("uri").to_pylist())
    assert not storage.exists("memory://runs/one/report.html"), "--no_report"


def test_the_readme_demo_runs(tmp_path):
    """`make demo` as a newcomer runs it (minus the install): example scenes, `realfill run`, `realfill eval`."""
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(["make", "-o", ".venv/.installed", "-o", "torch", "demo",
                             f"BIN={Path(sys.executable).parent}", f"RUNS={tmp_path}"],
                            cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "done: 2" in result.stdout and "| psnr ↑ |" in result.stdout
    assert f"report: {tmp_path / 'example-stitch' / 'report.html'}" in result.stdout
    samples = manifest.read_table(str(tmp_path / "example"), "samples").to_pylist()
    assert len(samples) == 16 and sum(row["selected"] for row in samples) == 0
    assert result.stdout.count("no evidence ") == 2, "a random model's noise matches nothing, and the run says so"
    assert NO_EVIDENCE_ANYWHERE in result.stdout
    assert (tmp_path / "example" / "metrics.parquet").exists()


def test_the_library_never_imports_ray():
    """realfill/ runs without Ray: only `realfill run` reaches for the pipeline package."""
    code = ("import pkgutil, importlib, sys, realfill\n"
            "for module in pkgutil.walk_packages(realfill.__path__, 'realfill.'):\n"
            "    importlib.import_module(module.name)\n"
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_flags_are_the_config_fields_one_name_each(capsys):
    """Every field is a flag named by its path, typed from its annotation (a choice field takes its choices)."""
    for flag in ("--sample.scheduler", "--geometry.features", "--device"):
        assert main(["fill", "scene", "--out", "o", flag, "nope"]) == 2
        error = capsys.readouterr().err
        assert len(error.strip().splitlines()) == 1 and "nope" in error and flag.lstrip("-") in error
    config = fill_config(parse(["fill", "s", "--out", "o", "--sample.scheduler", "dpm", "--geometry.features", "orb",
                                "--device", "cpu", "--tune.unet_lora_targets", "[to_q, to_v]"])[1])
    assert (config.sample.scheduler, config.geometry.features, config.device) == ("dpm", "orb", "cpu")
    assert config.tune.unet_lora_targets == ("to_q", "to_v")
    with pytest.raises(SystemExit):
        main(["fill", "--help"])
    shown = capsys.readouterr().out
    for field in ("--tune.train_steps", "--sample.steps", "--rank.keep_fraction", "--max_megapixels"):
        assert field in shown
    assert "Optimizer steps. (type: an integer, default: 2000)" in " ".join(shown.split()), "from the dataclass"


@pytest.mark.parametrize("argv,line", [
    (["fill", "s", "--out", "o", "--method", "Stitch"],
     "--method must be one of realfill, stitch, sd-inpaint, paint-by-example; got Stitch"),
    (["fill", "s", "--out", "o", "--rank.keep", "1.5"], "--rank.keep must be an integer or null; got 1.5"),
    (["fill", "s", "--out", "o", "--base-model", "tiny"],
     "unrecognized argument --base-model; did you mean --base_model?"),
    (["run", "s", "--out", "o", "--max-in-flight", "2"],
     "unrecognized argument --max-in-flight; did you mean --max_in_flight?"),
    (["fill", "s"], "--out is required"),
    (["fill", "--out", "o"], "SCENE is required"),
    (["flil", "s"], "unknown command 'flil'; did you mean fill? (commands: fill, run, library, sweep, rank, eval, "
                    "report, tiny-model, example)"),
])
def test_cli_errors_are_said_for_people(argv, line, capsys):
    """One line naming the flag as it is typed, its type in words, and the flag meant when one was misspelt."""
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"realfill: {line}"]


def test_help_says_what_the_tool_does_and_types_in_words(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = " ".join(capsys.readouterr().out.split())
    assert "complete a photo's missing region with what was really there" in top and "typed function" not in top
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--fast fast sampling preset: DPM-Solver++ in 25 steps rather than DDPM in 200 (--sample.scheduler dpm " \
           "--sample.steps 25)" in text
    assert "(type: a number or null, default: null)" in text and "(type: one of ddpm, dpm, default: ddpm)" in text
    for python in ("typing.", "Literal[", "| null", "NoneType", "samplers_wanted", "`plan`", "{'"):
        assert python not in text, python


def test_relative_paths_are_recorded_absolute_and_the_last_lines_say_where(tmp_path, monkeypatch, capsys,
                                                                           tiny_backbones):
    """A run started with relative paths is evaluated from another directory."""
    write_scene(tmp_path / "work" / "scenes" / "rel")
    monkeypatch.chdir(tmp_path / "work")
    assert main(["fill", "scenes/rel", "--out", "out", *TINY_FLAGS]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-5:]
    out = tmp_path / "work" / "out"
    assert last[4] == f"report: {out / 'report.html'}" and (out / "report.html").is_file()
    assert last[0] == f"samples table (one row per sample): {out / 'manifest' / 'samples'}/"
    assert last[1] == f"scenes table (one row per scene):   {out / 'manifest' / 'scenes'}/"
    assert last[3].startswith(f"run log: {out / 'logs' / 'run-'}") and Path(last[3].split(": ", 1)[1]).is_file()
    scene = manifest.read_table(str(out), "scenes").to_pylist()[0]
    assert last[2] == f"no evidence: {NO_EVIDENCE_TEXT}" and scene["best_uri"] is None
    assert scene["selection"] == "no evidence"
    assert scene["scene_uri"] == str(tmp_path / "work" / "scenes" / "rel")
    assert scene["adapter_uri"].startswith(str(out))
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(out), "--eval.dino_model", str(tiny_backbones / "dino"), "--eval.clip_model",
                 str(tiny_backbones / "clip"), "--quiet"]) == 0
    assert "| psnr ↑ |" in capsys.readouterr().out


@pytest.mark.parametrize("grid,variant,words", [
    ("grid:\n  sample.stepz: [1, 2]\n", None, "variant 'stepz=1': unknown field 'sample.stepz'"),
    ("grid:\n  seed: 3\n", None, "grid 'seed' must be a non-empty list"),
    ("variants:\n  a: {}\n", "a:--seed 1", "--variant 'a:--seed 1': needs a name of its own"),
    (None, ":--seed 1", "needs a name of its own before ':'"),
    (None, None, "a sweep needs variants"),
])
def test_bad_sweep_variants_stop_before_any_work_with_one_line(tmp_path, capsys, grid, variant, words):
    argv = ["sweep", str(tmp_path / "scenes"), "--out", str(tmp_path / "out")]
    if grid is not None:
        (tmp_path / "grid.yaml").write_text(grid)
        argv += ["--grid", str(tmp_path / "grid.yaml")]
    if variant is not None:
        argv += ["--variant", variant]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and words in error, error
    if grid is not None and variant is None:
        assert str(tmp_path / "grid.yaml") in error, "the line names the grid file"
    assert not (tmp_path / "out").exists()


def manifest_rows(out: Path) -> tuple[list[dict], dict]:
    samples = manifest.read_table(str(out), "samples").to_pylist()
    (scene,) = manifest.read_table(str(out), "scenes").to_pylist()
    return sorted(samples, key=lambda row: row["seed"]), scene


def test_stitch_fills_from_geometry_alone_and_is_selected_by_it(tmp_path, example_scene, capsys):
    out = tmp_path / "stitch"
    assert main(["fill", example_scene, "--out", str(out), "--method", "stitch", *TINY_FLAGS]) == 0
    printed = capsys.readouterr().out
    assert "1 samples (method stitch) in" in printed
    samples, scene = manifest_rows(out)
    assert len(samples) == 1 and samples[0]["seed"] == 0, "one image, whatever num_samples says"
    assert scene["selection"] == "geometry" and scene["best_uri"] == samples[0]["uri"]
    assert scene["adapter_uri"] is None and scene["tune_s"] is None and not (out / "adapters").exists()
    assert samples[0]["uri"].endswith("stitch.png") and samples[0]["selected"] and samples[0]["score"] > 0
    image, target = np.asarray(Image.open(samples[0]["uri"])), load_scene(example_scene)
    np.testing.assert_array_equal(image[~target.mask], target.target[~target.mask])
    assert (samples[0]["width"], samples[0]["height"]) == (image.shape[1], image.shape[0])
    support = Image.open(samples[0]["support_uri"])
    assert support.mode == "L" and support.size == (image.shape[1], image.shape[0])
    vouched = np.asarray(support)
    assert set(np.unique(vouched)) == {0, 255} and not vouched[~target.mask].any(), "255 only inside the fill"
    assert samples[0]["support"] == pytest.approx((vouched[target.mask] == 255).mean(), abs=1e-6)
    assert 0 < scene["best_support"] == samples[0]["support"] < 1
    assert f"(selection by geometry; {scene['best_support']:.0%} of its fill supported)" in printed
    page = (out / "report" / "scenes" / f"{scene['scene_id']}.html").read_text()
    assert f"support {100 * samples[0]['support']:.0f}%" in page and 'id="show-invented"' in page
    shown = re.search(r'<figure class="invented">\s*<a href="[^"]+"><img src="([^"]+)"', page).group(1)
    tinted = np.asarray(Image.open(out / "report" / "scenes" / shown)).astype(int)
    assert ((tinted[..., 1] < tinted[..., 0] - 60) & (tinted[..., 1] < tinted[..., 2] - 60)).any(), \
        "what the references do not vouch for is tinted magenta"


@pytest.mark.parametrize("method", ["sd-inpaint", "paint-by-example"])
def test_untuned_baselines_sample_without_an_adapter(tmp_path, example_scene, method):
    out = tmp_path / method
    assert main(["fill", example_scene, "--out", str(out), "--method", method, "--example_model", "tiny",
                 *TINY_FLAGS]) == 0
    samples, scene = manifest_rows(out)
    assert len(samples) == 3 and all(row["status"] == "ok" and row["rank"] >= 1 for row in samples)
    assert scene["adapter_uri"] is None and scene["tune_s"] is None and not (out / "adapters").exists()
    target = load_scene(example_scene)
    for row in samples:
        image = np.asarray(Image.open(row["uri"]))
        untouched = composite_alpha(target.mask, 4, 6) == 0
        np.testing.assert_array_equal(image[untouched], target.target[untouched])
    assert len({np.asarray(Image.open(row["uri"])).tobytes() for row in samples}) == 3, "one image per seed"


def test_sd_inpaint_samples_with_its_prompt(tmp_path, example_scene):
    images = []
    for prompt in ("a brick wall", "a wooden door"):
        out = tmp_path / prompt.replace(" ", "-")
        assert main(["fill", example_scene, "--out", str(out), "--method", "sd-inpaint", "--prompt", prompt,
                     *TINY_FLAGS]) == 0
        images.append(np.asarray(Image.open(manifest_rows(out)[0][0]["uri"])))
    assert not np.array_equal(*images), "the prompt conditions the model"


def test_init_stitch_starts_sampling_from_geometry_and_trains_on_it(tmp_path, example_scene):
    runs = {}
    for name, flags in (("noise", []), ("init", ["--init", "stitch", "--init_strength", "0.5"]),
                        ("view", ["--init", "stitch", "--init_strength", "0.5", "--tune.stitch_view_weight", "0.5"])):
        out = tmp_path / name
        assert main(["fill", example_scene, "--out", str(out), *TINY_FLAGS, *flags]) == 0
        samples, scene = manifest_rows(out)
        runs[name] = (np.asarray(Image.open(samples[0]["uri"])), scene["adapter_uri"])
    assert Path(runs["init"][1]).name == Path(runs["noise"][1]).name, "init alone trains the same adapter"
    assert Path(runs["view"][1]).name != Path(runs["init"][1]).name, "the stitch view is part of the training"
    assert not np.array_equal(runs["init"][0], runs["noise"][0]), "sampling starts from the stitch result"
    assert list((tmp_path / "init" / "samples").glob("*/stitch.png")), "the stitch result is kept with the samples"


class Preempted(BaseException):
    """Stands for the machine going away: nothing catches it."""


def test_the_half_precision_recipe_runs_end_to_end_on_a_cpu(tmp_path, example_scene, monkeypatch):
    """The GPU recipe's precision path, rehearsed on a CPU: bf16 training with gradient checkpointing and
    checkpoints, preempted after its first checkpoint and resumed, bf16 sampling, ranking. The resumed run
    makes the uninterrupted run's adapter and images, byte for byte."""
    import realfill.method.tune as tune_module
    from realfill.method.adapter import read_adapter_info

    flags = [*TINY_FLAGS, "--tune.train_steps", "4", "--tune.checkpoint_every", "2", "--tune.mixed_precision",
             "bf16", "--tune.gradient_checkpointing", "on", "--sample.precision", "bf16"]
    assert main(["fill", example_scene, "--out", str(tmp_path / "straight"), *flags]) == 0
    saves, save = [], tune_module.save_checkpoint

    def save_then_preempt(*args, **kwargs):
        save(*args, **kwargs)
        saves.append(args[0])
        raise Preempted

    monkeypatch.setattr(tune_module, "save_checkpoint", save_then_preempt)
    with pytest.raises(Preempted):
        main(["fill", example_scene, "--out", str(tmp_path / "resumed"), *flags])
    monkeypatch.setattr(tune_module, "save_checkpoint", save)
    assert main(["fill", example_scene, "--out", str(tmp_path / "resumed"), *flags]) == 0
    assert len(saves) == 1

    runs = {name: manifest_rows(tmp_path / name) for name in ("straight", "resumed")}
    infos = {name: read_adapter_info(scene["adapter_uri"]) for name, (_, scene) in runs.items()}
    assert infos["straight"].mixed_precision == "bf16" and infos["straight"].gradient_checkpointing
    assert infos["resumed"].losses == infos["straight"].losses and all(np.isfinite(infos["resumed"].losses))
    for name, (samples, scene) in runs.items():
        assert scene["status"] == "ok" and scene["num_samples"] == 3
        assert all(row["status"] == "ok" and row["rank"] >= 1 and row["matches"] >= 0 for row in samples)
    ranking = {name: [(row["rank"], row["score"], row["selected"]) for row in samples]
               for name, (samples, _) in runs.items()}
    assert ranking["resumed"] == ranking["straight"]
    images = {name: [Image.open(row["uri"]).tobytes() for row in samples] for name, (samples, _) in runs.items()}
    assert images["resumed"] == images["straight"]
