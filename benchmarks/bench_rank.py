"""Selection against the battery of fakes, per matcher: is the true fill strictly first in every scene
with a ground truth, by what margin, which fakes come closest, per family the smallest perturbation
still ranked below the truth, and candidates scored per second on one core. Also the same features
ranked by plain verified-match counting, and the speed-up from caching a scene's features.

    REALFILL_SCENES=path/to/scenes REALFILL_SCENES_EXTRA=path/to/scenes-extra \
        python benchmarks/bench_rank.py [--features sift disk aliked xfeat] [--cascade sift:xfeat] [--sets scenes extra]

A cascade (`--rank.confirm`) is tallied from its two matchers' scores of the same candidates, by the rule ranking
uses: the second matcher's seconds count only for the contested top it scores.

Each set of scenes is measured on its own (the other scenes of a battery come from the same set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import torch

from realfill.config import GeometryConfig, RankConfig
from realfill.data.scene import list_scenes, load_scene
from realfill.selection.rank import Score, confirm_top, index_scene, rank_key, score_candidate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from decoys import SCALE_FREE, UNITS, Fake, battery, smallest_beaten  # noqa: E402  (shared with the tests)

SETS = {"scenes": "REALFILL_SCENES", "extra": "REALFILL_SCENES_EXTRA"}
"""The sets of scenes, by the environment variable naming each folder."""
UNRELATED = ("other scene", "mirror", "noise")
"""Fakes with nothing of the scene where it belongs: none should have any evidence."""


@dataclass
class Scored:
    """One matcher's scores of every candidate of one scene (the truth first, then its fakes)."""

    scene_id: str
    fakes: list[Fake]
    scores: list[Score]
    seconds: list[float]
    """Seconds to score each candidate."""
    index_seconds: float


@dataclass
class Result:
    features: str
    wins: int = 0
    plain_wins: int = 0
    scenes: int = 0
    margins: list[tuple[float, str, str]] = field(default_factory=list)
    outcomes: list[tuple[Fake, bool]] = field(default_factory=list)
    evident_outcomes: list[tuple[Fake, bool]] = field(default_factory=list)
    """Outcomes in the scenes where the truth has any evidence."""
    without_evidence: list[str] = field(default_factory=list)
    plain_outcomes: list[tuple[Fake, bool]] = field(default_factory=list)
    unrelated_evidence: dict[str, list[float]] = field(default_factory=dict)
    """Per scale-free family unrelated to the scene (another scene, a mirror image, noise), the scores of its fakes:
    the a-contrario bound promises exactly 0."""
    rows: list[dict] = field(default_factory=list)
    """One per candidate: scene, fake (label, family, magnitude; the truth has family "truth"), score, matches."""
    candidates: int = 0
    seconds: float = 0.0
    index_seconds: float = 0.0


def one_per_magnitude(fakes: list[Fake]) -> list[Fake]:
    """The first fake of each family and magnitude (one shift direction, one rotation sign)."""
    seen, kept = set(), []
    for fake in fakes:
        if (fake.family, fake.magnitude) not in seen or fake.magnitude == 0:
            seen.add((fake.family, fake.magnitude))
            kept.append(fake)
    return kept


def score_battery(features: str, scenes, quick: bool) -> list[Scored]:
    """Every candidate of every scene scored by one matcher, each timed on its own."""
    config = GeometryConfig(features=features)
    scored = []
    for scene in scenes:
        fakes = battery(scene, [other.gt for other in scenes if other is not scene])
        fakes = [Fake("truth", 0, "truth", scene.gt), *(one_per_magnitude(fakes) if quick else fakes)]
        started = time.perf_counter()
        index = index_scene(scene, config)
        index_seconds = time.perf_counter() - started
        scores, seconds = [], []
        for fake in fakes:
            started = time.perf_counter()
            scores.append(score_candidate(index, fake.image, config))
            seconds.append(time.perf_counter() - started)
        scored.append(Scored(scene.scene_id, fakes, scores, seconds, index_seconds))
    return scored


def cascade(first: list[Scored], second: list[Scored]) -> list[Scored]:
    """The cascade's scores, by the rule `realfill rank` uses (`confirm_top`): the first matcher for every
    candidate, the second for the contested top; its seconds are both matchers' work."""
    cascaded = []
    for one, two in zip(first, second):
        count = RankConfig().confirm_count(len(one.scores))
        scores = confirm_top(one.scores, count, lambda i: two.scores[i])
        seconds = [a + (b if score.confirmed else 0.0) for a, b, score in zip(one.seconds, two.seconds, scores)]
        cascaded.append(Scored(one.scene_id, one.fakes, scores, seconds, one.index_seconds + two.index_seconds))
    return cascaded


def tally(name: str, scored: list[Scored]) -> Result:
    result = Result(name)
    for scene in scored:
        true, *scores = scene.scores
        fakes = scene.fakes[1:]
        result.index_seconds += scene.index_seconds
        result.seconds += sum(scene.seconds)
        result.candidates += len(scene.scores)
        result.rows += [{"scene": scene.scene_id, "label": fake.label, "family": fake.family,
                         "magnitude": fake.magnitude, "score": s.score, "matches": s.matches}
                        for fake, s in zip(scene.fakes, scene.scores)]
        outcomes = [(fake, rank_key(true) > rank_key(s)) for fake, s in zip(fakes, scores)]
        result.outcomes += outcomes
        if true.score > 0:
            result.evident_outcomes += outcomes
        else:
            result.without_evidence.append(scene.scene_id)
        result.plain_outcomes += [(fake, true.matches > s.matches) for fake, s in zip(fakes, scores)]
        for fake, s in zip(fakes, scores):
            if fake.family in UNRELATED:
                result.unrelated_evidence.setdefault(fake.family, []).append(s.score)
        best, label = max((rank_key(s), fake.label) for fake, s in zip(fakes, scores))
        result.scenes += 1
        result.wins += rank_key(true) > best
        result.plain_wins += all(true.matches > s.matches for s in scores)
        result.margins.append((true.score / max(best[1], 1e-9), scene.scene_id, label))
        print(f"{name} {scene.scene_id}: true {true.score:.1f} ({true.matches} matches), "
              f"closest {label} {best[1]:.1f}", flush=True)
    return result


