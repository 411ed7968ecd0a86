"""The run report: written at the end of every run, opened in a real browser, and built at scale from rows."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import blank, browse_report, needs_browser, write_scene
from realfill.cli import main
from realfill.config import ReportConfig
from realfill.data import storage
from realfill.data.records import SampleRow
from realfill.evaluation.report import pager_pages, write_report
from realfill.example import write_examples
from realfill.selection.rank import NO_EVIDENCE_ANYWHERE
from synthetic import synthetic_run

RUN_FLAGS = ["--base_model", "tiny", "--device", "cpu", "--tune.resolution", "64", "--sample.resolution", "64",
             "--tune.train_steps", "2", "--tune.batch_size", "2", "--sample.num_samples", "4", "--sample.steps", "2",
             "--quiet"]


def image_sources(page: Path) -> list[Path]:
    """The files a page's <img> tags load, resolved from the page's folder."""
    return [(page.parent / source).resolve() for source in re.findall(r'<img src="([^"]+)"', page.read_text())]


@needs_browser
def test_a_tiny_model_run_ends_with_a_report_that_renders_in_chromium(tmp_path, tiny_backbones):
    """Two example scenes and a broken one through `realfill run` with the random-weight model, then `realfill
    eval`: the report says plainly that nothing had evidence, shows the failure, and, moved to another folder
    (its links are relative), every page opens without a console error, every image loads, nothing is blank."""
    scenes = tmp_path / "scenes"
    write_examples(str(scenes))
    (write_scene(scenes / "broken") / "target" / "mask.png").write_bytes(b"")
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "realfill.cli", "run", str(scenes), "--out", str(out), *RUN_FLAGS],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr  # the broken scene failed, the others completed
    assert NO_EVIDENCE_ANYWHERE in result.stdout and result.stdout.strip().endswith(f"report: {out}/report.html")
    assert main(["eval", str(out), "--quiet", "--eval.dino_model", str(tiny_backbones / "dino"),
                 "--eval.clip_model", str(tiny_backbones / "clip")]) == 0, "eval rewrites the report with the metrics"
    assert len(list((out / "report" / "sheets").glob("*.png"))) == 3, "a contact sheet per scene"
    assert list((out / "report" / "plots").glob("metric-vs-rank-*.png")), "metrics make the metric-vs-rank plot"
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(out, moved)
    pages = browse_report(moved)
    assert set(pages) == {"report.html", "report/scenes/wall.html", "report/scenes/wall-outpaint.html",
                          "report/scenes/broken.html"}
    for name, page in pages.items():
        assert not page["problems"] and not page["broken"], (name, page["problems"], page["broken"])
        assert page["images"] > 0 and not blank(page["screenshot"]), name
    index = pages["report.html"]["text"]
    assert NO_EVIDENCE_ANYWHERE.capitalize() in index and "mask.png: empty file (0 bytes)" in index
    assert "psnr" in index and "3\nscenes" in index
    assert "No evidence:" in pages["report/scenes/wall.html"]["text"]
    assert "Failed:" in pages["report/scenes/broken.html"]["text"]
    sheet = Image.open(next((moved / "report" / "sheets").glob("wall-*.png")))
    assert sheet.width > 3 * sheet.height, "refs | target + mask | a tile saying there is no evidence"


def test_the_pager_links_as_many_pages_at_any_size():
    """An index page links the first page, the last, and three each side of its own: at 2,000 pages as at 9, so
    an index page (and the report's cost per scene) does not grow with the run."""
    assert pager_pages(1, 4) == [1, 2, 3, 4] and pager_pages(5, 9) == list(range(1, 10))
    assert pager_pages(1000, 2000) == [1, None, 997, 998, 999, 1000, 1001, 1002, 1003, None, 2000]
    assert pager_pages(2, 2000) == [1, 2, 3, 4, 5, None, 2000]
    assert max(len(pager_pages(number, 2000)) for number in range(1, 2001)) == 11


def test_a_report_of_200_scenes_pages_its_index(tmp_path):
    """Synthetic rows of 200 scenes (no model): four small index pages, a page per scene, every failure listed;
    a second report makes no thumbnail again, and a changed image remakes only its own."""
    out = tmp_path / "big"
    synthetic_run(str(out), 200)
    report = write_report(str(out))
    assert (report.scenes, report.pages) == (200, 4) and report.thumbnails_made == 195 * 7 + 5 * 3
    indexes = [out / "report.html", *(out / "report" / f"index-{number}.html" for number in (2, 3, 4))]
    assert all(path.stat().st_size < 64_000 for path in indexes), [path.stat().st_size for path in indexes]
    assert len(list((out / "report" / "scenes").glob("*.html"))) == 200
    text = (out / "report.html").read_text()
    assert text.count('class="card"') == 50 and 'href="report/index-4.html"' in text
    assert "5 scene(s) without evidence" in text and "<h2>Failures</h2>" in text
    assert all(f'scene-{index:04d}.html">scene-{index:04d}</a></td><td class="error">' in text
               for index in (39, 79, 119, 159, 199)), "every failure, with its message, on the first page"
    for page in [*indexes, *(out / "report" / "scenes").glob("scene-00[0-4]*.html")]:
        assert all(source.is_file() for source in image_sources(page)), page
    files = sorted(path for path in (out / "report").rglob("*") if path.is_file())

    again = write_report(str(out))
    assert (again.thumbnails_made, again.thumbnails_reused) == (0, report.thumbnails_made)
    assert sorted(path for path in (out / "report").rglob("*") if path.is_file()) == files

    changed = out / "samples" / "scene-0000" / "seed-00000.png"
    changed.write_bytes(storage.encode_png(np.full((64, 96, 3), 200, np.uint8)))
    third = write_report(str(out))
    assert third.thumbnails_made == 1, "only the changed image's thumbnail is made again"
    assert len(list((out / "report" / "thumbs").iterdir())) == report.thumbnails_made, "its old one is removed"


def test_missing_and_unreadable_images_are_named_not_shown_broken(tmp_path):
    out = tmp_path / "run"
    synthetic_run(str(out), 2)
    (out / "samples" / "scene-0000" / "seed-00000.png").unlink()
    (out / "samples" / "scene-0000" / "seed-00001.png").write_bytes(b"not a png")
    write_report(str(out))
    page = out / "report" / "scenes" / "scene-0000.html"
    text = page.read_text()
    assert "seed-00000.png: file not found" in text and "seed-00001.png: not an image" in text
    assert all(source.is_file() for source in image_sources(page))
    assert (out / "report" / "scenes" / "scene-0001.html").is_file()


def test_a_report_on_a_memory_uri_and_its_command(tmp_path, capsys):
    synthetic_run("memory://reports/run", 3)
    assert main(["report", "memory://reports/run", "--top", "2", "--per_page", "2"]) == 0
    assert "3 scenes, 2 index pages; thumbnails: 15 made, 0 reused" in capsys.readouterr().out
    assert storage.exists("memory://reports/run/report/index-2.html")
    assert storage.read_bytes("memory://reports/run/report/scenes/scene-0000.html").count(b"<figcaption>#") == 2
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"realfill: {tmp_path}: no manifest here; is this the --out of "
                                               f"a realfill fill, run or library?")


