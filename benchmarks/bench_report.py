"""The run report at 200 and 1,000 scenes (synthetic rows, no model: `tests/synthetic.py`, 4 images
per scene, 2 references): a first report (every thumbnail made) vs a later one (every thumbnail reused), and
opening the first page in headless Chromium when the index is paged (50 scenes a page, the default) vs one
page of every scene.

    python benchmarks/bench_report.py          # needs a Chromium on PATH for the opening times
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from realfill.config import ReportConfig
from realfill.evaluation.report import write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import synthetic_run  # noqa: E402  (made-up inputs, shared with the tests)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def opening_seconds(page: Path, repeats: int = 3) -> float | None:
    """Seconds from navigation to the load event (every image that loads eagerly, loaded), best of repeats."""
    if CHROMIUM is None:
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        best = float("inf")
        for _ in range(repeats):
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            seconds, _ = timed(lambda: tab.goto(page.as_uri(), wait_until="load"))
            best = min(best, seconds)
            tab.close()
        browser.close()
    return best


def main() -> None:
    print("| scenes | first report | later report (thumbnails reused) | ratio | thumbnails | first page: paged / "
          "one page | opening: paged / one page |")
    print("|---|---|---|---|---|---|---|")
    for scenes in (200, 1000):
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "run"
            synthetic_run(str(out), scenes)
            cold, first = timed(lambda: write_report(str(out)))
            warm, _ = timed(lambda: write_report(str(out)))
            paged_bytes, paged_open = (out / "report.html").stat().st_size, opening_seconds(out / "report.html")
            write_report(str(out), ReportConfig(per_page=scenes))
            whole_bytes, whole_open = (out / "report.html").stat().st_size, opening_seconds(out / "report.html")
            opening = (f"{paged_open * 1000:.0f} ms / {whole_open * 1000:.0f} ms ({whole_open / paged_open:.1f}×)"
                       if paged_open else "no Chromium")
            print(f"| {scenes} | {cold:.1f} s | {warm:.2f} s | {cold / warm:.0f}× | {first.thumbnails_made} | "
                  f"{paged_bytes / 1000:.0f} kB / {whole_bytes / 1000:.0f} kB | {opening} |")


if __name__ == "__main__":
    main()