def threshold_text(family: str, value) -> str:
    if value is None:
        return "not beaten"
    if family in SCALE_FREE:
        return "all beaten"
    return f"{value:g}{UNITS[family]}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", nargs="+", default=["sift", "disk", "aliked", "xfeat"])
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=sorted(SETS),
                        help="which sets of scenes, each from its environment variable")
    parser.add_argument("--quick", nargs="*", default=[], metavar="FEATURES",
                        help="these matchers get one fake per family and magnitude (one direction, one sign)")
    parser.add_argument("--cascade", nargs="*", default=[], metavar="FIRST:SECOND",
                        help="also a cascade: FIRST for every candidate, SECOND for the contested top (both among "
                        "--features, neither in --quick)")
    parser.add_argument("--scores", type=Path, help="write every candidate's score here, one JSON file per set "
                        "and configuration")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    for name in args.sets:
        scenes = [s for s in map(load_scene, list_scenes(os.environ[SETS[name]])) if s.gt is not None]
        scored = {features: score_battery(features, scenes, features in args.quick) for features in args.features}
        scored |= {pair: cascade(*(scored[features] for features in pair.split(":"))) for pair in args.cascade}
        results = [tally(config, scores) for config, scores in scored.items()]
        report(name, scenes, results)
        if args.scores:
            args.scores.mkdir(parents=True, exist_ok=True)
            for r in results:
                (args.scores / f"{name}-{r.features.replace(':', '-')}.json").write_text(json.dumps(r.rows))
    cached_speedup(args.features[0], scenes)


def report(name: str, scenes, results: list[Result]) -> None:
    fakes = ", ".join(f"{r.features} {len(r.outcomes) // max(1, r.scenes)}" for r in results)
    print(f"\n### `{name}` (${SETS[name]}): {len(scenes)} scenes with a ground truth, fakes per scene: {fakes}; 1 core "
          f"(torch and OpenCV single-threaded), long side at most {GeometryConfig().max_side} px.\n")
    print("| matcher | truth strictly first (geometry score) | (plain count) | smallest margin | closest fake there "
          "| candidates/s/core | scene index s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        margin, scene_id, label = min(r.margins)
        print(f"| {r.features} | {r.wins}/{r.scenes} | {r.plain_wins}/{r.scenes} | {margin:.2f}x | {scene_id}: {label} "
              f"| {r.candidates / r.seconds:.1f} | {r.index_seconds / r.scenes:.2f} |")
    print("\nFakes beaten: " + ", ".join(f"{r.features} {sum(b for _, b in r.outcomes)} (plain count "
                                       f"{sum(b for _, b in r.plain_outcomes)}) of {len(r.outcomes)}" for r in results))
    print("Scenes where the truth has no evidence: " + ", ".join(
        f"{r.features}: {', '.join(r.without_evidence) or 'none'}" for r in results))
    print("Fakes unrelated to the scene that score above 0 (the a-contrario bound promises 0): " + "; ".join(
        f"{r.features}: " + ", ".join(f"{family} {sum(v > 0 for v in values)}/{len(values)} (max {max(values):.1f})"
                                      for family, values in r.unrelated_evidence.items()) for r in results))
    print("\nSmallest perturbation still ranked below the truth in every scene, geometry score / plain count "
          "[geometry score, in the scenes where the truth has evidence]:\n")
    print("| family | " + " | ".join(r.features for r in results) + " |")
    print("|---|" + "---|" * len(results))
    geometry = [smallest_beaten(r.outcomes) for r in results]
    plain = [smallest_beaten(r.plain_outcomes) for r in results]
    evident = [smallest_beaten(r.evident_outcomes) for r in results]
    for family in geometry[0]:
        cells = [f"{threshold_text(family, g[family])} / {threshold_text(family, p[family])} "
                 f"[{threshold_text(family, e.get(family))}]" for g, p, e in zip(geometry, plain, evident)]
        print(f"| {family} | " + " | ".join(cells) + " |")


def cached_speedup(features: str, scenes) -> None:
    config = GeometryConfig(features=features)
    candidates = [(scene, fake.image) for scene in scenes[:2] for fake in battery(scene, [])[:10]]
    indexes = {id(scene): index_scene(scene, config) for scene in scenes[:2]}
    started = time.perf_counter()
    for scene, image in candidates:
        score_candidate(indexes[id(scene)], image, config)
    cached = time.perf_counter() - started
    started = time.perf_counter()
    for scene, image in candidates:
        score_candidate(index_scene(scene, config), image, config)
    uncached = time.perf_counter() - started
    print(f"\nCaching a scene's features ({features}, {len(candidates)} candidates): "
          f"{uncached / cached:.2f}x faster than re-indexing per candidate")


if __name__ == "__main__":
    main()