def test_report_settings_are_checked():
    with pytest.raises(ValueError, match="thumb_px must be in"):
        ReportConfig(thumb_px=8)


def test_a_best_score_near_zero_is_marked_weak_evidence_not_ok(tmp_path):
    from dataclasses import replace

    from realfill.config import FillConfig
    from realfill.data import manifest
    from realfill.data.records import SceneRow
    from realfill.selection.rank import WEAK_EVIDENCE
    from realfill.stages import Ranked, scene_row

    out = tmp_path / "out"
    synthetic_run(str(out), 2)
    samples, scenes = manifest.read_tables(str(out))
    row = next(row for row in manifest.rows_of(scenes, SceneRow) if row.scene_id == "scene-0000")
    rows = [replace(sample, score=0.2 if sample.rank == 1 else 0.0) for sample in manifest.rows_of(samples, SampleRow)
            if sample.scene_id == "scene-0000"]
    manifest.write_scene(str(out), rows, scene_row(row.scene_id, row.scene_uri, FillConfig(method="stitch"),
                                                   ranked=Ranked(rows, "geometry")))
    report = write_report(str(out))
    weak, strong = (view for view in sorted(report.views, key=lambda view: view.scene_id))
    assert (weak.status, strong.status) == ("weak evidence", "ok") and strong.best.score >= WEAK_EVIDENCE
    page = (out / "report" / "scenes" / "scene-0000.html").read_text()
    assert "Weak evidence: the best completion scores 0.2" in page and 'badge weak-evidence' in page
