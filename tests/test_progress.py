"""Progress: counts of units per stage against a total fixed at the start, that never go backwards; plain
lines (no escapes) when the output is not a terminal."""

import io

from pipeline.progress import Progress


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_counts_reach_the_totals_and_never_go_back(monkeypatch):
    monkeypatch.setattr("pipeline.progress.LINE_S", 0.0)
    stream = io.StringIO()
    progress = Progress("progress", {"stitch": 0, "tune": 3, "sample": 3, "rank": 3}, stream=stream)
    progress.advance("tune", 2)  # a call shared by two units
    progress.fail(["tune", "sample", "rank"])  # the third unit failed at tune
    progress.advance("sample", 2)
    progress.advance("rank")
    progress.advance("rank")
    progress.close()
    said = lines(stream)
    assert said[0] == "progress: tune 0/3, sample 0/3, rank 0/3", "unused stages are not shown"
    assert said[-1] == "progress: tune 3/3, sample 3/3, rank 3/3 (failed 1)"
    counts = [[int(part.split("/")[0].split()[-1]) for part in line.split(": ", 1)[1].split(" (")[0].split(", ")]
              for line in said]
    assert all(all(a <= b for a, b in zip(before, after)) for before, after in zip(counts, counts[1:]))
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


def test_plain_lines_are_spaced_in_time(monkeypatch):
    stream = io.StringIO()
    progress = Progress("library", {"pick": 100}, stream=stream)
    for _ in range(100):
        progress.advance("pick")
    progress.close()
    assert lines(stream) == ["library: pick 0/100", "library: pick 100/100"], "one line now and then, and the end"


def test_quiet_says_nothing():
    stream = io.StringIO()
    progress = Progress("progress", {"tune": 1}, show=False, stream=stream)
    progress.advance("tune")
    progress.close()
    assert stream.getvalue() == ""
